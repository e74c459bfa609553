"""The firmware's C training library (``firmware/lib``) built for the host, bound with ctypes.

Why: the firmware twin must train exactly like the simulator. Building the very same C
sources for the host lets tests compare them with PyTorch on identical weights and batches
in milliseconds, without an emulator. The shared library is cached under
``<cache>/firmware/host-<hash>/libttnn.so`` (``<cache>``: :func:`tinytwin.cache.cache_dir`),
keyed by the sources, the flags and the compiler's version, so an edit rebuilds it and
concurrent processes never see a half-written file (build to a temporary name, then rename).

``-ffp-contract=off`` keeps the compiler from fusing multiply-adds, so host results do not
depend on the machine's FMA support.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import tinytwin.cache as cache
from tinytwin.errors import TinyTwinError

__all__ = [
    "CFLAGS",
    "HostMLP",
    "arena_bytes",
    "build_library",
    "expf",
    "firmware_dir",
    "gist_accumulate",
    "gist_merge",
    "init_status",
    "load",
    "logf",
    "mix",
    "pack_bitmap",
    "param_count",
]

CFLAGS: tuple[str, ...] = (
    "-std=c99",
    "-pedantic",
    "-O2",
    "-fPIC",
    "-shared",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-ffp-contract=off",
)
_LIB_NAME = "libttnn.so"
_F32P = ctypes.POINTER(ctypes.c_float)
_I32P = ctypes.POINTER(ctypes.c_int32)
_ARENA_LOCK = threading.Lock()  # the C arena is one static object: set-up must not interleave


def firmware_dir() -> Path:
    """``firmware/`` of the checkout this package runs from (sources are not installed with the wheel)."""
    root = Path(__file__).resolve().parents[3] / "firmware"
    if not (root / "lib").is_dir() or not (root / "include" / "tt_nn.h").is_file():
        raise TinyTwinError(
            f"the firmware sources are not at {root}; the firmware twin needs a source "
            "checkout of tinytwin (pip install -e .)"
        )
    return root


def _compiler() -> str:
    name = os.environ.get("CC", "").strip() or "cc"
    found = shutil.which(name) or (shutil.which("gcc") if name == "cc" else None)
    if found is None:
        raise TinyTwinError(
            f"no C compiler found ({name!r} is not on PATH); the firmware twin builds its C "
            "library with the system compiler: install the 'gcc' package (apt-get install gcc)"
        )
    return found


def build_library(force: bool = False) -> Path:
    """Compile ``firmware/lib/*.c`` into a cached shared library and return its path."""
    fw = firmware_dir()
    sources = sorted((fw / "lib").glob("*.c"))
    headers = sorted((fw / "include").glob("*.h"))
    cc = _compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as exc:
        raise TinyTwinError(f"C compiler {cc} cannot run ({exc}); install the 'gcc' package") from exc
    digest = hashlib.sha256()
    for part in (cc, version, *CFLAGS):
        digest.update(part.encode() + b"\0")
    for path in (*sources, *headers):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    out = cache.cache_dir() / "firmware" / f"host-{digest.hexdigest()[:16]}" / _LIB_NAME
    if out.is_file() and not force:
        return out
    cache.prepare(out.parent)
    fd, tmp = tempfile.mkstemp(prefix=".libttnn-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cc, *CFLAGS, f"-I{fw / 'include'}", *map(str, sources), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise TinyTwinError(f"building the firmware library failed ({' '.join(cmd)}):\n{proc.stderr.strip()}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


MAX_LAYERS = 8  # TT_MAX_LAYERS of tt_nn.h; load() checks that the header agrees


def _header_max_layers(fw: Path) -> int:
    found = re.search(r"#define\s+TT_MAX_LAYERS\s+(\d+)", (fw / "include" / "tt_nn.h").read_text())
    return int(found.group(1)) if found else -1


class _Dense(ctypes.Structure):
    _fields_ = [
        ("n_in", ctypes.c_int32),
        ("n_out", ctypes.c_int32),
        ("relu", ctypes.c_int32),
        ("w", _F32P),
        ("b", _F32P),
        ("gw", _F32P),
        ("gb", _F32P),
    ]


class _MLP(ctypes.Structure):
    """Mirror of ``tt_mlp`` (tt_nn.h); ctypes lays it out with the C compiler's alignment rules."""

    _fields_ = [
        ("n_layers", ctypes.c_int32),
        ("batch_max", ctypes.c_int32),
        ("n_params", ctypes.c_int32),
        ("layer", _Dense * MAX_LAYERS),
        ("params", _F32P),
        ("grads", _F32P),
        ("momentum", _F32P),
        ("act", _F32P * (MAX_LAYERS + 1)),
        ("delta", _F32P * 2),
    ]


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "tt_arena_init": (None, [ctypes.c_void_p, ctypes.c_size_t]),
    "tt_arena_alloc": (ctypes.c_void_p, [ctypes.c_size_t]),
    "tt_arena_used": (ctypes.c_size_t, []),
    "tt_arena_peak": (ctypes.c_size_t, []),
    "tt_arena_size": (ctypes.c_size_t, []),
    "tt_arena_reset": (None, []),
    "tt_expf": (ctypes.c_float, [ctypes.c_float]),
    "tt_logf": (ctypes.c_float, [ctypes.c_float]),
    "tt_mlp_param_count": (ctypes.c_int32, [ctypes.c_int32, _I32P]),
    "tt_mlp_arena_bytes": (ctypes.c_size_t, [ctypes.c_int32, _I32P, ctypes.c_int32, ctypes.c_int32]),
    "tt_mlp_init": (ctypes.c_int, [ctypes.POINTER(_MLP), ctypes.c_int32, _I32P, _I32P, ctypes.c_int32, ctypes.c_int32]),
    "tt_mlp_forward": (_F32P, [ctypes.POINTER(_MLP), _F32P, ctypes.c_int32]),
    "tt_mlp_loss_backward": (ctypes.c_float, [ctypes.POINTER(_MLP), _F32P, _I32P, ctypes.c_int32]),
    "tt_mlp_reset_optimizer": (None, [ctypes.POINTER(_MLP)]),
    "tt_mlp_sgd_step": (None, [ctypes.POINTER(_MLP), ctypes.c_float, ctypes.c_float, ctypes.c_float]),
    "tt_mlp_correct": (ctypes.c_int32, [ctypes.POINTER(_MLP), _F32P, _I32P, ctypes.c_int32]),
    "tt_mix": (None, [_F32P, ctypes.POINTER(_F32P), _F32P, ctypes.c_int32, ctypes.c_int32]),
    "tt_gist_accumulate": (None, [_F32P, _F32P, ctypes.c_float, ctypes.POINTER(ctypes.c_uint8), _F32P, ctypes.c_int32]),
    "tt_gist_merge": (None, [_F32P, _F32P, _F32P, ctypes.c_float, ctypes.c_int32]),
}


@functools.cache
def load() -> ctypes.CDLL:
    """The host build of the library (built on first use), with every function's signature set."""
    if _header_max_layers(firmware_dir()) != MAX_LAYERS:
        raise TinyTwinError(
            f"firmware/include/tt_nn.h's TT_MAX_LAYERS is not {MAX_LAYERS}; update "
            "tinytwin.firmware.hostlib.MAX_LAYERS (the ctypes mirror of tt_mlp)"
        )
    lib = ctypes.CDLL(str(build_library()))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


# ---------------------------------------------------------------------------------- helpers


def _f32(a: np.ndarray | Sequence[float]) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _fptr(a: np.ndarray) -> ctypes._Pointer:  # type: ignore[type-arg]
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data_as(_F32P)


def _i32(values: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int32)


def _iptr(a: np.ndarray) -> ctypes._Pointer:  # type: ignore[type-arg]
    assert a.dtype == np.int32 and a.flags.c_contiguous
    return a.ctypes.data_as(_I32P)


def _relu_flags(sizes: Sequence[int], relu: Sequence[bool] | None) -> np.ndarray:
    n = len(sizes) - 1
    return _i32([i < n - 1 for i in range(n)] if relu is None else [bool(r) for r in relu])


def param_count(sizes: Sequence[int]) -> int:
    s = _i32(sizes)
    return int(load().tt_mlp_param_count(len(s) - 1, _iptr(s)))


def arena_bytes(sizes: Sequence[int], batch_max: int, momentum: bool = True) -> int:
    """``tt_mlp_arena_bytes``: what :class:`HostMLP` (and the firmware) allocate for the model."""
    s = _i32(sizes)
    return int(load().tt_mlp_arena_bytes(len(s) - 1, _iptr(s), batch_max, int(momentum)))


def _aligned_buffer(nbytes: int) -> tuple[np.ndarray, int]:
    """A byte buffer and an 8-byte aligned address inside it with ``nbytes`` usable."""
    buf = np.zeros(nbytes + 8, dtype=np.uint8)
    addr = buf.ctypes.data
    return buf, addr + (-addr) % 8


def init_status(
    sizes: Sequence[int], relu: Sequence[bool] | None, batch_max: int, momentum: bool, arena_size: int
) -> tuple[int, int, int]:
    """Run ``tt_mlp_init`` in an arena of exactly ``arena_size`` bytes: (return code, used, peak)."""
    lib = load()
    s, r = _i32(sizes), _relu_flags(sizes, relu)
    buf, addr = _aligned_buffer(arena_size)
    m = _MLP()
    with _ARENA_LOCK:
        lib.tt_arena_init(addr, arena_size)
        rc = lib.tt_mlp_init(ctypes.byref(m), len(s) - 1, _iptr(s), _iptr(r), batch_max, int(momentum))
        out = int(rc), int(lib.tt_arena_used()), int(lib.tt_arena_peak())
    del buf
    return out


# ---------------------------------------------------------------------------------- the model


class HostMLP:
    """A ``tt_mlp`` in its own arena: numpy in, numpy out.

    ``sizes`` are the layer widths (inputs first), ``relu[i]`` whether layer i is followed by
    ReLU (default: every hidden layer). :attr:`params`, :attr:`grads` and :attr:`momentum_buffer`
    are live numpy views of the C buffers (ParamLayout order). A batch is a (n, sizes[0]) array,
    or an int n: the first n rows of :attr:`input_buffer` (the model's own input buffer, as the
    firmware client uses it).
    """

    def __init__(
        self, sizes: Sequence[int], relu: Sequence[bool] | None = None, batch_max: int = 32, momentum: bool = True
    ) -> None:
        self._lib = load()
        self.sizes = [int(s) for s in sizes]
        self.batch_max = int(batch_max)
        self.arena_bytes = arena_bytes(self.sizes, self.batch_max, momentum)
        if self.arena_bytes == 0:
            raise ValueError(
                f"invalid MLP shape sizes={self.sizes} batch_max={batch_max} (1..{MAX_LAYERS} layers, positive widths)"
            )
        self._buf, addr = _aligned_buffer(self.arena_bytes)
        s, r = _i32(self.sizes), _relu_flags(self.sizes, relu)
        self._m = _MLP()
        with _ARENA_LOCK:
            self._lib.tt_arena_init(addr, self.arena_bytes)
            rc = self._lib.tt_mlp_init(
                ctypes.byref(self._m), len(s) - 1, _iptr(s), _iptr(r), self.batch_max, int(momentum)
            )
            self.arena_used = int(self._lib.tt_arena_used())
        if rc != 0:
            raise ValueError(f"tt_mlp_init refused sizes={self.sizes} relu={r.tolist()} (ReLU on the logits?)")
        n = self._m.n_params
        self.params = np.ctypeslib.as_array(self._m.params, shape=(n,))
        self.grads = np.ctypeslib.as_array(self._m.grads, shape=(n,))
        self.momentum_buffer = np.ctypeslib.as_array(self._m.momentum, shape=(n,)) if momentum else None
        # act[0]: the firmware client reads a batch straight into it and passes it as x (no copy)
        self.input_buffer = np.ctypeslib.as_array(self._m.act[0], shape=(self.batch_max, self.sizes[0]))

    @property
    def n_params(self) -> int:
        return int(self._m.n_params)

    def set_params(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, dtype=np.float32).reshape(-1)
        if flat.size != self.n_params:
            raise ValueError(f"expected {self.n_params} parameters, got {flat.size}")
        self.params[:] = flat

    def _batch(self, x: np.ndarray | int) -> tuple[ctypes._Pointer, int, np.ndarray]:  # type: ignore[type-arg]
        """Pointer and size of a batch; an int n means "the first n rows of :attr:`input_buffer`"."""
        if isinstance(x, (int, np.integer)):
            if not 1 <= x <= self.batch_max:
                raise ValueError(f"batch of {x} samples; batch_max is {self.batch_max}")
            return self._m.act[0], int(x), self.input_buffer
        arr = _f32(x).reshape(len(x), -1)
        if arr.shape[1] != self.sizes[0] or not 1 <= len(arr) <= self.batch_max:
            raise ValueError(f"batch of shape {arr.shape}; expected (1..{self.batch_max}, {self.sizes[0]})")
        return _fptr(arr), len(arr), arr  # the array is returned to keep it alive during the call

    def _labels(self, y: np.ndarray, n: int) -> np.ndarray:
        yy = _i32(y)
        if len(yy) != n or yy.min() < 0 or yy.max() >= self.sizes[-1]:
            raise ValueError("labels must be one per sample, in [0, classes)")
        return yy

    def forward(self, x: np.ndarray | int) -> np.ndarray:
        """Logits (a copy) of the batch ``x``."""
        ptr, n, _keep = self._batch(x)
        out = self._lib.tt_mlp_forward(ctypes.byref(self._m), ptr, n)
        return np.ctypeslib.as_array(out, shape=(n, self.sizes[-1])).copy()

    def loss_backward(self, x: np.ndarray | int, y: np.ndarray) -> float:
        """Fill :attr:`grads` with d(mean CE)/d(params); return the batch's summed CE."""
        ptr, n, _keep = self._batch(x)
        yy = self._labels(y, n)
        return float(self._lib.tt_mlp_loss_backward(ctypes.byref(self._m), ptr, _iptr(yy), n))

    def correct(self, x: np.ndarray | int, y: np.ndarray) -> int:
        """Correct argmax predictions (first maximum wins, like torch.argmax)."""
        ptr, n, _keep = self._batch(x)
        yy = self._labels(y, n)
        return int(self._lib.tt_mlp_correct(ctypes.byref(self._m), ptr, _iptr(yy), n))

    def sgd_step(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self._lib.tt_mlp_sgd_step(ctypes.byref(self._m), lr, momentum, weight_decay)

    def reset_optimizer(self) -> None:
        self._lib.tt_mlp_reset_optimizer(ctypes.byref(self._m))


# ---------------------------------------------------------------------------------- merges and math


def mix(models: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``tt_mix``: Σ_k weights[k]·models[k] (a new float32 vector)."""
    ms = [_f32(m).reshape(-1) for m in models]
    w = _f32(weights)
    if len(ms) != len(w) or not ms or any(m.size != ms[0].size for m in ms):
        raise ValueError("mix needs one weight per model and models of equal length")
    out = np.empty_like(ms[0])
    ptrs = (_F32P * len(ms))(*[_fptr(m) for m in ms])
    load().tt_mix(_fptr(out), ptrs, _fptr(w), len(ms), out.size)
    return out


def pack_bitmap(mask: np.ndarray) -> np.ndarray:
    """The wire ``bitmap`` encoding of a boolean mask: bit j is bit ``j % 8`` of byte ``j // 8``."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1), bitorder="little")


def gist_accumulate(r: np.ndarray, phi: np.ndarray, a: float, bitmap: np.ndarray, values: np.ndarray) -> None:
    """``tt_gist_accumulate`` in place on float32 ``r`` and ``phi``; ``values`` are the set positions' values."""
    n = r.size
    bits = np.ascontiguousarray(bitmap, dtype=np.uint8)
    v = _f32(values).reshape(-1)
    if bits.size != (n + 7) // 8 or phi.size != n:
        raise ValueError("bitmap must hold ceil(n/8) bytes and phi n values")
    if v.size != int(np.unpackbits(bits, bitorder="little")[:n].sum()):
        raise ValueError("values must hold one value per set bit")
    load().tt_gist_accumulate(_fptr(r), _fptr(phi), a, bits.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), _fptr(v), n)


def gist_merge(own: np.ndarray, a_local: float, segments: Sequence[tuple[float, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Accumulate every (weight, values, mask) segment, then ``tt_gist_merge``: the firmware's
    version of :func:`tinytwin.algorithms.gist.merge_reference` (values are full-length, read at the mask)."""
    w = _f32(own).reshape(-1).copy()
    r, phi = np.zeros_like(w), np.zeros_like(w)
    for a, values, mask in segments:
        m = np.asarray(mask, dtype=bool).reshape(-1)
        gist_accumulate(r, phi, float(a), pack_bitmap(m), _f32(values).reshape(-1)[m])
    load().tt_gist_merge(_fptr(w), _fptr(r), _fptr(phi), a_local, w.size)
    return w


def expf(x: np.ndarray) -> np.ndarray:
    """``tt_expf`` element by element (for accuracy tests)."""
    fn = load().tt_expf
    return np.array([fn(float(v)) for v in _f32(x).reshape(-1)], dtype=np.float32)


def logf(x: np.ndarray) -> np.ndarray:
    """``tt_logf`` element by element (for accuracy tests)."""
    fn = load().tt_logf
    return np.array([fn(float(v)) for v in _f32(x).reshape(-1)], dtype=np.float32)
