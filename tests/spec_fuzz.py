"""Seeded fuzzing of experiment files: mutations of the example specs (issue #18).

Why a generator of our own: the inputs that broke tinytwin were structural (alias bombs, deep
nesting, bad UTF-8, duplicate keys) or numeric (1e20 bytes, .inf rates, 1e9 epochs) — cheap to
produce from the examples and impossible to cover by hand. Every file is a pure function of
``(seed, index)``, so a failure found by ``benchmarks/fuzz_specs.py`` replays in one line.

Used by ``tests/test_spec_fuzz.py`` (a fast subset) and ``benchmarks/fuzz_specs.py`` (the full set).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinytwin.spec import strict_yaml

REPO = Path(__file__).resolve().parents[1]
FAST_EXAMPLES = ("quickstart.yaml", "mixed-fleet.yaml", "nrf52840-ble.yaml")

WRONG_TYPES: list[Any] = ["text", [1, 2], {"a": 1}, True, None, "", [], {}]
HUGE_NUMBERS: list[Any] = [10**9, 10**20, 1e308, 2**63, 2**64 + 1, 1e16, 123456789012345678901234567890]
NEGATIVE: list[Any] = [-1, -1e9, -0.5, -(2**63)]
NON_FINITE_TEXT = [".inf", "-.inf", ".nan", ".NaN", "+.INF"]
YAML11_FORMS = ["on", "off", "yes", "no", "1:30", "0777", "2001-12-14", "0b101", "1_000", "~", "Null"]


@dataclass(frozen=True)
class FuzzCase:
    """One fuzzed experiment file: its bytes and the mutations that made it."""

    index: int
    base: str
    mutations: tuple[str, ...]
    data: bytes


def base_specs(names: tuple[str, ...] | None = None, data_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The example specs as mappings, with dataset folders made absolute (fuzz files live elsewhere)."""
    specs = {}
    for path in sorted((REPO / "examples").glob("*.yaml")):
        if (names and path.name not in names) or path.name.endswith(".sweep.yaml"):
            continue
        raw = strict_yaml.parse(path.read_text(), path.name)
        ds = raw.get("dataset") or {}
        if ds.get("data_dir") is not None and data_dir is not None:
            ds["data_dir"] = str(data_dir)
        for key in ("file", "positions_file"):  # topology files: relative to the example folder
            topo = raw.get("topology") or {}
            if topo.get(key):
                topo[key] = str((REPO / "examples" / topo[key]).resolve())
        specs[path.name] = raw
    return specs


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in ``node`` (mappings by key, lists by index), containers included."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(node, path[:-1])[path[-1]] = value


