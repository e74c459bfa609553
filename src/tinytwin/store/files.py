"""Files of a run folder: private modes, created atomically, and one-line errors when the disk says no.

Why private: a run folder holds the experiment, the data partition and the results, and for
emulated runs the keys that authenticate frames. Created 0700 / 0600 from the start (the mode
is given to ``mkdir`` / ``open`` itself, then fixed against the umask), there is no moment at
which another user of the machine can open them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import io
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, ParamSpec, TypeVar

from tinytwin.errors import TinyTwinError

P = ParamSpec("P")
R = TypeVar("R")
DIR_MODE = 0o700
FILE_MODE = 0o600


def write_error_line(folder: Path, exc: OSError) -> str:
    """One line for a failed write: which folder, why, and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{folder}: the disk is full ({exc.strerror}); free some space there and try again"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{folder} is not writable ({exc.strerror}); choose a writable folder or make it writable"
    return f"{folder}: cannot write ({exc.strerror or exc})"


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (not its parents' modes) as 0700; it must not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(path, DIR_MODE)
    os.chmod(path, DIR_MODE)  # the umask may have taken bits away; never adds any beyond 0700
    return path


def create_private_file(path: Path, data: bytes = b"") -> Path:
    """Create ``path`` as 0600 (``O_EXCL``: never reuses a file someone planted) holding ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)
    return path


def new_private_run_folder(run_dir: Path, files: dict[str, bytes]) -> Path:
    """Create a run folder (0700) with its first files (0600); on any failure remove what was made
    and raise one line, so a refused run never leaves half a folder behind."""
    made = False
    try:
        make_private_dir(run_dir)
        made = True
        for name, data in files.items():
            create_private_file(run_dir / name, data)
        lock_run_folder(run_dir)
    except OSError as exc:
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
        folder = run_dir if made else run_dir.parent
        raise TinyTwinError(write_error_line(folder, exc)) from None
    return run_dir


def private_dirs(*paths: Path) -> None:
    """Create each folder (if missing) as 0700, and make an existing one 0700."""
    for path in paths:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)


def write_private(path: Path, data: bytes | str) -> Path:
    """Replace ``path`` atomically with ``data``, mode 0600 from its first byte (key files, configs,
    shards): written to a temp name created 0600 with ``O_EXCL``, then renamed over ``path``."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        create_private_file(tmp, payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_npz_private(path: Path, **arrays: Any) -> Path:
    """``np.savez(path, **arrays)`` written through :func:`write_private` (data shards: 0600)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_private(path, buf.getvalue())


def save_npy_private(path: Path, array: Any) -> Path:
    """``np.save(path, array)`` written through :func:`write_private`."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    return write_private(path, buf.getvalue())


LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # run folder -> descriptor holding its lock (this process)


def lock_run_folder(run_dir: Path) -> None:
    """Hold ``run_dir``'s lock (``flock`` on ``RUN_DIR/.lock``) for this process, or refuse in one line.

    A run and every resume of it hold the lock while they write, so a second ``--resume`` of a
    folder that is still being written (by a run thought dead, or another shell) is refused
    instead of interleaving two writers. The kernel drops the lock when its process dies,
    ``kill -9`` included, so a killed run never leaves a stale lock behind."""
    key = run_dir.resolve()
    if key in _HELD:
        return
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise TinyTwinError(write_error_line(run_dir, exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TinyTwinError(
            f"{run_dir} is being written by another tinytwin process (a run or a resume of it); "
            "wait for it to end, or stop it, then resume"
        ) from None
    _HELD[key] = fd


def _release_locks_since(held_before: set[Path]) -> None:
    for key in [k for k in _HELD if k not in held_before]:
        os.close(_HELD.pop(key))  # closing the descriptor releases the flock


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Run the block with umask 077, so every file and folder it (or a child process) creates —
    logs, CSV exports, the processes' own files — is private to this user; restored afterwards.
    Run folders locked inside the block (:func:`lock_run_folder`) are released when it ends."""
    old = os.umask(0o077)
    held_before = set(_HELD)
    try:
        yield
    finally:
        os.umask(old)
        _release_locks_since(held_before)


def with_private_umask(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a run's entry point so that everything it writes is private (:func:`private_umask`)."""

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with private_umask():
            return fn(*args, **kwargs)

    return wrapped


def open_private_append(path: Path) -> BinaryIO:
    """``open(path, "ab")`` for logs, but a new file is created 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    return os.fdopen(fd, "ab")
