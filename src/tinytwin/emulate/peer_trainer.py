"""What a peer process trains and merges with: numpy in the process, or its firmware on QEMU.

A decentralized device (:mod:`tinytwin.emulate.peer`) does the networking itself — frames,
keys, link shaping, waiting for its neighbours — and asks a *peer trainer* for the two
pieces of computation a device of a decentralized run does:

* one round of local training at the learning rate the coordinator's per-device schedule
  gives (``train``), and
* merging what it received with the algorithm's rule (``mix``, ``average``, ``age``,
  ``fifo_mean``, ``gist``, ``pull_merge``).

:class:`NumpyPeerTrainer` runs both in the process (:mod:`tinytwin.emulate.mlp_np`,
:mod:`tinytwin.emulate.peer_merge`, :mod:`tinytwin.algorithms.gist_np`).
:class:`FirmwarePeerTrainer` runs both on the device's own firmware — the project's C
client on one QEMU instance (:class:`tinytwin.emulate.trainers.FirmwareTrainer`): ``T``
trains, ``M`` mixes (DecFedAvg / server-free rows; gossip's average, age-weighted pair and
FIFO mean, and segmented gossip's weighted mean of one segment are mixes with the
corresponding weights), ``G`` merges Gist segments. What the
client has no command for stays in the device process, in numpy: the validation accuracy
a Gist payload carries and the choice of the band to send. A firmware fault
(``!FAULT``, MPU violation, lock-up, hang) becomes a
:class:`~tinytwin.emulate.trainers.DeviceFault` written to the device's ``fault.json``.

Both import numpy only at module level (never torch); the firmware bridge is imported
only when a firmware device is created.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from tinytwin.algorithms import gist_np
from tinytwin.emulate import mlp_np
from tinytwin.emulate.peer_merge import fifo_mean, merge_age, merge_average, mix_row
from tinytwin.emulate.trainers import DeviceFault, RoundResult


class NumpyPeerTrainer:
    """Local training and merging in this process (the default peer)."""

    caps_process_memory = True
    kind = "process"

    def __init__(self, cfg: dict[str, Any], x: np.ndarray, y: np.ndarray) -> None:
        self.linears = mlp_np.linears_from(cfg["linears"])
        self.tc = mlp_np.LocalTraining(**cfg["train"])
        self.seed = int(cfg["seed"])
        self.device = int(cfg["device"])
        self.compute_s = float(cfg["compute_s"])
        self.x, self.y = x, y
        self.merge_insns = 0

    def train(self, start: np.ndarray, round_: int, lr: float) -> RoundResult:
        params, loss, steps = mlp_np.train(
            self.linears, start, self.x, self.y, replace(self.tc, lr=float(lr)), self.seed, round_, self.device
        )
        return RoundResult(params, loss, steps, self.compute_s)

    def mix(
        self,
        own: np.ndarray,
        self_weight: float,
        received: Sequence[tuple[float, np.ndarray]],
        missing_weight: float = 0.0,
    ) -> np.ndarray:
        return mix_row(own, self_weight, received, missing_weight)

    def average(self, own: np.ndarray, received: Sequence[np.ndarray]) -> np.ndarray:
        return merge_average(own, received)

    def age(self, own: np.ndarray, own_age: int, received: Sequence[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
        return merge_age(own, own_age, received)

    def fifo_mean(self, slots: np.ndarray) -> np.ndarray:
        return fifo_mean(slots)

    def gist(
        self, own: np.ndarray, local_weight: float, segments: Sequence[tuple[float, np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """``segments``: (sender weight, mask, values of the set positions)."""
        return gist_np.merge(own, local_weight, segments).astype(np.float32)

    def pull_merge(self, own: np.ndarray, own_weight: float, pulled: Sequence[tuple[float, np.ndarray]]) -> np.ndarray:
        """Segmented gossip, one segment: ``(n_i·w + Σ n_p·w_p) / (n_i + Σ n_p)`` in float32, in
        the order of :func:`tinytwin.algorithms.segments.segment_pull`."""
        total = np.zeros_like(own, dtype=np.float32)
        wsum = np.float32(0.0)
        for w, z in pulled:
            total += np.float32(w) * z
            wsum += np.float32(w)
        ow = np.float32(own_weight)
        return ((ow * own + total) / (ow + wsum)).astype(np.float32)

    def close(self) -> None:
        pass


class FirmwarePeerTrainer(NumpyPeerTrainer):
    """Training and merging by the C client on an emulated Cortex-M board (one QEMU)."""

    caps_process_memory = False  # the board's RAM budget is the linker's and the MPU's
    kind = "firmware"

    def __init__(self, cfg: dict[str, Any], x: np.ndarray, y: np.ndarray) -> None:
        from tinytwin.emulate.trainers import FirmwareTrainer

        super().__init__(cfg, x, y)
        self.fw = FirmwareTrainer(cfg, x, y)  # boots QEMU, writes data.bin
        self.merge_commands = 0

    def train(self, start: np.ndarray, round_: int, lr: float) -> RoundResult:
        # the round's learning rate (AdaStair / AdaLoss) goes into round.bin with the rest of tc
        self.fw.tc = replace(self.fw.tc, lr=float(lr))
        return self.fw.train(start, round_)

    def _merge(self, round_note: str, call: Any) -> np.ndarray:
        from tinytwin.firmware.qemu import FirmwareFault

        try:
            res = call()
        except FirmwareFault as fault:
            self.fw.fault_file.write_text(
                json.dumps(
                    {"round": round_note, "kind": fault.kind, "detail": fault.detail, "returncode": fault.returncode}
                )
            )
            raise DeviceFault(fault.kind, fault.detail) from None
        self.merge_insns += int(res.insns)
        self.merge_commands += 1
        return np.asarray(res.params, dtype=np.float32)

    def _mix(self, weights: Sequence[float], models: Sequence[np.ndarray]) -> np.ndarray:
        w = [float(np.float32(x)) for x in weights]
        return self._merge("merge (M)", lambda: self.fw.dev.mix(w, [np.asarray(m, np.float32) for m in models]))

    def mix(
        self,
        own: np.ndarray,
        self_weight: float,
        received: Sequence[tuple[float, np.ndarray]],
        missing_weight: float = 0.0,
    ) -> np.ndarray:
        # mix_row's float32 order: (W_ii + missing)·x first, then each neighbour in message order
        weights = [np.float32(self_weight + missing_weight)] + [np.float32(w) for w, _ in received]
        return self._mix(weights, [own] + [z for _, z in received])

    def average(self, own: np.ndarray, received: Sequence[np.ndarray]) -> np.ndarray:
        if not received:
            return own
        k = np.float32(1.0) / np.float32(1 + len(received))
        return self._mix([k] * (1 + len(received)), [own, *received])

    def age(self, own: np.ndarray, own_age: int, received: Sequence[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
        w, t = np.asarray(own, np.float32), int(own_age)
        for z, tm in received:  # merge_age's pairwise rule, each pair one M on the board
            total = np.float32(t + tm)
            wa = np.float32(t) / total if total > 0 else np.float32(0.5)
            w = self._mix([wa, np.float32(1.0) - wa], [w, z])
            t = max(t, int(tm))
        return w, t

    def fifo_mean(self, slots: np.ndarray) -> np.ndarray:
        k = np.float32(1.0) / np.float32(max(len(slots), 1))
        return self._mix([k] * len(slots), list(slots))

    def gist(
        self, own: np.ndarray, local_weight: float, segments: Sequence[tuple[float, np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        segs = [(float(a), np.asarray(vals, np.float32), mask) for a, mask, vals in segments]
        return self._merge(
            "merge (G)", lambda: self.fw.dev.gist(np.asarray(own, np.float32), float(local_weight), segs)
        )

    def pull_merge(self, own: np.ndarray, own_weight: float, pulled: Sequence[tuple[float, np.ndarray]]) -> np.ndarray:
        if not pulled:
            return own
        den = np.float32(own_weight) + np.float32(sum(np.float32(w) for w, _ in pulled))
        weights = [np.float32(own_weight) / den] + [np.float32(w) / den for w, _ in pulled]
        return self._mix(weights, [own] + [z for _, z in pulled])  # one M over the segment's values

    def close(self) -> None:
        self.fw.close()


def make_peer_trainer(cfg: dict[str, Any], x: np.ndarray, y: np.ndarray) -> NumpyPeerTrainer:
    return FirmwarePeerTrainer(cfg, x, y) if cfg.get("twin") == "firmware" else NumpyPeerTrainer(cfg, x, y)
