"""From the spec's fleet section to concrete devices: profiles, links, and per-device arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.errors import SpecError, TinyTwinError
from tinytwin.fleet.catalog import DeviceProfile, load_device_catalog, override_profile
from tinytwin.fleet.cost import LinkArrays, PowerArrays
from tinytwin.net.links import LinkModel, load_link_catalog, override_link
from tinytwin.net.medium import DEDICATED, DEDICATED_NAMES, MediumArrays
from tinytwin.spec.schema import ExperimentSpec


@dataclass(frozen=True)
class Group:
    name: str
    profile: DeviceProfile
    link: LinkModel
    devices: np.ndarray  # device ids of this group


@dataclass(frozen=True)
class Fleet:
    groups: tuple[Group, ...]
    group_of: np.ndarray  # (D,) group index per device
    flops_per_s: np.ndarray  # (D,)
    power: PowerArrays
    links: LinkArrays
    medium: MediumArrays | None = None  # None: every device on its own link (docs/cost-model.md)

    @property
    def num_devices(self) -> int:
        return int(self.group_of.size)


def build_fleet(spec: ExperimentSpec, base_dir: Path | None = None) -> Fleet:
    """Resolve every group's profile and link (catalog, custom profiles, overrides)."""
    fs = spec.fleet
    devices = load_device_catalog(_extra(fs.profiles_file, "fleet.profiles_file", base_dir))
    links = load_link_catalog(_extra(fs.links_file, "fleet.links_file", base_dir))
    for name, fields in fs.profiles.items():
        devices[name] = _custom_profile(name, dict(fields), devices)
    groups: list[Group] = []
    start = 0
    for i, (g, gname) in enumerate(zip(fs.groups, spec.group_names())):
        where = f"fleet.groups.{i}"
        if g.profile not in devices:
            raise SpecError(
                f"{where}.profile",
                f"unknown device {g.profile!r}; known devices: "
                f"{', '.join(sorted(devices))} (see `tinytwin devices`), or define it under fleet.profiles",
            )
        if g.link not in links:
            raise SpecError(f"{where}.link", f"unknown link {g.link!r}; known links: {', '.join(sorted(links))}")
        profile = devices[g.profile]
        if g.overrides:
            profile = _wrap(lambda: override_profile(profile, g.overrides, f"{where}.overrides"), f"{where}.overrides")
        link = links[g.link]
        if g.link_overrides:
            link = _wrap(
                lambda: override_link(link, g.link_overrides, f"{where}.link_overrides"), f"{where}.link_overrides"
            )
        groups.append(Group(gname, profile, link, np.arange(start, start + g.count)))
        start += g.count
    group_of = np.concatenate([np.full(len(g.devices), i) for i, g in enumerate(groups)])

    def per_device(get: Any) -> np.ndarray:
        return np.array([get(g) for g in groups], dtype=np.float64)[group_of]

    power = PowerArrays(
        active_w=per_device(lambda g: g.profile.power.active_w),
        idle_w=per_device(lambda g: g.profile.power.idle_w),
        tx_w=per_device(lambda g: g.profile.power.tx_w),
        rx_w=per_device(lambda g: g.profile.power.rx_w),
    )
    link_arrays = LinkArrays(
        latency_s=per_device(lambda g: g.link.latency_s),
        up_bps=per_device(lambda g: g.link.up_bps),
        down_bps=per_device(lambda g: g.link.down_bps),
        loss=per_device(lambda g: g.link.loss),
        mtu_bytes=per_device(lambda g: g.link.mtu_bytes).astype(np.int64),
        header_bytes=per_device(lambda g: g.link.header_bytes).astype(np.int64),
    )
    media = assign_media(spec, groups, group_of)
    return Fleet(tuple(groups), group_of, per_device(lambda g: g.profile.flops_per_s), power, link_arrays, media)


def assign_media(spec: ExperimentSpec, groups: list[Group], group_of: np.ndarray) -> MediumArrays:
    """Which devices share a radio medium (one AP / central / gateway), per ``fleet.groups[i].medium``.

    Unset: a group on a ``shared_medium`` link (the radios) gets a medium of its own, named
    after the group; other links (wired) are dedicated. ``dedicated``/``none``: every device of
    the group has its own link. Any other name: all groups naming it share one medium, which
    only makes sense for one kind of radio, so their links must be the same catalog entry.
    """
    names: list[str] = []
    link_of: dict[str, tuple[int, str]] = {}
    index = np.full(len(groups), DEDICATED, dtype=np.int64)
    for i, (gs, g) in enumerate(zip(spec.fleet.groups, groups)):
        if gs.medium is None and not g.link.shared_medium or gs.medium in DEDICATED_NAMES:
            continue
        name = g.name if gs.medium is None else gs.medium
        if name in link_of and link_of[name][1] != gs.link:
            first, link = link_of[name]
            raise SpecError(
                f"fleet.groups.{i}.medium",
                f"medium {name!r} already carries group {first}'s {link!r} link; "
                f"one medium cannot also carry {gs.link!r} (give this group another medium)",
            )
        if name not in link_of:
            link_of[name] = (i, gs.link)
            names.append(name)
        index[i] = names.index(name)
    eff = np.array([g.link.medium_efficiency for g in groups])[group_of]
    duty = np.array([g.link.duty_cycle for g in groups])[group_of]
    return MediumArrays(index[group_of], eff, duty, tuple(names))


def _extra(path: str | None, key: str, base_dir: Path | None) -> list[Path]:
    if path is None:
        return []
    p = Path(path)
    if not p.is_absolute() and base_dir is not None and not p.exists():
        p = base_dir / p
    if not p.is_file():
        raise SpecError(key, f"file {path} not found")
    return [p]


def _custom_profile(name: str, fields: dict[str, Any], catalog: dict[str, DeviceProfile]) -> DeviceProfile:
    where = f"fleet.profiles.{name}"
    base = fields.pop("base", None)
    if base is not None:
        if base not in catalog:
            raise SpecError(f"{where}.base", f"unknown device {base!r}; known: {', '.join(sorted(catalog))}")
        return _wrap(lambda: override_profile(catalog[base], {**fields, "name": name}, where), where)
    return _wrap(lambda: DeviceProfile.model_validate({"name": name, **fields}), where)


def _wrap(make: Any, where: str) -> Any:
    """Turn a validation failure of a profile or link into a one-line spec error."""
    try:
        return make()
    except TinyTwinError:
        raise
    except Exception as exc:  # pydantic ValidationError and friends
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise SpecError(f"{where}.{loc}" if loc else where, first["msg"]) from None
        raise SpecError(where, str(exc)) from None
