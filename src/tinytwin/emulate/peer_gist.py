"""A Gist device's part of a peer process (numpy only): what it sends after training (its
accuracy on the shared validation set and one band per send, drawn as the simulator draws it,
:mod:`tinytwin.algorithms.gist_np`) and how it merges the segments it receives (the
simulator's Gist delivery)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytwin.algorithms import gist_np
from tinytwin.emulate import mlp_np
from tinytwin.emulate.peer_runtime import Received
from tinytwin.emulate.peer_trainer import NumpyPeerTrainer

Segment = tuple[float, np.ndarray, np.ndarray]
"""A received segment: (sender weight, mask, values)."""


@dataclass
class GistState:
    """What a Gist device carries from round to round (rolled back with the model on a resume)."""

    buffer: deque[Segment]
    """Received segments, oldest dropped when full."""
    merges: int = 0
    accuracy: float = 0.0


class GistPeer:
    """A Gist device: its settings (the ``gist`` block), the shared validation set, its bands."""

    def __init__(self, g: dict[str, Any], validation_file: str, linears: list[mlp_np.Linear], n: int, seed: int):
        self.g, self.linears, self.n, self.seed = g, linears, n, seed
        val = np.load(validation_file)
        self.x_val, self.y_val = val["x"].astype(np.float32), val["y"].astype(np.int64)
        self.band_bounds = gist_np.band_bounds(n, int(g["segments"]))
        self.state = GistState(deque(maxlen=int(g["buffer_size"])))

    def payloads(self, params: np.ndarray, cmd: dict[str, Any]) -> tuple[list[bytes], float]:
        """Gist after training: the accuracy on the shared validation set, the bands, and one
        segment per send, each band drawn as the simulator draws it (gist_np); returns the
        payloads in send order and the accuracy."""
        g = self.g
        acc, _ = mlp_np.evaluate(self.linears, params, self.x_val, self.y_val)
        self.state.accuracy = float(acc)
        send = cmd.get("send", [])
        if not send:
            return [], self.state.accuracy
        where = cmd.get("gist", {})
        key = int(cmd["round"])
        if g["segmentation"] == "importance":
            order = gist_np.band_order(params)
        else:
            order = gist_np.random_order(self.seed, key, int(where.get("row", 0)), self.n)
        importance = gist_np.band_importance(params, order, self.band_bounds)
        probs = gist_np.selection_probabilities(
            importance, g["selection"], float(g["exp_base"]), bool(g["drop_lowest"])
        )
        u = gist_np.send_uniforms(self.seed, key, int(where.get("offset", 0)), len(send))
        bands = gist_np.choose_bands(probs, u)
        out = [
            gist_np.encode_payload(self.state.accuracy, params, gist_np.segment_mask(order, self.band_bounds, int(b)))
            for b in bands
        ]
        return out, self.state.accuracy

    def merge(
        self, params: np.ndarray, msgs: list[Received], extra: dict[str, Any], trainer: NumpyPeerTrainer
    ) -> np.ndarray:
        """The simulator's Gist delivery: segments join the FIFO buffer in message order; once it
        holds ``min_received`` the device merges them all (success-weighted: each sender's
        accuracy, its own as the local weight; vanilla: all 1) and clears it."""
        success = self.g["merge"] == "success"
        st = self.state
        for m in msgs:
            assert m.mask is not None
            st.buffer.append((m.accuracy if success else 1.0, m.mask, m.values))
        extra["gist_buffer"] = len(st.buffer)
        if not msgs or len(st.buffer) < int(self.g["min_received"]):
            return params
        merged = trainer.gist(params, st.accuracy if success else 1.0, list(st.buffer))
        st.buffer.clear()
        st.merges += 1
        extra["gist_merged"] = True
        return merged
