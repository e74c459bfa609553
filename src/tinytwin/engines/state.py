"""Engine state that survives a crash: every field goes into the round's checkpoint."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T", bound="Checkpointed")


class Checkpointed:
    """Mixin for the dataclasses that carry an engine from one round to the next.

    The checkpoint is the dataclass's fields as a dict (tensors and arrays included); the
    store writes it as plain data and arrays (:mod:`tinytwin.store.checkpoint`, never a pickle)
    in the same transaction as the round, and resuming rebuilds the state from exactly those fields.
    """

    def to_checkpoint(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_checkpoint(cls: type[T], ck: dict[str, Any]) -> T:
        return cls(**ck)
