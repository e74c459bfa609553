"""Device and link catalogs: built-in figures, their citations, YAML overrides and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tinytwin.errors import SpecError, TinyTwinError
from tinytwin.fleet.catalog import (
    DeviceProfile,
    PowerProfile,
    check_radios,
    load_device_catalog,
    override_profile,
)
from tinytwin.net.links import LinkModel, load_link_catalog, override_link

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "devices.md"

DEVICE_NUMERIC = (
    "clock_hz",
    "ram_bytes",
    "external_ram_bytes",
    "reserved_ram_bytes",
    "flash_bytes",
    "reserved_flash_bytes",
    "flops_per_s",
)
OPTIONAL_ZERO = ("external_ram_bytes", "reserved_ram_bytes", "reserved_flash_bytes")
POWER = ("active_w", "idle_w", "tx_w", "rx_w")
LINK_NUMERIC = ("latency_s", "jitter_s", "up_bps", "down_bps", "loss", "mtu_bytes", "header_bytes")

REQUIRED_DEVICES = (
    "esp32-s3",
    "nrf52840",
    "stm32h743",
    "rp2040",
    "raspberry-pi-4",
    "jetson-nano-cpu",
    "jetson-nano-gpu",
    "jetson-agx-orin-cpu",
)
REQUIRED_LINKS = ("wifi", "ble", "ieee802154", "lora", "ethernet", "uart")

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def devices() -> dict[str, DeviceProfile]:
    return load_device_catalog()


@pytest.fixture(scope="module")
def links() -> dict[str, LinkModel]:
    return load_link_catalog()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _cited(sources: dict[str, str], path: str) -> bool:
    return path in sources or path.split(".")[0] in sources


# ---------------------------------------------------------------- built-in devices


def test_required_devices_present(devices):
    for name in REQUIRED_DEVICES:
        assert name in devices, name
        assert devices[name].name == name


@pytest.mark.parametrize("name", sorted(load_device_catalog()))
def test_builtin_device_validates_and_cites_every_figure(devices, name):
    p = devices[name]
    assert isinstance(p, DeviceProfile) and isinstance(p.power, PowerProfile)
    # round-trips through validation unchanged
    assert DeviceProfile.model_validate(p.model_dump()) == p
    for field in DEVICE_NUMERIC:
        if field in OPTIONAL_ZERO and getattr(p, field) == 0:
            continue
        assert _cited(p.sources, field), f"{name}: no source for {field}"
    for field in POWER:
        assert _cited(p.sources, f"power.{field}"), f"{name}: no source for power.{field}"
    for key, text in p.sources.items():
        assert text.strip(), f"{name}: empty source for {key}"
    # the effective training throughput is always an estimate, and far below the clock x cores
    assert p.sources["flops_per_s"].startswith("estimate:")
    assert 0 < p.flops_per_s
    assert p.training_ram_bytes > 0 and p.model_flash_bytes > 0


def test_estimates_are_marked_and_figures_have_a_kind_of_source(devices, links):
    """Every source is an estimate (says so), a seed document, or a named document/standard."""
    entries = [*devices.values(), *links.values()]
    for e in entries:
        for key, text in e.sources.items():
            low = text.lower()
            if "estimate" in low.split(":")[0]:
                assert low.startswith("estimate:"), f"{e.name}.{key}: estimates must start with 'estimate:'"
            # no fabricated page/table numbers for vendor documents: cite by section name
            assert not re.search(r"\bpage \d+|\bp\. ?\d+", low), f"{e.name}.{key} cites a page number"


def test_ram_and_flash_arithmetic(devices):
    esp = devices["esp32-s3"]
    assert esp.ram_bytes == 512 * KiB and esp.external_ram_bytes == 8 * MiB and esp.flash_bytes == 8 * MiB
    assert esp.training_ram_bytes == esp.ram_bytes + esp.external_ram_bytes - esp.reserved_ram_bytes
    assert esp.model_flash_bytes == esp.flash_bytes - esp.reserved_flash_bytes

    p = DeviceProfile(
        name="t",
        description="d",
        cpu="c",
        clock_hz=1e6,
        ram_bytes=1000,
        external_ram_bytes=500,
        reserved_ram_bytes=300,
        flash_bytes=4000,
        reserved_flash_bytes=1000,
        flops_per_s=1e5,
        power=PowerProfile(active_w=1, idle_w=0.5, tx_w=2, rx_w=1.5),
        radios=("uart",),
        sources={k: "estimate: test" for k in (*DEVICE_NUMERIC, "power")},
    )
    assert p.training_ram_bytes == 1200
    assert p.model_flash_bytes == 3000
    q = p.model_copy(update={})  # defaults stay zero when not given
    assert q.training_ram_bytes == 1200


def test_memory_and_clock_figures(devices):
    nrf = devices["nrf52840"]
    assert nrf.ram_bytes == 256 * KiB and nrf.flash_bytes == 1024 * KiB and nrf.clock_hz == 64e6
    assert "seed 003" in nrf.sources["ram_bytes"]
    assert devices["stm32h743"].clock_hz == 480e6 and devices["stm32h743"].flash_bytes == 2 * MiB
    assert devices["stm32h743"].ram_bytes >= 1024 * KiB
    rp = devices["rp2040"]
    assert rp.ram_bytes == 264 * KiB and rp.flash_bytes == 2 * MiB and rp.clock_hz == 133e6
    assert "no fpu" in rp.cpu.lower()
    assert devices["esp32-s3"].clock_hz == 240e6
    assert devices["raspberry-pi-4"].ram_bytes == 4 * 1024 * MiB
    assert devices["jetson-agx-orin-cpu"].ram_bytes == 64 * 1024 * MiB


def test_seed_004_power_measurements(devices):
    expected = {"jetson-agx-orin-cpu": 15.0, "jetson-nano-cpu": 7.0, "jetson-nano-gpu": 8.0, "raspberry-pi-4": 6.0}
    for name, watts in expected.items():
        p = devices[name]
        assert p.power.active_w == watts, name
        src = p.sources["power.active_w"]
        assert "seed 004" in src and "Delock" in src and "measured" in src, name


def test_throughput_orders_of_magnitude(devices):
    """Soft float < M4F < LX7 < M7 < A-class CPUs < GPU, and always well below clock x cores."""
    f = {n: p.flops_per_s for n, p in devices.items()}
    assert f["rp2040"] < f["nrf52840"] < f["esp32-s3"] < f["stm32h743"] < f["raspberry-pi-4"]
    assert f["jetson-nano-cpu"] < f["jetson-nano-gpu"]
    assert f["jetson-nano-cpu"] < f["jetson-agx-orin-cpu"]
    for name in ("rp2040", "nrf52840", "esp32-s3", "stm32h743"):
        assert f[name] <= devices[name].clock_hz, name


def test_mcu_power_is_watts_not_milliwatts(devices):
    for name in ("nrf52840", "esp32-s3", "stm32h743", "rp2040"):
        pw = devices[name].power
        assert 1e-5 < pw.idle_w <= pw.active_w < 2.0, name
        assert pw.tx_w < 2.0 and pw.rx_w < 2.0, name


# ---------------------------------------------------------------- built-in links


def test_required_links_present(links):
    for name in REQUIRED_LINKS:
        assert name in links, name


@pytest.mark.parametrize("name", sorted(load_link_catalog()))
def test_builtin_link_validates_and_cites_every_figure(links, name):
    link = links[name]
    assert LinkModel.model_validate(link.model_dump()) == link
    for field in LINK_NUMERIC:
        if field == "jitter_s" and link.jitter_s == 0:
            continue
        assert field in link.sources, f"{name}: no source for {field}"
    assert 0 <= link.loss < 1


def test_link_figures(links):
    uart = links["uart"]
    assert uart.up_bps == uart.down_bps == 7680 and uart.header_bytes == 0
    assert links["ieee802154"].up_bps == 250_000 and links["ieee802154"].mtu_bytes <= 127
    lora = links["lora"]
    assert lora.up_bps == 5470 and lora.mtu_bytes == 222 and "duty" in lora.description.lower()
    assert links["ethernet"].up_bps == 100e6 and links["ethernet"].loss == 0.0
    assert links["ethernet"].mtu_bytes == links["wifi"].mtu_bytes == 1460
    assert links["ble"].mtu_bytes == 244
    assert 1e6 <= links["wifi"].up_bps <= 20e6
    assert 1e5 <= links["ble"].up_bps <= 1e6


def test_all_device_radios_exist_in_link_catalog(devices, links):
    for name, p in devices.items():
        for radio in p.radios:
            assert radio in links, f"{name} names unknown link {radio}"
    check_radios(devices, links)  # does not raise


def test_check_radios_names_the_unknown_link(devices, links):
    bad = {"x": override_profile(devices["rp2040"], {"radios": ["carrier-pigeon"]}, "t")}
    with pytest.raises(TinyTwinError, match="carrier-pigeon"):
        check_radios(bad, links)


# ---------------------------------------------------------------- extra files


def test_base_override_changes_one_field_and_keeps_the_rest(tmp_path, devices):
    f = _write(
        tmp_path,
        "extra.yaml",
        """
