"""The shared radio medium (docs/cost-model.md, "Shared medium") against hand calculations."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import run_cli, write_spec
from tinytwin.engines.round_costs import round_costs
from tinytwin.engines.runner import start_run
from tinytwin.errors import SpecError
from tinytwin.fleet.build import build_fleet
from tinytwin.net.links import load_link_catalog
from tinytwin.net.medium import fifo_end_s
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import RunStore

# One round of digits, MLP 64-32-10 (P = 2 410), IID, one epoch, batch 8, plain SGD, on a
# 1-MFLOP/s profile; the link is the catalog's Wi-Fi without loss (shared, efficiency 0.9).
SPEC = {
    "name": "medium",
    "seed": 1,
    "rounds": 1,
    "dataset": {"name": "digits"},
    "partition": {"method": "iid"},
    "model": {"name": "mlp", "hidden": [32]},
    "fleet": {
        "profiles": {
            "bench": {
                "base": "esp32-s3",
                "flops_per_s": 1.0e6,
                "power": {"active_w": 0.5, "idle_w": 0.1, "tx_w": 1.0, "rx_w": 0.8},
            }
        },
        "groups": [{"name": "ap", "profile": "bench", "count": 20, "link": "wifi", "link_overrides": {"loss": 0.0}}],
    },
    "algorithm": {"local_epochs": 1, "batch_size": 8, "lr": 0.1},
}

FRAME = 62 + 4 * 2410  # 9 702 B: one float32 model in one wire frame
FLOPS_PER_SAMPLE = 4850 + 5460  # forward + backward of MLP 64-32-10 (docs/cost-model.md)


def spec_with(count: int = 20, **group: object) -> dict:
    spec = copy.deepcopy(SPEC)
    spec["fleet"]["groups"][0].update(count=count, **group)
    return spec


def run_one_round(spec: dict, tmp_path: Path) -> tuple[dict, list[dict]]:
    out = start_run(validate_spec(spec), "{}", tmp_path, None, report=False)
    store = RunStore(out.run_dir / "results.db")
    info = store.run_info()
    (rnd,) = store.rounds(info.run_id)
    rows = sorted(store.device_rounds(info.run_id), key=lambda r: r["device"])
    store.close()
    return rnd, rows


def test_fifo_end_by_hand() -> None:
    # ready 0, 0, 5 with services 2, 3, 1: 0+2 = 2, max(0, 2)+3 = 5, max(5, 5)+1 = 6
    assert fifo_end_s(np.array([0.0, 0.0, 5.0]), np.array([2.0, 3.0, 1.0])) == pytest.approx([2, 5, 6])
    # an idle gap: the second job starts when it is ready, not when the first ended
    assert fifo_end_s(np.array([0.0, 10.0]), np.array([2.0, 2.0])) == pytest.approx([2, 12])
    # served in order of readiness, whatever the input order
    assert fifo_end_s(np.array([4.0, 0.0]), np.array([1.0, 3.0])) == pytest.approx([5, 3])


def hand_wifi_round(n: int) -> tuple[float, list[tuple[float, float, float, float]]]:
    """The worked example of docs/cost-model.md, written out: (round, [(down, compute, up, energy)])."""
    samples = 1500 // n  # IID split of the 1 500 training samples
    compute = (samples * FLOPS_PER_SAMPLE + math.ceil(samples / 8) * 2 * 2410) / 1e6
    packets = math.ceil(FRAME / 1460)
    air = (FRAME + packets * 94) * 8 / 10e6  # 10 360 B at 10 Mbit/s = 8.288 ms
    slot = air / 0.9 if n > 1 else air  # contended airtime on the AP
    latency = 0.01
    medium_free = n * slot  # every download is ready at 0, so they go first, one after another
    rows, ends = [], []
    for k in range(n):
        down = (k + 1) * slot + latency  # wait for k downloads, own contended airtime, latency
        ready = down + compute
        start = max(ready, medium_free)
        medium_free = start + slot
        up = medium_free + latency - ready
        ends.append(ready + up)
        rows.append((down, compute, up, 0.8 * (air + latency) + 0.5 * compute + 1.0 * (air + latency)))
    round_s = max(ends)
    rows = [(d, c, u, e + 0.1 * (round_s - (2 * (air + latency) + c))) for d, c, u, e in rows]
    return round_s, rows


@pytest.mark.parametrize("n,doc_round_s,doc_energy_j", [(20, 1.0348, 0.4613), (100, 1.8518, 0.2802)])
def test_devices_behind_one_access_point_match_hand_calculation(
    tmp_path: Path, n: int, doc_round_s: float, doc_energy_j: float
) -> None:
    rnd, rows = run_one_round(spec_with(n), tmp_path)
    round_s, hand = hand_wifi_round(n)
    assert round_s == pytest.approx(doc_round_s, abs=1e-4)  # the figures in docs/cost-model.md
    assert hand[-1][3] == pytest.approx(doc_energy_j, abs=1e-4)
    assert rnd["duration_s"] == pytest.approx(round_s)
    assert len(rows) == n
    for row, (down, compute, up, energy) in zip(rows, hand):
        assert row["down_s"] == pytest.approx(down)
        assert row["compute_s"] == pytest.approx(compute)
        assert row["up_s"] == pytest.approx(up)
        assert row["energy_j"] == pytest.approx(energy)
    assert rnd["energy_j"] == pytest.approx(sum(h[3] for h in hand))


def test_dedicated_links_and_one_device_keep_the_independent_model(tmp_path: Path) -> None:
    air, latency = 10360 * 8 / 10e6, 0.01
    compute = (75 * FLOPS_PER_SAMPLE + 10 * 2 * 2410) / 1e6
    rnd, rows = run_one_round(spec_with(20, medium="dedicated"), tmp_path / "dedicated")
    assert rnd["duration_s"] == pytest.approx(2 * (latency + air) + compute)
    assert {round(r["down_s"], 9) for r in rows} == {round(latency + air, 9)}
    # one device alone on its medium: no queue and no contention
    rnd, (row,) = run_one_round(spec_with(1), tmp_path / "alone")
    compute = (1500 * FLOPS_PER_SAMPLE + 188 * 2 * 2410) / 1e6
    assert rnd["duration_s"] == pytest.approx(2 * (latency + air) + compute)


def test_groups_naming_one_medium_share_it(tmp_path: Path) -> None:
    one = spec_with(20)
    two = spec_with(10, medium="hall")
    two["fleet"]["groups"].append({**two["fleet"]["groups"][0], "name": "ap2"})
    rnd_one, _ = run_one_round(one, tmp_path / "one")
    rnd_two, _ = run_one_round(two, tmp_path / "two")
    assert rnd_two["duration_s"] == pytest.approx(rnd_one["duration_s"])
    apart = copy.deepcopy(two)
    for g in apart["fleet"]["groups"]:
        del g["medium"]  # one medium per group (the default): each AP carries 10
    rnd_apart, _ = run_one_round(apart, tmp_path / "apart")
    assert rnd_apart["duration_s"] < rnd_two["duration_s"]


def test_lora_duty_cycle_by_hand(tmp_path: Path) -> None:
    spec = spec_with(1, link="lora")
    rnd, (row,) = run_one_round(spec, tmp_path)
    packets = math.ceil(FRAME / 222)  # 44 frames, the last one carries 9 702 - 43 * 222 = 156 B
    air = (FRAME + packets * 30) * 8 / 5470  # 11 022 B at 5.47 kbit/s = 16.12 s
    tail = (FRAME - 43 * 222 + 30) * 8 / 5470
    off = (air - tail) * (1 / 0.01 - 1)  # silent 99 x its airtime after each of the first 43 frames
    assert packets == 44 and off == pytest.approx(1568.94, abs=0.01)
    down = 1.0 + air
    up = 1.0 + air + off
    compute = (1500 * FLOPS_PER_SAMPLE + 188 * 2 * 2410) / 1e6
    assert row["down_s"] == pytest.approx(down)
    assert row["up_s"] == pytest.approx(up)
    assert rnd["duration_s"] == pytest.approx(down + compute + up)
    # the radio sends only during 1 s + airtime; the off-time is idle
    energy = 0.8 * down + 0.5 * compute + 1.0 * (1.0 + air) + 0.1 * off
    assert row["energy_j"] == pytest.approx(energy)
    assert (rnd["duration_s"], energy) == pytest.approx((1619.55, 195.90), abs=0.01)  # docs/cost-model.md


def fake_experiment(link: str, count: int) -> SimpleNamespace:
    """Just what round_costs reads: ``count`` identical devices (100 samples each) on one medium."""
    spec = validate_spec(spec_with(count, link=link, link_overrides={}))
    return SimpleNamespace(
        spec=spec,
        fleet=build_fleet(spec),
        num_samples=np.full(count, 100),
        device_flops_per_sample=np.full(count, FLOPS_PER_SAMPLE),
        device_flops_per_step=np.full(count, 2 * 2410),
        device_uplink_bytes=np.full(count, FRAME),
        device_downlink_bytes=np.full(count, FRAME),
        timeline=SimpleNamespace(cut_s=lambda r: np.full(count, np.inf)),
    )


@pytest.mark.parametrize("link", ["wifi", "ble", "ieee802154", "lora"])
def test_more_devices_on_one_medium_never_finish_sooner(link: str) -> None:
    assert load_link_catalog()[link].shared_medium
    exp = fake_experiment(link, 200)
    ids = np.arange(200)
    previous = 0.0
    times = []
    for n in range(1, 201):
        sel = ids[:n]
        costs = round_costs(exp, 1, sel, sel, np.zeros(n, dtype=bool))
        assert costs.round_s >= previous - 1e-9, f"{link}: {n} devices finish sooner than {n - 1}"
        previous = costs.round_s
        times.append(costs.round_s)
    assert times[-1] > 2 * times[0]  # the medium really is shared


def test_wired_links_stay_independent() -> None:
    exp = fake_experiment("ethernet", 50)
    sel = np.arange(50)
    costs = round_costs(exp, 1, sel, sel, np.zeros(50, dtype=bool))
    assert costs.down_wait_s.max() == 0 and costs.up_wait_s.max() == 0
    one = round_costs(exp, 1, sel[:1], sel[:1], np.zeros(1, dtype=bool))
    assert costs.round_s == pytest.approx(one.round_s)


def test_one_medium_cannot_carry_two_kinds_of_radio() -> None:
    spec = spec_with(5, medium="hall")
    spec["fleet"]["groups"].append({"name": "tags", "profile": "bench", "count": 5, "link": "ble", "medium": "hall"})
    with pytest.raises(SpecError) as err:
        build_fleet(validate_spec(spec))
    assert str(err.value).startswith("fleet.groups.1.medium:")
    assert "'wifi'" in str(err.value) and "'ble'" in str(err.value)


BAD = """
name: t
rounds: 2
dataset: {name: digits}
model: {name: mlp, hidden: [16]}
fleet:
  groups:
    - {profile: esp32-s3, count: 3, link: wifi, medium: MEDIUM}
