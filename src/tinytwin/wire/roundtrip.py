"""What a receiver decodes, computed in torch for a whole batch of vectors.

Kept apart from :mod:`tinytwin.wire.encoding` so that the encoders stay numpy-only: an
emulated device process imports them without loading torch. The simulator applies
:func:`roundtrip_torch` to every vector a server receives; a test holds it equal, bit for
bit, to ``decode(encode(row))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tinytwin.wire.encoding import FLOAT16_MAX, INT8_LEVELS, _check_encoding, _tensor_sizes

__all__ = ["roundtrip_torch"]


def roundtrip_torch(
    x: Tensor,
    encoding: str,
    *,
    tensor_sizes: Sequence[int] | None = None,
) -> Tensor:
    """What a receiver decodes, for a batch of vectors: ``decode(encode(row))`` per row.

    The simulator applies this to every vector a server receives, so that quantisation
    error is simulated with exactly (bit for bit) the values the emulator's receivers
    see. Runs on ``x``'s device, vectorised over rows.

    Args:
        x: ``(K, P)`` (or ``(P,)``) tensor; converted to float32 first, as :func:`encode`
            does.
        encoding: a dense encoding: ``float32``, ``float16`` or ``int8``.
        tensor_sizes: the model's tensor sizes (sum P), used by ``int8``.

    Returns:
        float32 tensor of ``x``'s shape. For ``float32`` this may be ``x`` itself (no
        copy), so treat it as read-only.

    Raises:
        ValueError: for ``bitmap`` (its mask is chosen by the sender; decode it instead),
            an unknown encoding, or tensor sizes that do not sum to P.
    """
    _check_encoding(encoding)
    if encoding == "bitmap":
        raise ValueError("roundtrip_torch handles dense encodings only; bitmap values are sent exactly")
    if x.dim() not in (1, 2):
        raise ValueError(f"x must be (K, P) or (P,), got shape {tuple(x.shape)}")
    xf = x.to(torch.float32)
    sizes = _tensor_sizes(xf.shape[-1], tensor_sizes)
    if encoding == "float32":
        return xf
    if encoding == "float16":
        return xf.clamp(-FLOAT16_MAX, FLOAT16_MAX).to(torch.float16).to(torch.float32)
    if xf.shape[-1] == 0:
        return xf.clone()
    rows = xf if xf.dim() == 2 else xf.unsqueeze(0)
    out = torch.cat([_int8_roundtrip_chunk(chunk) for chunk in rows.split(list(sizes), dim=1)], dim=1)
    return out if xf.dim() == 2 else out.squeeze(0)


def _int8_roundtrip_chunk(chunk: Tensor) -> Tensor:
    """int8 encode + decode of one tensor for every row of ``chunk`` (K, s), in float32."""
    amax = chunk.abs().amax(dim=1, keepdim=True)  # (K, 1); NaN propagates, as in numpy
    # Divide by a tensor, never a Python scalar: CUDA turns `t / scalar` into a multiply by
    # the reciprocal, which can differ in the last bit from numpy's (and C's) true division.
    scale = amax / torch.full_like(amax, float(INT8_LEVELS))
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    scaled = chunk / scale
    scaled = torch.where(torch.isfinite(scaled), scaled, torch.zeros_like(scaled))
    q = scaled.round_().clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return q.to(torch.float32) * scale