my-esp:
  base: esp32-s3
  flops_per_s: 4.5e7
  sources:
    flops_per_s: "measured: firmware twin"
""",
    )
    cat = load_device_catalog([f])
    new, old = cat["my-esp"], devices["esp32-s3"]
    assert new.name == "my-esp" and new.flops_per_s == 4.5e7
    assert new.sources["flops_per_s"] == "measured: firmware twin"
    for field in (
        "ram_bytes",
        "external_ram_bytes",
        "reserved_ram_bytes",
        "flash_bytes",
        "clock_hz",
        "power",
        "radios",
        "cpu",
        "description",
    ):
        assert getattr(new, field) == getattr(old, field), field
    assert new.sources["ram_bytes"] == old.sources["ram_bytes"]
    assert cat["esp32-s3"] == old  # the base is untouched
    assert load_device_catalog()["esp32-s3"] == old  # and so is the cached built-in catalog


def test_base_override_merges_power_and_replaces_in_place(tmp_path, devices):
    f = _write(
        tmp_path,
        "extra.yaml",
        """
esp32-s3:
  base: esp32-s3
  power: {active_w: 0.3}
  sources: {power.active_w: "measured: INA219"}
""",
    )
    p = load_device_catalog([f])["esp32-s3"]
    old = devices["esp32-s3"]
    assert p.power.active_w == 0.3
    assert (p.power.idle_w, p.power.tx_w, p.power.rx_w) == (old.power.idle_w, old.power.tx_w, old.power.rx_w)
    assert p.sources["power.active_w"] == "measured: INA219"
    assert p.sources["power.idle_w"] == old.sources["power.idle_w"]


def test_base_override_without_new_citation_is_refused(tmp_path):
    f = _write(tmp_path, "extra.yaml", "x:\n  base: esp32-s3\n  clock_hz: 1.6e8\n")
    with pytest.raises(TinyTwinError) as info:
        load_device_catalog([f])
    msg = str(info.value)
    assert str(f) in msg and "'x'" in msg and "clock_hz" in msg and "sources" in msg


def test_list_form_new_profile_and_later_files_win(tmp_path):
    first = _write(
        tmp_path,
        "a.yaml",
        """
