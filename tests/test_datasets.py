"""Tests for tinytwin.data.datasets: the four loaders, their file formats and their errors.

Real files come from the shared offline data folder next to the repository checkout
(``<repo>/../shared/data``). CIFAR-10 is tested on small files built in ``tmp_path``
(a few JPEG items of the real npz, tiny pickled batches) so the suite stays fast.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytwin.data import datasets
from tinytwin.data.datasets import (
    CIFAR10_CLASSES,
    DATASET_NAMES,
    FASHION_MNIST_CLASSES,
    IDX_FILES,
    Dataset,
    load_dataset,
    resolve_data_dir,
)
from tinytwin.errors import DataError, TinyTwinError

REPO_ROOT = Path(__file__).resolve().parents[1]
# The offline data folder is a sibling of the checkout; $TINYTWIN_SHARED_DATA overrides it (scripts/test.sh).
SHARED_DATA = Path(os.environ.get("TINYTWIN_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
_SHARED_FILES = ("mnist.npz", "cifar10.npz", *(f"fashion-mnist/{f}" for f in IDX_FILES))

needs_shared = pytest.mark.skipif(
    not all((SHARED_DATA / f).is_file() for f in _SHARED_FILES), reason=f"shared data files missing in {SHARED_DATA}"
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may see the developer's $TINYTWIN_DATA, Debian's system folder or ~/.cache."""
    monkeypatch.delenv("TINYTWIN_DATA", raising=False)
    monkeypatch.delenv("TINYTWIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-dir")


