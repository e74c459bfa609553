"""The host side of firmware protocol v1 (``firmware/include/tt_client.h``): pure functions.

The files a device reads (round.bin, data.bin, mix.bin, gist.bin) are built by
:func:`round_bytes`, :func:`data_bytes`, :func:`mix_bytes` and :func:`gist_bytes`; the files
it writes (update.bin, mixed.bin, merged.bin) are read by :func:`read_params`.  Also: the
modelled UART time of a transfer (:func:`serial_seconds`), the simulator's batch order of a
device (:func:`batch_order`) and the ``key=value`` fields of a reply line
(:func:`parse_fields`).  No processes here: :mod:`tinytwin.firmware.qemu` runs the devices.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.errors import TinyTwinError

PROTOCOL_VERSION = 1
MAGIC_ROUND, MAGIC_DATA, MAGIC_MIX, MAGIC_GIST = 0x31525454, 0x31445454, 0x314D5454, 0x31475454


class FirmwareError(TinyTwinError):
    """The device refused a command ("ERR <reason>"); it is still running."""


def f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype="<f4").reshape(-1)


def _i32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype="<i4").reshape(-1)


def round_bytes(
    params: np.ndarray,
    sizes: Sequence[int],
    relu: Sequence[bool],
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    order: np.ndarray,
) -> bytes:
    """round.bin. ``order``: (epochs, n_samples) positions into data.bin, epoch after epoch."""
    order = np.asarray(order)
    if order.ndim == 1:
        order = order.reshape(max(epochs, 1), -1) if epochs else order.reshape(0, -1)
    if order.shape[0] != epochs:
        raise ValueError(f"order has {order.shape[0]} epochs, expected {epochs}")
    n_samples = order.shape[1] if order.ndim == 2 else 0
    if len(relu) != len(sizes) - 1:
        raise ValueError("relu needs one flag per layer")
    head = struct.pack("<Ii", MAGIC_ROUND, len(sizes) - 1)
    head += _i32(sizes).tobytes() + _i32([int(bool(r)) for r in relu]).tobytes()
    head += struct.pack("<iiifff", epochs, batch_size, n_samples, lr, momentum, weight_decay)
    return head + f32(params).tobytes() + _i32(order).tobytes()


def data_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    """data.bin: the device's shard (x flattened per sample, integer labels)."""
    x = np.asarray(x).reshape(len(x), -1)
    return struct.pack("<Iii", MAGIC_DATA, x.shape[0], x.shape[1]) + f32(x).tobytes() + _i32(y).tobytes()


def mix_bytes(weights: Sequence[float], models: Sequence[np.ndarray]) -> bytes:
    """mix.bin: model 0 is the device's own."""
    ms = [f32(m) for m in models]
    if not ms or len(weights) != len(ms) or any(m.size != ms[0].size for m in ms):
        raise ValueError("mix needs one weight per model and models of equal length")
    return (
        struct.pack("<Iii", MAGIC_MIX, ms[0].size, len(ms)) + f32(weights).tobytes() + b"".join(m.tobytes() for m in ms)
    )


def gist_bytes(own: np.ndarray, a_local: float, segments: Sequence[tuple[float, np.ndarray, np.ndarray]]) -> bytes:
    """gist.bin. ``segments``: (sender weight a, values, mask) with full-length values and a
    boolean mask (the convention of :func:`tinytwin.algorithms.gist.merge_reference`)."""
    w = f32(own)
    parts = [struct.pack("<Iiif", MAGIC_GIST, w.size, len(segments), a_local), w.tobytes()]
    for a, values, mask in segments:
        m = np.asarray(mask, dtype=bool).reshape(-1)
        if m.size != w.size:
            raise ValueError("each segment's mask must cover every parameter")
        vals = f32(values)
        vals = vals[m] if vals.size == w.size else vals
        if vals.size != int(m.sum()):
            raise ValueError("values must be full-length or one per set mask bit")
        bitmap = np.packbits(m, bitorder="little")
        parts += [struct.pack("<f", a), bitmap.tobytes(), struct.pack("<i", vals.size), vals.tobytes()]
    return b"".join(parts)


def read_params(path: Path, n_params: int) -> np.ndarray:
    """An output file (update.bin, mixed.bin, merged.bin): ``n_params`` float32."""
    return params_from(Path(path).read_bytes(), Path(path).name, n_params)


def params_from(raw: bytes, name: str, n_params: int) -> np.ndarray:
    if len(raw) != 4 * n_params:
        raise FirmwareError(f"{name} holds {len(raw)} B, expected {4 * n_params} B")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def serial_seconds(nbytes: int, baud: float, bits_per_byte: int = 10) -> float:
    """Modelled time of ``nbytes`` on a real UART: 8N1 frames are 10 bits a byte (start, 8
    data, stop), so 2056 B (514 float32) at 9600 baud take 2.14 s.  Pure: no flow-control
    gaps, no protocol turn-arounds."""
    if baud <= 0:
        raise ValueError("baud must be positive")
    return nbytes * bits_per_byte / baud


def batch_order(seed: int, round_: int, device: int, n_samples: int, epochs: int) -> np.ndarray:
    """The simulator's batch order of one device and round: (epochs, n_samples) positions."""
    from tinytwin.rng import device_permutations

    rows = [device_permutations(seed, round_, e, np.array([device]), np.array([n_samples]))[0] for e in range(epochs)]
    return np.array(rows, dtype=np.int32).reshape(epochs, n_samples)


def parse_fields(line: str) -> dict[str, str]:
    """``key=value`` tokens of a reply or fault line."""
    return dict(tok.split("=", 1) for tok in line.split() if "=" in tok)


def param_count(sizes: Sequence[int]) -> int:
    return sum(int(sizes[i]) * int(sizes[i + 1]) + int(sizes[i + 1]) for i in range(len(sizes) - 1))
