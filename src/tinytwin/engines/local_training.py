"""Running local training for many devices: batched (the engine) and one by one (the reference).

The batched path stacks the participating devices' flat parameters into a (D, P) tensor
and runs every step of every device as one ``vmap``-ed computation; devices whose data
ran out at a step are masked (``active = 0``), so unequal dataset sizes need no Python
loop over devices. The reference path runs the same definitions
(:mod:`tinytwin.algorithms.local_update`) device by device; a test holds the two equal.

Devices train in chunks (memory), grouped by how many steps their data take
(:mod:`tinytwin.engines.buckets`: padding costs at most 2x), on the trainer's torch device;
on a GPU the batch schedule is hashed there too (:mod:`tinytwin.engines.schedule_torch`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.func import grad, vmap

from tinytwin.algorithms.local_update import LocalTraining, batch_loss, init_optimizer_state, optimizer_step
from tinytwin.engines.batched_mlp import BatchedMLPGrad
from tinytwin.engines.buckets import chunk_plan, consecutive_chunks
from tinytwin.engines.device import default_chunk, training_dtype
from tinytwin.engines.schedule_torch import padded_indices
from tinytwin.engines.schedule_torch import schedule as schedule_on
from tinytwin.engines.shards import sizes_of, take
from tinytwin.engines.threads import intra_op_threads, threads_for
from tinytwin.models.params import ParamLayout
from tinytwin.rng import device_permutations

#: Bytes of weights and batch a tile of devices trains in, to stay in the CPU's cache (see LocalTrainer._tiles).
CACHE_TILE_BYTES = 8 << 20

if TYPE_CHECKING:
    from tinytwin.engines.experiment import Experiment


@dataclass(frozen=True)
class LocalResult:
    params: torch.Tensor  # (D, P) trained parameters
    train_loss: np.ndarray  # (D,) mean cross-entropy over all samples seen this round
    steps: np.ndarray  # (D,) optimizer steps taken


@dataclass
class ChunkResult:
    """One chunk's trained models as the trainer holds them: the model's tensors in flat order,
    each (n, ...) (one (n, P) tensor off the MLP fast path), so a streaming reducer reads them
    without first copying them into one (n, P) matrix."""

    layers: list[torch.Tensor]
    train_loss: np.ndarray
    steps: np.ndarray


class LocalTrainer:
    """Trains devices' models on their local data for one round."""

    def __init__(
        self,
        module: nn.Module,
        layout: ParamLayout,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        cfg: LocalTraining,
        seed: int,
        chunk_size: int = 2048,
        fast_path: bool = True,
        device: torch.device | None = None,
        threads: int | None = None,
        bucketing: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.module = module
        self.layout = layout
        self.device = torch.device("cpu") if device is None else device
        self.x = x_train.to(self.device)
        self.y = y_train.to(self.device)
        self.cfg = cfg
        self.seed = seed
        self.chunk_size = chunk_size
        self.threads = threads
        self.bucketing = bucketing
        # The dtype of the devices' weights and batches while they train (engine.precision); the
        # models handed back, aggregation and evaluation stay float32.
        self.dtype = dtype
        if self.device.type == "cuda" and dtype != torch.float32:
            # cuBLAS may otherwise reduce half-precision products in half precision (split-K)
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        # Per-chunk work tensors kept from chunk to chunk: a fresh 100 MB tensor per chunk costs
        # more in page faults than filling it (see _scratch).
        self._scratch_store: dict[str, torch.Tensor] = {}

        def loss(
            flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, anchor: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return batch_loss(module, layout, flat, x, y, mask, anchor, cfg.prox_mu)

        self._loss = loss
        # Samples flattened once (and in the training dtype), so a step's batch is one index_select.
        self._x_rows = self.x.reshape(len(self.x), -1).to(dtype)
        self._sample_shape = tuple(self.x.shape[1:])
        self._batched_grad = vmap(grad(loss, has_aux=True))
        # MLPs get hand-written batched gradients (same math, 5-10x less overhead than vmap).
        specs = getattr(module, "layer_specs", None)
        self._mlp_grad = BatchedMLPGrad.for_layers(specs) if fast_path and specs else None
        self._plain_sgd = cfg.optimizer == "sgd" and not cfg.momentum and not cfg.weight_decay and not cfg.prox_mu

    @classmethod
    def for_engine(cls, exp: Experiment, cfg: LocalTraining, device: torch.device) -> LocalTrainer:
        """The trainer an engine runs ``exp`` with: its training data on ``device`` (``trainer.x``,
        ``trainer.y``), the spec's ``engine`` chunk size (or the device's default) and threads."""
        eng = exp.spec.engine
        return cls(
            exp.module,
            exp.layout,
            torch.from_numpy(exp.dataset.x_train),
            torch.from_numpy(exp.dataset.y_train),
            cfg,
            exp.spec.seed,
            chunk_size=default_chunk(device, eng.chunk_size),
            device=device,
            threads=eng.threads,
            dtype=training_dtype(exp.spec.algorithm.family, exp.spec.algorithm.name, eng.precision),
        )

    # ---- schedule -----------------------------------------------------------------
    def schedule(self, round_: int, device_ids: np.ndarray, indices: Sequence[np.ndarray]) -> np.ndarray:
        """Global sample indices per device and step slot: (D, epochs·steps_max·B), -1 = padding.

        Epoch e of device d visits its samples in the order of its own permutation; each
        epoch is padded to the fleet's largest number of steps so that step s of every
        device lines up.
        """
        sizes = sizes_of(indices)
        b = self.cfg.batch_size
        steps = int(-(-sizes.max() // b)) if sizes.size else 0
        padded = padded_indices(indices)
        slots = []
        for epoch in range(self.cfg.epochs):
            order = device_permutations(self.seed, round_, epoch, device_ids, sizes)
            glob = np.where(order >= 0, np.take_along_axis(padded, np.maximum(order, 0), axis=1), -1)
            pad = np.full((len(indices), steps * b - glob.shape[1]), -1, dtype=np.int64)
            slots.append(np.concatenate([glob, pad], axis=1))
        return np.concatenate(slots, axis=1)

    # ---- batched ------------------------------------------------------------------
    def train(
        self,
        start: torch.Tensor,
        round_: int,
        device_ids: np.ndarray,
        indices: Sequence[np.ndarray],
        lr: np.ndarray | None = None,
    ) -> LocalResult:
        """Train every listed device from ``start`` ((P,) shared or (D, P) per device).

        The result's parameters are on the trainer's device."""
        d = len(indices)
        start = start.to(self.device)
        out = torch.empty((d, start.shape[-1]), dtype=start.dtype, device=self.device)
        lrs = np.full(d, self.cfg.lr) if lr is None else np.asarray(lr, dtype=np.float64)
        losses = np.zeros(d)
        steps = np.zeros(d, dtype=np.int64)
        for pos in self.plan(indices):
            contiguous = pos[-1] - pos[0] + 1 == len(pos)
            rows = slice(int(pos[0]), int(pos[-1]) + 1) if contiguous else torch.from_numpy(pos).to(self.device)
            chunk_out = (
                out[rows] if contiguous else torch.empty((len(pos), out.shape[1]), dtype=out.dtype, device=self.device)
            )
            chunk_start = start if start.dim() == 1 else start[rows]
            with intra_op_threads(self._threads(len(pos), start.shape[-1])):
                layers, losses[pos], steps[pos] = self._train_chunk(
                    chunk_start, round_, device_ids[pos], take(indices, pos), lrs[pos]
                )
                self._join_into(layers, chunk_out)
            if not contiguous:
                out[rows] = chunk_out
        return LocalResult(out, losses, steps)

    def train_chunks(
        self, start: torch.Tensor, round_: int, device_ids: np.ndarray, indices: Sequence[np.ndarray]
    ) -> Iterator[tuple[np.ndarray, ChunkResult]]:
        """Train the devices one chunk at a time, yielding ``(positions, models of those devices)``.

        Each chunk's models are computed exactly as :meth:`train` computes them; a caller that
        reduces each chunk before asking for the next (streaming FedAvg) holds one chunk of
        models in memory instead of all of them. The chunk's tensors may be updated in place;
        the next chunk reuses them."""
        start = start.to(self.device)
        for pos in self.plan(indices):
            with intra_op_threads(self._threads(len(pos), start.shape[-1])):
                layers, loss, steps = self._train_chunk(
                    start, round_, device_ids[pos], take(indices, pos), np.full(len(pos), self.cfg.lr)
                )
            yield pos, ChunkResult(layers, loss, steps)

    def plan(self, indices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The chunks of devices (positions into ``indices``) that train together."""
        sizes = sizes_of(indices)
        if not self.bucketing:
            return consecutive_chunks(len(sizes), self.chunk_size)
        return chunk_plan(sizes, self.cfg.batch_size, self.chunk_size)

    def _threads(self, d: int, num_params: int) -> int:
        """Intra-op threads for ``d`` devices: the explicit setting, else the workload rule.

        A chunk of one device always trains on one thread: a batch of one matrix product runs
        as a single GEMM, which the BLAS parallelises inside the product, and its sums (so the
        model) depended on the thread count; a batch of several gives each product to one thread."""
        if d == 1:
            return 1
        return threads_for(min(d, self.chunk_size) * self.cfg.batch_size * num_params, self.threads)

    def _join_into(self, layers: list[torch.Tensor], out: torch.Tensor) -> None:
        """A chunk's tensors (:class:`ChunkResult` layers) into its rows of the flat (n, P) ``out``."""
        if self._mlp_grad is not None:
            self._mlp_grad.join_into(layers, out)
        else:
            out.copy_(layers[0])

    def _scratch(self, name: str, rows: int, row_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A (rows, *row_shape) work tensor, the first rows of one kept from earlier chunks when it
        is large enough (contents undefined). A chunk's tensors are therefore valid until the next
        chunk trains: :meth:`train` copies them out, :meth:`train_chunks`' caller reduces them first."""
        buf = self._scratch_store.get(name)
        if buf is None or buf.shape[1:] != row_shape or buf.dtype != dtype or buf.shape[0] < rows:
            buf = torch.empty((rows, *row_shape), dtype=dtype, device=self.device)
            self._scratch_store[name] = buf
        return buf[:rows]

    def _train_chunk(
        self,
        start: torch.Tensor,
        round_: int,
        device_ids: np.ndarray,
        indices: Sequence[np.ndarray],
        lrs: np.ndarray,
    ) -> tuple[list[torch.Tensor], np.ndarray, np.ndarray]:
        """Train one chunk of devices from ``start`` ((P,) or (n, P)): the models' tensors, losses, steps.

        MLPs train on per-layer tensors (no flat copies per step)."""
        cfg = self.cfg
        n = len(indices)
        dev = self.device
        if dev.type == "cpu":
            sched = torch.from_numpy(self.schedule(round_, device_ids, indices))
        else:  # the same schedule, hashed on the GPU (numpy's is seconds a round at 10^6 devices)
            sched = schedule_on(self.seed, round_, cfg.epochs, cfg.batch_size, device_ids, indices, dev)
        fast = self._mlp_grad
        if fast is not None:
            tensors = [self._scratch(f"layer{k}", n, s, self.dtype) for k, s in enumerate(fast.layer_shapes())]
            fast.split_into(start, tensors)  # casts to the training dtype
        elif start.dtype != self.dtype:
            tensors = [start.to(self.dtype).expand(n, -1).contiguous()]
        else:
            tensors = [start.expand(n, -1).contiguous() if start.dim() == 1 else start.clone()]
        lr_col = torch.tensor(lrs, dtype=tensors[0].dtype, device=dev)
        # One batch buffer reused by every step: a fresh (D, B, ...) tensor per step costs
        # more in allocation and page faults than the gather itself (8 ms vs 60-90 ms at 2000 x 10 MNIST rows).
        x_buf = self._scratch("x", n * cfg.batch_size, (self._x_rows.shape[1],), self._x_rows.dtype)
        y_buf = self._scratch("y", n * cfg.batch_size, (), self.y.dtype)
        if fast is not None and self._plain_sgd:
            tiles = [
                self._sgd_tile(fast, [t[lo:hi] for t in tensors], sched[lo:hi], lr_col[lo:hi], x_buf, y_buf)
                for lo, hi in self._tiles(n, fast)
            ]
            ce_total, seen, steps = (torch.cat(parts) for parts in zip(*tiles))
        else:
            ce_total, seen, steps = self._optimizer_steps(tensors, sched, lr_col, x_buf, y_buf)
        loss = (ce_total / seen.clamp_min(1.0)).cpu().numpy()
        return tensors, loss, steps.cpu().numpy()

    def _optimizer_steps(
        self,
        tensors: list[torch.Tensor],
        sched: torch.Tensor,
        lr_col: torch.Tensor,
        x_buf: torch.Tensor,
        y_buf: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every step of a chunk with the configured optimizer (momentum, Adam, a proximal term, or a
        model without a per-layer gradient), replacing ``tensors``' items step by step. Returns the
        summed cross-entropy, samples seen and steps taken per device."""
        cfg = self.cfg
        fast = self._mlp_grad
        params = tensors[0]
        n, b = len(sched), cfg.batch_size
        anchors = [t.clone() for t in tensors] if cfg.prox_mu else None
        states = [init_optimizer_state(t, cfg) for t in tensors]
        ce_total = torch.zeros(n, dtype=torch.float64, device=self.device)
        seen = torch.zeros(n, dtype=torch.float64, device=self.device)
        steps = torch.zeros(n, dtype=torch.int64, device=self.device)
        for s in range(sched.shape[1] // b):
            idx = sched[:, s * b : (s + 1) * b]
            mask = (idx >= 0).to(params.dtype)
            has_data = mask.sum(dim=1) > 0
            if not bool(has_data.any()):
                continue
            safe = idx.clamp_min(0)
            x, y = self._batch(safe, x_buf, y_buf)
            if fast is not None:
                grads, ce_sum = fast.grads(tensors, x, y, mask, anchors, cfg.prox_mu)
            else:
                flat_grad, ce_sum = self._batched_grad(
                    params, x, y, mask, tensors[0] if anchors is None else anchors[0]
                )
                grads = [flat_grad]
            active = has_data.to(params.dtype)
            for k, t in enumerate(tensors):
                view = (-1,) + (1,) * (t.dim() - 1)
                tensors[k], states[k] = optimizer_step(
                    t, grads[k], states[k], lr_col.view(view), active.view(view), cfg
                )
            params = tensors[0]
            ce_total += ce_sum.to(torch.float64)
            seen += mask.sum(dim=1).to(torch.float64)
            steps += has_data.to(torch.int64)
        return ce_total, seen, steps

    def _tiles(self, n: int, fast: BatchedMLPGrad) -> list[tuple[int, int]]:
        """Row ranges of a chunk that run all their steps before the next range starts.

        Plain SGD on small layers is bound by memory traffic, not arithmetic: each step reads
        and writes every device's weights once. A tile whose weights and batch fit in the CPU's
        cache (``CACHE_TILE_BYTES``) keeps them there across its steps; a device's result does
        not depend on its tile-mates, so tiling changes speed only. On a GPU the chunk is one tile.
        """
        if self.device.type != "cpu":
            return [(0, n)]
        per_device = (fast.num_params + self.cfg.batch_size * self._x_rows.shape[1]) * self._x_rows.element_size()
        tile = max(1, CACHE_TILE_BYTES // per_device)
        return [(lo, min(lo + tile, n)) for lo in range(0, n, tile)]

    def _batch(self, idx: torch.Tensor, x_buf: torch.Tensor, y_buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's samples and labels for (n, B) sample indices (no padding: -1 clamped to 0 by
        the caller), gathered into the first rows of the reused batch buffers."""
        flat_idx = idx.reshape(-1)
        rows = len(flat_idx)
        x = torch.index_select(self._x_rows, 0, flat_idx, out=x_buf[:rows]).view(*idx.shape, *self._sample_shape)
        y = torch.index_select(self.y, 0, flat_idx, out=y_buf[:rows]).view(idx.shape)
        return x, y

    def _sgd_tile(
        self,
        fast: BatchedMLPGrad,
        tensors: list[torch.Tensor],
        sched: torch.Tensor,
        lr_col: torch.Tensor,
        x_buf: torch.Tensor,
        y_buf: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every plain-SGD step of one tile of devices, in place on ``tensors`` (views of the chunk's).

        The masks, step sizes and counts of all steps are computed once for the tile; the loss
        is summed step by step in the same order as the generic path. Returns the summed
        cross-entropy, samples seen and steps taken per device."""
        n, b = len(sched), self.cfg.batch_size
        dtype = tensors[0].dtype
        masks = (sched >= 0).to(dtype).view(n, -1, b)
        has_data = masks.sum(dim=2) > 0  # (n, steps)
        scales = -lr_col[:, None] * has_data.to(dtype)
        live = has_data.any(dim=0).tolist()
        safe = sched.clamp_min(0)
        ce_total = torch.zeros(n, dtype=torch.float64, device=self.device)
        for s in (s for s, any_data in enumerate(live) if any_data):
            x, y = self._batch(safe[:, s * b : (s + 1) * b], x_buf, y_buf)
            ce_total += fast.sgd_step_(tensors, x, y, masks[:, s], scales[:, s]).to(torch.float64)
        seen = masks.sum(dim=(1, 2), dtype=torch.float64)
        return ce_total, seen, has_data.sum(dim=1)

    # ---- reference ----------------------------------------------------------------
    def train_reference(
        self,
        start: torch.Tensor,
        round_: int,
        device_ids: np.ndarray,
        indices: Sequence[np.ndarray],
        lr: np.ndarray | None = None,
    ) -> LocalResult:
        """The executable definition: each device trained alone with plain autograd."""
        cfg = self.cfg
        sched = self.schedule(round_, device_ids, indices)
        out, losses, steps = [], [], []
        for d in range(len(indices)):
            w = (start if start.dim() == 1 else start[d]).clone()
            anchor = w.clone()
            state = init_optimizer_state(w, cfg)
            lr_d = torch.tensor([cfg.lr if lr is None else float(lr[d])], dtype=w.dtype)
            order = sched[d][sched[d] >= 0]
            ce_total, n_steps = 0.0, 0
            for e in range(cfg.epochs):
                epoch_ix = order[e * len(indices[d]) : (e + 1) * len(indices[d])]
                for lo in range(0, len(epoch_ix), cfg.batch_size):
                    batch = torch.from_numpy(epoch_ix[lo : lo + cfg.batch_size])
                    w_req = w.detach().requires_grad_(True)
                    loss, ce_sum = self._loss(
                        w_req, self.x[batch], self.y[batch], torch.ones(len(batch), dtype=w.dtype), anchor
                    )
                    (g,) = torch.autograd.grad(loss, w_req)
                    w, state = optimizer_step(w.detach(), g, state, lr_d, torch.ones(1, dtype=w.dtype), cfg)
                    ce_total += float(ce_sum)
                    n_steps += 1
            out.append(w)
            losses.append(ce_total / max(1, cfg.epochs * len(indices[d])))
            steps.append(n_steps)
        return LocalResult(torch.stack(out), np.array(losses), np.array(steps))
