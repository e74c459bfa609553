"""Model zoo: exact parameter counts, FLOPs and training memory by component."""

import torch

from tinytwin.models.accounting import backward_flops, forward_flops, training_memory
from tinytwin.models.params import ParamLayout
from tinytwin.models.zoo import make_model


def test_mlp_parameter_count_matches_torch_and_hand_count():
    model = make_model("mlp", (1, 8, 8), 10, hidden=(32,))
    assert model.num_params == 64 * 32 + 32 + 32 * 10 + 10 == 2410
    module = model.build(0)
    assert sum(p.numel() for p in module.parameters()) == 2410
    assert model.tensor_sizes == ParamLayout.of(module).sizes == [2048, 32, 320, 10]


def test_zfl_mlp_784_16_10():
    assert make_model("mlp", (1, 28, 28), 10, hidden=(16,)).num_params == 784 * 16 + 16 + 16 * 10 + 10


def test_lenet5_on_mnist_is_the_classic_shape():
    model = make_model("lenet5", (1, 28, 28), 10)
    convs = [l for l in model.layers if l.kind == "conv"]
    assert [l.out_shape for l in convs] == [(6, 28, 28), (16, 10, 10)]
    expected = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert model.num_params == expected == 61706
    out = model.build(1)(torch.zeros(3, 1, 28, 28))
    assert out.shape == (3, 10)


def test_dscnn_uses_depthwise_convolutions_and_runs():
    model = make_model("dscnn", (3, 32, 32), 10, channels=(8, 16))
    depthwise = [l for l in model.layers if l.kind == "conv" and l.groups > 1]
    assert depthwise and depthwise[0].groups == 8
    module = model.build(0)
    assert sum(p.numel() for p in module.parameters()) == model.num_params
    assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_same_seed_same_weights():
    model = make_model("mlp", (1, 8, 8), 10)
    a = ParamLayout.of(model.build(5)).flatten(model.build(5))
    b = ParamLayout.of(model.build(5)).flatten(model.build(5))
    c = ParamLayout.of(model.build(6)).flatten(model.build(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flops_of_mlp_by_hand():
    layers = make_model("mlp", (1, 8, 8), 10, hidden=(32,)).layers
    # forward: fc1 2*64*32 + 32 bias, relu 32, fc2 2*32*10 + 10, loss 4*10
    assert forward_flops(layers, 10) == 2 * 64 * 32 + 32 + 32 + 2 * 32 * 10 + 10 + 40
    # backward: loss 10; fc1 weight grad 2*64*32 + bias 32 (no input grad); relu 32;
    # fc2 weight grad 2*32*10 + bias 10 + input grad 2*32*10
    assert backward_flops(layers, 10) == 10 + 2 * 64 * 32 + 32 + 32 + 2 * 32 * 10 + 10 + 2 * 32 * 10


def test_training_memory_components():
    layers = make_model("mlp", (1, 8, 8), 10, hidden=(32,)).layers
    mem = training_memory(layers, 8, optimizer="sgd", momentum=0.9, prox_mu=0.01, receive_bytes=100, send_bytes=50)
    p = 2410
    assert mem.weights == mem.gradients == 4 * p
    assert mem.optimizer_state == 4 * 2 * p  # momentum + FedProx anchor
    # stored values per sample: input 64 + flatten 64 + fc1 32 + relu 32 + fc2 10 = 202; plus 2 x 64
    assert mem.activations == 4 * 8 * (202 + 2 * 64)
    assert mem.total == 4 * p * 4 + 4 * 8 * 330 + 150
