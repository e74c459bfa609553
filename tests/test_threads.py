"""The intra-op thread rule: one thread for small steps or a busy machine, overrides win."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from tinytwin.engines import cpu_load, threads
from tinytwin.engines.threads import SINGLE_THREAD_MACS, threads_for

BIG = 10 * SINGLE_THREAD_MACS


def test_small_steps_use_one_thread(monkeypatch):
    monkeypatch.delenv("TINYTWIN_THREADS", raising=False)
    monkeypatch.setattr(threads, "machine_idle", lambda: True)
    assert threads_for(SINGLE_THREAD_MACS - 1) == 1


def test_large_steps_use_every_thread_only_on_an_idle_machine(monkeypatch):
    monkeypatch.delenv("TINYTWIN_THREADS", raising=False)
    monkeypatch.setattr(threads, "machine_idle", lambda: False)
    assert threads_for(BIG) == 1
    monkeypatch.setattr(threads, "machine_idle", lambda: True)
    assert threads_for(BIG) == torch.get_num_threads()


def test_spec_and_environment_override_the_rule(monkeypatch):
    monkeypatch.setattr(threads, "machine_idle", lambda: False)
    monkeypatch.setenv("TINYTWIN_THREADS", "3")
    assert threads_for(BIG) == 3 and threads_for(10) == 3
    assert threads_for(BIG, override=2) == 2  # engine.threads beats the environment
    monkeypatch.setenv("TINYTWIN_THREADS", "junk")
    assert threads_for(BIG) == 1


def test_machine_idle_is_decided_once_per_process(monkeypatch):
    threads.machine_idle.cache_clear()
    calls = []
    monkeypatch.setattr(threads, "others_busy", lambda: calls.append(1) or 0.0)
    assert threads.machine_idle() and threads.machine_idle()
    assert len(calls) == 1
    threads.machine_idle.cache_clear()
    monkeypatch.setattr(threads, "others_busy", lambda: 1000.0)
    assert not threads.machine_idle()
    threads.machine_idle.cache_clear()


def test_without_proc_stat_the_load_average_decides(monkeypatch):
    monkeypatch.setattr(threads, "others_busy", lambda: None)
    for load, idle in ((0.0, True), (1000.0, False)):
        threads.machine_idle.cache_clear()
        monkeypatch.setattr(threads.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert threads.machine_idle() is idle
    threads.machine_idle.cache_clear()


def test_a_busy_process_beside_us_counts_as_busy():
    """The sample is of real CPU time: a busy-looping process is seen as about one core, over a
    fresh window and over the stretch since an earlier reading (the engine's import)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        reading = cpu_load.cpu_reading()
        fresh = cpu_load.busy_cores_of_others(0.3)
        assert reading is not None
        since = cpu_load.others_since(reading)
    finally:
        hog.kill()
        hog.wait()
    assert fresh is not None and fresh >= 0.6
    assert since is not None and since >= 0.6


def test_the_stretch_since_import_is_used_without_waiting_unless_stale(monkeypatch):
    monkeypatch.setattr(threads, "_IMPORTED", (time.monotonic() - 1.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "others_since", lambda start: 0.25)
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda window: 9.0)
    slept: list[float] = []
    monkeypatch.setattr(threads.time, "sleep", slept.append)
    assert threads.others_busy() == 0.25 and sum(slept) == 0.0  # the setup was the sample: no waiting
    monkeypatch.setattr(threads, "_IMPORTED", (time.monotonic() - 0.05, 0.0, 0.0))
    # a setup shorter than the sample is topped up
    assert threads.others_busy() == 0.25 and 0.0 < slept[-1] <= threads.IDLE_SAMPLE_S - 0.05
    monkeypatch.setattr(threads, "_IMPORTED", (time.monotonic() - threads.STALE_SAMPLE_S - 1, 0.0, 0.0))
    assert threads.others_busy() == 9.0  # an hours-old import says nothing about now


def test_intra_op_threads_restores_the_setting():
    before = torch.get_num_threads()
    with threads.intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_models_do_not_depend_on_the_thread_count_even_for_a_device_alone_in_its_chunk():
    """A bucket can hold one device (the only one with that much data); its products are then a
    batch of one, which a second thread would split along the inner dimension — different sums."""
    import numpy as np

    from tinytwin.algorithms.local_update import LocalTraining
    from tinytwin.engines.experiment import prepare
    from tinytwin.engines.local_training import LocalTrainer
    from tinytwin.spec.load import validate_spec

    exp = prepare(
        validate_spec(
            {
                "dataset": {"name": "digits"},
                "model": {"name": "mlp", "hidden": [32]},
                "fleet": {"groups": [{"profile": "raspberry-pi-4", "count": 300, "link": "wifi"}]},
            }
        )
    )
    parts = [p[:2] for p in exp.parts[:-1]] + [np.arange(40)]  # the last device alone in its bucket
    cfg = LocalTraining(2, 8, 0.1, "sgd", 0.0, 0.0, 0.0)
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    models = []
    for count in (1, 2):
        trainer = LocalTrainer(exp.module, exp.layout, x, y, cfg, 0, chunk_size=64, threads=count)
        assert [len(p) for p in trainer.plan(parts)][-1] == 1
        models.append(trainer.train(exp.initial_params(), 1, np.arange(300), parts).params)
    assert torch.equal(models[0], models[1])
