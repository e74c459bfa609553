"""Readers of the datasets' standard file formats: ``.npz`` archives, gzip'd IDX files (MNIST,
Fashion-MNIST) and the CIFAR-10 python batches (pickles, read by a restricted unpickler).

Each returns raw numpy arrays exactly as stored; :mod:`tinytwin.data.datasets` turns them
into a :class:`~tinytwin.data.datasets.Dataset`. Every malformed file becomes one
:class:`~tinytwin.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.errors import DataError

#: The four standard IDX files of MNIST and Fashion-MNIST, in (x_train, y_train, x_test, y_test) order.
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte data, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte data, 1 dimension


def read_npz(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the arrays ``required`` from ``path``; any defect becomes one ``DataError``.

    ``allow_pickle=False`` because an ``.npz`` from the internet must not run code.
    The broad ``except`` is deliberate: a damaged zip can fail in ``zipfile``, ``zlib``,
    numpy's header parser or with ``EOFError`` depending on where it is cut, and the
    user needs the same answer for all of them.
    """
    try:
        # Open the file ourselves: np.load(path) leaks the handle when the zip is unreadable.
        with open(path, "rb") as fh:
            if fh.read(4)[:2] != b"PK":
                raise DataError(f"{path}: not an .npz file (an .npz is a zip archive of .npy arrays)")
            fh.seek(0)
            npz = np.load(fh, allow_pickle=False)
            missing = [k for k in required if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {', '.join(missing)}; expected {', '.join(required)} "
                    f"(found: {', '.join(npz.files) or 'none'})"
                )
            arrays = {k: npz[k] for k in required}
            npz.close()
            return arrays
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - see docstring
        raise DataError(f"{path}: cannot read .npz file ({type(exc).__name__}: {exc}); the file is corrupt") from exc


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST IDX


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one gzip'd IDX file (big-endian magic + dimension sizes, then uint8 data).

    Parsed by hand (gzip + numpy) rather than via torchvision so the data layer has no
    heavy dependency; the magic number and the exact byte count are checked because a
    swapped or truncated file would otherwise load as silently wrong images.
    """
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc}); it is corrupt or truncated") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: bad IDX magic number 0x{found:08x}; expected 0x{magic:08x} ({kind} file)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_set(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    magics = (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC)
    x_tr, y_tr, x_te, y_te = (read_idx(folder / f, m) for f, m in zip(IDX_FILES, magics))
    return x_tr, y_tr, x_te, y_te


# --------------------------------------------------------------------------- CIFAR-10 python batches


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays and plain containers.

    The CIFAR-10 python batches are pickles, and unpickling runs arbitrary callables
    named in the file. Allowing exactly what the batches use (``_reconstruct``,
    ``ndarray``, ``dtype`` and builtin containers) makes a tampered file fail loudly
    instead of executing code.
    """

    # ndarray.__reduce__ hands back numpy's _reconstruct itself: no import of the private
    # module, which moved from numpy.core to numpy._core in numpy 2.
    _RECONSTRUCT: Callable[..., Any] = np.empty(0).__reduce__()[0]  # type: ignore[assignment]
    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("builtins", "dict"): dict,
        ("builtins", "list"): list,
        ("builtins", "bytes"): bytes,
        ("builtins", "str"): str,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays and plain containers are allowed"
            ) from None


def restricted_load(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(f"{path}: cannot read CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc


def batch_field(batch: dict[Any, Any], key: str) -> Any:
    # Python 2 pickles read with encoding="bytes" have bytes keys; re-pickled ones may have str keys.
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', got {type(batch).__name__}")
    data, labels = batch_field(batch, "data"), batch_field(batch, "labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path}: missing 'data' array or 'labels' list")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}; expected uint8 (N, 3072)")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: 'labels' is not a list of integers ({exc})") from exc
    # Rows are 1024 red, 1024 green, 1024 blue values in row-major order: exactly (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), y
