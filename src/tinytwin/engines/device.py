"""Which torch device the batched engines compute on, from the spec's ``engine`` section.

The simulator's tensors (training data, the devices' models, aggregation, evaluation) live
on one torch device; round state and checkpoints stay on the CPU so that a run started on a
GPU can be resumed on a CPU and the database never holds device tensors.
"""

from __future__ import annotations

import torch

from tinytwin.errors import SpecError

#: Devices trained at once when the spec leaves ``engine.chunk_size`` unset. On a CPU a chunk's
#: weights stay in cache-sized pieces; a GPU needs tens of thousands of models to be busy.
DEFAULT_CHUNK = {"cpu": 2048, "cuda": 65536}

#: Decentralized algorithms whose whole round (training, mixing, evaluation) is device-generic:
#: one sparse ``W @ X`` over the (D, P) models. Gossip and Gist move single models between
#: per-device buffers and the hierarchical engine plans per cluster; those run on the CPU.
DEVICE_DECENTRALIZED = ("decfedavg", "serverfree")


def trains_batched(family: str, algorithm: str) -> bool:
    """Whether the engine trains every device through the device-generic batched trainer."""
    if family == "decentralized":
        return algorithm in DEVICE_DECENTRALIZED
    return family != "hierarchical"


def resolve_device(name: str | torch.device) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` as a torch device; a clear error when cuda is asked for but absent."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(
            "engine.device",
            f"{name!r} but torch {torch.__version__} sees no CUDA GPU; use cpu or auto",
        )
    device = torch.device(name)
    if device.type == "cuda":
        # TF32 (on by default for cuDNN convolutions) rounds inputs to 10 bits: CNN runs would
        # leave the CPU's results by ~1e-3 instead of float32 rounding.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


def engine_device(family: str, algorithm: str, name: str | torch.device) -> torch.device:
    """The device an engine of ``family`` running ``algorithm`` computes on: ``auto`` falls back
    to the CPU where the engine is CPU-only; an explicit ``cuda`` there is refused in one line."""
    device = resolve_device(name)
    if device.type == "cpu" or trains_batched(family, algorithm):
        return device
    if name == "auto":
        return torch.device("cpu")
    raise SpecError(
        "engine.device",
        f"{name!r}: {algorithm} runs on the CPU only (the FedAvg family, {' and '.join(DEVICE_DECENTRALIZED)} "
        "run on a GPU); use cpu or auto",
    )


#: ``engine.precision`` names and their torch dtypes.
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def training_dtype(family: str, algorithm: str, precision: str) -> torch.dtype:
    """The dtype local training holds weights and batches in: the engines that train through
    the batched trainer honour ``engine.precision``; the others are refused in one line."""
    if precision != "float32" and not trains_batched(family, algorithm):
        raise SpecError(
            "engine.precision",
            f"{precision!r}: {algorithm} trains in float32 only (the FedAvg family, "
            f"{' and '.join(DEVICE_DECENTRALIZED)} take a lower precision); use float32",
        )
    return PRECISIONS[precision]


def default_chunk(device: torch.device, chunk_size: int | None) -> int:
    """The spec's chunk size, or the device kind's default."""
    return chunk_size or DEFAULT_CHUNK.get(device.type, DEFAULT_CHUNK["cuda"])
