"""The emulation's link shaper and shared radio media (docs/cost-model.md, "Shared medium")."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tinytwin.emulate import shaper

LINK = shaper.Link(0.01, 1e6, 1e6, 0.0, 1000, 0)


def test_kernel_shaped_links_still_wait_for_the_medium() -> None:
    # 10 000 B at 1 Mbit/s: 0.08 s serialisation + 0.01 s latency, after 0.5 s waiting for the medium
    link_s = 0.5 + 0.01 + 0.08
    assert shaper.userspace_share(link_s, 10_000, 1e6, LINK, shaper.KERNEL_NONE, 0.5) == pytest.approx(link_s)
    assert shaper.userspace_share(link_s, 10_000, 1e6, LINK, shaper.KERNEL_RATE, 0.5) == pytest.approx(0.51)
    assert shaper.userspace_share(link_s, 10_000, 1e6, LINK, shaper.KERNEL_RATE_DELAY, 0.5) == pytest.approx(0.5)
    assert shaper.userspace_share(link_s, 10_000, 1e6, LINK, shaper.KERNEL_RATE_DELAY) == 0.0


def _hold_together(gate: shaper.MediumGate, media: list[str | None], seconds: float) -> tuple[float, list[float]]:
    waited: list[float] = [0.0] * len(media)

    def one(i: int) -> None:
        waited[i] = gate.hold(media[i], seconds)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(media))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0, waited


def test_medium_gate_serializes_one_medium_only(tmp_path: Path) -> None:
    gate = shaper.MediumGate(tmp_path / "media")
    elapsed, waited = _hold_together(gate, ["ap", "ap", "ap"], 0.15)
    assert elapsed >= 0.45 * 0.95  # three airtimes one after another
    assert sorted(waited)[-1] >= 0.25  # the last one waited for the two others
    elapsed, _ = _hold_together(gate, ["ap", "gw", None], 0.15)
    assert elapsed < 0.4  # different media (and no medium) do not wait for each other


def test_medium_gate_default_shares_nothing() -> None:
    elapsed, waited = _hold_together(shaper.MediumGate(), ["ap", "ap"], 0.15)
    assert elapsed < 0.28 and waited == [0.0, 0.0]
