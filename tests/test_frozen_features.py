"""The Keras-HDF5 -> PyTorch rebuild and the TinyFedTL ``cifar10-cat-vww`` dataset."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tinytwin.data import frozen_features as ff
from tinytwin.data.datasets import load_dataset
from tinytwin.errors import DataError

# --------------------------------------------------------------------------- helpers


def _write_keras_h5(
    path: Path, layers: list[tuple[str, str, dict, list[str], dict[str, np.ndarray]]], output: str
) -> Path:
    """A minimal Keras 2 functional-model HDF5 file: (class, name, config, inbound, weights) per layer."""
    cfg_layers = []
    with h5py.File(path, "w") as fh:
        mw = fh.create_group("model_weights")
        for kind, name, cfg, inbound, weights in layers:
            cfg_layers.append(
                {
                    "class_name": kind,
                    "config": {"name": name, **cfg},
                    "inbound_nodes": [[[n, 0, 0, {}] for n in inbound]] if inbound else [],
                }
            )
            g = mw.create_group(f"{name}/{name}")
            for key, arr in weights.items():
                g.create_dataset(f"{key}:0", data=arr.astype(np.float32))
        config = {
            "class_name": "Functional",
            "config": {
                "name": "model",
                "layers": cfg_layers,
                "input_layers": [[layers[0][1], 0, 0]],
                "output_layers": [[output, 0, 0]],
            },
        }
        fh.attrs["model_config"] = json.dumps(config)
    return path


def _tf_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """NHWC input padded as TensorFlow's "same": ceil(n/s) outputs, the odd pixel at the end."""
    pads = []
    for n in x.shape[1:3]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])


def _conv_ref(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, s: int) -> np.ndarray:
    """Plain-loop NHWC Conv2D with a (kh, kw, in, out) kernel, "same" padding."""
    kh = kernel.shape[0]
    xp = _tf_pad(x, kh, s)
    oh, ow = -(-x.shape[1] // s), -(-x.shape[2] // s)
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * s : i * s + kh, j * s : j * s + kh, :]
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, kernel)
    return out + bias


def _depthwise_ref(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, s: int) -> np.ndarray:
    """tf.nn.depthwise_conv2d by its documented formula: out[..., c * dm + m] = sum k[di, dj, c, m] x[..., c]."""
    kh, _, cin, dm = kernel.shape
    xp = _tf_pad(x, kh, s)
    oh, ow = -(-x.shape[1] // s), -(-x.shape[2] // s)
    out = np.zeros((x.shape[0], oh, ow, cin * dm))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * s : i * s + kh, j * s : j * s + kh, :]
            for c in range(cin):
                for m in range(dm):
                    out[:, i, j, c * dm + m] = np.einsum("nhw,hw->n", patch[..., c], kernel[:, :, c, m])
    return out + bias


# --------------------------------------------------------------------------- the interpreter


@pytest.mark.parametrize(
    "size,kernel,stride,dilation,expected",
    [
        (96, 3, 2, 1, (0, 1)),  # the VWW stem: TF pads only after, PyTorch's padding=1 would shift the grid
        (32, 3, 2, 1, (0, 1)),  # ResNet-8's strided 3x3
        (32, 1, 2, 1, (0, 0)),  # 1x1 shortcut
        (32, 3, 1, 1, (1, 1)),
        (7, 3, 2, 1, (1, 1)),
        (4, 2, 1, 1, (0, 1)),  # even kernel: the extra pixel goes after
        (10, 3, 1, 2, (2, 2)),  # dilation 2: effective kernel 5
        (5, 7, 3, 1, (2, 3)),
    ],
)
def test_same_padding_is_tensorflows(size, kernel, stride, dilation, expected):
    assert ff.same_padding(size, kernel, stride, dilation) == expected
    before, after = expected
    eff = (kernel - 1) * dilation + 1
    assert (size + before + after - eff) // stride + 1 == -(-size // stride)  # ceil(size / stride) outputs


def test_depthwise_matches_tensorflow_documentation_example(tmp_path):
    # tf.nn.depthwise_conv2d's docstring: x (1, 3, 2, 1), kernel [[1, 2], [3, 4]] as (2, 1, 1, 2), VALID.
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32).reshape(1, 3, 2, 1)
    kernel = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32).reshape(2, 1, 1, 2)
    path = _write_keras_h5(
        tmp_path / "dw.h5",
        [
            ("InputLayer", "in", {}, [], {}),
            (
                "DepthwiseConv2D",
                "dw",
                {
                    "kernel_size": [2, 1],
                    "strides": [1, 1],
                    "padding": "valid",
                    "depth_multiplier": 2,
                    "use_bias": False,
                    "activation": "linear",
                },
                ["in"],
                {"depthwise_kernel": kernel},
            ),
        ],
        "dw",
    )
    out = ff.KerasModel(path)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(out, [[[[10.0, 14.0], [14.0, 20.0]], [[18.0, 26.0], [22.0, 32.0]]]])


