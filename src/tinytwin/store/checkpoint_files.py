"""Large checkpoints in a file beside ``results.db``, the database row holding a reference.

A decentralized run's checkpoint holds every device's model: 0.5 GB at 10 000 MNIST devices,
5 GB at 100 000. As a SQLite blob it cost about 13 s a round at 10 000 devices (the write-ahead
log, then its copy into the database); as a file it costs one sequential write. A blob above
:data:`INLINE_LIMIT` therefore goes to ``checkpoints/<run>-r<round>.ttckpt`` (0600, written
under a temporary name, fsynced and renamed *before* the round's transaction commits), and the
row holds :data:`REFERENCE` plus the file's name, size and SHA-256: a missing, truncated or
swapped file is refused on resume, never loaded. Files of older rounds are removed only after
the commit, so a crash at any point leaves the row pointing at a complete file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from tinytwin.store.checkpoint import CheckpointFormatError
from tinytwin.store.files import private_dirs, write_private

REFERENCE = b"TTCKREF1\n"
INLINE_LIMIT = 16 << 20
FOLDER = "checkpoints"
_NAME = re.compile(r"^[0-9A-Za-z_-]{1,64}-r\d{6,}\.ttckpt$")


def blob_for_row(run_dir: Path, run_id: str, round_: int, blob: bytes) -> bytes:
    """What the checkpoint row stores for ``blob``: the blob itself, or a reference to the file
    it was written to (durably, before this returns)."""
    if len(blob) <= INLINE_LIMIT:
        return blob
    folder = run_dir / FOLDER
    private_dirs(folder)
    name = f"{run_id}-r{round_:06d}.ttckpt"
    path = write_private(folder / name, blob)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # on disk before the row that points at it commits
    finally:
        os.close(fd)
    ref = {"file": name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    return REFERENCE + json.dumps(ref).encode()


def blob_from_row(run_dir: Path, stored: bytes) -> bytes:
    """The checkpoint blob a row stands for; a bad reference or file raises :class:`CheckpointFormatError`."""
    if not stored.startswith(REFERENCE):
        return stored
    try:
        ref = json.loads(stored[len(REFERENCE) :].decode("utf-8"))
        name, size, digest = ref["file"], ref["bytes"], ref["sha256"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointFormatError("the checkpoint reference is damaged") from None
    if not (isinstance(name, str) and _NAME.match(name) and isinstance(size, int) and isinstance(digest, str)):
        raise CheckpointFormatError("the checkpoint reference is damaged")
    path = run_dir / FOLDER / name
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointFormatError(f"the checkpoint file {FOLDER}/{name} cannot be read ({exc.strerror})") from None
    if len(blob) != size or hashlib.sha256(blob).hexdigest() != digest:
        raise CheckpointFormatError(f"the checkpoint file {FOLDER}/{name} is not the one the database recorded")
    return blob


def prune_files(run_dir: Path, run_id: str, kept: bytes | None) -> None:
    """Remove ``run_id``'s checkpoint files other than the one the committed row ``kept`` names."""
    folder = run_dir / FOLDER
    if not folder.is_dir():
        return
    keep = ""
    if kept is not None and kept.startswith(REFERENCE):
        keep = json.loads(kept[len(REFERENCE) :].decode("utf-8"))["file"]
    for path in folder.glob(f"{run_id}-r*.ttckpt"):
        if path.name != keep:
            path.unlink(missing_ok=True)
