"""The files a centralized emulation's device processes start from: their data shard and key
(``emulate/devices/dN.npz``, ``emulate/keys/dN.key``, mode 600) and their configuration
(:class:`tinytwin.emulate.device_config.DeviceConfig`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.algorithms.attacks import attack_of
from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.emulate.device_config import DeviceConfig, memory_budget
from tinytwin.emulate.options import EmulateOptions
from tinytwin.emulate.tls import run_ca_file
from tinytwin.engines.experiment import Experiment
from tinytwin.store.files import save_npz_private, write_private
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm


def write_shards(edir: Path, exp: Experiment, keys: list[bytes] | dict[int, bytes]) -> None:
    """Every device's training shard (flattened samples) and its frame key."""
    ds = exp.dataset
    for d in range(exp.fleet.num_devices):
        save_npz_private(
            edir / "devices" / f"d{d}.npz",
            x=ds.x_train[exp.parts[d]].reshape(len(exp.parts[d]), -1),
            y=ds.y_train[exp.parts[d]],
        )
        write_private(edir / "keys" / f"d{d}.key", keys[d])


def write_device_configs(
    exp: Experiment,
    options: EmulateOptions,
    address: tuple[str, int],
    compute_s: np.ndarray,
    model_of: Callable[[int], dict[str, Any]],
    firmware: dict[int, dict[str, Any]],
    config_file: Callable[[int], Path],
) -> None:
    """Every device's configuration: the coordinator's ``address``, its model (``model_of(d)``:
    MLP rows or a layer list, of its own sub-model), its memory plan and budget, and (firmware
    devices) its image."""
    a = exp.spec.algorithm
    edir = config_file(0).parents[1]
    plan_of = {p.group: p for p in exp.memory}
    attacks = [at.model_dump() for at in exp.spec.attacks]
    sizes = list(exp.model.tensor_sizes)
    max_frame = max(
        fm.frame_size(enc.encoded_size(exp.model.num_params, a.downlink_encoding, tensor_sizes=sizes)), 4096
    )
    for g in exp.fleet.groups:
        plan = plan_of[g.name]
        for d in map(int, g.devices):
            sub = exp.models.of(d).model
            DeviceConfig(
                device=d,
                host=address[0],
                port=address[1],
                key_file=str(edir / "keys" / f"d{d}.key"),
                data_file=str(edir / "devices" / f"d{d}.npz"),
                seed=exp.spec.seed,
                num_params=sub.num_params,
                tensor_sizes=list(sub.tensor_sizes),
                train=LocalTraining.from_spec(a),
                encoding=a.encoding,
                time_scale=options.time_scale,
                compute_s=float(compute_s[d]),
                arena_bytes=int(plan.ram_needed),
                mem_budget_bytes=memory_budget(options, plan.ram_available, d),
                max_frame=max_frame,
                reconnect_grace_s=options.reconnect_grace_s,
                extra={
                    **model_of(d),
                    "downlink_encoding": a.downlink_encoding,
                    "attack": attack_of(attacks, d, exp.fleet.num_devices, exp.spec.seed),
                    "attack_history_file": str(config_file(d).with_name(f"d{d}.history.npz")),
                    "tls_ca": str(run_ca_file(config_file(d).parent.parent)) if options.tls else None,
                    **firmware.get(d, {}),
                },
            ).write(config_file(d))
