"""User-facing errors.

Anything a user can cause (a wrong spec key, a missing data file, a model that fits no
device) raises a :class:`TinyTwinError`. The CLI turns it into one line on stderr and
exit status 2 — never a traceback — so every module raises these instead of printing.
"""

from __future__ import annotations


class TinyTwinError(Exception):
    """An error the user can fix; its message says what is wrong and how to fix it."""

    exit_code = 2


class SpecError(TinyTwinError):
    """The experiment file is invalid. ``path`` is the dotted key path, e.g. ``fleet.groups.0.count``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.detail = message
        super().__init__(f"{path}: {message}" if path else message)


class DataError(TinyTwinError):
    """A dataset file is missing or malformed."""


class MemoryPlanError(TinyTwinError):
    """Local training does not fit a device's RAM or flash."""
