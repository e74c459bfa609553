"""Image-classification datasets as plain numpy arrays.

Why numpy and not torch ``Dataset`` objects: the three twins (vectorised simulator,
one-process-per-device emulator, C firmware) all need the same samples, and the
partitioners slice them by index for thousands of devices. Flat ``float32`` arrays in
``(N, C, H, W)`` layout are the common denominator: torch wraps them without a copy
(``torch.from_numpy``), the emulator ships slices to worker processes, and the firmware
exporter quantises them directly.

Where the data comes from, and why it is never downloaded:

- ``digits`` ships inside scikit-learn, so every install has a working default.
- ``mnist``, ``fashion-mnist`` and ``cifar10`` are read from a local folder (``data_dir``
  or ``$TINYTWIN_DATA``) in their standard file formats. Experiments must be reproducible
  offline and on machines without network access, so a missing file is a clear
  :class:`~tinytwin.errors.DataError` that says which files to put where, not a download.

Every malformed file also becomes a ``DataError`` naming the file and the problem: the
CLI prints it as one line instead of a traceback from ``zipfile`` or ``gzip``.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import tinytwin.cache as cache
from tinytwin.data import cifar100
from tinytwin.data.atomic_npy import save_atomic
from tinytwin.data.file_formats import (
    IDX_FILES,
    batch_field,
    read_cifar_batch,
    read_idx_set,
    read_npz,
    restricted_load,
)
from tinytwin.errors import DataError

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "Dataset",
    "FASHION_MNIST_CLASSES",
    "load_dataset",
    "resolve_data_dir",
]

DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar10-cat-vww", "cifar100")

DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files; searched last.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

CIFAR10_BATCH_DIR = "cifar-10-batches-py"
CIFAR10_BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_NPZ_ARRAYS = ("jpeg_bytes", "offsets", "labels", "is_test", "classes")

# The digits split used by the Flower comparison benchmarks: the last 297 samples are the test set.
_DIGITS_TEST_SIZE = 297

_ENV_DATA = "TINYTWIN_DATA"
_FIX_HINT = "set data_dir / $TINYTWIN_DATA"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of an image-classification dataset.

    Images are ``float32`` in ``[0, 1]`` with shape ``(N, C, H, W)``; labels are ``int64``.
    Frozen so a loaded dataset can be shared between engines without one of them
    swapping an array under the others. ``eq=False`` keeps identity comparison: the
    generated field-wise ``==`` would compare numpy arrays and raise, and hashing
    arrays is impossible anyway.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample — what the model zoo sizes its first layer for."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


# --------------------------------------------------------------------------- public API


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The folder to read dataset files from: ``data_dir`` if given, else ``$TINYTWIN_DATA``, else ``None``.

    The environment variable lets one machine-wide data folder serve every experiment
    file without hard-coding a path into specs that are shared between machines.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(_ENV_DATA, "").strip()
    return Path(env).expanduser() if env else None


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    test_size: int | None = None,
    digits_split: str = "shuffled",
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASET_NAMES`).

    ``data_dir`` (or ``$TINYTWIN_DATA``) is the folder holding the dataset files; ``digits``
    needs none; ``digits_split`` picks its test set (see :func:`_load_digits`). ``test_size`` keeps a fixed random subset (seed 0, in file order) of ``test_size`` test samples, so quick runs
    and tests do not pay for evaluating on the full test set.

    Raises :class:`DataError` for an unknown name, missing files or malformed files.
    """
    if test_size is not None:
        if isinstance(test_size, bool) or not isinstance(test_size, (int, np.integer)) or test_size < 0:
            raise ValueError(f"test_size must be a non-negative integer or None, got {test_size!r}")
        test_size = int(test_size)
    key = str(name).strip().lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    root = resolve_data_dir(data_dir)
    if key == "digits":
        return _load_digits(test_size, digits_split)
    if key == "mnist":
        return _load_mnist_like("mnist", root, DIGIT_CLASSES, test_size, extra_dirs=())
    if key == "fashion-mnist":
        return _load_mnist_like(
            "fashion-mnist", root, FASHION_MNIST_CLASSES, test_size, extra_dirs=(FASHION_MNIST_SYSTEM_DIR,)
        )
    if key == "cifar10-cat-vww":
        return _load_cifar10_cat_vww(root, test_size)
    if key == "cifar100":
        return _load_cifar100(root, test_size)
    return _load_cifar10(root, test_size)


