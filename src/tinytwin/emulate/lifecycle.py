"""An emulation coordinator's life around its rounds, the same for every family: the run folder
and store, the run key, the listening address (kept across a resume), the resume's preparation
and event, and the coordinator's log.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tinytwin.emulate.options import EmulateOptions, options_to_json
from tinytwin.emulate.rundir import COORDINATOR_FILE, read_json, write_json
from tinytwin.emulate.tls import server_context_for
from tinytwin.engines.experiment import Experiment
from tinytwin.engines.runner import DB_NAME, new_run_dir
from tinytwin.errors import TinyTwinError
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.store.db import RunStore
from tinytwin.store.files import new_private_run_folder, write_private
from tinytwin.version import __version__

ProgressFn = Callable[[int, dict[str, Any]], None]


def load_run_key(edir: Path, resume: bool) -> bytes:
    """The run's key (``emulate/run.key``): a resumed coordinator's is its killed predecessor's (the
    processes that outlived it hold keys derived from it); else a new one, written (mode 600)."""
    key_file = edir / "run.key"
    if resume and key_file.is_file():
        return key_file.read_bytes()
    run_key = secrets.token_bytes(32)
    write_private(key_file, run_key)  # 0600 from its first byte, never readable by another user
    return run_key


async def bind_coordinator(
    edir: Path, serve: Callable[..., Any], backlog: int, resume: bool, options: EmulateOptions, callers: str
) -> tuple[asyncio.AbstractServer, int]:
    """The coordinator's TCP server on 127.0.0.1 and its ``emulate/coordinator.json``; a resumed
    one (``resume``) binds the port its killed predecessor recorded, since ``callers`` (the
    processes that outlived it) call only that address, and refuses to go on when it is taken."""
    saved = read_json(edir / COORDINATOR_FILE) if resume else None
    want = int(saved["port"]) if saved else 0
    tls = server_context_for(edir, "127.0.0.1") if options.tls else None  # --tls (emulate/tls.py)
    try:
        server = await asyncio.start_server(serve, "127.0.0.1", want, backlog=backlog, ssl=tls)
    except OSError as exc:
        if not want:
            raise
        raise TinyTwinError(
            f"emulate --resume: the coordinator's address 127.0.0.1:{want} is taken ({exc}); "
            f"{callers} only that address: free it and resume again"
        ) from None
    port = server.sockets[0].getsockname()[1]
    write_json(edir / COORDINATOR_FILE, {"host": "127.0.0.1", "port": port, "options": options_to_json(options)})
    return server, port


HELLO_POLL_S = 0.05  # how often a process that has not said HELLO is checked for having exited


async def await_hello(hello: asyncio.Event, alive: Callable[[], bool], timeout_s: float) -> str:
    """Wait for a started process's HELLO: ``"hello"``, ``"exited"`` as soon as the process is
    gone (a device dying in its start or restart window must not hold the round for the whole
    timeout), or ``"timeout"`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not hello.is_set():
        if not alive():
            return "exited"
        left = deadline - loop.time()
        if left <= 0:
            return "timeout"
        try:
            await asyncio.wait_for(hello.wait(), min(HELLO_POLL_S, left))
        except TimeoutError:
            pass
    return "hello"


PreparedT = TypeVar("PreparedT")


def resume_prepared(
    store: RunStore,
    run_id: str,
    load: Callable[[], PreparedT],
    on_prepared: Any,
    exp_of: Callable[[PreparedT], Experiment] = lambda x: x,  # type: ignore[assignment,return-value]
) -> tuple[PreparedT, tuple[int, dict[str, Any]] | None]:
    """A resume's preparation: ``load()`` (the experiment, checked; the store closed when it
    fails), ``on_prepared`` told, the last committed round's checkpoint read (None: none yet) and
    the run marked running again."""
    try:
        prepared = load()
    except BaseException:
        store.close()
        raise
    if on_prepared is not None:
        on_prepared(exp_of(prepared))
    ck = store.checkpoint(run_id)
    store.set_status(run_id, "running")
    return prepared, ck


def resume_event(done: int, sim_time_s: float) -> dict[str, Any]:
    """The ``resume`` event of a coordinator continuing after round ``done``."""
    return {
        "round": done,
        "sim_time_s": sim_time_s,
        "device": None,
        "kind": "resume",
        "detail": f"resumed after round {done}",
    }


def create_emulation_run(
    spec: ExperimentSpec, spec_yaml: str, out: Path, run_dir: Path | None
) -> tuple[Path, RunStore, str]:
    """The run folder (``run_dir``, or a new one under ``out``) with its spec, and its results
    store with the run registered: ``(run_dir, store, run_id)``."""
    run_dir = run_dir or new_run_dir(out, spec.name + "-emulate")
    # 0700 with its first files 0600: keys, shards and logs written inside later are private too
    new_private_run_folder(run_dir, {"spec.yaml": spec_yaml.encode(), DB_NAME: b""})
    store = RunStore(run_dir / DB_NAME)
    run_id = uuid.uuid4().hex[:12]
    store.create_run(run_id, spec.name, "emulate", spec.seed, spec_yaml, spec.rounds, __version__)
    return run_dir, store, run_id


@contextmanager
def coordinator_run(store: RunStore, run_id: str, run_dir: Path, *loggers: logging.Logger) -> Iterator[None]:
    """While a coordinator runs: ``loggers`` also write ``emulate-coordinator.log`` (the first
    one no longer propagates); if it raises, the run is marked incomplete and the store closed."""
    handler = logging.FileHandler(run_dir / "emulate-coordinator.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for lg in loggers:
        lg.addHandler(handler)
    loggers[0].propagate = False
    try:
        yield
    except BaseException:
        store.set_status(run_id, "incomplete")
        store.close()
        raise
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
