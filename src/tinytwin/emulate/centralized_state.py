"""What carries a centralized emulation from one round to the next (its checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tinytwin.engines.state import Checkpointed


@dataclass
class EmuState(Checkpointed):
    """What carries an emulation from one round to the next (the round's checkpoint)."""

    round: int
    global_params: torch.Tensor
    server_state: dict[str, torch.Tensor]
    sim_time_s: float  # modelled: the cost model's round durations summed (the simulator's clock)
    energy_j: np.ndarray  # modelled, cumulative per device
    wall_s: float = 0.0  # wall seconds emulated so far (start-up included, a killed coordinator's downtime not)
    bytes_up: int = 0
    bytes_down: int = 0
    accuracies: list[tuple[int, float]] = field(default_factory=list)
    round_walls: list[float] = field(default_factory=list)
    distillation: list[list[float]] = field(default_factory=list)  # per round: DistillRound.log_row()
    battery_j: np.ndarray | None = None  # per device charge (fleet/battery.py); None: no batteries
    battery_empty: np.ndarray | None = None