@pytest.fixture(scope="module")
def mnist_npz() -> dict[str, np.ndarray]:
    with np.load(SHARED_DATA / "mnist.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _write_idx(path: Path, arr: np.ndarray, magic: int | None = None) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = (0x0800 | arr.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.tobytes())


def _write_idx_set(folder: Path, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(IDX_FILES, (x_tr, y_tr, x_te, y_te)):
        _write_idx(folder / name, arr)


# --------------------------------------------------------------------------- basics


def test_dataset_names_and_unknown_name() -> None:
    assert DATASET_NAMES == ("digits", "mnist", "fashion-mnist", "cifar10", "cifar10-cat-vww", "cifar100")
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*digits, mnist, fashion-mnist, cifar10"):
        load_dataset("imagenet")


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("TINYTWIN_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"  # explicit argument wins
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("TINYTWIN_DATA", "")
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir("~/data") == tmp_path / "data"


def test_digits_split_and_scaling(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    monkeypatch.setenv("TINYTWIN_DATA", str(tmp_path / "nothing-here"))  # digits needs no data_dir
    ds = load_dataset("digits")
    assert ds.name == "digits"
    assert ds.x_train.shape == (1500, 1, 8, 8) and ds.x_test.shape == (297, 1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0 and ds.x_test.max() <= 1.0
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10 and ds.class_names == tuple("0123456789")
    ref = load_digits()
    order = np.random.default_rng(0).permutation(1797)  # default: a fixed shuffled split
    np.testing.assert_array_equal(ds.y_test, ref.target[order[-297:]])
    np.testing.assert_array_equal(ds.y_train, ref.target[order[:1500]])
    last = load_dataset("digits", digits_split="last")  # the Flower benchmark's split
    np.testing.assert_array_equal(last.y_test, ref.target[-297:])  # the LAST 297 samples are the test set
    np.testing.assert_allclose(last.x_test.reshape(297, 64), ref.data[-297:] / 16, rtol=0, atol=0)
    assert load_dataset("digits", test_size=50).x_test.shape == (50, 1, 8, 8)
    with pytest.raises(ValueError, match="shuffled"):
        load_dataset("digits", digits_split="random")


def test_dataset_is_frozen() -> None:
    ds = load_dataset("digits", test_size=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]
    assert isinstance(ds, Dataset) and ds == ds


def test_test_size_validation() -> None:
    with pytest.raises(ValueError, match="test_size"):
        load_dataset("digits", test_size=-1)


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST (real files)


@needs_shared
def test_mnist_npz_real() -> None:
    ds = load_dataset("mnist", SHARED_DATA)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert ds.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert ds.x_train.dtype == np.float32 and ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert float(ds.x_train.mean(dtype=np.float64)) == pytest.approx(0.1307, abs=5e-4)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10


@needs_shared
def test_mnist_from_env_var_with_test_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYTWIN_DATA", str(SHARED_DATA))
    ds = load_dataset("mnist", test_size=100)
    full = load_dataset("mnist")
    keep = np.sort(np.random.default_rng(0).permutation(10000)[:100])  # a fixed random subset, in file order
    assert ds.x_test.shape == (100, 1, 28, 28)
    np.testing.assert_array_equal(ds.y_test, full.y_test[keep])
    assert len(set(ds.y_test.tolist())) == 10  # every class, unlike the first 100 of a class-sorted file
    assert load_dataset("mnist", test_size=10**6).x_test.shape[0] == 10000


@needs_shared
def test_fashion_mnist_idx_real() -> None:
    ds = load_dataset("fashion-mnist", SHARED_DATA)  # found in SHARED_DATA/fashion-mnist/
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.class_names == FASHION_MNIST_CLASSES and ds.class_names[0] == "T-shirt/top"
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0


@needs_shared
def test_fashion_mnist_system_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no data_dir, Debian's /usr/share/datasets/fashion-mnist is still searched."""
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", SHARED_DATA / "fashion-mnist")
    assert load_dataset("fashion-mnist", test_size=3).x_test.shape == (3, 1, 28, 28)


@needs_shared
def test_mnist_idx_in_subfolder_matches_npz(tmp_path: Path, mnist_npz: dict[str, np.ndarray]) -> None:
    m = mnist_npz
    _write_idx_set(tmp_path / "mnist", m["x_train"][:100], m["y_train"][:100], m["x_test"][:20], m["y_test"][:20])
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (100, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(ds.y_train, m["y_train"][:100])
    np.testing.assert_array_equal(ds.x_test[:, 0], m["x_test"][:20] / np.float32(255))


def test_fashion_mnist_npz_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    y = np.arange(12, dtype=np.uint8) % 10
    np.savez(tmp_path / "fashion-mnist.npz", x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:])
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.x_train.shape == (8, 1, 28, 28) and ds.y_test.tolist() == [8, 9, 0, 1]
    np.testing.assert_array_equal(ds.x_train[:, 0], x[:8] / np.float32(255))


# --------------------------------------------------------------------------- missing and corrupt files


def test_missing_files_error_names_files_folder_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    for expected in ("mnist.npz", *IDX_FILES, str(tmp_path), "TINYTWIN_DATA", "data_dir"):
        assert expected in msg
    assert isinstance(err.value, TinyTwinError)


def test_missing_without_data_dir_says_how_to_set_it() -> None:
    with pytest.raises(DataError, match=r"no data_dir given and \$TINYTWIN_DATA is not set"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="cifar-10-batches-py.*cifar10.npz"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("fashion-mnist", tmp_path / "typo")


def test_partial_idx_set_names_missing_file(tmp_path: Path) -> None:
    x = np.zeros((2, 28, 28), np.uint8)
    y = np.zeros(2, np.uint8)
    _write_idx_set(tmp_path, x, y, x, y)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path)


@needs_shared
def test_truncated_gz_raises_data_error(tmp_path: Path) -> None:
    src = SHARED_DATA / "fashion-mnist"
    for name in IDX_FILES:
        data = (src / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2] if name.startswith("t10k-images") else data)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*corrupt or truncated"):
        load_dataset("fashion-mnist", tmp_path)


def test_not_gzip_raises_data_error(tmp_path: Path) -> None:
    x = np.zeros((2, 28, 28), np.uint8)
    _write_idx_set(tmp_path, x, np.zeros(2, np.uint8), x, np.zeros(2, np.uint8))
    (tmp_path / IDX_FILES[1]).write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not a readable gzip file"):
        load_dataset("mnist", tmp_path)


def test_idx_bad_magic_and_size(tmp_path: Path) -> None:
    x = np.zeros((2, 28, 28), np.uint8)
    y = np.zeros(2, np.uint8)
    _write_idx_set(tmp_path, x, y, x, y)
    _write_idx(tmp_path / IDX_FILES[0], y)  # a labels file where images belong
    with pytest.raises(DataError, match=r"bad IDX magic number 0x00000801; expected 0x00000803"):
        load_dataset("mnist", tmp_path)
    _write_idx_set(tmp_path, x, y, x, y)
    with gzip.open(tmp_path / IDX_FILES[2], "wb") as fh:  # header claims 2 images, data holds 1
        fh.write(struct.pack(">IIII", 0x803, 2, 28, 28) + bytes(28 * 28))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: IDX header says 2x28x28 = 1568 bytes"):
        load_dataset("mnist", tmp_path)


def test_idx_label_count_mismatch(tmp_path: Path) -> None:
    x = np.zeros((3, 28, 28), np.uint8)
    _write_idx_set(tmp_path, x, np.zeros(2, np.uint8), x, np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="3 train images but 2 train labels"):
        load_dataset("mnist", tmp_path)


def test_npz_missing_array(tmp_path: Path) -> None:
    x = np.zeros((2, 28, 28), np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=np.zeros(2, np.uint8), x_test=x)
    with pytest.raises(DataError, match=r"mnist.npz: missing array\(s\) y_test"):
        load_dataset("mnist", tmp_path)


@needs_shared
def test_npz_truncated_or_garbage(tmp_path: Path) -> None:
    data = (SHARED_DATA / "mnist.npz").read_bytes()
    (tmp_path / "mnist.npz").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="mnist.npz: cannot read .npz file"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DataError, match="mnist.npz: cannot read .npz file"):
        load_dataset("mnist", tmp_path)
    with open(tmp_path / "mnist.npz", "wb") as fh:  # a single .npy array under the .npz name
        np.save(fh, np.zeros(3))
    with pytest.raises(DataError, match="mnist.npz: not an .npz file"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "mnist.npz").write_bytes(b"")
    with pytest.raises(DataError, match="mnist.npz: not an .npz file"):
        load_dataset("mnist", tmp_path)


def test_npz_bad_content(tmp_path: Path) -> None:
    x = np.zeros((2, 28, 28), np.float32)
    y = np.zeros(2, np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(DataError, match="x_train has dtype float32; expected uint8"):
        load_dataset("mnist", tmp_path)
    x8 = np.zeros((2, 28, 28), np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x8, y_train=np.array([0, 12], np.uint8), x_test=x8, y_test=y)
    with pytest.raises(DataError, match=r"train labels span 0\.\.12; expected 0\.\.9"):
        load_dataset("mnist", tmp_path)
    np.savez(tmp_path / "mnist.npz", x_train=x8, y_train=y, x_test=np.zeros((2, 8, 8), np.uint8), y_test=y)
    with pytest.raises(DataError, match="train images are .* but test images are"):
        load_dataset("mnist", tmp_path)


# --------------------------------------------------------------------------- CIFAR-10: JPEG npz


@pytest.fixture(scope="module")
def small_cifar_items() -> dict[str, np.ndarray]:
    """40 train + 10 test JPEG items cut from the real cifar10.npz (without decoding the rest)."""
    with np.load(SHARED_DATA / "cifar10.npz") as npz:
        jb, off = npz["jpeg_bytes"], npz["offsets"]
        labels, is_test, classes = npz["labels"], npz["is_test"], npz["classes"]
    first_test = int(np.argmax(is_test))
    pick = np.r_[0:40, first_test : first_test + 10]
    items = [jb[off[i] : off[i + 1]] for i in pick]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in items])]).astype(np.int64)
    return {
        "jpeg_bytes": np.concatenate(items),
        "offsets": offsets,
        "labels": labels[pick],
        "is_test": is_test[pick],
        "classes": classes,
    }


