"""Emulation twin robustness: >= 100 000 random and mutated frames, none accepted, no crash."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from pathlib import Path

import numpy as np

from tinytwin.emulate.coordinator import Coordinator, EmulateOptions, Emulation
from tinytwin.emulate.device import DeviceRuntime
from tinytwin.emulate.wire_np import COORDINATOR_ID, derive_key
from tinytwin.engines.experiment import prepare
from tinytwin.spec.load import load_spec
from tinytwin.store.db import RunStore
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm

ROOT = Path(__file__).resolve().parents[1]
N, SIZES, KEY = 50, [30, 20], b"k" * 32


def _mutations(valid: list[bytes], rng: np.random.Generator, count: int):
    """Bit flips, truncation, extension, header field rewrites, random bytes and replays."""
    for i in range(count):
        base = bytearray(valid[i % len(valid)])
        kind = i % 7
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(len(base)))
                base[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            base = base[: int(rng.integers(len(base)))]
        elif kind == 2:
            base += rng.bytes(int(rng.integers(1, 40)))
        elif kind == 3:  # rewrite one header field (length, version, type, encoding, sender, round)
            off, fmt = [(26, "<I"), (2, "<B"), (3, "<B"), (16, "<B"), (4, "<I"), (12, "<I"), (17, "<B")][
                int(rng.integers(7))
            ]
            struct.pack_into(fmt, base, off, int(rng.integers(0, 2 ** (8 * struct.calcsize(fmt)))))
        elif kind == 4:
            base = bytearray(rng.bytes(int(rng.integers(0, 200))))
        elif kind == 5:
            base = bytearray(b"TT\x01" + rng.bytes(int(rng.integers(0, 120))))
        else:
            pass  # an exact replay of a frame that was already accepted
        yield bytes(base)


def _signed(
    sender: int, receiver: int, rnd: int, t: fm.MsgType, encoding: str, payload: bytes, nonce: int, key: bytes
) -> bytes:
    return fm.encode_frame(fm.Frame(t, sender, receiver, rnd, encoding, 0, nonce, payload), key)


def test_fuzz_coordinator_and_device_handlers_reject_everything() -> None:
    rng = np.random.default_rng(0)
    coord = Coordinator(4, KEY, N, SIZES, "int8")
    coord.round, coord.expect = 3, {1, 2}
    k1 = derive_key(KEY, 1)
    good = enc.encode(rng.standard_normal(N).astype(np.float32), "int8", tensor_sizes=SIZES)
    valid = [_signed(1, COORDINATOR_ID, 3, fm.MsgType.UPDATE, "int8", good, 10 + i, k1) for i in range(5)]
    for v in valid:  # accepted once (advances the replay guard): every later copy is a replay
        assert coord.accept(v, 1)[0].msg_type == fm.MsgType.UPDATE
    # Authentic but invalid frames: NaN / Inf payloads, wrong lengths, rounds, receivers.
    nan = np.full(N, np.nan, dtype=np.float32)
    inf = np.full(N, np.inf, dtype=np.float32)
    authentic = [
        _signed(1, COORDINATOR_ID, 3, fm.MsgType.UPDATE, "float32", enc.encode(nan, "float32"), 100, k1),
        _signed(1, COORDINATOR_ID, 3, fm.MsgType.UPDATE, "int8", enc.encode(inf, "int8", tensor_sizes=SIZES), 101, k1),
        _signed(1, COORDINATOR_ID, 3, fm.MsgType.UPDATE, "int8", good[:-1], 102, k1),
        _signed(1, COORDINATOR_ID, 2, fm.MsgType.UPDATE, "int8", good, 103, k1),
        _signed(1, 7, 3, fm.MsgType.UPDATE, "int8", good, 104, k1),
        _signed(1, COORDINATOR_ID, 3, fm.MsgType.MODEL, "int8", good, 105, k1),
        _signed(1, COORDINATOR_ID, 3, fm.MsgType.METRICS, "none", b"\xff\xfe", 106, k1),
        _signed(3, COORDINATOR_ID, 3, fm.MsgType.UPDATE, "int8", good, 107, derive_key(KEY, 3)),
        _signed(9, COORDINATOR_ID, 3, fm.MsgType.UPDATE, "int8", good, 108, b"x" * 32),
    ]
    reasons = {}
    for data in authentic:
        coord.expect = {1, 2}  # a refused update ends its sender's round (below): start each case afresh
        res = coord.handle(data, 1 if data[4] != 3 else 3)
        assert res is None
    reasons = dict(coord.rejected)
    assert {
        "non_finite",
        "bad_payload",
        "stale_round",
        "wrong_receiver",
        "unexpected_type",
        "not_expected",
        "unknown_sender",
    } <= set(reasons), reasons
    before = (dict(coord.guard._last), dict(coord.updates), coord.round, set(coord.expect))
    total = 0
    for data in _mutations(valid, rng, 60_000):
        assert coord.handle(data, 1) is None
        total += 1
    assert (dict(coord.guard._last), dict(coord.updates), coord.round, set(coord.expect)) == before
    assert sum(coord.rejected.values()) == total + len(authentic)
    assert coord.rejected["replayed"] > 0 and coord.rejected["bad_tag"] > 0 and coord.rejected["truncated"] > 0

    # The device's handler.
    dev = DeviceRuntime(
        {"device": 2, "num_params": N, "tensor_sizes": SIZES, "downlink_encoding": "float32"}, derive_key(KEY, 2)
    )
    k2 = derive_key(KEY, 2)
    model = enc.encode(rng.standard_normal(N).astype(np.float32), "float32")
    mvalid = [_signed(COORDINATOR_ID, 2, 5 + i, fm.MsgType.MODEL, "float32", model, 50 + i, k2) for i in range(3)]
    for v in mvalid:
        assert dev.accept(v)[0].msg_type == fm.MsgType.MODEL
    dev.round = 7
    bad = [
        _signed(COORDINATOR_ID, 2, 9, fm.MsgType.MODEL, "float32", enc.encode(nan, "float32"), 60, k2),
        _signed(COORDINATOR_ID, 2, 9, fm.MsgType.MODEL, "int8", good, 61, k2),
        _signed(COORDINATOR_ID, 2, 9, fm.MsgType.CONTROL, "none", b'{"cmd": "rm -rf"}', 62, k2),
        _signed(COORDINATOR_ID, 3, 9, fm.MsgType.MODEL, "float32", model, 63, k2),
        _signed(COORDINATOR_ID, 2, 6, fm.MsgType.MODEL, "float32", model, 64, k2),
        _signed(1, 2, 9, fm.MsgType.MODEL, "float32", model, 65, derive_key(KEY, 1)),
    ]
    for data in bad:
        assert dev.handle(data) is None
    dstate = (dict(dev.guard._last), dev.round)
    for data in _mutations(mvalid, rng, 45_000):
        assert dev.handle(data) is None
        total += 1
    assert (dict(dev.guard._last), dev.round) == dstate
    assert sum(dev.rejected.values()) == 45_000 + len(bad)
    assert total >= 100_000


def test_fuzz_over_real_socket(tmp_path: Path) -> None:
    """A few hundred bad frames on real TCP connections: the coordinator rejects them all,
    stays up, and still accepts a valid HELLO afterwards."""
    spec, _ = load_spec(ROOT / "examples" / "quickstart.yaml", ["fleet.groups.0.count=3"])
    exp = prepare(spec, ROOT / "examples")
    store = RunStore(tmp_path / "results.db")

    async def scenario() -> None:
        emu = Emulation(exp, store, "fuzz", tmp_path, EmulateOptions(time_scale=0.0))
        emu.coord.round, emu.coord.expect = 1, {0, 1, 2}
        server = await asyncio.start_server(emu._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        rng = np.random.default_rng(1)
        k0 = emu.coord.keys[0]
        upd = enc.encode(
            np.zeros(exp.model.num_params, np.float32), spec.algorithm.encoding, tensor_sizes=exp.model.tensor_sizes
        )
        valid = [_signed(0, COORDINATOR_ID, 1, fm.MsgType.UPDATE, spec.algorithm.encoding, upd, 5, k0)]
        frames = list(_mutations(valid, rng, 300))
        frames.append(struct.pack("<2sBBIIIBBQI", b"TT", 1, 3, 0, COORDINATOR_ID, 1, 1, 0, 9, 2**24))  # too large

        def blast() -> None:
            for data in frames:
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(5)
                    try:
                        s.recv(1)
                    except OSError:
                        pass

        t0 = time.perf_counter()
        await asyncio.to_thread(blast)
        assert time.perf_counter() - t0 < 60
        await asyncio.sleep(0.1)
        assert emu.coord.updates == {}
        # a connection without a HELLO is closed at its first refused frame: one rejection per
        # connection that sent at least a whole header
        assert sum(emu.coord.rejected.values()) == sum(len(f) >= fm.HEADER_SIZE for f in frames)
        assert emu.coord.rejected["no_hello"] > 0
        hello = _signed(
            1,
            COORDINATOR_ID,
            0,
            fm.MsgType.HELLO,
            "none",
            json.dumps({"pid": 1}).encode(),
            time.time_ns(),
            emu.coord.keys[1],
        )
        emu.hello[1] = asyncio.Event()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(hello)
        await w.drain()
        await asyncio.wait_for(emu.hello[1].wait(), 5)
        w.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    store.close()


def test_a_refused_update_takes_its_sender_out_of_the_round_at_once() -> None:
    coord = Coordinator(4, KEY, N, SIZES, "float32")
    coord.round, coord.expect = 5, {1, 2}
    dropped: list[tuple[int, str]] = []
    coord.on_drop = lambda d, reason: dropped.append((d, reason))
    nan = enc.encode(np.full(N, np.nan, dtype=np.float32), "float32")
    assert (
        coord.handle(_signed(1, COORDINATOR_ID, 5, fm.MsgType.UPDATE, "float32", nan, 1, derive_key(KEY, 1)), 1) is None
    )
    assert dropped == [(1, "non_finite")] and coord.expect == {2}
    # a forged frame (wrong key) naming device 2 does not take device 2 out
    forged = _signed(2, COORDINATOR_ID, 5, fm.MsgType.UPDATE, "float32", nan, 2, b"k" * 32)
    assert coord.handle(forged, 2) is None and coord.expect == {2} and len(dropped) == 1
