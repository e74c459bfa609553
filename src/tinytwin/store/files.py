"""Files of a run folder: private modes, created atomically, and one-line errors when the disk says no.

Why private: a run folder holds the experiment, the data partition and the results, and for
emulated runs the keys that authenticate frames. Created 0700 / 0600 from the start (the mode
is given to ``mkdir`` / ``open`` itself, then fixed against the umask), there is no moment at
which another user of the machine can open them.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from tinytwin.errors import TinyTwinError

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
    except OSError as exc:
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
        folder = run_dir if made else run_dir.parent
        raise TinyTwinError(write_error_line(folder, exc)) from None
    return run_dir
