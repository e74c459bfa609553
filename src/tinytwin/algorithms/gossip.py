"""Gossip learning: whom a device pushes its model to, and how a receiver merges.

Ormándi, Hegedűs, Jelasity (CCPE 2013); gossipy's deep-model handler; the seed-004 FIFO
variant (Kralj et al.); reference/algorithms.md §6 and §10. A device, after a local
training round, pushes its whole model to ``sends`` peers, each drawn uniformly (with
replacement) from

- ``random``: every other online device (a complete overlay, as gossip learning assumes
  a peer-sampling service), or
- ``neighbour``: its online graph neighbours over links that are up.

Exchange: ``push`` (the receiver merges, the sender keeps its model) or ``push_pull``
(gossipy's PUSH_PULL anti-entropy: the receiver answers with its own model and *both*
merge, pair by pair in message order). Pairwise averaging conserves the sum of the
models, so with learning switched off ``push_pull`` + ``average`` converges to the
initial mean on a connected graph; push-only averaging does not conserve the mean.

Merge modes (functions below, all vectorised over receivers):

- ``average`` (gossipy): the receiver's model becomes the mean of its own model and the
  models it received, ``w ← (w + Σ_m w_m) / (1 + M)``; age ← max of the ages.
- ``fifo`` (seed 004): received models go into a FIFO buffer of ``buffer_size`` (default 2,
  initially copies of the initial model); at the start of its next local round the
  receiver *replaces* its model by the buffer mean (its own last update is dropped unless
  it came back).
- ``age`` (Hegedűs–Danner–Jelasity): ``w ← (t·w + t_m·w_m) / (t + t_m)`` for each received
  model in arrival order (equal weights when both ages are 0), age ← max(t, t_m); the age
  of a model is the number of local training rounds behind it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["choose_peers", "fifo_mean", "fifo_push", "merge_age", "merge_average", "message_rank", "pairwise_merge"]

PEER_MODES = ("random", "neighbour")
MERGE_MODES = ("average", "fifo", "age")


def choose_peers(
    rng: np.random.Generator,
    senders: np.ndarray,
    sends: int,
    online: np.ndarray,
    neighbours: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` of every push: ``sends`` uniform draws with replacement per sender.

    ``neighbours`` is the CSR adjacency ``(indptr, indices)`` of the usable links (peer
    mode ``neighbour``) or ``None`` for any other online device (peer mode ``random``).
    A sender with no candidate sends nothing. Draw order: sender by sender, ``sends`` each.
    """
    senders = np.asarray(senders, dtype=np.int64)
    src = np.repeat(senders, sends)
    u = rng.random(src.size)
    if neighbours is None:
        pool = np.flatnonzero(online)
        # index into the online pool with the sender itself removed
        pos = np.searchsorted(pool, src)
        has = pool.size - 1
        k = np.floor(u * max(has, 0)).astype(np.int64)
        k = k + (k >= pos)  # skip the sender's own slot
        ok = np.full(src.size, has > 0)
        dst = pool[np.minimum(k, pool.size - 1)] if pool.size else np.zeros(src.size, dtype=np.int64)
    else:
        indptr, indices = neighbours
        deg = indptr[src + 1] - indptr[src]
        ok = deg > 0
        k = np.floor(u * deg).astype(np.int64)
        dst = indices[np.minimum(indptr[src] + k, max(indices.size - 1, 0))] if indices.size else np.zeros_like(src)
    return src[ok], dst[ok]


def merge_average(own: Tensor, received_sum: Tensor, counts: Tensor) -> Tensor:
    """``(own + Σ received) / (1 + count)`` row-wise (``counts`` broadcast as (R, 1))."""
    c = counts.to(own.dtype).reshape(-1, 1)
    return (own + received_sum) / (1.0 + c)


def merge_age(own: Tensor, own_age: Tensor, recv: Tensor, recv_age: Tensor) -> tuple[Tensor, Tensor]:
    """Age-weighted merge of one received model per row; returns (model, age)."""
    a = own_age.to(own.dtype).reshape(-1, 1)
    b = recv_age.to(own.dtype).reshape(-1, 1)
    total = a + b
    wa = torch.where(total > 0, a / total.clamp_min(1e-30), torch.full_like(a, 0.5))
    merged = wa * own + (1.0 - wa) * recv
    return merged, torch.maximum(own_age, recv_age)


def fifo_push(buffer: Tensor, count: Tensor, head: Tensor, rows: np.ndarray, models: Tensor) -> None:
    """Append ``models[i]`` to the FIFO of device ``rows[i]`` in order (in place).

    ``buffer`` is (D, B, P); ``head`` the next slot per device; ``count`` the filled slots."""
    b = buffer.shape[1]
    ranks = message_rank(rows)
    for rank in range(int(ranks.max(initial=-1)) + 1):
        sel = np.flatnonzero(ranks == rank)
        r = torch.from_numpy(rows[sel])
        slot = head[r]
        buffer[r, slot] = models[torch.from_numpy(sel)]
        head[r] = (slot + 1) % b
        count[r] = torch.clamp(count[r] + 1, max=b)


def fifo_mean(buffer: Tensor, count: Tensor, rows: Tensor) -> Tensor:
    """Mean of the filled FIFO slots of ``rows`` (a full buffer: mean of all B slots)."""
    b = buffer.shape[1]
    slots = torch.arange(b)[None, :] < count[rows][:, None]
    w = slots.to(buffer.dtype)
    return (buffer[rows] * w[:, :, None]).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp_min(1.0)


def message_rank(dst: np.ndarray) -> np.ndarray:
    """For messages in arrival order, how many earlier messages went to the same receiver."""
    dst = np.asarray(dst, dtype=np.int64)
    if not dst.size:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(dst, kind="stable")
    sorted_dst = dst[order]
    start = np.r_[0, np.flatnonzero(np.diff(sorted_dst)) + 1]
    run_start = np.repeat(start, np.diff(np.r_[start, dst.size]))
    rank = np.empty(dst.size, dtype=np.int64)
    rank[order] = np.arange(dst.size) - run_start
    return rank


def pairwise_merge(
    params: Tensor, age: Tensor, src: np.ndarray, dst: np.ndarray, mode: str, received: Tensor | None = None
) -> None:
    """Push-pull exchanges in message order (in place): both ends of each pair merge.

    ``average``: both take ``(w_s + w_d) / 2``; ``age``: both take the age-weighted mean and
    the larger age. ``received`` (D, P), if given, is what the wire decodes of each model
    (a lossy encoding); a device's own copy is exact.
    """
    for s_, d_ in zip(np.asarray(src).tolist(), np.asarray(dst).tolist()):
        ws, wd = params[s_].clone(), params[d_].clone()
        rs = ws if received is None else received[s_]
        rd = wd if received is None else received[d_]
        if mode == "age":
            m_d, a = merge_age(wd[None], age[d_ : d_ + 1], rs[None], age[s_ : s_ + 1])
            m_s, _ = merge_age(ws[None], age[s_ : s_ + 1], rd[None], age[d_ : d_ + 1])
            params[d_], params[s_] = m_d[0], m_s[0]
            age[s_] = age[d_] = a[0]
        else:
            params[d_] = (wd + rs) / 2.0
            params[s_] = (ws + rd) / 2.0
