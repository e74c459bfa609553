"""Any model of the zoo in numpy: forward, backward, local training, evaluation (no torch).

The device runtime's interpreter of a layer list (:mod:`tinytwin.models.layers`): every
layer kind the zoo builds — ``conv`` (stride, zero padding, groups: ordinary, depthwise and
grouped), ``relu``, ``scale`` (times a constant), ``maxpool`` (kernel = stride, floor), ``avgpool`` (global average,
PyTorch's ``AdaptiveAvgPool2d(1)`` + flatten), ``flatten`` and ``linear`` — with the same
semantics as the torch module :func:`tinytwin.models.zoo.build_module` makes (the zoo has
no batch normalisation). Training is the math of :mod:`tinytwin.emulate.mlp_np` /
:mod:`tinytwin.algorithms.local_update`: mean cross-entropy over the batch (+ FedProx),
SGD with momentum / weight decay or Adam, fresh optimizer state every round, the batch
order of :meth:`tinytwin.engines.local_training.LocalTrainer.schedule`; float32 throughout.

Layout. The flat parameter vector is the simulator's (:class:`tinytwin.models.params.ParamLayout`:
weight then bias of every parameterised layer, in layer order, torch shapes: conv
``(out, in/groups, k, k)``, linear ``(out, in)``). Inside, feature maps are channel-major
``(C, B, H, W)``: a convolution is the weight matrix ``(O, C·k·k)`` times one im2col matrix
``(C·k·k, B·Ho·Wo)`` (a strided view copied once, rows in the weight's own order) and its
``(O, B·Ho·Wo)`` product already is the next layer's input, and every elementwise loop runs
along a feature-map row; ``flatten`` turns it back into PyTorch's (C, H, W) order. Depthwise convolutions are k·k shifted
multiply-adds (no im2col). Max pooling routes the gradient to the first maximum of each
window, as PyTorch's CPU kernel does.

MLPs run here too (:func:`describe` works for every zoo model), but the device runtime
keeps :mod:`tinytwin.emulate.mlp_np` for them (fewer copies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from tinytwin.algorithms.local_config import ADAM_BETAS, ADAM_EPS, LocalTraining
from tinytwin.models.layers import Layer
from tinytwin.rng import device_permutations

__all__ = ["KINDS", "LocalTraining", "NpLayer", "Net", "describe", "evaluate", "layers_from", "train"]

KINDS = ("conv", "relu", "maxpool", "avgpool", "flatten", "linear", "scale")
_F32 = np.float32


@dataclass(frozen=True)
class NpLayer(Layer):
    """One layer of :mod:`tinytwin.models.layers` plus where its parameters sit in the flat vector."""

    w_offset: int = -1
    b_offset: int = -1


def describe(layers: Iterable[Any]) -> list[dict[str, Any]]:
    """JSON-able rows of a layer list (``models.layers.Layer`` or :class:`NpLayer`) with offsets.

    Raises ``ValueError`` for a layer kind this interpreter does not know."""
    rows, offset = [], 0
    for layer in layers:
        if layer.kind not in KINDS:
            raise ValueError(f"the numpy runtime has no {layer.kind!r} layer")
        if not getattr(layer, "bias", True):
            raise ValueError(f"the numpy runtime has no {layer.kind!r} layer without bias")
        row = {
            "kind": layer.kind,
            "in_shape": list(layer.in_shape),
            "out_shape": list(layer.out_shape),
            "in_features": int(layer.in_features),
            "out_features": int(layer.out_features),
            "kernel": int(layer.kernel),
            "stride": int(layer.stride),
            "padding": int(layer.padding),
            "groups": int(layer.groups),
            **({"factor": float(layer.factor)} if layer.kind == "scale" else {}),
        }
        shape = NpLayer(
            layer.kind,
            tuple(layer.in_shape),
            tuple(layer.out_shape),
            int(layer.in_features),
            int(layer.out_features),
            int(layer.kernel),
            int(layer.stride),
            int(layer.padding),
            int(layer.groups),
        ).weight_shape
        if shape is not None:
            row["w_offset"] = offset
            row["b_offset"] = offset + prod(shape)
            offset += prod(shape) + int(layer.out_features)
        rows.append(row)
    return rows


def layers_from(rows: Sequence[dict[str, Any]]) -> list[NpLayer]:
    return [
        NpLayer(
            str(r["kind"]),
            tuple(int(v) for v in r["in_shape"]),
            tuple(int(v) for v in r["out_shape"]),
            int(r.get("in_features", 0)),
            int(r.get("out_features", 0)),
            int(r.get("kernel", 0)),
            int(r.get("stride", 1)),
            int(r.get("padding", 0)),
            int(r.get("groups", 1)),
            factor=float(r.get("factor", 1.0)),
            w_offset=int(r.get("w_offset", -1)),
            b_offset=int(r.get("b_offset", -1)),
        )
        for r in rows
    ]


# ---- convolution helpers (channel-major C, B, H, W) ----------------------------------------
def _pad(x: np.ndarray, p: int) -> np.ndarray:
    if not p:
        return x
    c, b, h, w = x.shape
    out = np.zeros((c, b, h + 2 * p, w + 2 * p), dtype=x.dtype)
    out[:, :, p : p + h, p : p + w] = x
    return out


def _im2col(xp: np.ndarray, k: int, s: int, ho: int, wo: int) -> np.ndarray:
    """(C·k·k, B·Ho·Wo) patch matrix of the padded (C, B, Hp, Wp) input; rows in PyTorch's
    (c, i, j) weight order, so ``W.reshape(O, -1) @ cols`` is the convolution."""
    c, b = xp.shape[:2]
    sc, sb, sh, sw = xp.strides
    view = as_strided(xp, (c, k, k, b, ho, wo), (sc, sh, sw, sb, sh * s, sw * s), writeable=False)
    return np.ascontiguousarray(view).reshape(c * k * k, b * ho * wo)


def _sl(i: int, s: int, n: int) -> slice:
    """Rows i, i+s, ..., i+s(n-1): the input positions kernel offset i touches."""
    return slice(i, i + s * (n - 1) + 1, s)


def _col2im(dcols: np.ndarray, padded_shape: tuple[int, ...], k: int, s: int, ho: int, wo: int) -> np.ndarray:
    """Adjoint of :func:`_im2col`: sum (C, k, k, B, Ho, Wo) patches back into the padded input."""
    dxp = np.zeros(padded_shape, dtype=_F32)
    for i in range(k):
        for j in range(k):
            dxp[:, :, _sl(i, s, ho), _sl(j, s, wo)] += dcols[:, i, j]
    return dxp


def _crop(dxp: np.ndarray, p: int) -> np.ndarray:
    if not p:
        return dxp
    return dxp[:, :, p : dxp.shape[2] - p, p : dxp.shape[3] - p]


class Net:
    """A layer list executed in numpy (float32)."""

    def __init__(self, layers: Sequence[NpLayer]) -> None:
        self.layers = list(layers)
        for layer in self.layers:
            if layer.kind not in KINDS:
                raise ValueError(f"the numpy runtime has no {layer.kind!r} layer")
        self.input_shape = self.layers[0].in_shape
        self.params = [i for i, l in enumerate(self.layers) if l.weight_shape is not None]
        self.num_params = sum(
            prod(self.layers[i].weight_shape or ()) + self.layers[i].out_features for i in self.params
        )
        first = self.params[0] if self.params else len(self.layers)
        # The input gradient of layers before the first parameterised one is never needed.
        self._need_dx = [i > first for i in range(len(self.layers))]

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> Net:
        return cls(layers_from(rows))

    # ---- parameters ----------------------------------------------------------------
    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Flat vector -> [W, b, ...] in layer order, torch shapes (float32 copies)."""
        flat = np.asarray(flat, dtype=_F32)
        out = []
        for i in self.params:
            l = self.layers[i]
            shape = l.weight_shape
            assert shape is not None
            out.append(flat[l.w_offset : l.b_offset].reshape(shape).copy())
            out.append(flat[l.b_offset : l.b_offset + l.out_features].copy())
        return out

    @staticmethod
    def join(tensors: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([t.reshape(-1) for t in tensors]).astype(_F32, copy=False)

    # ---- forward / backward --------------------------------------------------------
    def _input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=_F32).reshape((len(x),) + tuple(self.input_shape))
        if len(self.input_shape) == 3:
            x = np.ascontiguousarray(x.transpose(1, 0, 2, 3))  # (B, C, H, W) -> (C, B, H, W)
        return x

    def forward(self, tensors: Sequence[np.ndarray], x: np.ndarray, keep: bool = True) -> tuple[np.ndarray, list[Any]]:
        """Logits (B, classes) of the batch ``x`` (B, prod(input_shape)) and the caches for backward."""
        h = self._input(x)
        caches: list[Any] = []
        p = 0
        for l in self.layers:
            w = b = None
            if l.weight_shape is not None:
                w, b = tensors[p], tensors[p + 1]
                p += 2
            h, cache = getattr(self, "_f_" + l.kind)(l, h, w, b, keep)
            caches.append(cache)
        return h, caches

    def grads(self, tensors: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], float]:
        """Gradients of the mean cross-entropy over the batch, and the summed cross-entropy."""
        logits, caches = self.forward(tensors, x)
        log_p = log_softmax(logits)
        rows = np.arange(len(y))
        ce_sum = float(-log_p[rows, y].astype(np.float64).sum())
        g = np.exp(log_p)
        g[rows, y] -= _F32(1.0)
        g *= _F32(1.0 / max(len(y), 1))
        out: list[np.ndarray] = [np.empty(0, _F32)] * len(tensors)
        p = len(tensors)
        for i in range(len(self.layers) - 1, -1, -1):
            l = self.layers[i]
            w = None
            if l.weight_shape is not None:
                p -= 2
                w = tensors[p]
            g, dw, db = getattr(self, "_b_" + l.kind)(l, g, caches[i], w, self._need_dx[i])
            if dw is not None:
                out[p], out[p + 1] = dw, db
            if g is None:
                break
        return out, ce_sum

    # linear: (B, in) -> (B, out)
    @staticmethod
    def _f_linear(l: NpLayer, h: np.ndarray, w: Any, b: Any, keep: bool) -> tuple[np.ndarray, Any]:
        return h @ w.T + b, (h if keep else None)

    @staticmethod
    def _b_linear(l: NpLayer, g: np.ndarray, h: np.ndarray, w: Any, need_dx: bool) -> tuple[Any, Any, Any]:
        return (g @ w if need_dx else None), g.T @ h, g.sum(axis=0)

    # relu (PyTorch: gradient where the output is > 0)
    @staticmethod
    def _f_relu(l: NpLayer, h: np.ndarray, w: Any, b: Any, keep: bool) -> tuple[np.ndarray, Any]:
        out = np.maximum(h, _F32(0.0))
        return out, (out if keep else None)

    @staticmethod
    def _b_relu(l: NpLayer, g: np.ndarray, out: np.ndarray, w: Any, need_dx: bool) -> tuple[Any, Any, Any]:
        return (g * (out > 0) if need_dx else None), None, None

    # scale (HeteroFL's scaler): times a constant, forward and backward
    @staticmethod
    def _f_scale(l: NpLayer, h: np.ndarray, w: Any, b: Any, keep: bool) -> tuple[np.ndarray, Any]:
        return h * _F32(l.factor), None

    @staticmethod
    def _b_scale(l: NpLayer, g: np.ndarray, out: Any, w: Any, need_dx: bool) -> tuple[Any, Any, Any]:
        return (g * _F32(l.factor) if need_dx else None), None, None

    # flatten: (C, B, H, W) -> (B, C·H·W) in PyTorch's order
    @staticmethod
    def _f_flatten(l: NpLayer, h: np.ndarray, w: Any, b: Any, keep: bool) -> tuple[np.ndarray, Any]:
        if h.ndim == 4:
            return np.ascontiguousarray(h.transpose(1, 0, 2, 3)).reshape(h.shape[1], -1), h.shape
        return h.reshape(len(h), -1), h.shape

    @staticmethod
    def _b_flatten(l: NpLayer, g: np.ndarray, shape: tuple[int, ...], w: Any, need_dx: bool) -> tuple[Any, Any, Any]:
        if not need_dx:
            return None, None, None
        if len(shape) == 4:
            c, bsz, hh, ww = shape
            return np.ascontiguousarray(g.reshape(bsz, c, hh, ww).transpose(1, 0, 2, 3)), None, None
        return g.reshape(shape), None, None

    # global average pooling (AdaptiveAvgPool2d(1) + flatten): (C, B, H, W) -> (B, C)
    @staticmethod
    def _f_avgpool(l: NpLayer, h: np.ndarray, w: Any, b: Any, keep: bool) -> tuple[np.ndarray, Any]:
        c, bsz = h.shape[:2]
        return np.ascontiguousarray(h.reshape(c, bsz, -1).mean(axis=2, dtype=_F32).T), h.shape

    @staticmethod
    def _b_avgpool(l: NpLayer, g: np.ndarray, shape: tuple[int, ...], w: Any, need_dx: bool) -> tuple[Any, Any, Any]:
        if not need_dx:
            return None, None, None
        dx = np.empty(shape, dtype=_F32)
        dx[...] = (g.T / _F32(shape[2] * shape[3]))[:, :, None, None]
        return dx, None, None

    # max pooling, kernel = stride, floor; the gradient goes to the first maximum of each
    # window in (row, column) order, as in PyTorch's CPU kernel
    @staticmethod
    def _pool_views(l: NpLayer, h: np.ndarray) -> list[np.ndarray]:
        k = l.kernel
        _, ho, wo = l.out_shape
        return [h[:, :, i : i + k * ho : k, j : j + k * wo : k] for i in range(k) for j in range(k)]

    @staticmethod
    def _f_maxpool(l: NpLayer, h: np.ndarray, w: Any, b: Any, keep: bool) -> tuple[np.ndarray, Any]:
        views = Net._pool_views(l, h)
        out = views[0].copy()
        for v in views[1:]:
            np.maximum(out, v, out=out)
        return out, ((h, out) if keep else None)

    @staticmethod
    def _b_maxpool(l: NpLayer, g: np.ndarray, cache: Any, w: Any, need_dx: bool) -> tuple[Any, Any, Any]:
        if not need_dx:
            return None, None, None
        h, out = cache
        dx = np.zeros(h.shape, dtype=_F32)
        free = np.ones(out.shape, dtype=bool)  # windows whose maximum is not yet routed
        for v, d in zip(Net._pool_views(l, h), Net._pool_views(l, dx)):
            hit = v == out
            hit &= free
            np.multiply(g, hit, out=d)
            free &= ~hit
        return dx, None, None

    # convolution: (C, B, H, W) -> (O, B, Ho, Wo)
    @staticmethod
    def _depthwise(l: NpLayer) -> bool:
        return l.groups == l.in_features == l.out_features and l.groups > 1

    @staticmethod
    def _f_conv(l: NpLayer, h: np.ndarray, w: Any, b: Any, keep: bool) -> tuple[np.ndarray, Any]:
        k, s, groups = l.kernel, l.stride, l.groups
        bsz = h.shape[1]
        _, ho, wo = l.out_shape
        c_in, c_out = l.in_features, l.out_features
        xp = _pad(h, l.padding)
        if Net._depthwise(l):  # k·k shifted multiply-adds, one weight per channel
            out = np.empty((c_out, bsz, ho, wo), dtype=_F32)
            out[...] = b[:, None, None, None]
            tmp = np.empty_like(out)
            for i in range(k):
                for j in range(k):
                    np.multiply(xp[:, :, _sl(i, s, ho), _sl(j, s, wo)], w[:, 0, i, j, None, None, None], out=tmp)
                    out += tmp
            return out, ((xp, xp.shape) if keep else None)
        if groups == 1:
            cols = _im2col(xp, k, s, ho, wo)
            out = (w.reshape(c_out, -1) @ cols + b[:, None]).reshape(c_out, bsz, ho, wo)
            return out, ((cols, xp.shape) if keep else None)
        ci, co = c_in // groups, c_out // groups
        out = np.empty((c_out, bsz * ho * wo), dtype=_F32)
        cols_g = []
        for gi in range(groups):
            cols = _im2col(xp[gi * ci : (gi + 1) * ci], k, s, ho, wo)
            out[gi * co : (gi + 1) * co] = (
                w[gi * co : (gi + 1) * co].reshape(co, -1) @ cols + b[gi * co : (gi + 1) * co, None]
            )
            cols_g.append(cols)
        return out.reshape(c_out, bsz, ho, wo), ((cols_g, xp.shape) if keep else None)

    @staticmethod
    def _b_conv(l: NpLayer, g: np.ndarray, cache: Any, w: Any, need_dx: bool) -> tuple[Any, Any, Any]:
        k, s, groups, pad = l.kernel, l.stride, l.groups, l.padding
        _, ho, wo = l.out_shape
        c_in, c_out = l.in_features, l.out_features
        g2 = g.reshape(c_out, -1)
        db = g2.sum(axis=1)
        if Net._depthwise(l):
            xp, padded_shape = cache
            dw = np.empty_like(w)
            dxp = np.zeros(padded_shape, dtype=_F32) if need_dx else None
            tmp = np.empty_like(g)
            for i in range(k):
                for j in range(k):
                    sl = (slice(None), slice(None), _sl(i, s, ho), _sl(j, s, wo))
                    np.multiply(g, xp[sl], out=tmp)
                    dw[:, 0, i, j] = tmp.reshape(c_out, -1).sum(axis=1)
                    if dxp is not None:
                        np.multiply(g, w[:, 0, i, j, None, None, None], out=tmp)
                        dxp[sl] += tmp
            return (_crop(dxp, pad) if dxp is not None else None), dw, db
        cols, padded_shape = cache
        if groups == 1:
            dw = (g2 @ cols.T).reshape(w.shape)
            if not need_dx:
                return None, dw, db
            dcols = (w.reshape(c_out, -1).T @ g2).reshape(c_in, k, k, *g.shape[1:])
            return _crop(_col2im(dcols, padded_shape, k, s, ho, wo), pad), dw, db
        ci, co = c_in // groups, c_out // groups
        dw = np.empty_like(w)
        dcols = np.empty((c_in, k, k) + g.shape[1:], dtype=_F32) if need_dx else None
        for gi in range(groups):
            gg = g2[gi * co : (gi + 1) * co]
            dw[gi * co : (gi + 1) * co] = (gg @ cols[gi].T).reshape(co, ci, k, k)
            if dcols is not None:
                dcols[gi * ci : (gi + 1) * ci] = (w[gi * co : (gi + 1) * co].reshape(co, -1).T @ gg).reshape(
                    ci, k, k, *g.shape[1:]
                )
        if dcols is None:
            return None, dw, db
        return _crop(_col2im(dcols, padded_shape, k, s, ho, wo), pad), dw, db


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def train(
    net: Net,
    start: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    cfg: LocalTraining,
    seed: int,
    round_: int,
    device: int,
    lr: float | None = None,
) -> tuple[np.ndarray, float, int]:
    """One round of local training of one device; returns (params, mean train CE, steps).

    ``x`` (N, prod(input_shape)), ``y`` are the device's samples in partition order.
    Same optimizer and batch order as :func:`tinytwin.emulate.mlp_np.train`."""
    n = len(y)
    tensors = net.split(np.asarray(start, dtype=_F32))
    anchors = [t.copy() for t in tensors] if cfg.prox_mu else None
    m = [np.zeros_like(t) for t in tensors] if (cfg.momentum or cfg.optimizer == "adam") else None
    v = [np.zeros_like(t) for t in tensors] if cfg.optimizer == "adam" else None
    step_lr = _F32(cfg.lr if lr is None else lr)
    ce_total, steps = 0.0, 0
    for epoch in range(cfg.epochs):
        order = device_permutations(seed, round_, epoch, np.array([device]), np.array([n]))[0]
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            g, ce = net.grads(tensors, x[idx], y[idx])
            steps += 1
            ce_total += ce
            for k, t in enumerate(tensors):
                gk = g[k]
                if cfg.prox_mu and anchors is not None:
                    gk = gk + _F32(cfg.prox_mu) * (t - anchors[k])
                if cfg.weight_decay:
                    gk = gk + _F32(cfg.weight_decay) * t
                if cfg.optimizer == "adam":
                    assert m is not None and v is not None
                    b1, b2 = ADAM_BETAS
                    m[k] = _F32(b1) * m[k] + _F32(1 - b1) * gk
                    v[k] = _F32(b2) * v[k] + _F32(1 - b2) * gk * gk
                    m_hat = m[k] / _F32(1 - b1**steps)
                    v_hat = v[k] / _F32(1 - b2**steps)
                    direction = m_hat / (np.sqrt(v_hat) + _F32(ADAM_EPS))
                elif cfg.momentum:
                    assert m is not None
                    m[k] = _F32(cfg.momentum) * m[k] + gk
                    direction = m[k]
                else:
                    direction = gk
                tensors[k] = t - step_lr * direction
    return net.join(tensors), ce_total / max(1, cfg.epochs * n), steps


def evaluate(net: Net, flat: np.ndarray, x: np.ndarray, y: np.ndarray, chunk: int = 1024) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of the flat model on (x, y) (chunks bound the im2col memory)."""
    tensors = net.split(np.asarray(flat, dtype=_F32))
    correct, loss = 0, 0.0
    for lo in range(0, len(y), chunk):
        logits, _ = net.forward(tensors, x[lo : lo + chunk], keep=False)
        yy = y[lo : lo + chunk]
        correct += int((logits.argmax(axis=1) == yy).sum())
        loss += float(-log_softmax(logits)[np.arange(len(yy)), yy].astype(np.float64).sum())
    return correct / max(len(y), 1), loss / max(len(y), 1)