- name: tiny
  description: a test board
  cpu: Cortex-M4F
  clock_hz: 48000000
  ram_bytes: 131072
  reserved_ram_bytes: 16384
  flash_bytes: 524288
  flops_per_s: 1.2e7
  power: {active_w: 0.01, idle_w: 0.0001, tx_w: 0.02, rx_w: 0.02}
  radios: [ble]
  sources:
    clock_hz: "datasheet"
    ram_bytes: "datasheet"
    reserved_ram_bytes: "estimate: RTOS"
    flash_bytes: "datasheet"
    flops_per_s: "estimate: 48 MHz x 0.25"
    power: "estimate: test"
""",
    )
    second = _write(
        tmp_path,
        "b.yaml",
        """
tiny:
  base: tiny
  ram_bytes: 262144
  sources: {ram_bytes: "datasheet rev B"}
""",
    )
    cat = load_device_catalog([first, second])
    assert cat["tiny"].ram_bytes == 262144
    assert cat["tiny"].training_ram_bytes == 262144 - 16384
    assert cat["tiny"].external_ram_bytes == 0
    assert "esp32-s3" in cat


def test_empty_extra_file_adds_nothing(tmp_path, devices):
    f = _write(tmp_path, "empty.yaml", "# nothing yet\n")
    assert load_device_catalog([f]) == devices


def test_extra_link_file_with_base(tmp_path, links):
    f = _write(
        tmp_path,
        "links.yaml",
        """