def _leaf_paths(raw: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [p for p in _paths(raw) if not isinstance(_get(raw, p), (dict, list))]


def _mapping_paths(raw: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(), *[p for p in _paths(raw) if isinstance(_get(raw, p), dict)]]


# ---- tree mutations: change the mapping, then dump it ------------------------------------------


def m_wrong_type(rng: random.Random, raw: dict[str, Any]) -> str:
    path = rng.choice(_leaf_paths(raw))
    _set(raw, path, rng.choice(WRONG_TYPES))
    return f"wrong-type {'.'.join(map(str, path))}"


def m_huge(rng: random.Random, raw: dict[str, Any]) -> str:
    path = rng.choice(_leaf_paths(raw))
    _set(raw, path, rng.choice(HUGE_NUMBERS))
    return f"huge {'.'.join(map(str, path))}"


def m_negative(rng: random.Random, raw: dict[str, Any]) -> str:
    path = rng.choice(_leaf_paths(raw))
    _set(raw, path, rng.choice(NEGATIVE))
    return f"negative {'.'.join(map(str, path))}"


def m_unknown_key(rng: random.Random, raw: dict[str, Any]) -> str:
    path = rng.choice(_mapping_paths(raw))
    _get(raw, path)[rng.choice(["modle", "lr2", "x", "__class__", "count "])] = rng.choice([1, "a", None])
    return f"unknown-key {'.'.join(map(str, path))}"


def m_delete_key(rng: random.Random, raw: dict[str, Any]) -> str:
    choices = [p for p in _mapping_paths(raw) if _get(raw, p)]
    path = rng.choice(choices)
    node = _get(raw, path)
    key = rng.choice(list(node))
    del node[key]
    return f"delete {'.'.join(map(str, (*path, key)))}"


def m_huge_string(rng: random.Random, raw: dict[str, Any]) -> str:
    path = rng.choice(_leaf_paths(raw))
    _set(raw, path, "n" * rng.choice([5_000, 100_000]))
    return f"huge-string {'.'.join(map(str, path))}"


def m_long_list(rng: random.Random, raw: dict[str, Any]) -> str:
    path = rng.choice(_leaf_paths(raw))
    _set(raw, path, [rng.randint(1, 64)] * rng.choice([50, 20_000]))
    return f"long-list {'.'.join(map(str, path))}"


TREE_MUTATIONS: list[Callable[[random.Random, dict[str, Any]], str]] = [
    m_wrong_type,
    m_huge,
    m_negative,
    m_unknown_key,
    m_delete_key,
    m_huge_string,
    m_long_list,
]


# ---- text mutations: change the bytes after dumping --------------------------------------------


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def t_non_finite(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    lines = _lines(data)
    idx = [i for i, ln in enumerate(lines) if b": " in ln and ln.rstrip()[-1:].isdigit()]
    if not idx:
        return "non-finite (none)", data
    i = rng.choice(idx)
    head = lines[i].rsplit(b": ", 1)[0]
    lines[i] = head + b": " + rng.choice(NON_FINITE_TEXT).encode()
    return f"non-finite line {i + 1}", b"\n".join(lines)


def t_yaml11(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    lines = _lines(data)
    idx = [i for i, ln in enumerate(lines) if b": " in ln and not ln.rstrip().endswith(b":")]
    if not idx:
        return "yaml11 (none)", data
    i = rng.choice(idx)
    lines[i] = lines[i].rsplit(b": ", 1)[0] + b": " + rng.choice(YAML11_FORMS).encode()
    return f"yaml11 line {i + 1}", b"\n".join(lines)


def t_duplicate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    lines = _lines(data)
    top = [i for i, ln in enumerate(lines) if ln and not ln.startswith((b" ", b"-", b"#")) and b": " in ln]
    if not top:
        return "duplicate (none)", data
    i = rng.choice(top)
    return f"duplicate line {i + 1}", b"\n".join([*lines, lines[i], b""])


def t_deep(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    depth = rng.choice([20, 40, 1_000, 20_000])
    if rng.random() < 0.5:
        nest = b"[" * depth + b"1" + b"]" * depth
    else:
        nest = b"{a: " * depth + b"1" + b"}" * depth
    key = rng.choice([b"model", b"zz", b"algorithm"])
    return f"deep {depth}", data + b"\n" + key + b": " + nest + b"\n"


def t_aliases(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    levels, width = rng.choice([(3, 3), (9, 9), (6, 12), (20, 2)])
    out = [b'x0: &x0 ["lol"]']
    for k in range(1, levels + 1):
        out.append(f"x{k}: &x{k} [".encode() + b",".join([f"*x{k - 1}".encode()] * width) + b"]")
    return f"aliases {levels}x{width}", data + b"\n" + b"\n".join(out) + b"\n"


def t_bad_utf8(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    pos = rng.randrange(len(data) + 1)
    junk = rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
    return f"bad-utf8 at {pos}", data[:pos] + junk + data[pos:]


def t_truncate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    pos = rng.randrange(len(data) + 1)
    return f"truncate at {pos}", data[:pos]


def t_flip(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    return "byte-flips", bytes(buf)


def t_top_level(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    return "top-level", rng.choice([b"", b"42\n", b"- a\n- b\n", b"~\n", b"!!python/object:os.system x\n", b"---\n"])


TEXT_MUTATIONS: list[Callable[[random.Random, bytes], tuple[str, bytes]]] = [
    t_non_finite,
    t_yaml11,
    t_duplicate,
    t_deep,
    t_aliases,
    t_bad_utf8,
    t_truncate,
    t_flip,
    t_top_level,
]


def fuzz_case(seed: int, index: int, bases: dict[str, dict[str, Any]]) -> FuzzCase:
    """File ``index`` of the set ``seed``: one base example, one to three mutations."""
    import copy

    rng = random.Random(seed * 1_000_003 + index)
    base = rng.choice(sorted(bases))
    raw = copy.deepcopy(bases[base])
    names: list[str] = []
    count = rng.choice([1, 1, 2, 3])
    tree_count = rng.randint(0, count)
    for _ in range(tree_count):
        names.append(rng.choice(TREE_MUTATIONS)(rng, raw))
    data = strict_yaml.dump(raw).encode()
    for _ in range(count - tree_count):
        name, data = rng.choice(TEXT_MUTATIONS)(rng, data)
        names.append(name)
    return FuzzCase(index, base, tuple(names), data)


def fuzz_cases(seed: int, count: int, bases: dict[str, dict[str, Any]]) -> list[FuzzCase]:
    return [fuzz_case(seed, i, bases) for i in range(count)]


class _Timeout(Exception):
    pass


def check_in_process(case: FuzzCase, folder: Path, timeout_s: int = 20) -> str:
    """What ``tinytwin plan`` does with the file, in this process: ``refused`` (a one-line
    TinyTwinError), ``accepted``, ``timeout`` or ``crash: <exception>`` (a traceback to a user)."""
    import signal
    import traceback

    from tinytwin.engines.experiment import prepare
    from tinytwin.engines.planning import plan_groups
    from tinytwin.errors import TinyTwinError
    from tinytwin.spec.load import load_spec

    path = folder / f"fuzz-{case.index}.yaml"
    path.write_bytes(case.data)

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout_s)
    try:
        spec, _ = load_spec(path, ["rounds=1"])
        exp = prepare(spec, folder, check_memory=False)
        plan_groups(exp)
    except TinyTwinError as exc:
        return "refused" if "\n" not in str(exc) else f"crash: multi-line message {str(exc)[:200]!r}"
    except _Timeout:
        return "timeout"
    except BaseException as exc:  # noqa: BLE001 - what we hunt: anything a user would see as a traceback
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return f"crash: {type(exc).__name__}: {str(exc)[:160]} ({Path(tb.filename).name}:{tb.lineno})"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return "accepted"
