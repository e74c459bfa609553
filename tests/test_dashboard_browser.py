"""The dashboard and the HTML report in a real headless Chromium, against a real run.

A simulation of 24 rounds (slowed down with many local epochs so the page can watch it)
writes into a runs folder that a real ``tinytwin dashboard`` serves; the page must follow
the run as it goes, show a device's rounds when one is clicked, and the finished run's
report.html must render its charts from a file:// URL without any network.
"""

from __future__ import annotations

import time
from pathlib import Path

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from browser_util import chrome, console_errors, dashboard_server, start_cli, wait_for

ROUNDS = 24
SPEC = f"""
name: watched
seed: 7
rounds: {ROUNDS}
dataset: {{name: digits}}
partition: {{method: dirichlet, alpha: 0.5}}
model: {{name: mlp, hidden: [32]}}
fleet:
  groups:
    - {{name: esp32, profile: esp32-s3, count: 16, link: wifi}}
    - {{name: nrf, profile: nrf52840, count: 8, link: ble}}
algorithm: {{name: fedavg, clients_per_round: 1.0, local_epochs: 40, batch_size: 4, lr: 0.05}}
evaluation: {{every: 1}}
"""

JS_PROGRESS = """
const gd = document.getElementById('chart-acc-round');
return [document.getElementById('round-counter').textContent,
        gd && gd.data ? gd.data[0].x.length : -1,
        document.getElementById('run-status').textContent];
"""
JS_REPORT = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(g => [g.id, g.data.length,
  g.data[g.data.length - 1].x ? g.data[g.data.length - 1].x.length : (g.data[0].z || []).length]);
"""


def watch_run(driver, sim) -> list[tuple[int, int, str]]:
    """(round counter, accuracy points, status) each time the page changes, until the run leaves 'running'."""
    t0 = time.monotonic()
    seen: list[tuple[int, int, str]] = []
    while True:
        counter, points, status = driver.execute_script(JS_PROGRESS)
        if not seen or seen[-1] != (int(counter), points, status):
            seen.append((int(counter), points, status))
        if status != "running" or time.monotonic() - t0 > 170:
            return seen
        time.sleep(0.05)


def click_device(driver, index: int) -> None:
    """A real mouse click on the ``index``-th device marker of the fleet chart."""
    dots = wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#chart-fleet g.trace.scatter path.point"), 20, "fleet dots"
    )
    assert len(dots) == 24
    ActionChains(driver).move_to_element(dots[index]).click().perform()
    wait_for(lambda: driver.find_element(By.ID, "device-panel").is_displayed(), 20, "the device panel")


def check_report(driver, run_dir: Path) -> None:
    """The finished run's report: one file, charts rendered from file:// with nothing fetched."""
    driver.get((run_dir / "report.html").as_uri())
    charts = wait_for(lambda: driver.execute_script(JS_REPORT), 60, "the report's charts")
    assert {c[0] for c in charts} >= {"chart-acc-round", "chart-acc-time", "chart-bytes", "chart-energy",
                                      "chart-fleet", "chart-class-hist"}  # fmt: skip
    sizes = {c[0]: c[2] for c in charts}
    assert all(c[1] > 0 and c[2] > 0 for c in charts), charts
    assert sizes["chart-acc-round"] == ROUNDS and sizes["chart-fleet"] == 24
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [u for u in fetched if u.startswith("http")], fetched
    assert not console_errors(driver)
    click_device(driver, 2)  # its fleet is clickable too, from the embedded per-device rounds
    assert driver.find_element(By.ID, "device-note").text.startswith("Device 2 ")