def _load_cifar100(root: Path | None, test_size: int | None) -> Dataset:
    dirs = _search_dirs(root, "cifar100")
    folder = cifar100.find_folder(dirs)
    if folder is None:
        raise _missing_error("cifar100", "the python version: cifar-100-python/{train,test,meta}", root, dirs, [])
    return _finish("cifar100", *cifar100.read_folder(folder), str(folder), test_size)


def published_stand_in(name: str) -> Dataset | None:
    """A dataset with ``name``'s published shapes and class sizes but no pixels, for ``plan``
    when the files are absent (:func:`tinytwin.data.cifar100.published_layout`); None if
    tinytwin knows no published layout for it."""
    if name != "cifar100":
        return None
    x_train, y_train, x_test, y_test, classes = cifar100.published_layout()
    return Dataset("cifar100", x_train, y_train, x_test, y_test, len(classes), classes)


def is_stand_in(dataset: Dataset) -> bool:
    """Whether ``dataset`` came from :func:`published_stand_in` (its images are one broadcast zero)."""
    return len(dataset.x_train) > 1 and dataset.x_train.strides[0] == 0


def _load_cifar10_cat_vww(root: Path | None, test_size: int | None) -> Dataset:
    """TinyFedTL's task: balanced CIFAR-10 cat / not-cat as frozen VWW-MobileNet features.

    Shape (N, 256, 1, 1), so the model zoo's ``mlp`` with ``hidden: []`` is the 256 -> 2
    head. See :mod:`tinytwin.data.frozen_features`.
    """
    from tinytwin.data import frozen_features as ff

    cifar = _load_cifar10(root, None)
    model = ff.find_vww_model(_search_dirs(root, "vww"))
    xtr, ytr, xte, yte = ff.cat_features(
        cifar.x_train, cifar.y_train, cifar.x_test, cifar.y_test, model, cache.cache_dir()
    )
    if test_size is not None and test_size < len(yte):
        keep = np.sort(np.random.default_rng(0).permutation(len(yte))[:test_size])
        xte, yte = xte[keep], yte[keep]
    return Dataset(
        name="cifar10-cat-vww",
        x_train=xtr[:, :, None, None],
        y_train=ytr,
        x_test=xte[:, :, None, None],
        y_test=yte,
        num_classes=2,
        class_names=("not cat", "cat"),
    )


# --------------------------------------------------------------------------- shared helpers


def _finish(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: tuple[str, ...],
    source: str,
    test_size: int | None,
    *,
    scale: float = 255.0,
) -> Dataset:
    """Validate raw arrays from ``source`` and turn them into a :class:`Dataset`.

    Images arrive as ``(N, H, W)`` or ``(N, C, H, W)`` integers; they are scaled by
    ``1/scale`` to ``float32`` *after* the test cap, so capped loads do less work.
    Checks live here once, so every format gets the same guarantees (matching
    lengths, labels inside ``[0, num_classes)``, equal image shapes).
    """
    num_classes = len(class_names)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 3:
            x = x[:, None, :, :]
        if x.ndim != 4:
            raise DataError(f"{source}: x_{split} has shape {x.shape}; expected (N, H, W) or (N, C, H, W) images")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: y_{split} must be a 1-D integer label array, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{source}: {len(x)} {split} images but {len(y)} {split} labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(
                f"{source}: {split} labels span {int(y.min())}..{int(y.max())}; expected 0..{num_classes - 1}"
            )
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{source}: train images are {arrays['x_train'].shape[1:]} but test images are {arrays['x_test'].shape[1:]}"
        )
    if test_size is not None and test_size < len(arrays["y_test"]):
        # A fixed random subset (seed 0), kept in file order: test files such as CIFAR-10's
        # are sorted by class, so the first N samples would hold only a few classes.
        keep = np.sort(np.random.default_rng(0).permutation(len(arrays["y_test"]))[:test_size])
        arrays["x_test"] = arrays["x_test"][keep]
        arrays["y_test"] = arrays["y_test"][keep]
    return Dataset(
        name=name,
        # np.divide with dtype=float32: one allocation, correctly rounded (255/255 == 1.0 exactly).
        x_train=np.divide(arrays["x_train"], scale, dtype=np.float32),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=np.divide(arrays["x_test"], scale, dtype=np.float32),
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=num_classes,
        class_names=tuple(class_names),
    )


