"""Checkpoint blobs that can be read without running code from the file.

Why not pickle (``torch.save`` / ``torch.load(weights_only=False)``): a results.db is a file
users copy around, and unpickling one runs whatever its author put in it — a tampered
checkpoint ran ``os.system`` under ``--resume``. This format is plain data: a JSON header
that describes the structure (dicts with any scalar keys, lists, tuples, sets, deques, numbers,
strings, None, and tinytwin dataclasses of these) and, after it, each array as ``.npy`` bytes, read back with
``allow_pickle=False``. A list of equal rows of ints and floats (a per-round history such as
``[(round, accuracy), ...]``) is one float64 array with its row and column types in the header,
so a checkpoint written every round does not grow by a JSON node per number. Floats survive
exactly (JSON keeps ``repr``; arrays are raw bytes), so resuming stays bit for bit.

Layout: ``MAGIC`` · 8-byte little-endian header length · header (UTF-8 JSON) · array bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import sys
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Mapping
from typing import Any

import numpy as np

MAGIC = b"TTCKPT1\n"
_LEN = struct.Struct("<Q")
MAX_HEADER = 64 << 20
_FACTORIES: dict[str | None, Any] = {"int": int, "float": float, "list": list, "dict": dict, "set": set, None: None}


class CheckpointFormatError(ValueError):
    """The blob is not a checkpoint this module wrote (legacy pickle, tampered or truncated)."""


def encode(state: Mapping[str, Any]) -> bytes:
    """The blob of ``state``; raises ``TypeError`` for a value that is not plain data."""
    arrays: list[bytes] = []
    tree = _enc(dict(state), arrays)
    header = json.dumps({"tree": tree, "arrays": [len(a) for a in arrays]}, allow_nan=True).encode()
    return b"".join([MAGIC, _LEN.pack(len(header)), header, *arrays])  # one copy of the arrays


def decode(blob: bytes) -> dict[str, Any]:
    """The state in ``blob``; raises :class:`CheckpointFormatError` for anything else."""
    blob = bytes(blob)
    if not blob.startswith(MAGIC):
        kind = "a pickle (older tinytwin, or planted code)" if blob[:1] in (b"\x80", b"PK") else "not a checkpoint"
        raise CheckpointFormatError(f"the checkpoint is {kind}; it is not loaded, since loading a pickle runs code")
    try:
        (n,) = _LEN.unpack_from(blob, len(MAGIC))
        start = len(MAGIC) + _LEN.size
        if n > MAX_HEADER or start + n > len(blob):
            raise CheckpointFormatError("the checkpoint header is truncated")
        header = json.loads(blob[start : start + n].decode("utf-8"))
        offsets, pos = [], start + n
        for size in header["arrays"]:
            if not isinstance(size, int) or size < 0:
                raise CheckpointFormatError("the checkpoint header is damaged")
            offsets.append((pos, pos + size))
            pos += int(size)
        if pos != len(blob):
            raise CheckpointFormatError("the checkpoint's arrays do not add up to its size")
        arrays = [np.load(io.BytesIO(blob[a:b]), allow_pickle=False) for a, b in offsets]
        state = _dec(header["tree"], arrays)
    except CheckpointFormatError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, struct.error, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointFormatError(f"the checkpoint is damaged ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointFormatError("the checkpoint is not a mapping")
    return state


def _npy(arr: np.ndarray) -> bytes:
    if arr.dtype.hasobject:
        raise TypeError("a checkpoint array holds Python objects; only numeric arrays are stored")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _enc(v: Any, arrays: list[bytes]) -> Any:
    if isinstance(v, np.generic):  # before int/float: np.float64 is a float subclass
        arrays.append(_npy(np.asarray(v)))
        return {"np0": len(arrays) - 1}
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return {"i": str(v)} if abs(v) >= 2**53 else int(v)
    if isinstance(v, float):
        return {"f": repr(float(v))}
    if isinstance(v, np.ndarray):
        arrays.append(_npy(v))
        return {"nd": len(arrays) - 1}
    if type(v).__module__.startswith("torch") and type(v).__name__ in ("Tensor", "Parameter"):
        t = v.detach().cpu()
        arrays.append(_npy(t.numpy()))
        return {"pt": len(arrays) - 1}
    if isinstance(v, dict):
        pairs = [[_enc(k, arrays), _enc(x, arrays)] for k, x in v.items()]
        if type(v) is dict:
            return {"map": pairs}
        if type(v) in (Counter, OrderedDict):
            return {type(v).__name__: pairs}
        factory = getattr(v, "default_factory", None)
        if type(v) is defaultdict and factory in _FACTORIES.values():
            return {"defaultdict": [getattr(factory, "__name__", None), pairs]}
    if isinstance(v, list):
        rows = _numeric_rows(v)
        if rows is not None:
            arrays.append(_npy(np.array(v, dtype=np.float64)))
            return {"rows": [len(arrays) - 1, rows]}
        return {"list": [_enc(x, arrays) for x in v]}
    if isinstance(v, tuple):
        return {"tuple": [_enc(x, arrays) for x in v]}
    if isinstance(v, deque):
        return {"deque": [v.maxlen, [_enc(x, arrays) for x in v]]}
    if isinstance(v, (set, frozenset)):
        return {"frozenset" if isinstance(v, frozenset) else "set": [_enc(x, arrays) for x in v]}
    if dataclasses.is_dataclass(v) and not isinstance(v, type) and type(v).__module__.startswith("tinytwin."):
        fields = {f.name: _enc(getattr(v, f.name), arrays) for f in dataclasses.fields(v)}
        return {"dc": [type(v).__module__, type(v).__qualname__, fields]}
    raise TypeError(f"a checkpoint cannot hold a {type(v).__module__}.{type(v).__name__}; store plain data")


def _numeric_rows(v: list[Any]) -> str | None:
    """The row kind and column types of a list of equal-length tuples (or lists) of plain ints
    and floats — e.g. ``[(round, accuracy), ...]`` — or None for any other list.

    Such lists grow by a row a round and are checkpointed every round; as one float64 array
    (exact for floats and for ints below 2**53) they cost one array write instead of a JSON node
    per number. The kind string is ``"t"`` or ``"l"`` (tuple or list rows), then ``i``/``f`` per column.
    """
    if len(v) < 4 or type(v[0]) not in (tuple, list) or not v[0]:
        return None
    container, width = type(v[0]), len(v[0])
    cols = [type(x) for x in v[0]]
    if any(c not in (int, float) for c in cols):
        return None
    for row in v:
        if type(row) is not container or len(row) != width:
            return None
        for x, c in zip(row, cols):
            if type(x) is not c or (c is int and abs(x) >= 2**53):
                return None
    return ("t" if container is tuple else "l") + "".join("i" if c is int else "f" for c in cols)


def _rows(kind: Any, arr: np.ndarray) -> list[Any]:
    if not (isinstance(kind, str) and len(kind) >= 2 and kind[0] in "tl" and set(kind[1:]) <= {"i", "f"}):
        raise ValueError("bad rows")
    if arr.dtype != np.float64 or arr.ndim != 2 or arr.shape[1] != len(kind) - 1:
        raise ValueError("bad rows array")
    casts = [int if c == "i" else float for c in kind[1:]]
    make = tuple if kind[0] == "t" else list
    return [make(cast(x) for cast, x in zip(casts, row)) for row in arr.tolist()]


def _dataclass(module: Any, qualname: Any, fields: Any, arrays: list[np.ndarray]) -> Any:
    """Rebuild a tinytwin dataclass the way pickle does (no ``__init__``), but only one whose
    module the running engine has already imported: a blob can name classes, never load code."""
    if not (isinstance(module, str) and module.startswith("tinytwin.") and isinstance(qualname, str)):
        raise ValueError("bad dataclass")
    cls: Any = sys.modules.get(module)
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or not isinstance(fields, dict):
        raise ValueError(f"unknown dataclass {module}.{qualname}")
    names = {f.name for f in dataclasses.fields(cls)}
    if set(fields) != names:
        raise ValueError(f"fields of {qualname} differ")
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, _dec(value, arrays))
    return obj


def _dec(v: Any, arrays: list[np.ndarray]) -> Any:
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if not isinstance(v, dict) or len(v) != 1:
        raise ValueError("unknown node")
    (tag, x) = next(iter(v.items()))
    if tag == "i":
        return int(x)
    if tag == "f":
        return float(x)
    if tag == "nd":
        return arrays[x]
    if tag == "rows":
        index, kind = x
        return _rows(kind, arrays[index])
    if tag == "np0":
        return arrays[x][()]
    if tag == "pt":
        import torch  # only runs that stored tensors load torch for them

        return torch.from_numpy(np.array(arrays[x], copy=True))
    if tag in ("map", "Counter", "OrderedDict"):
        items = {_dec(k, arrays): _dec(y, arrays) for k, y in x}
        return {"map": dict, "Counter": Counter, "OrderedDict": OrderedDict}[tag](items)
    if tag == "defaultdict":
        name, pairs = x
        return defaultdict(_FACTORIES[name], {_dec(k, arrays): _dec(y, arrays) for k, y in pairs})
    if tag == "dc":
        module, qualname, fields = x
        return _dataclass(module, qualname, fields, arrays)
    if tag == "deque":
        maxlen, items = x
        if maxlen is not None and not isinstance(maxlen, int):
            raise ValueError("bad deque")
        return deque((_dec(y, arrays) for y in items), maxlen)
    if tag in ("list", "tuple", "set", "frozenset"):
        values = [_dec(y, arrays) for y in x]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](values)
    raise ValueError(f"unknown tag {tag!r}")