def test_graph_with_branches_matches_a_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    r = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    w = {
        "dw": {"depthwise_kernel": r(3, 3, 3, 2), "bias": r(6)},
        "pw": {"kernel": r(1, 1, 6, 4), "bias": r(4)},
        "short": {"kernel": r(3, 3, 3, 4), "bias": r(4)},
        "bn": {"gamma": r(4), "beta": r(4), "moving_mean": r(4), "moving_variance": rng.uniform(0.5, 2, 4)},
        "fc": {"kernel": r(8, 3), "bias": r(3)},
    }
    conv = {"padding": "same", "activation": "linear", "use_bias": True}
    path = _write_keras_h5(
        tmp_path / "net.h5",
        [
            ("InputLayer", "in", {}, [], {}),
            (
                "DepthwiseConv2D",
                "dw",
                {"kernel_size": [3, 3], "strides": [2, 2], "depth_multiplier": 2, **conv},
                ["in"],
                w["dw"],
            ),
            ("Conv2D", "pw", {"kernel_size": [1, 1], "strides": [1, 1], **conv}, ["dw"], w["pw"]),
            (
                "Conv2D",
                "short",
                {"kernel_size": [3, 3], "strides": [2, 2], **conv, "activation": "relu"},
                ["in"],
                w["short"],
            ),
            ("Add", "add", {}, ["pw", "short"], {}),
            ("BatchNormalization", "bn", {"axis": [3], "epsilon": 0.001}, ["add"], w["bn"]),
            ("Activation", "relu", {"activation": "relu"}, ["bn"], {}),
            ("AveragePooling2D", "pool", {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}, ["relu"], {}),
            ("Flatten", "flat", {}, ["pool"], {}),
            ("Dense", "fc", {"units": 3, "activation": "softmax", "use_bias": True}, ["flat"], w["fc"]),
        ],
        "fc",
    )
    x = rng.uniform(0, 1, (5, 7, 6, 3))  # odd, non-square: asymmetric "same" padding on both axes

    dw = _depthwise_ref(x, w["dw"]["depthwise_kernel"], w["dw"]["bias"], 2)
    a = _conv_ref(dw, w["pw"]["kernel"], w["pw"]["bias"], 1)
    b = np.maximum(_conv_ref(x, w["short"]["kernel"], w["short"]["bias"], 2), 0)
    bn = w["bn"]
    h = np.maximum((a + b - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) * bn["gamma"] + bn["beta"], 0)
    h = h[:, :4, :2].reshape(5, 2, 2, 1, 2, 4).mean(axis=(2, 4))  # 4x3 -> 2x1, "valid" drops the last column
    logits = h.reshape(5, -1) @ w["fc"]["kernel"] + w["fc"]["bias"]  # Keras flattens NHWC
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)

    model = ff.KerasModel(path)
    got = model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    mid = model.outputs(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)), ["add"])["add"].numpy()
    np.testing.assert_allclose(mid.transpose(0, 2, 3, 1), a + b, rtol=1e-4, atol=1e-4)


def test_unsupported_layer_and_unknown_output_are_data_errors(tmp_path):
    path = _write_keras_h5(
        tmp_path / "lstm.h5", [("InputLayer", "in", {}, [], {}), ("LSTM", "lstm", {"units": 4}, ["in"], {})], "lstm"
    )
    model = ff.KerasModel(path)
    with pytest.raises(DataError, match="unsupported layer LSTM"):
        model(torch.zeros(1, 3, 4, 4))
    with pytest.raises(DataError, match="no layer named 'nope'"):
        model(torch.zeros(1, 3, 4, 4), until="nope")


