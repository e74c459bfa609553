"""The files a hierarchical emulation's processes start from: each local aggregator's and each
device's configuration (:class:`tinytwin.emulate.device_config.DeviceConfig`), shards and keys.

A concern of :class:`tinytwin.emulate.hier_coordinator.HierEmulation`; the state it reads and
writes is typed once, in :class:`tinytwin.emulate.hier_state.HierState`."""

from __future__ import annotations

import json
from pathlib import Path

from tinytwin.algorithms.attacks import attack_of
from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.emulate.aggregator import aggregator_id
from tinytwin.emulate.device_config import DeviceConfig, memory_budget
from tinytwin.emulate.hier_state import HierState
from tinytwin.emulate.tls import run_ca_file
from tinytwin.emulate.wire_np import derive_key
from tinytwin.store.files import save_npz_private, write_private
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm


class HierFiles(HierState):
    """Methods of :class:`~tinytwin.emulate.hier_coordinator.HierEmulation` that write the files
    its processes start from."""

    def _la_config(self, c: int, first: bool) -> Path:
        kf = self.edir / "keys" / f"la{c}.json"
        if first:
            write_private(
                kf,
                json.dumps(
                    {
                        "coordinator": self.coord.keys[aggregator_id(c)].hex(),
                        # orchestrated: any device may be moved to any aggregator
                        "devices": {
                            str(d): derive_key(self.run_key, d).hex()
                            for d in (range(self.n) if self.orchestrated else self.members[c])
                        },
                    }
                ),
            )
        a = self.a
        cfg = {
            "role": "aggregator",
            "cluster": c,
            "host": "127.0.0.1",
            "ga_port": self.port,
            "port": self.la_port.get(c, 0),
            "key_file": str(kf),
            "members": {str(d): int(self.sim.n_train[d]) for d in self.members[c]},
            "num_params": self.exp.model.num_params,
            "tensor_sizes": self.sizes,
            "encoding": a.encoding,
            "downlink_encoding": a.downlink_encoding,
            "hello_timeout_s": self.opt.start_timeout_s,
            "round_timeout_s": self.opt.round_timeout_s,
            "reconnect_grace_s": self.opt.reconnect_grace_s,
            "announce_ready": first,
            "tls_ca": self._tls_ca(),
            "rule": a.aggregator.name,  # one of aggregators_np.NP_RULES (check_hier_emulatable)
            "beta": a.aggregator.beta,
            "orchestrated": self.orchestrated,
        }
        path = self.edir / "aggregators" / f"la{c}.json"
        write_private(path, json.dumps(cfg))
        return path

    def _tls_ca(self) -> str | None:
        """--tls: the run's CA file (made with the coordinator's certificate when it binds)."""
        return str(run_ca_file(self.edir)) if self.opt.tls else None

    def _write_devices(self) -> None:
        exp, sim = self.exp, self.sim
        ds = exp.dataset
        for d in range(self.n):
            idx = sim.train_idx[d]
            save_npz_private(
                self.edir / "devices" / f"d{d}.npz", x=ds.x_train[idx].reshape(len(idx), -1), y=ds.y_train[idx]
            )
            write_private(self.edir / "keys" / f"d{d}.key", derive_key(self.run_key, d))
            self._device_config(d)

    def _device_config(self, d: int) -> None:
        """The centralized twin's device config, with the address of the device's local aggregator
        (a device outside an orchestrated configuration calls the GA, which registers and places it)."""
        exp, a = self.exp, self.a
        plan = self.plan_of[d]
        max_frame = max(
            fm.frame_size(enc.encoded_size(exp.model.num_params, a.downlink_encoding, tensor_sizes=self.sizes)), 4096
        )
        DeviceConfig(
            device=d,
            host="127.0.0.1",
            port=self.la_port[int(self.sim.assign[d])] if self.sim.assign[d] >= 0 else self.port,
            key_file=str(self.edir / "keys" / f"d{d}.key"),
            data_file=str(self.edir / "devices" / f"d{d}.npz"),
            seed=exp.spec.seed,
            num_params=exp.model.num_params,
            tensor_sizes=self.sizes,
            train=LocalTraining.from_spec(a),
            encoding=a.encoding,
            time_scale=self.opt.time_scale,
            compute_s=float(self.sim.compute_s[d]),
            arena_bytes=int(plan.ram_needed),
            mem_budget_bytes=memory_budget(self.opt, plan.ram_available, d),
            max_frame=max_frame,
            reconnect_grace_s=self.opt.reconnect_grace_s,
            extra={
                "role": "device",
                "linears": self.linears_rows,
                "layers": self.layer_rows,
                "downlink_encoding": a.downlink_encoding,
                "attack": attack_of(self.attacks, d, self.n, exp.spec.seed),
                "tls_ca": self._tls_ca(),
                **self.firmware.get(d, {}),
            },
        ).write(self.edir / "devices" / f"d{d}.json")
