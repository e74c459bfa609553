"""The intra-op thread rule: one thread for small steps or a busy machine, overrides win."""

from __future__ import annotations

import torch

from tinytwin.engines import threads
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
    monkeypatch.setattr(threads.os, "getloadavg", lambda: calls.append(1) or (0.0, 0.0, 0.0))
    assert threads.machine_idle() and threads.machine_idle()
    assert len(calls) == 1
    threads.machine_idle.cache_clear()
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1000.0, 0.0, 0.0))
    assert not threads.machine_idle()
    threads.machine_idle.cache_clear()


def test_intra_op_threads_restores_the_setting():
    before = torch.get_num_threads()
    with threads.intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
