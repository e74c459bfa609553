"""Memory planner: does local training fit a device's RAM, and the model and data its flash?

Memory is a hard constraint: ``tinytwin run`` refuses a fleet in which some group's
training does not fit, and prints the numbers by component so the user sees why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tinytwin.models.accounting import BYTES_PER_VALUE, TrainingMemory, training_memory
from tinytwin.models.zoo import ModelDef
from tinytwin.wire.encoding import encoded_size
from tinytwin.wire.frame import FRAME_OVERHEAD, frame_size


@dataclass(frozen=True)
class MemoryPlan:
    group: str
    profile: str
    training: TrainingMemory
    ram_available: int
    flash_components: dict[str, int]
    flash_available: int

    @property
    def ram_needed(self) -> int:
        return self.training.total

    @property
    def flash_needed(self) -> int:
        return sum(self.flash_components.values())

    @property
    def fits_ram(self) -> bool:
        return self.ram_needed <= self.ram_available

    @property
    def fits_flash(self) -> bool:
        return self.flash_needed <= self.flash_available

    @property
    def fits(self) -> bool:
        return self.fits_ram and self.fits_flash

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "profile": self.profile,
            "needed_bytes": self.ram_needed,
            "available_bytes": self.ram_available,
            "flash_needed_bytes": self.flash_needed,
            "flash_available_bytes": self.flash_available,
            "fits": self.fits,
            "components": self.training.as_dict(),
            "flash_components": dict(self.flash_components),
        }

    def explain(self) -> str:
        """One line saying what does not fit and by how much, component by component."""
        parts = []
        if not self.fits_ram:
            comps = ", ".join(f"{k} {v:,}" for k, v in self.training.as_dict().items() if v)
            parts.append(
                f"training needs {self.ram_needed:,} B of RAM but {self.profile} has "
                f"{self.ram_available:,} B available ({comps})"
            )
        if not self.fits_flash:
            comps = ", ".join(f"{k} {v:,}" for k, v in self.flash_components.items() if v)
            parts.append(
                f"model and data need {self.flash_needed:,} B of flash but {self.profile} has "
                f"{self.flash_available:,} B available ({comps})"
            )
        return "; ".join(parts) if parts else "fits"


def message_bytes(num_params: int, encoding: str, tensor_sizes: list[int]) -> int:
    """Bytes of one framed model message (the unit the cost model and the emulator both count)."""
    return frame_size(encoded_size(num_params, encoding, tensor_sizes=tensor_sizes))


def _buffer_bytes(num_params: int, encoding: str, tensor_sizes: list[int]) -> int:
    """RAM for one framed message, without :func:`frame_size`'s one-frame limit.

    Why: the planner must report a model too large for any device with its numbers; the limit
    on what one frame carries is checked after the plan (engines.experiment), not here.
    """
    return FRAME_OVERHEAD + encoded_size(num_params, encoding, tensor_sizes=tensor_sizes)


def plan_memory(
    group: str,
    profile: Any,
    model: ModelDef,
    *,
    batch_size: int,
    optimizer: str,
    momentum: float,
    prox_mu: float,
    uplink_encoding: str,
    downlink_encoding: str,
    max_samples: int,
) -> MemoryPlan:
    """The memory plan of one device group. ``max_samples`` is the largest local dataset in the group."""
    sizes = model.tensor_sizes
    training = training_memory(
        model.layers,
        batch_size,
        optimizer=optimizer,
        momentum=momentum,
        prox_mu=prox_mu,
        receive_bytes=_buffer_bytes(model.num_params, downlink_encoding, sizes),
        send_bytes=_buffer_bytes(model.num_params, uplink_encoding, sizes),
    )
    input_values = model.layers[0].in_size if model.layers else 0
    flash = {
        "model": model.num_params * BYTES_PER_VALUE,
        "data": max_samples * input_values,  # samples stored as 8-bit sensor values
    }
    return MemoryPlan(group, profile.name, training, profile.training_ram_bytes, flash, profile.model_flash_bytes)