uart-115200:
  base: uart
  description: UART 115200 8N1
  up_bps: 92160
  down_bps: 92160
  sources: {up_bps: "115200 baud 8N1", down_bps: "115200 baud 8N1"}
""",
    )
    cat = load_link_catalog([f])
    assert cat["uart-115200"].up_bps == 92160
    assert cat["uart-115200"].mtu_bytes == links["uart"].mtu_bytes
    assert cat["uart"] == links["uart"]


# ---------------------------------------------------------------- bad files


BAD_DEVICE_FILES = {
    "unknown field": ("x:\n  base: esp32-s3\n  ram_kb: 12\n", "ram_kb", "allowed fields"),
    "negative RAM": ("x:\n  base: esp32-s3\n  ram_bytes: -5\n  sources: {ram_bytes: datasheet}\n", "ram_bytes", "> 0"),
    "unknown base": ("x:\n  base: esp99\n", "base", "esp99"),
    "unknown power field": ("x:\n  base: esp32-s3\n  power: {sleep_w: 1}\n", "power.sleep_w", "active_w"),
    "zero power": ("x:\n  base: esp32-s3\n  power: {idle_w: 0}\n  sources: {power.idle_w: m}\n", "power.idle_w", "> 0"),
    "reserved too big": (
        "x:\n  base: nrf52840\n  reserved_ram_bytes: 300000\n  sources: {reserved_ram_bytes: 'estimate: all'}\n",
        "reserved_ram_bytes",
        "smaller",
    ),
    "radios not a list of names": ("x:\n  base: rp2040\n  radios: []\n", "radios", "at least 1"),
    "missing sources on a new profile": (
        "x:\n  description: d\n  cpu: c\n  clock_hz: 1\n  ram_bytes: 1\n  flash_bytes: 1\n  flops_per_s: 1\n"
        "  power: {active_w: 1, idle_w: 1, tx_w: 1, rx_w: 1}\n  radios: [uart]\n  sources: {clock_hz: ds}\n",
        "sources",
        "ram_bytes",
    ),
    "unknown source key": ("x:\n  base: rp2040\n  sources: {clock: ds}\n", "sources", "clock"),
    "missing required field": ("x:\n  description: d\n", "cpu", "missing"),
    "not a mapping": ("x: 12\n", "'x'", "mapping"),
    "top level scalar": ("just text\n", "mapping", "list"),
    "list entry without name": ("- {base: rp2040}\n", "entry 0", "name"),
    "name mismatch": ("x:\n  name: y\n  base: rp2040\n", "name", "match"),
    "invalid YAML": ("x: [1,\n", "invalid YAML", "line"),
    "duplicate name": ("x: {base: rp2040}\nx: {base: rp2040}\n", "duplicate", "'x'"),
}


@pytest.mark.parametrize("case", sorted(BAD_DEVICE_FILES))
def test_bad_device_file_raises_one_clear_error(tmp_path, case):
    text, *needles = BAD_DEVICE_FILES[case]
    f = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(TinyTwinError) as info:
        load_device_catalog([f])
    assert not isinstance(info.value, ValidationError)
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, ValidationError)
    msg = str(info.value)
    assert str(f) in msg, msg
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_bad_device_file_error_names_profile(tmp_path):
    f = _write(tmp_path, "bad.yaml", "my-board:\n  base: esp32-s3\n  ram_bytes: -5\n  sources: {ram_bytes: x}\n")
    with pytest.raises(TinyTwinError, match=r"device profile 'my-board'.*field 'ram_bytes': must be > 0 \(got -5\)"):
        load_device_catalog([f])


@pytest.mark.parametrize("loss", ["1.0", "-0.1", "1.5"])
def test_bad_link_loss(tmp_path, loss):
    f = _write(tmp_path, "links.yaml", f"lossy:\n  base: wifi\n  loss: {loss}\n  sources: {{loss: x}}\n")
    with pytest.raises(TinyTwinError) as info:
        load_link_catalog([f])
    msg = str(info.value)
    assert str(f) in msg and "link 'lossy'" in msg and "field 'loss'" in msg


def test_bad_link_unknown_field_and_base(tmp_path):
    f = _write(tmp_path, "links.yaml", "x:\n  base: wifi\n  bandwidth: 3\n")
    with pytest.raises(TinyTwinError, match="field 'bandwidth': unknown field; allowed fields: .*up_bps"):
        load_link_catalog([f])
    g = _write(tmp_path, "links2.yaml", "x:\n  base: 5g\n")
    with pytest.raises(TinyTwinError, match="field 'base': unknown base link '5g'"):
        load_link_catalog([g])


def test_missing_extra_file(tmp_path):
    with pytest.raises(TinyTwinError, match="cannot read"):
        load_device_catalog([tmp_path / "nope.yaml"])


# ---------------------------------------------------------------- overrides from the experiment file


def test_override_profile_merges_power_and_cites_the_override(devices):
    old = devices["esp32-s3"]
    new = override_profile(old, {"clock_hz": 160e6, "power": {"idle_w": 0.05}}, "fleet.groups.0.overrides")
    assert new.clock_hz == 160e6 and new.power.idle_w == 0.05
    assert new.power.active_w == old.power.active_w and new.ram_bytes == old.ram_bytes
    assert new.sources["clock_hz"] == "override: fleet.groups.0.overrides.clock_hz"
    assert new.sources["power.idle_w"] == "override: fleet.groups.0.overrides.power.idle_w"
    assert new.sources["ram_bytes"] == old.sources["ram_bytes"]
    assert old.clock_hz == 240e6  # frozen original untouched
    assert override_profile(old, {}, "w") is old


def test_override_profile_keeps_given_citation(devices):
    new = override_profile(
        devices["nrf52840"], {"flops_per_s": 2e7, "sources": {"flops_per_s": "measured: x"}}, "fleet.groups.1.overrides"
    )
    assert new.sources["flops_per_s"] == "measured: x"


@pytest.mark.parametrize(
    "changes, path",
    [
        ({"ram_bytes": -1}, "fleet.groups.0.overrides.ram_bytes"),
        ({"ram_kb": 1}, "fleet.groups.0.overrides.ram_kb"),
        ({"power": {"tx_w": 0}}, "fleet.groups.0.overrides.power.tx_w"),
        ({"base": "rp2040"}, "fleet.groups.0.overrides.base"),
    ],
)
def test_override_profile_errors_are_spec_errors(devices, changes, path):
    with pytest.raises(SpecError) as info:
        override_profile(devices["esp32-s3"], changes, "fleet.groups.0.overrides")
    assert info.value.path == path
    assert "esp32-s3" in str(info.value)


def test_override_link(links):
    new = override_link(links["ble"], {"up_bps": 5e5, "loss": 0.05}, "fleet.groups.0.link_overrides")
    assert new.up_bps == 5e5 and new.loss == 0.05 and new.mtu_bytes == 244
    assert new.sources["up_bps"].startswith("override: fleet.groups.0.link_overrides")
    with pytest.raises(SpecError) as info:
        override_link(links["ble"], {"loss": 1.0}, "fleet.groups.0.link_overrides")
    assert info.value.path == "fleet.groups.0.link_overrides.loss"
    with pytest.raises(SpecError):
        override_link(links["ble"], ["not", "a", "mapping"], "x")  # type: ignore[arg-type]


# ---------------------------------------------------------------- models


def test_models_are_frozen_and_strict(devices, links):
    p = devices["rp2040"]
    with pytest.raises(ValidationError):
        p.clock_hz = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        links["uart"].loss = 0.5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        PowerProfile(active_w=1, idle_w=1, tx_w=1, rx_w=1, sleep_w=1)  # type: ignore[call-arg]
    for model in (DeviceProfile, LinkModel, PowerProfile):
        assert model.model_config["extra"] == "forbid" and model.model_config["frozen"] is True


def test_link_model_rejects_bad_values():
    base = dict(
        name="l",
        description="d",
        latency_s=0.0,
        up_bps=1.0,
        down_bps=1.0,
        loss=0.0,
        mtu_bytes=10,
        header_bytes=0,
        sources={k: "x" for k in ("latency_s", "up_bps", "down_bps", "loss", "mtu_bytes", "header_bytes")},
    )
    LinkModel(**base)
    for field, value in [
        ("loss", 1.0),
        ("loss", -0.01),
        ("latency_s", -1.0),
        ("up_bps", 0.0),
        ("mtu_bytes", 0),
        ("header_bytes", -1),
        ("jitter_s", -0.1),
        ("up_bps", float("inf")),
    ]:
        with pytest.raises(ValidationError):
            LinkModel(**{**base, field: value, "sources": {**base["sources"], "jitter_s": "x"}})


# ---------------------------------------------------------------- docs


def test_docs_list_every_profile_and_their_examples_load(tmp_path, devices, links):
    text = DOC.read_text()
    for name in [*devices, *links]:
        assert f"`{name}`" in text, f"docs/devices.md does not list {name}"
    assert "how the effective training throughput was estimated" in text.lower()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    device_files, link_files = [], []
    for i, block in enumerate(blocks):
        f = _write(tmp_path, f"doc{i}.yaml", block)
        (link_files if "base: uart" in block or "base: wifi" in block else device_files).append(f)
    cat = load_device_catalog(device_files)
    assert cat["esp32-s3-calibrated"].flops_per_s == 4.5e7
    assert cat["jetson-nano-wifi"].radios == ("wifi", "ethernet")
    assert cat["nrf5340-app"].training_ram_bytes == 512 * KiB - 64 * KiB
    lcat = load_link_catalog(link_files)
    assert lcat["uart-tinyfedtl"].up_bps == 1600
    check_radios(cat, lcat)


def test_exponent_notation_for_sizes(tmp_path):
    f = _write(
        tmp_path,
        "e.yaml",
        "x:\n  base: rp2040\n  ram_bytes: 2.62144e5\n  flash_bytes: 4e6\n  sources: {ram_bytes: ds, flash_bytes: ds}\n",
    )
    p = load_device_catalog([f])["x"]
    assert p.ram_bytes == 262144 and isinstance(p.ram_bytes, int)
    assert p.flash_bytes == 4_000_000
