"""Gist for one device, in numpy only: bands, segment choice, payload and merge (no torch).

:mod:`tinytwin.algorithms.gist` is the definition the simulator runs over ``(D, P)`` torch
matrices; a device process of the emulation twin must not import torch
(docs/emulation.md), so this module holds the parts of Gist that one device needs, as the
same formulas over one flat float32 vector. The wire payload (:func:`payload_size`,
:func:`encode_payload`, :func:`decode_payload`) and :func:`band_bounds` live *only* here and
are re-exported by :mod:`tinytwin.algorithms.gist`; the rest is checked against the torch
originals by tests (tests/test_emulate_dfl.py): same bands, same probabilities to float64
rounding, the same band for the same uniform draw, the merge of :func:`merge_reference`.

Random streams, as the simulator draws them in round (or tick) ``key``:

- the band of a send: ``u = stream_rng(seed, BANDS, key, 0).random(M)`` over the round's M
  messages in the simulator's order (sender by sender, ``sends`` each); a device whose
  first message is message ``offset`` draws its own ``u`` after advancing the generator by
  ``offset`` (:func:`send_uniforms`; one 64-bit output per double);
- SDFA's random segments: ``stream_rng(seed, BANDS, key, 1).random((len(ids), P))``; the
  device that is row ``row`` of the round's senders draws its own row the same way
  (:func:`random_order`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from tinytwin.rng import Stream, stream_rng
from tinytwin.wire.encoding import decode, encode, encoded_size

__all__ = [
    "band_bounds",
    "band_importance",
    "band_order",
    "choose_bands",
    "decode_payload",
    "encode_payload",
    "merge",
    "payload_size",
    "random_order",
    "segment_mask",
    "selection_probabilities",
    "send_uniforms",
    "validation_indices",
]

_ACC = struct.Struct("<f")
SELECTIONS = ("proportional", "softmax", "uniform")


def band_bounds(num_params: int, segments: int) -> np.ndarray:
    """Rank boundaries of ``S`` equal-count bands: band i holds ranks ``[ceil(iP/S), ceil((i+1)P/S))``."""
    s = max(1, min(segments, num_params))
    return np.array([-(-i * num_params // s) for i in range(s + 1)], dtype=np.int64)


def validation_indices(seed: int, num_test: int, size: int) -> np.ndarray:
    """The shared validation set: ``size`` test-set positions drawn once (sorted)."""
    n = min(int(size), int(num_test))
    return np.sort(stream_rng(seed, Stream.VALIDATION).permutation(int(num_test))[:n])


# ---------------------------------------------------------------------------------- bands


def band_order(params: np.ndarray) -> np.ndarray:
    """Parameter indices sorted by increasing ``|w|``, ties by index (``torch.sort(stable=True)``)."""
    return np.argsort(np.abs(np.asarray(params, dtype=np.float32)), kind="stable")


def random_order(seed: int, key: int, row: int, num_params: int) -> np.ndarray:
    """SDFA: row ``row`` of the simulator's ``argsort(rng.random((D, P)))`` for round ``key``."""
    rng = stream_rng(seed, Stream.BANDS, key, 1)
    rng.bit_generator.advance(int(row) * int(num_params))  # type: ignore[attr-defined]  # PCG64 has it
    return np.argsort(rng.random(int(num_params)), kind="stable")


def band_importance(params: np.ndarray, order: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(S,) mean ``|w|`` inside each band (float64 sums, float32 result as the simulator's)."""
    a = np.abs(np.asarray(params, dtype=np.float32))[order].astype(np.float64)
    cs = np.concatenate([[0.0], np.cumsum(a)])
    sums = cs[bounds[1:]] - cs[bounds[:-1]]
    counts = np.maximum(bounds[1:] - bounds[:-1], 1).astype(np.float64)
    return (sums / counts).astype(np.float32)


def selection_probabilities(
    importance: np.ndarray, mode: str = "proportional", base: float = math.e, drop_lowest: bool = False
) -> np.ndarray:
    """(S,) probability of sending each band (float64)."""
    imp = np.asarray(importance).astype(np.float64)
    if mode == "uniform":
        logits = np.zeros_like(imp)
    elif mode == "softmax":
        logits = imp.copy()
    elif mode == "proportional":
        logits = imp / max(float(imp.sum()), 1e-30) * math.log(base)
    else:
        raise ValueError(f"unknown selection {mode!r}; choose one of {', '.join(SELECTIONS)}")
    if drop_lowest and imp.size > 1:
        logits[0] = -math.inf
    e = np.exp(logits - logits.max())
    return e / e.sum()


def send_uniforms(seed: int, key: int, offset: int, count: int) -> np.ndarray:
    """Messages ``offset .. offset + count - 1`` of ``stream_rng(seed, BANDS, key, 0).random(M)``."""
    rng = stream_rng(seed, Stream.BANDS, key, 0)
    rng.bit_generator.advance(int(offset))  # type: ignore[attr-defined]  # PCG64 has it
    return rng.random(int(count))


def choose_bands(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The band of each send: the first band whose cumulative probability reaches ``u``."""
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
    u = np.asarray(u, dtype=np.float64)
    return np.minimum((u[:, None] > cdf[None, :]).sum(axis=1), len(cdf) - 1).astype(np.int64)


def segment_mask(order: np.ndarray, bounds: np.ndarray, band: int) -> np.ndarray:
    """Boolean mask of the parameters in ``band``."""
    mask = np.zeros(len(order), dtype=bool)
    mask[order[int(bounds[band]) : int(bounds[band + 1])]] = True
    return mask


# ---------------------------------------------------------------------------------- payload


def payload_size(num_params: int, nnz: int) -> int:
    """Bytes of :func:`encode_payload` for a segment of ``nnz`` of ``num_params`` values."""
    return _ACC.size + encoded_size(num_params, "bitmap", nnz=nnz)


def encode_payload(accuracy: float, values: np.ndarray, mask: np.ndarray) -> bytes:
    """Sender accuracy (float32 LE) + bitmap payload of ``values[mask]``."""
    return _ACC.pack(float(accuracy)) + encode(np.asarray(values, dtype=np.float32), "bitmap", mask=mask)


def decode_payload(payload: bytes, num_params: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_payload`: (accuracy, values with zeros off the mask, mask)."""
    if len(payload) < _ACC.size:
        raise ValueError(f"gist payload of {len(payload)} bytes is shorter than its 4-byte header")
    (acc,) = _ACC.unpack_from(payload)
    values, mask = decode(payload[_ACC.size :], "bitmap", num_params)
    assert mask is not None
    return float(acc), values, mask


# ---------------------------------------------------------------------------------- merge


def merge(own: np.ndarray, local_weight: float, segments: Sequence[tuple[float, np.ndarray, np.ndarray]]) -> np.ndarray:
    """``(r + a·w) / (φ + a)`` over received segments (float64; the local value where the
    denominator is 0 or nobody sent the coordinate). ``segments`` holds (sender weight,
    mask, values of the set positions in index order) — :func:`merge_reference` of
    :mod:`tinytwin.algorithms.gist`, vectorised."""
    w = np.asarray(own, dtype=np.float64)
    r = np.zeros_like(w)
    phi = np.zeros_like(w)
    for a, mask, vals in segments:
        r[mask] += float(a) * np.asarray(vals, dtype=np.float64)
        phi[mask] += float(a)
    den = phi + float(local_weight)
    ok = den > 0
    out = w.copy()
    out[ok] = (r[ok] + float(local_weight) * w[ok]) / den[ok]
    return out