def _decode_reference(items: dict[str, np.ndarray]) -> np.ndarray:
    jb, off = items["jpeg_bytes"], items["offsets"]
    imgs = [
        np.asarray(Image.open(io.BytesIO(jb[off[i] : off[i + 1]].tobytes())).convert("RGB"))
        for i in range(len(off) - 1)
    ]
    return np.stack(imgs).transpose(0, 3, 1, 2)


@needs_shared
def test_cifar10_jpeg_npz_and_cache(
    tmp_path: Path, small_cifar_items: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    np.savez(data_dir / "cifar10.npz", **small_cifar_items)
    ds = load_dataset("cifar10", data_dir)
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.x_test.shape == (10, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.class_names == CIFAR10_CLASSES and ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    ref = _decode_reference(small_cifar_items)
    np.testing.assert_array_equal(ds.x_train, ref[:40] / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, small_cifar_items["labels"][40:])

    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar10.npz"]  # never beside the data, even writable
    caches = list((tmp_path / "xdg-cache" / "tinytwin").glob("cifar10-*.decoded-*.npy"))
    assert len(caches) == 1  # in the user cache folder instead

    def no_decoding(*_: object) -> np.ndarray:
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(datasets, "_decode_jpegs", no_decoding)
    again = load_dataset("cifar10", data_dir, test_size=4)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    assert again.x_test.shape == (4, 3, 32, 32)


@needs_shared
def test_cifar10_cache_falls_back_to_user_cache(tmp_path: Path, small_cifar_items: dict[str, np.ndarray]) -> None:
    data_dir = tmp_path / "readonly"
    data_dir.mkdir()
    np.savez(data_dir / "cifar10.npz", **small_cifar_items)
    data_dir.chmod(0o555)
    try:
        load_dataset("cifar10", data_dir)
    finally:
        data_dir.chmod(0o755)
    assert not list(data_dir.glob("*.decoded-*.npy"))
    assert len(list((tmp_path / "xdg-cache" / "tinytwin").glob("cifar10-*.decoded-*.npy"))) == 1


@needs_shared
def test_cifar10_npz_defects(tmp_path: Path, small_cifar_items: dict[str, np.ndarray]) -> None:
    items = dict(small_cifar_items)
    jb = items["jpeg_bytes"].copy()
    off = items["offsets"]
    jb[off[3] : off[3] + 20] = 0  # wreck the JPEG header of item 3
    np.savez(tmp_path / "cifar10.npz", **{**items, "jpeg_bytes": jb})
    with pytest.raises(DataError, match="cifar10.npz: JPEG item 3 cannot be decoded"):
        load_dataset("cifar10", tmp_path)
    np.savez(tmp_path / "cifar10.npz", **{**items, "offsets": off[::-1].copy()})
    with pytest.raises(DataError, match="offsets must rise strictly"):
        load_dataset("cifar10", tmp_path)
    np.savez(tmp_path / "cifar10.npz", **{k: v for k, v in items.items() if k != "is_test"})
    with pytest.raises(DataError, match=r"missing array\(s\) is_test"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- CIFAR-10: python batches


def _py2_pickle(batch: dict[str, object]) -> bytes:
    """Pickle ``batch`` the way Python 2's cPickle wrote the CIFAR-10 batches (protocol 2).

    Keys and byte strings are Python 2 ``str`` (BINSTRING opcodes, read back as ``bytes``
    with ``encoding="bytes"``) and arrays reference ``numpy.core.multiarray._reconstruct``,
    which is exactly what the restricted unpickler must accept in the real files.
    """

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    out = bytearray(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
    for key, val in batch.items():
        out += s(key.encode())
        if isinstance(val, np.ndarray):
            assert val.dtype == np.uint8
            out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
            out += b"(" + i(1) + b"(" + b"".join(i(d) for d in val.shape) + b"t"
            out += b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
            out += b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"  # dtype state
            out += b"\x89" + s(val.tobytes()) + b"tb"  # (version, shape, dtype, fortran, data) -> BUILD
        elif isinstance(val, list):
            out += b"](" + b"".join(i(v) if isinstance(v, int) else s(v) for v in val) + b"e"
        else:
            assert isinstance(val, bytes)
            out += s(val)
    return bytes(out + b"u.")


def _write_batches(folder: Path, per_batch: int, *, py2: bool) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {"batch_label": name.encode(), "labels": labels, "data": data, "filenames": [b"a.png"] * per_batch}
        if py2:
            (folder / name).write_bytes(_py2_pickle(batch))
        else:
            (folder / name).write_bytes(pickle.dumps({k.encode(): v for k, v in batch.items()}, protocol=4))
        xs.append(data)
        ys.append(labels)
    meta = {"label_names": [c.encode() for c in CIFAR10_CLASSES], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_pickle({"label_names": meta["label_names"]}))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("py2", [True, False], ids=["python2-cpickle", "python3-protocol4"])
def test_cifar10_python_batches(tmp_path: Path, py2: bool) -> None:
    x, y = _write_batches(tmp_path / "cifar-10-batches-py", 4, py2=py2)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    # Each row is 1024 red, then 1024 green, then 1024 blue values.
    np.testing.assert_array_equal(ds.x_train, x[:20].reshape(20, 3, 32, 32) / np.float32(255))
    np.testing.assert_array_equal(ds.x_train[0, 1].ravel(), x[0, 1024:2048] / np.float32(255))
    assert ds.y_train.tolist() == y[:20].tolist() and ds.y_test.tolist() == y[20:].tolist()
    assert ds.class_names == CIFAR10_CLASSES


def test_cifar10_batches_preferred_and_folder_itself(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder, 2, py2=True)
    (tmp_path / "cifar10.npz").write_bytes(b"not read: the lossless batches win")
    assert load_dataset("cifar10", tmp_path).x_train.shape == (10, 3, 32, 32)
    assert load_dataset("cifar10", folder).x_test.shape == (2, 3, 32, 32)


def test_cifar10_partial_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder, 2, py2=True)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        load_dataset("cifar10", tmp_path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_cifar10_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder, 2, py2=True)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Evil(marker)}, protocol=4))
    with pytest.raises(
        DataError, match=r"test_batch: cannot read CIFAR-10 batch .*refusing to load (builtins|io)\.open"
    ):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar10_corrupt_batch(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder, 2, py2=True)
    data = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="data_batch_2: cannot read CIFAR-10 batch"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_2").write_bytes(_py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match=r"data_batch_2: 'data' is uint8 \(2, 100\); expected uint8 \(N, 3072\)"):
        load_dataset("cifar10", tmp_path)
