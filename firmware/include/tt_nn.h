/* tt_nn.h — tinytwin's on-device training library (C99, float32, no allocation after start-up).
 *
 * Why: the firmware twin must train exactly like the simulator's PyTorch models
 * (tinytwin.models.zoo "mlp", tinytwin.engines.batched_mlp, tinytwin.emulate.mlp_np) so that
 * the three twins can be compared number for number.  All buffers come from one static arena
 * (tt_arena.h); nothing is allocated after tt_mlp_init.
 *
 * Parameter layout = the simulator's flat vector (tinytwin.models.params.ParamLayout):
 * for every dense layer i in order: W_i as (n_out, n_in) row-major (torch.nn.Linear.weight),
 * then b_i (n_out).  Layer i is followed by ReLU when relu[i] != 0 (the last layer never is:
 * its outputs are the logits).
 *
 * Loss: mean softmax cross-entropy over the batch.  Optimizer: PyTorch SGD semantics:
 *   g' = g + weight_decay * w;  buf = momentum * buf + g' (buf = g' on the first step);  w -= lr * buf
 * with the momentum buffers zeroed by tt_mlp_reset_optimizer (the simulator starts every
 * round with fresh optimizer state).
 */
#ifndef TT_NN_H
#define TT_NN_H

#include <stddef.h>
#include <stdint.h>

#define TT_MAX_LAYERS 8

typedef struct {
    int32_t n_in, n_out, relu;
    float *w, *b;      /* views into tt_mlp.params */
    float *gw, *gb;    /* views into tt_mlp.grads */
} tt_dense;

typedef struct {
    int32_t n_layers;
    int32_t batch_max;
    int32_t n_params;
    tt_dense layer[TT_MAX_LAYERS];
    float *params;     /* n_params, the flat vector */
    float *grads;      /* n_params */
    float *momentum;   /* n_params, or NULL when built without momentum */
    /* act[0] = input copy (batch_max x n_in0), act[i+1] = output of layer i (post-ReLU).
     * A client may read its batch straight into act[0] and pass x = act[0]: then nothing is
     * copied.  Backprop runs in place over act[1..n] (they hold gradients after
     * tt_mlp_loss_backward); act[0] is kept. */
    float *act[TT_MAX_LAYERS + 1];
    float *delta[2];   /* unused (NULL): backprop needs no separate buffers; kept for the ABI */
} tt_mlp;

/* Number of parameters of an MLP with layer widths sizes[0..n_layers] (sizes[0] = inputs). */
int32_t tt_mlp_param_count(int32_t n_layers, const int32_t *sizes);

/* Arena bytes tt_mlp_init will take (so the host and build can size the arena); 0 for invalid
 * shapes.  Exactly: round8(4 * n_params * (with_momentum ? 3 : 2))
 *                   + sum_{i=0..n_layers} round8(4 * batch_max * sizes[i]). */
size_t tt_mlp_arena_bytes(int32_t n_layers, const int32_t *sizes, int32_t batch_max, int32_t with_momentum);

/* Allocate every buffer from the arena; relu[i] says whether layer i is followed by ReLU.
 * Returns 0, or -1 when the arena is too small (the caller reports the fault), or for invalid
 * shapes (n_layers outside 1..TT_MAX_LAYERS, a width or batch_max < 1, relu on the last layer).
 * On -1 nothing is allocated.  Params, grads and momentum start at 0. */
int tt_mlp_init(tt_mlp *m, int32_t n_layers, const int32_t *sizes, const int32_t *relu,
                int32_t batch_max, int32_t with_momentum);

/* Forward pass of a batch x (batch x sizes[0], row-major); returns the logits
 * (batch x sizes[n_layers]), a view into the model's activations.  1 <= batch <= batch_max:
 * other sizes return NULL (tt_mlp_loss_backward then zeroes the grads and returns 0,
 * tt_mlp_correct returns 0). */
const float *tt_mlp_forward(tt_mlp *m, const float *x, int32_t batch);

/* Forward + backward: fills m->grads with d(mean CE)/d(params) of the batch and returns the
 * SUM of the samples' cross-entropies (as the simulator's trainer reports it).
 * Labels must lie in [0, sizes[n_layers]) (the client checks them). */
float tt_mlp_loss_backward(tt_mlp *m, const float *x, const int32_t *y, int32_t batch);

/* Zero the momentum buffers (start of a round). */
void tt_mlp_reset_optimizer(tt_mlp *m);

/* One SGD step on m->params with m->grads (PyTorch semantics, see above).  A model built with
 * with_momentum = 0 has no buffers and ignores `momentum`. */
void tt_mlp_sgd_step(tt_mlp *m, float lr, float momentum, float weight_decay);

/* Number of correct argmax predictions in a batch. */
int32_t tt_mlp_correct(tt_mlp *m, const float *x, const int32_t *y, int32_t batch);

/* ---- merge rules of decentralized learning (same definitions as tinytwin.algorithms) ---- */

/* DecFedAvg / gossip averaging: out[j] = sum_k weights[k] * models[k][j]  (out may alias models[0]). */
void tt_mix(float *out, const float *const *models, const float *weights, int32_t n_models, int32_t n_params);

/* Gist merge of one receiver (tinytwin.algorithms.gist.merge):
 *   r_j = sum_i a_i v_ij,  phi_j = sum_i a_i b_ij,  w_j <- (r_j + a_local w_j) / (phi_j + a_local),
 * keeping w_j where the denominator is 0.  Segments arrive one at a time: accumulate each with
 * tt_gist_accumulate(r, phi, ...) into two zeroed n_params buffers, then call tt_gist_merge.
 * bitmap: n_params bits, LSB-first within each byte (bit j of byte j/8 = (j % 8)) — the wire
 * "bitmap" encoding; values: the set positions' float32 values in index order. */
void tt_gist_accumulate(float *r, float *phi, float a, const uint8_t *bitmap, const float *values, int32_t n_params);
void tt_gist_merge(float *w, const float *r, const float *phi, float a_local, int32_t n_params);

#endif