def _search_dirs(root: Path | None, subfolder: str, extra: tuple[Path, ...] = ()) -> list[Path]:
    dirs = [root, root / subfolder] if root is not None else []
    return [*dirs, *extra]


def _describe_dirs(dirs: list[Path]) -> str:
    if not dirs:
        return f"no folder searched (no data_dir given and ${_ENV_DATA} is not set)"
    return ", ".join(f"{d}{'' if d.is_dir() else ' (does not exist)'}" for d in dirs)


def _missing_error(name: str, expected: str, root: Path | None, dirs: list[Path], notes: list[str]) -> DataError:
    fix = f"put them in {root} or {_FIX_HINT}" if root is not None else f"put them in a folder and {_FIX_HINT} to it"
    msg = (
        f"{name}: data files not found. Expected {expected}. Searched: {_describe_dirs(dirs)}."
        + "".join(f" {n}." for n in notes)
        + f" Fix: {fix}."
    )
    return DataError(msg)


# --------------------------------------------------------------------------- digits


def _read_digits_table() -> np.ndarray:
    """scikit-learn's digits file (64 pixel values and the label per row), read directly.

    ``sklearn.datasets.load_digits`` reads this same file, but importing scikit-learn costs
    about a second of start-up; locating the file without importing the package does not.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the digits dataset comes with scikit-learn, which is not installed; "
            "install it with `pip install scikit-learn` (the quick start does)"
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read scikit-learn's digits file {path}: {exc}; reinstall scikit-learn") from None
    if table.shape != (1797, 65):
        raise DataError(f"scikit-learn's digits file {path} has shape {table.shape}, expected (1797, 65)")
    return table


def _load_digits(test_size: int | None, split_kind: str = "shuffled") -> Dataset:
    """scikit-learn's 8x8 digits: embedded in the package, so it always works offline.

    Two splits, both 1500 train / 297 test:

    - ``"shuffled"`` (default): the samples in a fixed random order (numpy seed 0), the last
      297 of that order are the test set. The file is ordered by writer, so its tail holds
      writers absent from the head; a shuffled split measures learning, not writer shift.
    - ``"last"``: the first 1500 samples train, the last 297 test, unshuffled — the split of
      the Flower comparison benchmark; an MLP 64-32-10 tops out near 92 % on it.
    """
    if split_kind not in ("shuffled", "last"):
        raise ValueError(f"digits split must be 'shuffled' or 'last', got {split_kind!r}")
    table = _read_digits_table()
    x = table[:, :-1].reshape(-1, 1, 8, 8)
    y = table[:, -1].astype(np.int64)
    if split_kind == "shuffled":
        order = np.random.default_rng(0).permutation(len(x))
        x, y = x[order], y[order]
    split = len(x) - _DIGITS_TEST_SIZE
    return _finish(
        "digits",
        x[:split],
        y[:split],
        x[split:],
        y[split:],
        DIGIT_CLASSES,
        "scikit-learn digits",
        test_size,
        scale=16.0,
    )


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST


def _load_mnist_like(
    name: str,
    root: Path | None,
    class_names: tuple[str, ...],
    test_size: int | None,
    *,
    extra_dirs: tuple[Path, ...],
) -> Dataset:
    """MNIST-format data from ``{name}.npz`` or the four IDX files, first match wins.

    Folders are searched in order ``root``, ``root/{name}``, then ``extra_dirs``; in each,
    the ``.npz`` is preferred (one file, fast to read) over the IDX set. A folder with only
    some of the IDX files is reported by name, since that is usually an interrupted copy.
    """
    npz_name = f"{name}.npz"
    dirs = _search_dirs(root, name, extra_dirs)
    notes: list[str] = []
    for folder in dirs:
        npz = folder / npz_name
        if npz.is_file():
            arr = read_npz(npz, ("x_train", "y_train", "x_test", "y_test"))
            for key in ("x_train", "x_test"):
                if arr[key].dtype != np.uint8:
                    raise DataError(f"{npz}: {key} has dtype {arr[key].dtype}; expected uint8 pixels 0..255")
            return _finish(
                name, arr["x_train"], arr["y_train"], arr["x_test"], arr["y_test"], class_names, str(npz), test_size
            )
        present = [f for f in IDX_FILES if (folder / f).is_file()]
        if len(present) == len(IDX_FILES):
            return _finish(name, *read_idx_set(folder), class_names, f"{name} IDX files in {folder}", test_size)
        if present:
            missing = [f for f in IDX_FILES if f not in present]
            notes.append(f"{folder} has only part of the IDX set, missing {', '.join(missing)}")
    expected = f"{npz_name}, or the four IDX files {', '.join(IDX_FILES)}"
    if FASHION_MNIST_SYSTEM_DIR in extra_dirs:
        notes.append("On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` also provides them")
    raise _missing_error(name, expected, root, dirs, notes)


# --------------------------------------------------------------------------- CIFAR-10


def _load_cifar_batches(folder: Path, test_size: int | None) -> Dataset:
    parts = [read_cifar_batch(folder / f) for f in CIFAR10_BATCH_FILES]
    x_train = np.concatenate([p[0] for p in parts[:-1]])
    y_train = np.concatenate([p[1] for p in parts[:-1]])
    x_test, y_test = parts[-1]
    class_names: tuple[str, ...] = CIFAR10_CLASSES
    meta_path = folder / "batches.meta"
    if meta_path.is_file():
        meta = restricted_load(meta_path)
        names = batch_field(meta, "label_names") if isinstance(meta, dict) else None
        if isinstance(names, list) and names:
            class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return _finish("cifar10", x_train, y_train, x_test, y_test, class_names, str(folder), test_size)


def _decode_jpegs(path: Path, jpeg_bytes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Decode every JPEG item to a ``(N, 3, 32, 32)`` uint8 array (≈ 10-20 s for 60 000).

    Single-threaded on purpose: each image is tiny, so Pillow's per-call Python overhead
    dominates and threads only add GIL contention (measured slower).
    """
    from PIL import Image

    n = len(offsets) - 1
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        try:
            with Image.open(io.BytesIO(jpeg_bytes[offsets[i] : offsets[i + 1]].tobytes())) as im:
                rgb = im.convert("RGB")
                if rgb.size != (32, 32):
                    raise DataError(f"{path}: JPEG item {i} is {rgb.size[0]}x{rgb.size[1]}; expected 32x32")
                out[i] = np.asarray(rgb)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad JPEG
            raise DataError(f"{path}: JPEG item {i} cannot be decoded ({type(exc).__name__}: {exc})") from exc
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _cache_path(npz: Path) -> Path:
    """The user-cache file for the decoded images of ``npz`` (never beside the data: see tinytwin.cache).

    Keyed on the file's size and mtime so replacing the ``.npz`` invalidates the cache
    without hashing 18 MB on every load; the name also carries a hash of the path, so two
    different ``cifar10.npz`` files never share an entry.
    """
    st = npz.stat()
    key = f"{st.st_size}-{st.st_mtime_ns}"
    path_hash = hashlib.sha1(str(npz.resolve()).encode()).hexdigest()[:12]
    return cache.cache_dir() / f"{npz.stem}-{path_hash}.decoded-{key}.npy"