def test_dashboard_follows_a_live_run_and_report_renders_offline(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    spec = tmp_path / "watched.yaml"
    spec.write_text(SPEC)
    with dashboard_server(runs) as (url, server), chrome() as driver:
        driver.get(url)
        message = wait_for(lambda: driver.find_element(By.ID, "message").text, 20, "the empty-folder message")
        assert "No runs in" in message
        sim = start_cli("run", str(spec), "--out", str(runs), "--quiet")
        try:
            # Follow mode: the page picks the running run by itself once its first row exists.
            wait_for(lambda: driver.find_element(By.ID, "run-view").is_displayed(), 60, "the run view")
            seen = watch_run(driver, sim)
            assert sim.wait(timeout=120) == 0, sim.stderr.read() if sim.stderr else ""
        finally:
            if sim.poll() is None:
                sim.kill()
                sim.wait()
        live = [s for s in seen if s[2] == "running"]
        counters = [c for c, _, _ in live]
        points = [p for _, p, _ in live]
        # The counter and the chart grew while the run was going, pushed by the server.
        assert len(set(counters)) >= 3, seen
        assert counters == sorted(counters) and counters[0] < ROUNDS, seen
        assert len(set(points)) >= 3 and points == sorted(points) and points[0] < ROUNDS, seen
        final = wait_for(
            lambda: (lambda c: c if c[0] == str(ROUNDS) and c[1] == ROUNDS and c[2] == "complete" else None)(
                driver.execute_script(JS_PROGRESS)
            ),
            20,
            "the final round on the page",
        )
        assert final == [str(ROUNDS), ROUNDS, "complete"]
        assert driver.find_element(By.ID, "count-total").text == "24"

        click_device(driver, 5)
        assert driver.find_element(By.ID, "device-title").text.startswith("Device 5 ")
        device_rounds = wait_for(
            lambda: driver.execute_script(
                "const g = document.getElementById('chart-device-time'); return g.data ? g.data[0].x.length : 0;"
            ),
            20,
            "the device's time chart",
        )
        assert device_rounds == ROUNDS
        driver.execute_script("document.getElementById('device-panel').scrollIntoView()")
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
        errors = console_errors(driver)
        assert not errors, errors
        assert server.poll() is None  # the server survived all of it

        (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
        check_report(driver, run_dir)
        driver.save_screenshot(str(tmp_path / "report.png"))


def test_page_messages_for_bad_runs_and_twins_side_by_side(tmp_path: Path) -> None:
    from test_dashboard import newer_schema_run
    from test_report import make_run

    runs = tmp_path / "runs"
    make_run(runs / "sim", twin="simulate")
    make_run(runs / "emu", twin="emulate", seed=1, rounds_done=4, rounds_planned=6, finish=False)
    (runs / "corrupt").mkdir()
    (runs / "corrupt" / "results.db").write_bytes(b"garbage " * 500)
    newer_schema_run(runs / "newer")
    with dashboard_server(runs) as (url, _), chrome() as driver:
        for key, expected in (("corrupt", "not a readable SQLite database"), ("newer", "newer tinytwin")):
            driver.get(f"{url}#run={key}")
            message = wait_for(
                lambda: (lambda t: t if expected in t else None)(driver.find_element(By.ID, "message").text),
                20,
                f"the message for {key}",
            )
            assert key in message and "Traceback" not in message
            assert not driver.find_element(By.ID, "run-view").is_displayed()
        # Tick the two readable runs and overlay them.
        items = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#run-list li"), 20, "the run list")
        assert len(items) == 4

        def box(key: str):  # looked up afresh: the list is rebuilt when a run changes
            return driver.find_element(By.CSS_SELECTOR, f'#run-list li[data-key="{key}"] input[type=checkbox]')

        assert box("corrupt").get_attribute("disabled") and box("newer").get_attribute("disabled")
        box("sim").click()  # the first ticked run is the reference of the differences
        box("emu").click()
        driver.find_element(By.ID, "compare-btn").click()
        wait_for(lambda: driver.find_element(By.ID, "compare-view").is_displayed(), 20, "the comparison")
        traces = driver.execute_script("return document.getElementById('cmp-acc-round').data.length")
        assert traces == 2
        rows = driver.find_elements(By.CSS_SELECTOR, "#diff-table tbody tr")
        assert len(rows) == 6  # rounds 1..6 of the longer run
        cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
        assert cells[0] == "1" and cells[3] == "-2.00"  # emulate run's accuracy is 2 points lower (seed 1)
        errors = console_errors(driver)
        # The page's own requests for the bad runs answer 422 (a clear message, not a server error).
        assert all("422" in e for e in errors), errors
