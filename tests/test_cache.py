"""One user cache folder: where it is, that it is announced once, and that data folders stay untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA, data_listing

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with exactly the cache variables of ``env``."""
    full = {k: v for k, v in os.environ.items() if k not in ("TINYTWIN_CACHE", "XDG_CACHE_HOME")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code, *args], env=full, capture_output=True, text=True, timeout=110)


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"TINYTWIN_CACHE": "{tmp}/own", "XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/own"),
        ({"XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/xdg/tinytwin"),
        ({"HOME": "{tmp}/home"}, "{tmp}/home/.cache/tinytwin"),
    ],
    ids=["TINYTWIN_CACHE-first", "then-XDG_CACHE_HOME", "then-home"],
)
def test_cache_dir_resolution(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()}
    proc = _python("from tinytwin.cache import cache_dir; print(cache_dir())", env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected.replace("{tmp}", str(tmp_path))


def test_first_write_is_announced_once(tmp_path: Path) -> None:
    code = (
        "from tinytwin.cache import cache_dir, prepare\nprepare(cache_dir() / 'a'); prepare(cache_dir() / 'b' / 'c')\n"
    )
    proc = _python(code, {"TINYTWIN_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"tinytwin: caching in {tmp_path / 'c'} (set TINYTWIN_CACHE to use another folder)"
    ]
    assert (tmp_path / "c" / "a").is_dir() and (tmp_path / "c" / "b" / "c").is_dir()


@pytest.mark.skipif(not (SHARED_DATA / "cifar10.npz").is_file(), reason=f"no cifar10.npz in {SHARED_DATA}")
def test_cifar10_decoded_cache_goes_to_the_cache_dir_not_beside_the_data(tmp_path: Path) -> None:
    """The real CIFAR-10: its 184 MB of decoded images land in the user cache, the data folder is unchanged."""
    before = data_listing(SHARED_DATA)
    code = (
        "import sys; from pathlib import Path; from tinytwin.data.datasets import load_dataset\n"
        "ds = load_dataset('cifar10', Path(sys.argv[1]))\n"
        "print(ds.x_train.shape[0] + ds.x_test.shape[0])\n"
    )
    cache = tmp_path / "cache"
    proc = _python(code, {"TINYTWIN_CACHE": str(cache)}, str(SHARED_DATA))
    assert proc.returncode == 0, proc.stderr
    decoded = list(cache.glob("cifar10-*.decoded-*.npy"))
    assert len(decoded) == 1 and decoded[0].stat().st_size > 150_000_000
    assert f"tinytwin: caching in {cache}" in proc.stderr
    assert data_listing(SHARED_DATA) == before
    assert not list(SHARED_DATA.glob("*.decoded-*"))