"""


@pytest.mark.parametrize(
    "medium,expected",
    [("'ap 1'", "fleet.groups.0.medium: String should match pattern"), ("''", "fleet.groups.0.medium")],
)
def test_bad_medium_one_line_exit_2_no_run_folder(tmp_path: Path, medium: str, expected: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml", BAD.replace("MEDIUM", medium))
    out = tmp_path / "runs"
    proc = run_cli("run", str(spec), "--out", str(out), "--quiet")
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert expected in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_mixed_radios_on_one_medium_exit_2(tmp_path: Path) -> None:
    text = BAD.replace("MEDIUM", "hall") + "    - {profile: esp32-s3, count: 3, link: ble, medium: hall}\n"
    out = tmp_path / "runs"
    proc = run_cli("run", str(write_spec(tmp_path / "spec.yaml", text)), "--out", str(out), "--quiet")
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].count("fleet.groups.1.medium") == 1
    assert not out.exists() or not any(out.iterdir())


def test_plan_rows_name_each_groups_medium() -> None:
    from tinytwin.engines.experiment import prepare
    from tinytwin.engines.planning import plan_groups

    spec = spec_with(10, medium="hall")
    groups = spec["fleet"]["groups"]
    groups.append({**groups[0], "name": "ap2", "count": 5})
    groups.append({"name": "wired", "profile": "bench", "count": 3, "link": "ethernet"})
    groups.append({"name": "tags", "profile": "bench", "count": 4, "link": "ble"})
    rows = plan_groups(prepare(validate_spec(spec), None, check_memory=False))
    # 15 Wi-Fi devices, each one 10 360-B download and upload at 10 Mbit/s, contended (0.9)
    assert rows[0]["medium_airtime_s"] == pytest.approx(15 * 2 * 10360 * 8 / 10e6 / 0.9)
    assert rows[2]["medium_airtime_s"] is None
    assert [(r["medium"], r["medium_devices"]) for r in rows] == [
        ("hall", 15),
        ("hall", 15),
        ("dedicated", 1),
        ("tags", 4),
    ]