def test_bad_h5_files_are_data_errors(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not HDF5")
    with pytest.raises(DataError, match="garbage.h5: not a readable Keras 2 HDF5 model"):
        ff.KerasModel(garbage)
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as fh:
        fh.create_dataset("x", data=np.zeros(3))
    with pytest.raises(DataError, match="no 'model_config'"):
        ff.KerasModel(bare)
    with pytest.raises(DataError, match="file not found"):
        ff.KerasModel(tmp_path / "absent.h5")


# --------------------------------------------------------------------------- real models (shared data)


def test_resnet8_rebuild_reaches_the_published_accuracy(shared_data):
    """MLPerf Tiny ResNet-8: 75.5 % on the 10 000 JPEG test images (data README); we measured 75.48 %.

    Every 5th test image (200 per class; the file is sorted by class) keeps this at ~4 s: 76.85 %
    there, and 1.5 points is ~1.6 standard errors of a 2000-sample estimate, so 3 points of slack.
    """
    ds = load_dataset("cifar10", shared_data)
    model = ff.KerasModel(shared_data / "pretrainedResnet.h5")
    x, y = ds.x_test[::5], ds.y_test[::5]
    assert np.bincount(y).tolist() == [200] * 10
    probs = torch.cat([model(torch.from_numpy(x[i : i + 500] * 255.0)) for i in range(0, len(x), 500)]).numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert abs((probs.argmax(1) == y).mean() - 0.755) < 0.03


def test_cifar10_cat_vww_dataset(shared_data):
    ds = load_dataset("cifar10-cat-vww", shared_data)  # first run extracts (~30 s), then cached
    assert ds.x_train.shape == (10000, 256, 1, 1) and ds.x_test.shape == (2000, 256, 1, 1)
    assert ds.x_train.dtype == np.float32 and ds.num_classes == 2
    for y in (ds.y_train, ds.y_test):
        assert set(np.unique(y).tolist()) == {0, 1}
        assert y.sum() * 2 == len(y)  # balanced: every cat plus as many non-cats
    f = ds.x_train.reshape(len(ds.x_train), -1)
    np.testing.assert_allclose(f.mean(0), 0.0, atol=1e-4)  # standardized with train statistics...
    assert np.all((np.abs(f.std(0) - 1) < 1e-3) | (f.std(0) < 1e-6))  # ...dead features stay 0
    assert abs(ds.x_test.mean()) < 0.2  # ...which the test split only approximately matches
    assert np.isfinite(ds.x_test).all()


def test_cached_features_match_a_fresh_extraction(shared_data):
    """The cache holds what the extractor computes, in the order of the balanced subset."""
    from tinytwin.cache import cache_dir

    cifar = load_dataset("cifar10", shared_data)
    vww = shared_data / ff.VWW_FILE
    f_tr, y_tr, _, _ = ff.cat_features(
        cifar.x_train, cifar.y_train, cifar.x_test, cifar.y_test, vww, cache_dir(), standardized=False
    )
    idx = ff._balanced_cat_subset(cifar.y_train, seed=0)
    assert (y_tr == (cifar.y_train[idx] == ff.CAT_CLASS)).all()
    pick = [0, 1, 4999, 9999]
    fresh = ff.extract(cifar.x_train[idx[pick]], ff.KerasModel(vww), ff.EXTRACTORS[ff.DEFAULT_EXTRACTOR])
    np.testing.assert_allclose(fresh, f_tr[pick], rtol=1e-4, atol=1e-5)
    assert (f_tr >= 0).all()  # block 5 ends in a ReLU


def test_vww_model_output_and_taps(shared_data):
    model = ff.KerasModel(shared_data / ff.VWW_FILE)
    x = torch.rand(2, 3, 96, 96)
    out = model(x)
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out.sum(1).numpy(), 1.0, atol=1e-5)
    for name, tap in ff.EXTRACTORS.items():
        assert tuple(model(x, until=tap.layer).shape[1:]) == tap.shape, name
    with pytest.raises(DataError, match="shape"):  # a model without the expected layer shapes is refused
        ff.extract(np.zeros((1, 3, 32, 32), np.float32), model, ff.Tap("activation_12", (64, 12, 12), 2, ""))


def test_missing_or_bad_vww_model_is_a_clear_data_error(shared_data, tmp_path):
    (tmp_path / "cifar10.npz").symlink_to(shared_data / "cifar10.npz")
    with pytest.raises(DataError, match="needs vww_96.h5"):
        load_dataset("cifar10-cat-vww", tmp_path)
    (tmp_path / "vww_96.h5").write_bytes(b"\x89HDF\r\n not really")
    with pytest.raises(DataError, match="vww_96.h5: not a readable Keras 2 HDF5 model"):
        load_dataset("cifar10-cat-vww", tmp_path)


def test_unknown_extractor_is_a_data_error(tmp_path):
    z = np.zeros((2, 3, 32, 32), np.float32)
    y = np.array([3, 0])
    model = tmp_path / "vww_96.h5"
    model.write_bytes(b"")
    with pytest.raises(DataError, match="unknown feature extractor 'resnet'"):
        ff.cat_features(z, y, z, y, model, tmp_path, extractor="resnet")
