"""Payload encodings for model vectors on the wire.

The bytes the simulator *counts* must be the bytes the emulator *sends*, so message
sizes always come from this module (:func:`encoded_size` equals ``len(encode(...))``),
and the simulator degrades what a server receives with :func:`roundtrip_torch`, which
returns bit for bit what :func:`decode` of :func:`encode` would give. The byte layouts
(specified in ``docs/protocol.md``) are simple enough for C firmware:

``float32``
    ``n`` little-endian IEEE-754 binary32 values (``4n`` bytes).
``float16``
    ``n`` little-endian IEEE-754 binary16 values (``2n`` bytes), rounded to nearest-even.
    Values beyond the float16 range **saturate** to ``+-65504`` (as do ``+-Inf``) instead
    of overflowing to Inf, so a large but finite update stays finite; NaN stays NaN.
``int8``
    Symmetric per-tensor quantisation. ``tensor_sizes`` splits the flat vector into the
    model's tensors (default: one tensor). Per tensor: ``scale = max|x| / 127`` in float32
    (``1.0`` if that is 0) and ``q = clip(round_half_to_even(x / scale), -127, 127)``.
    Layout: all T scales (float32 LE), then all n int8 values (``4T + n`` bytes).
    Decoded value: ``q * scale`` in float32. A tensor containing NaN/Inf gets a
    non-finite scale and ``q = 0`` throughout, so it decodes to NaN and the receiver's
    finiteness check rejects the payload instead of accepting garbage.
``bitmap``
    Sparse: a bitmap of n bits (bit i is bit ``i % 8`` of byte ``i // 8``, LSB first;
    unused high bits of the last byte are 0), then the float32 LE values of the set
    positions in increasing index order (``ceil(n/8) + 4 nnz`` bytes).

All arithmetic is float32 and every division is a true IEEE division (never a multiply
by a reciprocal), which is what makes the numpy encoder, the torch twin and the C
firmware agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ENCODINGS", "decode", "encode", "encoded_size"]

ENCODINGS: tuple[str, ...] = ("float32", "float16", "int8", "bitmap")

FLOAT16_MAX = 65504.0
INT8_LEVELS = 127

_LE_F32 = np.dtype("<f4")
_LE_F16 = np.dtype("<f2")


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")


def _tensor_sizes(n: int, tensor_sizes: Sequence[int] | None) -> tuple[int, ...]:
    """Validated tensor split of a length-n vector (default: one tensor, none if n == 0)."""
    if tensor_sizes is None:
        return (n,) if n > 0 else ()
    sizes = tuple(int(s) for s in tensor_sizes)
    if any(s <= 0 for s in sizes):
        raise ValueError(f"tensor_sizes must be positive, got {list(sizes)}")
    if sum(sizes) != n:
        raise ValueError(f"tensor_sizes sum to {sum(sizes)} but the vector has {n} values")
    return sizes


def tensor_sizes_within(tensor_sizes: Sequence[int], offset: int, size: int) -> list[int]:
    """The sizes of the tensors that make up values ``offset .. offset + size`` of a vector split
    into ``tensor_sizes``: a slice that cuts through a tensor is refused, since per-tensor
    encodings (int8's scale) would then encode it differently than the whole vector."""
    out, at = [], 0
    for s in tensor_sizes:
        if offset <= at and at + s <= offset + size:
            out.append(int(s))
        elif at < offset + size and offset < at + s:
            raise ValueError(f"values {offset}..{offset + size} cut through a tensor of {s} values at {at}")
        at += s
    if sum(out) != size:
        raise ValueError(f"values {offset}..{offset + size} are not whole tensors of {list(tensor_sizes)}")
    return out


def encoded_size(
    n: int,
    encoding: str,
    *,
    tensor_sizes: Sequence[int] | None = None,
    nnz: int | None = None,
) -> int:
    """Payload bytes of ``encode`` for a vector of ``n`` values (always ``== len(encode(...))``).

    ``tensor_sizes`` matters for ``int8`` (one 4-byte scale per tensor); ``nnz``, the
    number of transmitted values, is required for ``bitmap``.
    """
    _check_encoding(encoding)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    sizes = _tensor_sizes(n, tensor_sizes)
    if encoding == "float32":
        return 4 * n
    if encoding == "float16":
        return 2 * n
    if encoding == "int8":
        return 4 * len(sizes) + n
    if nnz is None or not 0 <= nnz <= n:
        raise ValueError(f"bitmap size needs 0 <= nnz <= n={n}, got nnz={nnz}")
    return (n + 7) // 8 + 4 * nnz


def _int8_scales_np(values: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    bounds = np.cumsum((0,) + sizes)
    amax = np.array([np.max(np.abs(values[a:b])) for a, b in zip(bounds[:-1], bounds[1:])], dtype=np.float32)
    scales = amax / np.float32(INT8_LEVELS)
    scales[scales == 0] = np.float32(1.0)  # all zero (or max|x| underflows): any scale works
    return scales


def encode(
    values: np.ndarray,
    encoding: str,
    *,
    tensor_sizes: Sequence[int] | None = None,
    mask: np.ndarray | None = None,
) -> bytes:
    """Encode a flat vector as payload bytes (layouts in the module docstring).

    Args:
        values: 1-D array of n values; converted to float32 first.
        encoding: one of :data:`ENCODINGS`.
        tensor_sizes: the model's tensor sizes (sum n), used by ``int8``.
        mask: ``bitmap`` only, required: length-n boolean array of the positions to send;
            ``values`` is still the full length-n vector.

    Raises:
        ValueError: unknown encoding, wrong shapes, or a mask with a dense encoding.
    """
    _check_encoding(encoding)
    x = np.asarray(values, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    n = x.shape[0]
    sizes = _tensor_sizes(n, tensor_sizes)
    if encoding != "bitmap" and mask is not None:
        raise ValueError(f"mask is only valid for the bitmap encoding, not {encoding!r}")
    if encoding == "float32":
        return x.astype(_LE_F32).tobytes()
    if encoding == "float16":
        return np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(_LE_F16).tobytes()
    if encoding == "int8":
        if n == 0:
            return b""
        scales = _int8_scales_np(x, sizes)
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = x / np.repeat(scales, sizes)
        scaled[~np.isfinite(scaled)] = 0.0
        q = np.clip(np.rint(scaled), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
        return scales.astype(_LE_F32).tobytes() + q.tobytes()
    if mask is None:
        raise ValueError("the bitmap encoding needs a mask")
    m = np.asarray(mask)
    if m.dtype != np.bool_ or m.shape != (n,):
        raise ValueError(f"mask must be a boolean array of shape ({n},), got {m.dtype} {m.shape}")
    return np.packbits(m, bitorder="little").tobytes() + x[m].astype(_LE_F32).tobytes()


def _expect_len(payload: bytes, expected: int, encoding: str, n: int) -> None:
    if len(payload) != expected:
        raise ValueError(f"{encoding} payload for n={n}: expected {expected} bytes, got {len(payload)}")


def decode(
    payload: bytes,
    encoding: str,
    n: int,
    *,
    tensor_sizes: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a payload of ``n`` values; inverse of :func:`encode` up to its rounding.

    Returns:
        ``(values, mask)``: ``values`` is a writable float32 array of length n. For
        ``bitmap``, positions not in the mask are 0 and ``mask`` is the boolean mask;
        for dense encodings ``mask`` is ``None``.

    Raises:
        ValueError: unknown encoding, or a payload whose length disagrees with n and the
            encoding (the message names expected and actual length), or a bitmap with
            set bits past n.
    """
    _check_encoding(encoding)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    sizes = _tensor_sizes(n, tensor_sizes)
    buf = bytes(payload)
    if encoding in ("float32", "float16", "int8"):
        _expect_len(buf, encoded_size(n, encoding, tensor_sizes=sizes), encoding, n)
    if encoding == "float32":
        return np.frombuffer(buf, dtype=_LE_F32).astype(np.float32), None
    if encoding == "float16":
        return np.frombuffer(buf, dtype=_LE_F16).astype(np.float32), None
    if encoding == "int8":
        t = len(sizes)
        scales = np.frombuffer(buf, dtype=_LE_F32, count=t).astype(np.float32)
        q = np.frombuffer(buf, dtype=np.int8, offset=4 * t).astype(np.float32)
        with np.errstate(invalid="ignore"):
            return q * np.repeat(scales, sizes), None
    nbytes = (n + 7) // 8
    if len(buf) < nbytes:
        raise ValueError(f"bitmap payload for n={n}: expected at least {nbytes} bytes, got {len(buf)}")
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8, count=nbytes), bitorder="little")
    if bits[n:].any():
        raise ValueError(f"bitmap payload for n={n}: padding bits past position {n} are set")
    mask = bits[:n].astype(bool)
    nnz = int(mask.sum())
    _expect_len(buf, nbytes + 4 * nnz, encoding, n)
    out = np.zeros(n, dtype=np.float32)
    out[mask] = np.frombuffer(buf, dtype=_LE_F32, offset=nbytes)
    return out, mask
