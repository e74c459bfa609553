"""Wire encodings and frames: exact layouts, sizes, bit-exact torch twin, rejection of corruption."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random

import numpy as np
import pytest
import torch

from tinytwin.wire.encoding import ENCODINGS, decode, encode, encoded_size
from tinytwin.wire.frame import (
    ENCODING_CODES,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    MAX_PAYLOAD,
    TAG_SIZE,
    Frame,
    FrameError,
    MsgType,
    ReplayGuard,
    decode_frame,
    encode_frame,
    frame_length,
    frame_size,
    payload_is_finite,
)
from tinytwin.wire.roundtrip import roundtrip_torch

KEYS = {7: b"key-of-device-7", 0: b"key-of-server-0"}


def f32(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


# ---------------------------------------------------------------- payload encodings


def test_float32_layout_and_exact_roundtrip() -> None:
    x = f32([0.5, -1.0, 0.25])
    assert encode(x, "float32").hex() == "0000003f000080bf0000803e"
    values, mask = decode(encode(x, "float32"), "float32", 3)
    assert mask is None and np.array_equal(values, x) and values.flags.writeable


def test_float16_layout_saturation_and_nan() -> None:
    x = f32([0.5, -1.0, 0.25])
    assert encode(x, "float16").hex() == "0038 00bc 0034".replace(" ", "")
    big = f32([1e6, -1e6, np.inf, -np.inf, 65504.0, 70000.0, np.nan])
    values, _ = decode(encode(big, "float16"), "float16", 7)
    assert values[:6].tolist() == [65504.0, -65504.0, 65504.0, -65504.0, 65504.0, 65504.0]
    assert np.isnan(values[6])


def test_int8_layout_per_tensor_scales_and_half_even() -> None:
    x = f32([0.5, -1.0, 0.25])
    payload = encode(x, "int8", tensor_sizes=[2, 1])
    # scales 1/127 and 0.25/127 (float32 LE), then q: 0.5/(1/127) = 63.5 -> 64 (even), -127, 127
    assert payload.hex() == "0402013c" + "0402013b" + "40817f"
    values, mask = decode(payload, "int8", 3, tensor_sizes=[2, 1])
    s0, s1 = np.float32(1) / np.float32(127), np.float32(0.25) / np.float32(127)
    assert mask is None
    assert np.array_equal(values, f32([64 * s0, -127 * s0, 127 * s1]))


def test_int8_all_zero_tensor_uses_scale_one() -> None:
    payload = encode(f32([0.0, 0.0, 3.0]), "int8", tensor_sizes=[2, 1])
    assert payload[:4] == np.float32(1.0).tobytes()
    values, _ = decode(payload, "int8", 3, tensor_sizes=[2, 1])
    assert values.tolist() == [0.0, 0.0, 3.0]


def test_int8_non_finite_tensor_decodes_to_nan() -> None:
    payload = encode(f32([1.0, np.nan, -4.0, 4.0]), "int8", tensor_sizes=[2, 2])
    values, _ = decode(payload, "int8", 4, tensor_sizes=[2, 2])
    assert np.isnan(values[:2]).all() and values[2:].tolist() == [-4.0, 4.0]
    assert not payload_is_finite(values)


def test_bitmap_layout_lsb_first() -> None:
    x = np.zeros(10, dtype=np.float32)
    x[1], x[9] = 1.5, -2.0
    mask = np.zeros(10, dtype=bool)
    mask[[1, 9]] = True
    payload = encode(x, "bitmap", mask=mask)
    # bit 1 of byte 0 -> 0x02; bit 9 = bit 1 of byte 1 -> 0x02; then 1.5, -2.0 as float32 LE
    assert payload.hex() == "0202" + "0000c03f" + "000000c0"
    values, got_mask = decode(payload, "bitmap", 10)
    assert np.array_equal(values, x) and np.array_equal(got_mask, mask)


def test_bitmap_unmasked_positions_decode_to_zero() -> None:
    x = f32([1.0, 2.0, 3.0])
    mask = np.array([True, False, True])
    values, got = decode(encode(x, "bitmap", mask=mask), "bitmap", 3)
    assert values.tolist() == [1.0, 0.0, 3.0] and got.tolist() == [True, False, True]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encoded_size_matches_encode(encoding: str) -> None:
    rng = np.random.default_rng(0)
    for n in list(range(0, 34)) + [1000, 1001, 4097]:
        x = rng.standard_normal(n).astype(np.float32)
        splits: list[list[int] | None] = [None]
        if n >= 3:
            cuts = sorted(rng.choice(np.arange(1, n), size=2, replace=False).tolist())
            splits.append([cuts[0], cuts[1] - cuts[0], n - cuts[1]])
        for sizes in splits:
            mask = rng.random(n) < 0.3 if encoding == "bitmap" else None
            payload = encode(x, encoding, tensor_sizes=sizes, mask=mask)
            nnz = int(mask.sum()) if mask is not None else None
            assert encoded_size(n, encoding, tensor_sizes=sizes, nnz=nnz) == len(payload)
            values, _ = decode(payload, encoding, n, tensor_sizes=sizes)
            assert values.shape == (n,) and values.dtype == np.float32


def test_dense_roundtrip_error_bounds() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(500).astype(np.float32)
    v16, _ = decode(encode(x, "float16"), "float16", 500)
    assert np.allclose(v16, x, rtol=1e-3, atol=1e-4)
    v8, _ = decode(encode(x, "int8"), "int8", 500)
    assert np.max(np.abs(v8 - x)) <= np.max(np.abs(x)) / 127 / 2 * 1.0001


@pytest.mark.parametrize(
    ("payload", "encoding", "n", "expected"),
    [
        (b"\x00" * 11, "float32", 3, 12),
        (b"\x00" * 7, "float16", 3, 6),
        (b"\x00" * 6, "int8", 3, 7),
        (b"\x02\x02" + b"\x00" * 4, "bitmap", 10, 10),
        (b"\x02", "bitmap", 10, 2),
    ],
)
def test_decode_rejects_wrong_length(payload: bytes, encoding: str, n: int, expected: int) -> None:
    with pytest.raises(ValueError, match=rf"expected (at least )?{expected} bytes, got {len(payload)}"):
        decode(payload, encoding, n)


def test_decode_rejects_bitmap_padding_bits() -> None:
    with pytest.raises(ValueError, match="padding"):
        decode(b"\x00\x04" + b"\x00" * 4, "bitmap", 10)  # bit 10 set, n = 10


def test_encode_validation() -> None:
    x = f32([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown encoding"):
        encode(x, "int4")
    with pytest.raises(ValueError, match="mask"):
        encode(x, "bitmap")
    with pytest.raises(ValueError, match="mask"):
        encode(x, "float32", mask=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="tensor_sizes"):
        encode(x, "int8", tensor_sizes=[2, 2])
    with pytest.raises(ValueError, match="nnz"):
        encoded_size(3, "bitmap")


def _tricky_rows(rng: np.random.Generator, k: int, p: int) -> np.ndarray:
    """Rows mixing scales, zero tensors, subnormals, exact .5 ties and float16 overflow."""
    x = (rng.standard_normal((k, p)) * 10.0 ** rng.integers(-8, 6, size=(k, 1))).astype(np.float32)
    x[0, :] = 0.0
    x[1, :] = np.float32(1e-42) * rng.integers(-5, 5, size=p)  # subnormals
    x[2, :] = rng.integers(-254, 255, size=p).astype(np.float32) / 2  # .5 ties under scale 1
    x[2, 0] = 127.0
    x[3, :] = rng.standard_normal(p) * 1e5  # beyond float16
    return x


@pytest.mark.parametrize("encoding", ["float32", "float16", "int8"])
def test_roundtrip_torch_bit_exact(encoding: str) -> None:
    rng = np.random.default_rng(2)
    sizes = [int(s) for s in rng.integers(1, 40, size=25)]
    sizes[3] = 1
    p = sum(sizes)
    x = _tricky_rows(rng, 12, p)
    x[5, sizes[0] : sizes[0] + sizes[1]] = 0.0  # one all-zero tensor in a normal row
    got = roundtrip_torch(torch.from_numpy(x), encoding, tensor_sizes=sizes)
    assert got.dtype == torch.float32 and got.shape == (12, p)
    for row in range(12):
        expected, _ = decode(encode(x[row], encoding, tensor_sizes=sizes), encoding, p, tensor_sizes=sizes)
        assert np.array_equal(bits(got[row].numpy()), bits(expected)), f"row {row}"


def test_roundtrip_torch_non_finite_matches_decoder() -> None:
    x = f32([1.0, np.nan, -np.inf, 3.0, 2.0, np.inf])
    for encoding in ("float16", "int8"):
        got = roundtrip_torch(torch.from_numpy(x), encoding, tensor_sizes=[2, 2, 2]).numpy()
        expected, _ = decode(encode(x, encoding, tensor_sizes=[2, 2, 2]), encoding, 6, tensor_sizes=[2, 2, 2])
        assert np.array_equal(got, expected, equal_nan=True), encoding


def test_roundtrip_torch_1d_float64_and_bitmap() -> None:
    x = torch.tensor([0.1, -0.7, 3.0], dtype=torch.float64)
    got = roundtrip_torch(x, "int8")
    expected, _ = decode(encode(x.numpy(), "int8"), "int8", 3)
    assert np.array_equal(bits(got.numpy()), bits(expected))
    with pytest.raises(ValueError, match="dense"):
        roundtrip_torch(x, "bitmap")


# ---------------------------------------------------------------- frames


def make_frame(**changes: object) -> Frame:
    base = Frame(
        MsgType.UPDATE,
        sender=7,
        receiver=0,
        round=3,
        encoding="int8",
        flags=0,
        nonce=42,
        payload=encode(f32([0.5, -1.0, 0.25]), "int8", tensor_sizes=[2, 1]),
    )
    return dataclasses.replace(base, **changes)


def test_header_constants() -> None:
    assert HEADER_SIZE == 30 and TAG_SIZE == 32 and FRAME_OVERHEAD == 62 and MAX_PAYLOAD == 16 * 2**20


def test_golden_frame_matches_protocol_doc() -> None:
    """The worked example of docs/protocol.md; C firmware is tested against the same bytes."""
    data = encode_frame(make_frame(), KEYS[7])
    assert data.hex() == (
        "5454"
        "01"
        "03"
        "07000000"
        "00000000"
        "03000000"
        "03"
        "00"
        "2a00000000000000"
        "0b000000"
        "0402013c0402013b40817f"
        "6bf29fa5d13d4bf259ce72533e77adfb802bb678549ab899558a7daa8d59f642"
    )
    assert data[-TAG_SIZE:] == hmac.new(KEYS[7], data[:-TAG_SIZE], hashlib.sha256).digest()


@pytest.mark.parametrize("msg_type", list(MsgType))
@pytest.mark.parametrize("encoding", list(ENCODING_CODES))
def test_frame_roundtrip(msg_type: MsgType, encoding: str) -> None:
    payload = b"" if encoding == "none" and msg_type == MsgType.BYE else bytes(range(37))
    frame = Frame(msg_type, 7, 2**32 - 1, 12345, encoding, 0x81, 2**64 - 1, payload)
    data = encode_frame(frame, KEYS[7])
    assert len(data) == frame_size(len(payload)) == FRAME_OVERHEAD + len(payload)
    assert frame_length(data[:HEADER_SIZE]) == len(data)
    assert decode_frame(data, KEYS.get) == frame


def test_frame_size_matches_encoded_frames() -> None:
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 8, 9, 100):
        x = rng.standard_normal(n).astype(np.float32)
        for encoding in ENCODINGS:
            mask = rng.random(n) < 0.5 if encoding == "bitmap" else None
            payload = encode(x, encoding, mask=mask)
            nnz = None if mask is None else int(mask.sum())
            data = encode_frame(make_frame(encoding=encoding, payload=payload), KEYS[7])
            assert len(data) == frame_size(encoded_size(n, encoding, nnz=nnz))


def _reason(data: bytes, keys=KEYS.get) -> str:
    with pytest.raises(FrameError) as info:
        decode_frame(data, keys)
    return info.value.reason


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def test_corruption_reasons() -> None:
    good = encode_frame(make_frame(), KEYS[7])
    assert _reason(b"") == "truncated"
    assert _reason(good[: HEADER_SIZE - 1]) == "truncated"
    assert _reason(good[:-1]) == "truncated"
    assert _reason(good + b"\x00") == "length_mismatch"
    assert _reason(_patch(good, 0, b"XT")) == "bad_magic"
    assert _reason(_patch(good, 2, b"\x02")) == "bad_version"
    assert _reason(_patch(good, 3, b"\x00")) == "unknown_type"
    assert _reason(_patch(good, 3, b"\x08")) == "unknown_type"
    assert _reason(_patch(good, 16, b"\x05")) == "unknown_encoding"
    assert _reason(_patch(good, 26, (MAX_PAYLOAD + 1).to_bytes(4, "little"))) == "too_large"
    assert _reason(_patch(good, 26, (12).to_bytes(4, "little"))) == "truncated"
    assert _reason(_patch(good, 26, (10).to_bytes(4, "little"))) == "length_mismatch"
    assert _reason(good, keys=lambda sender: None) == "unknown_sender"
    assert _reason(good, keys=lambda sender: b"") == "unknown_sender"
    assert _reason(good, keys=lambda sender: b"another key") == "bad_tag"
    assert _reason(_patch(good, 30, b"\x05")) == "bad_tag"  # payload byte
    assert _reason(_patch(good, 4, b"\x09")) == "unknown_sender"  # sender 9 has no key
    assert _reason(_patch(good, 17, b"\x01")) == "bad_tag"  # flags are authenticated


def test_redirected_frame_fails_tag() -> None:
    good = encode_frame(make_frame(), KEYS[7])
    # Claiming to come from sender 0 (whose key the receiver knows) fails the tag.
    assert _reason(_patch(good, 4, (0).to_bytes(4, "little"))) == "bad_tag"
    # Changing the receiver, round or nonce also fails the tag.
    for offset in (8, 12, 18):
        assert _reason(_patch(good, offset, b"\x09")) == "bad_tag"


def test_any_single_bit_flip_is_rejected() -> None:
    good = encode_frame(make_frame(payload=bytes(range(200))), KEYS[7])
    rng = random.Random(0)
    positions = list(range(len(good) * 8))
    for bit in rng.sample(positions, 400) + list(range(HEADER_SIZE * 8)):
        data = bytearray(good)
        data[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError):
            decode_frame(bytes(data), KEYS.get)


def test_replay_guard() -> None:
    guard = ReplayGuard()
    guard.check(7, 0)
    guard.check(7, 5)
    guard.check(8, 1)  # senders are independent
    for nonce in (5, 4, 0):
        with pytest.raises(FrameError, match="replayed") as info:
            guard.check(7, nonce)
        assert info.value.reason == "replayed"
    guard.check(7, 6)
    assert guard.last_nonce(7) == 6 and guard.last_nonce(9) is None


def test_replayed_frame_end_to_end() -> None:
    guard = ReplayGuard()
    data = encode_frame(make_frame(), KEYS[7])
    frame = decode_frame(data, KEYS.get)
    guard.check(frame.sender, frame.nonce)
    again = decode_frame(data, KEYS.get)  # a recorded frame still authenticates...
    with pytest.raises(FrameError, match="replayed"):  # ...but the guard refuses it
        guard.check(again.sender, again.nonce)


@pytest.mark.parametrize(
    "changes",
    [
        {"sender": -1},
        {"receiver": 2**32},
        {"round": 1.5},
        {"flags": 256},
        {"nonce": 2**64},
        {"encoding": "int4"},
        {"msg_type": 9},
        {"payload": b"\x00" * (MAX_PAYLOAD + 1)},
    ],
)
def test_frame_field_validation(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_frame(**changes)


def test_frame_coerces_types() -> None:
    frame = make_frame(msg_type=2, sender=np.uint32(5), payload=bytearray(b"ab"))
    assert frame.msg_type is MsgType.MODEL and type(frame.sender) is int and frame.payload == b"ab"
    with pytest.raises(ValueError, match="key"):
        encode_frame(frame, b"")


def test_payload_is_finite() -> None:
    assert payload_is_finite(f32([1.0, -2.0]))
    assert payload_is_finite(f32([]))
    assert not payload_is_finite(f32([1.0, np.nan]))
    assert not payload_is_finite(f32([np.inf]))
    assert payload_is_finite(np.array([1, 2], dtype=np.int8))


def test_frame_error_is_value_error() -> None:
    err = FrameError("bad_tag", "details")
    assert isinstance(err, ValueError) and err.reason == "bad_tag" and "bad_tag" in str(err)