def _load_cache(path: Path, n: int) -> np.ndarray | None:
    """The cached array if it exists and has the right shape; ``None`` means decode again."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception:  # noqa: BLE001 - a damaged cache is simply rebuilt
        return None
    if arr.dtype != np.uint8 or arr.shape != (n, 3, 32, 32):
        return None
    return arr


def _decoded_cifar_images(npz: Path, offsets: np.ndarray) -> np.ndarray:
    """Decoded images from the cache, or decode (reading the big ``jpeg_bytes`` only then) and cache."""
    n = len(offsets) - 1
    path = _cache_path(npz)
    cached = _load_cache(path, n)
    if cached is not None:
        return cached
    jpeg_bytes = read_npz(npz, ("jpeg_bytes",))["jpeg_bytes"]
    _check_jpeg_layout(npz, jpeg_bytes, offsets)
    images = _decode_jpegs(npz, jpeg_bytes, offsets)
    try:
        save_atomic(path, images)
    except OSError:
        pass  # an unwritable cache only costs decoding again next time
    return images


def _check_jpeg_layout(npz: Path, jpeg_bytes: np.ndarray, offsets: np.ndarray) -> None:
    if jpeg_bytes.ndim != 1 or jpeg_bytes.dtype != np.uint8:
        raise DataError(f"{npz}: jpeg_bytes is {jpeg_bytes.dtype} {jpeg_bytes.shape}; expected 1-D uint8")
    if (
        len(offsets) < 1
        or offsets[0] != 0
        or offsets[-1] != len(jpeg_bytes)
        or (len(offsets) > 1 and np.any(np.diff(offsets) <= 0))
    ):
        raise DataError(
            f"{npz}: offsets must rise strictly from 0 to len(jpeg_bytes)={len(jpeg_bytes)} "
            f"(got {offsets[:1].tolist()}..{offsets[-1:].tolist()})"
        )


def _load_cifar_npz(npz: Path, test_size: int | None) -> Dataset:
    meta = read_npz(npz, ("offsets", "labels", "is_test", "classes"))
    offsets, labels, is_test, classes = meta["offsets"], meta["labels"], meta["is_test"], meta["classes"]
    if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise DataError(f"{npz}: offsets is {offsets.dtype} {offsets.shape}; expected 1-D int64 of length N+1")
    n = len(offsets) - 1
    if labels.shape != (n,) or is_test.shape != (n,):
        raise DataError(
            f"{npz}: offsets describe {n} images but labels has shape {labels.shape} and is_test {is_test.shape}"
        )
    if is_test.dtype != np.bool_:
        raise DataError(f"{npz}: is_test has dtype {is_test.dtype}; expected bool")
    if classes.ndim != 1 or classes.dtype.kind != "U" or len(classes) == 0:
        raise DataError(
            f"{npz}: classes must be a 1-D unicode array of class names, got {classes.dtype} {classes.shape}"
        )
    images = _decoded_cifar_images(npz, offsets.astype(np.int64))
    return _finish(
        "cifar10",
        images[~is_test],
        labels[~is_test],
        images[is_test],
        labels[is_test],
        tuple(str(c) for c in classes),
        str(npz),
        test_size,
    )


def _load_cifar10(root: Path | None, test_size: int | None) -> Dataset:
    """CIFAR-10 from the python batches (lossless, preferred) or the JPEG ``cifar10.npz``.

    Searched in ``root`` and ``root/cifar10``; ``root`` may also be the batch folder itself.
    """
    dirs = _search_dirs(root, "cifar10")
    notes: list[str] = []
    for folder in dirs:
        for batch_dir in (folder / CIFAR10_BATCH_DIR, folder):
            present = [f for f in CIFAR10_BATCH_FILES if (batch_dir / f).is_file()]
            if len(present) == len(CIFAR10_BATCH_FILES):
                return _load_cifar_batches(batch_dir, test_size)
            if present:
                missing = [f for f in CIFAR10_BATCH_FILES if f not in present]
                notes.append(f"{batch_dir} has only part of the python batches, missing {', '.join(missing)}")
        npz = folder / "cifar10.npz"
        if npz.is_file():
            return _load_cifar_npz(npz, test_size)
    expected = (
        f"the folder {CIFAR10_BATCH_DIR}/ ({', '.join(CIFAR10_BATCH_FILES)}), "
        f"or cifar10.npz (JPEG format: arrays {', '.join(CIFAR10_NPZ_ARRAYS)})"
    )
    raise _missing_error("cifar10", expected, root, dirs, notes)
