"""Hyper-parameters of local training, without torch.

Kept apart from :mod:`tinytwin.algorithms.local_update` (which needs torch) so that the
emulator's numpy device runtime trains with the very same configuration object and
optimizer constants as the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tinytwin.spec.schema import AlgorithmSpec

ADAM_BETAS = (0.9, 0.999)  # PyTorch's defaults
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class LocalTraining:
    """Hyper-parameters of local training."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0

    @classmethod
    def from_spec(cls, a: AlgorithmSpec) -> LocalTraining:
        """The spec's local training (``prox_mu``: FedProx's mu, 0 for every other algorithm):
        one definition for every twin's trainer and every emulated device's configuration."""
        return cls(a.local_epochs, a.batch_size, a.lr, a.optimizer, a.momentum, a.weight_decay, a.prox_mu)
