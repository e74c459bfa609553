"""Shared by the tests that build network namespaces: they need root on Linux with iproute2.

CI runs as root, so a missing privilege or tool is a test *error* with a message saying
which, never a skip that would hide that the namespace path went untested."""

from __future__ import annotations

import os
import shutil
import sys

import pytest


def require_netns_privileges() -> None:
    missing = []
    if not sys.platform.startswith("linux"):
        missing.append(f"Linux (this is {sys.platform})")
    elif os.geteuid() != 0:
        missing.append(f"root (euid is {os.geteuid()})")
    missing += [f"`{t}` (iproute2)" for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        pytest.fail(
            "this test creates network namespaces, veths and tc qdiscs and needs "
            + ", ".join(missing)
            + "; run the suite as root on Linux (CI does)"
        )
