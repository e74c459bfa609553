"""Device catalog: what each tiny device can hold, compute and spend.

The built-in profiles live in ``devices.yaml`` next to this module; every numeric figure
there carries a citation in the profile's ``sources`` mapping (a datasheet, a seed
measurement, or ``"estimate: <how it was derived>"``). ``docs/devices.md`` shows them as
tables and explains how ``flops_per_s`` was estimated.

Users add or override profiles with extra YAML files (``load_device_catalog(extra)``) or
per-group overrides in the experiment file (``override_profile``). A bad file raises one
:class:`~tinytwin.errors.TinyTwinError` that names the file, the profile and the field.

The small generic machinery below (YAML reading, ``base:`` inheritance, source checks,
error formatting) is shared with the link catalog in :mod:`tinytwin.net.links`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tinytwin.errors import SpecError, TinyTwinError

__all__ = [
    "DEVICES_YAML",
    "CatalogEntry",
    "DeviceProfile",
    "PowerProfile",
    "apply_overrides",
    "check_radios",
    "load_device_catalog",
    "load_yaml_catalog",
    "override_profile",
]

DEVICES_YAML = Path(__file__).with_name("devices.yaml")

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

# --------------------------------------------------------------------------------------
# Generic catalog machinery (shared with tinytwin.net.links)
# --------------------------------------------------------------------------------------

M = TypeVar("M", bound="CatalogEntry")


def _numeric_paths(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of the int/float fields of ``cls``, nested models included."""
    paths: list[str] = []
    for name, field in cls.model_fields.items():
        ann = field.annotation
        if ann in (int, float):
            paths.append(prefix + name)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            paths.extend(_numeric_paths(ann, prefix + name + "."))
    return paths


def _source_keys(cls: type[BaseModel]) -> set[str]:
    """Keys a ``sources`` mapping may use: any field (but sources) and nested numeric paths."""
    keys = {name for name in cls.model_fields if name != "sources"}
    keys.update(_numeric_paths(cls))
    return keys


class CatalogEntry(BaseModel):
    """Base for catalog models: a ``name``, a ``description`` and cited ``sources``.

    Every numeric field must be cited in ``sources`` by its name (nested fields by their
    dotted path, e.g. ``power.tx_w``, or all at once by the parent name, e.g. ``power``).
    Optional numeric fields left at their default (e.g. ``reserved_ram_bytes: 0``) need
    no citation.
    """

    model_config = _MODEL_CONFIG

    name: str = Field(min_length=1)
    description: str
    sources: dict[str, str]

    @field_validator("sources")
    @classmethod
    def _sources_not_blank(cls, value: dict[str, str]) -> dict[str, str]:
        blank = sorted(k for k, v in value.items() if not v.strip())
        if blank:
            raise ValueError(f"empty citation for {', '.join(blank)}")
        return value

    @model_validator(mode="after")
    def _sources_cover_numeric_fields(self) -> CatalogEntry:
        cls = type(self)
        allowed = _source_keys(cls)
        unknown = sorted(k for k in self.sources if k not in allowed)
        if unknown:
            raise ValueError(
                f"sources names unknown field(s) {', '.join(unknown)}; allowed keys: {', '.join(sorted(allowed))}"
            )
        missing = []
        for path in _numeric_paths(cls):
            if path in self.sources or path.split(".")[0] in self.sources:
                continue
            top = path.split(".")[0]
            field = cls.model_fields[top]
            if "." not in path and not field.is_required() and getattr(self, top) == field.default:
                continue  # optional figure left at its default: nothing to cite
            missing.append(path)
        if missing:
            raise ValueError(
                f"sources has no citation for {', '.join(missing)}; every figure needs a source "
                "(a document and section, a measurement, or 'estimate: <how derived>')"
            )
        return self


class _CatalogLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects duplicate keys and reads ``1e6`` as a float."""


_CatalogLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_CatalogLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_mapping(loader: _CatalogLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_CatalogLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path, kind: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TinyTwinError(f"{path}: cannot read {kind} catalog file: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_CatalogLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TinyTwinError(f"{path}: invalid YAML{where}: {problem}") from None


def _model_at(cls: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The (nested) model class that owns the last element of ``loc``."""
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def _describe_errors(
    cls: type[BaseModel], err: ValidationError, extra_allowed: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """Turn a pydantic error into ``(field path, what is wrong and what is allowed)`` pairs."""
    out: list[tuple[str, str]] = []
    for e in err.errors(include_url=False):
        loc = tuple(e.get("loc", ()))
        path = ".".join(str(p) for p in loc) or "(profile)"
        kind = e.get("type", "")
        ctx = e.get("ctx") or {}
        got = e.get("input")
        if kind == "extra_forbidden":
            owner = _model_at(cls, loc)
            names = sorted(owner.model_fields) if owner else []
            if owner is cls:
                names = sorted({*names, *extra_allowed})
            msg = "unknown field" + (f"; allowed fields: {', '.join(names)}" if names else "")
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "too_short":
            msg = f"must have at least {ctx.get('min_length', 1)} item(s) (got {got!r})"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
            bound = next(iter(ctx.values())) if ctx else "?"
            msg = f"must be {op} {bound} (got {got!r})"
        elif kind == "value_error":
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            first_word = msg.split(" ", 1)[0]
            if not loc and first_word in cls.model_fields:
                path = first_word  # model-level checks start their message with the field name
        else:
            msg = f"{e.get('msg', 'invalid value')} (got {got!r})"
        out.append((path, msg))
    missing = [p for p, m in out if m == "required field is missing"]
    if len(missing) > 1:  # one entry for all missing fields
        out = [(p, m) for p, m in out if m != "required field is missing"]
        out.insert(0, (", ".join(missing), "required fields are missing"))
    return out


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any], merge_fields: Sequence[str]) -> dict:
    """``base`` with ``changes`` applied; mapping fields in ``merge_fields`` merge key by key."""
    out = dict(base)
    for key, value in changes.items():
        if key in merge_fields and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _changed_numeric_paths(cls: type[BaseModel], base: Mapping[str, Any], changes: Mapping[str, Any]) -> list[str]:
    """Numeric paths whose value ``changes`` sets to something other than in ``base``."""
    changed: list[str] = []
    for path in _numeric_paths(cls):
        top, _, sub = path.partition(".")
        if top not in changes:
            continue
        if sub:
            new_parent = changes[top]
            if not isinstance(new_parent, Mapping) or sub not in new_parent:
                continue
            old = (base.get(top) or {}).get(sub) if isinstance(base.get(top), Mapping) else None
            new = new_parent[sub]
        else:
            old, new = base.get(top), changes[top]
        if old != new:
            changed.append(path)
    return changed


def _resolve_sources(
    cls: type[BaseModel],
    base: Mapping[str, Any],
    changes: Mapping[str, Any],
    merged: dict[str, Any],
    *,
    stamp: str | None,
) -> list[str]:
    """Keep ``merged['sources']`` honest after ``changes`` were applied on ``base``.

    A changed figure keeps no stale citation inherited from ``base``: its new citation is
    taken from ``changes['sources']`` (by its path or its parent's name). Figures changed
    without a new citation are stamped ``stamp`` (``override: <where>``) when ``stamp`` is
    given; otherwise their paths are returned so the caller can complain.
    """
    new_sources = changes.get("sources")
    new_sources = new_sources if isinstance(new_sources, Mapping) else {}
    sources = merged.get("sources")
    if not isinstance(sources, dict):
        return []
    uncited: list[str] = []
    for path in _changed_numeric_paths(cls, base, changes):
        parent = path.split(".")[0]
        if path in new_sources:
            continue
        if "." in path and parent in new_sources:
            sources.pop(path, None)  # the new parent citation covers it
            continue
        if stamp is not None:
            sources[path] = f"{stamp}.{path}"
        else:
            uncited.append(path)
    return uncited


def _entries(path: Path, data: Any, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """``(name, fields)`` pairs from a catalog file: a name->fields mapping or a list."""
    if data is None:
        return []
    pairs: list[tuple[str, dict[str, Any]]] = []
    if isinstance(data, Mapping):
        for name, fields in data.items():
            if not isinstance(name, str) or not name:
                raise TinyTwinError(f"{path}: {kind} names must be non-empty strings (got {name!r})")
            if fields is None:
                fields = {}
            if not isinstance(fields, Mapping):
                raise TinyTwinError(
                    f"{path}: {kind} '{name}': expected a mapping of field: value (got {type(fields).__name__})"
                )
            fields = dict(fields)
            if "name" in fields and fields["name"] != name:
                raise TinyTwinError(
                    f"{path}: {kind} '{name}': field 'name': must match its key '{name}' "
                    f"(got {fields['name']!r}); drop the field or rename the key"
                )
            fields.pop("name", None)
            pairs.append((name, fields))
    elif isinstance(data, list):
        for i, fields in enumerate(data):
            if not isinstance(fields, Mapping):
                raise TinyTwinError(
                    f"{path}: entry {i}: expected a mapping of field: value (got {type(fields).__name__})"
                )
            fields = dict(fields)
            name = fields.pop("name", None)
            if not isinstance(name, str) or not name:
                raise TinyTwinError(f"{path}: entry {i}: field 'name': a non-empty string is required")
            pairs.append((name, fields))
    else:
        raise TinyTwinError(
            f"{path}: expected a mapping of {kind} name -> fields, or a list of {kind}s each "
            f"with a 'name' (got {type(data).__name__})"
        )
    return pairs


def _load_file(
    model: type[M],
    path: Path,
    catalog: dict[str, M],
    *,
    kind: str,
    merge_fields: Sequence[str],
) -> None:
    """Validate every entry of ``path`` and add it to ``catalog`` (in place, in file order)."""
    for name, fields in _entries(path, _read_yaml(path, kind), kind):
        label = f"{path}: {kind} '{name}'"
        base_name = fields.pop("base", None)
        if base_name is not None:
            if not isinstance(base_name, str) or base_name not in catalog:
                known = ", ".join(sorted(catalog)) or "(none)"
                raise TinyTwinError(f"{label}: field 'base': unknown base {kind} {base_name!r}; known: {known}")
            label += f" (base '{base_name}')"
            base = catalog[base_name].model_dump()
            data = _merge(base, fields, merge_fields)
            uncited = _resolve_sources(model, base, fields, data, stamp=None)
            if uncited:
                raise TinyTwinError(
                    f"{label}: field 'sources': no citation for changed figure(s) "
                    f"{', '.join(uncited)}; add sources.<field> for each (a document and "
                    "section, a measurement, or 'estimate: <how derived>')"
                )
        else:
            data = dict(fields)
        data["name"] = name
        try:
            catalog[name] = model.model_validate(data)
        except ValidationError as exc:
            problems = _describe_errors(model, exc, extra_allowed=("base",))
            detail = "; ".join(f"fields {p}: {m}" if ", " in p else f"field '{p}': {m}" for p, m in problems)
            raise TinyTwinError(f"{label}: {detail}") from None


@cache
def _builtin(model: type[M], path: Path, kind: str, merge_fields: tuple[str, ...]) -> tuple[tuple[str, M], ...]:
    catalog: dict[str, M] = {}
    _load_file(model, path, catalog, kind=kind, merge_fields=merge_fields)
    return tuple(catalog.items())


def load_yaml_catalog(
    model: type[M],
    builtin: Path,
    extra_files: Sequence[Path | str] = (),
    *,
    kind: str,
    merge_fields: Sequence[str] = ("sources",),
) -> dict[str, M]:
    """Load ``builtin`` then each of ``extra_files`` (later entries add or replace earlier ones).

    A file is either a mapping ``name -> fields`` or a list of field mappings with a
    ``name``. An entry may say ``base: <existing name>`` and give only the fields it
    changes; mapping fields listed in ``merge_fields`` (e.g. ``power``, ``sources``) merge
    key by key. Every changed figure needs a new citation in ``sources``.
    """
    catalog = dict(_builtin(model, Path(builtin), kind, tuple(merge_fields)))
    for extra in extra_files:
        _load_file(model, Path(extra), catalog, kind=kind, merge_fields=merge_fields)
    return catalog


def apply_overrides(
    entry: M,
    changes: Mapping[str, Any],
    where: str,
    *,
    kind: str,
    merge_fields: Sequence[str] = ("sources",),
) -> M:
    """A validated copy of ``entry`` with ``changes`` applied.

    Changed figures without a citation in ``changes['sources']`` are cited as
    ``override: <where>.<field>``. Errors raise :class:`~tinytwin.errors.SpecError` whose
    path is ``<where>.<field>``.
    """
    if not isinstance(changes, Mapping):
        raise SpecError(where, f"must be a mapping of {kind} field: value (got {type(changes).__name__})")
    if not changes:
        return entry
    base = entry.model_dump()
    data = _merge(base, changes, merge_fields)
    _resolve_sources(type(entry), base, changes, data, stamp=f"override: {where}")
    try:
        return type(entry).model_validate(data)
    except ValidationError as exc:
        problems = _describe_errors(type(entry), exc)
        (first_path, first_msg), rest = problems[0], problems[1:]
        msg = f"{first_msg} ({kind} '{entry.name}')"
        if rest:
            msg += "; also " + "; ".join(f"{where}.{p}: {m}" for p, m in rest)
        raise SpecError(f"{where}.{first_path}" if where else first_path, msg) from None


# --------------------------------------------------------------------------------------
# Device profiles
# --------------------------------------------------------------------------------------


class PowerProfile(BaseModel):
    """Electrical power of a device in each state, in watts.

    ``tx_w``/``rx_w`` are for the device's first (default) radio in ``radios``.
    """

    model_config = _MODEL_CONFIG

    active_w: float = Field(gt=0, description="power while computing (training)")
    idle_w: float = Field(gt=0, description="power while idle/waiting in a round")
    tx_w: float = Field(gt=0, description="power while transmitting")
    rx_w: float = Field(gt=0, description="power while receiving")


class DeviceProfile(CatalogEntry):
    """One device kind: memory, compute throughput, power and radios, each figure cited."""

    cpu: str
    clock_hz: float = Field(gt=0)
    ram_bytes: int = Field(gt=0, description="internal SRAM/DRAM usable by applications")
    external_ram_bytes: int = Field(default=0, ge=0, description="e.g. PSRAM usable for training buffers")
    reserved_ram_bytes: int = Field(default=0, ge=0, description="taken by RTOS/stacks/runtime")
    flash_bytes: int = Field(gt=0)
    reserved_flash_bytes: int = Field(default=0, ge=0, description="firmware/runtime code already in flash")
    flops_per_s: float = Field(gt=0, description="effective float32 training throughput (FLOP/s)")
    power: PowerProfile
    radios: tuple[str, ...] = Field(min_length=1, description="link names from the link catalog")

    @field_validator("radios")
    @classmethod
    def _radios_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({r for r in value if value.count(r) > 1})
        if dupes:
            raise ValueError(f"radio(s) listed twice: {', '.join(dupes)}")
        if any(not r for r in value):
            raise ValueError("radio names must be non-empty")
        return value

    @model_validator(mode="after")
    def _reservations_fit(self) -> DeviceProfile:
        if self.reserved_ram_bytes >= self.ram_bytes + self.external_ram_bytes:
            raise ValueError(
                f"reserved_ram_bytes ({self.reserved_ram_bytes}) must be smaller than "
                f"ram_bytes + external_ram_bytes ({self.ram_bytes + self.external_ram_bytes})"
            )
        if self.reserved_flash_bytes >= self.flash_bytes:
            raise ValueError(
                f"reserved_flash_bytes ({self.reserved_flash_bytes}) must be smaller than "
                f"flash_bytes ({self.flash_bytes})"
            )
        return self

    @property
    def training_ram_bytes(self) -> int:
        """RAM left for training buffers: internal + external - reserved."""
        return self.ram_bytes + self.external_ram_bytes - self.reserved_ram_bytes

    @property
    def model_flash_bytes(self) -> int:
        """Flash left for the model (and training code): flash - reserved."""
        return self.flash_bytes - self.reserved_flash_bytes


_DEVICE_MERGE = ("power", "sources")


def load_device_catalog(extra_files: Sequence[Path] = ()) -> dict[str, DeviceProfile]:
    """The built-in device profiles, then those of each extra YAML file (adding or overriding).

    Raises :class:`~tinytwin.errors.TinyTwinError` naming the file, profile and field.
    """
    return load_yaml_catalog(
        DeviceProfile, DEVICES_YAML, extra_files, kind="device profile", merge_fields=_DEVICE_MERGE
    )


def override_profile(profile: DeviceProfile, changes: Mapping[str, Any], where: str) -> DeviceProfile:
    """A validated copy of ``profile`` with ``changes`` applied (``power`` merges key by key).

    ``where`` is the key path of ``changes`` in the experiment file (e.g.
    ``fleet.groups.0.overrides``); errors raise :class:`~tinytwin.errors.SpecError` at
    ``<where>.<field>``.
    """
    return apply_overrides(profile, changes, where, kind="device profile", merge_fields=_DEVICE_MERGE)


def check_radios(devices: Mapping[str, DeviceProfile], links: Mapping[str, Any]) -> None:
    """Raise :class:`TinyTwinError` if a device names a radio missing from ``links``."""
    for name, device in devices.items():
        unknown = [r for r in device.radios if r not in links]
        if unknown:
            raise TinyTwinError(
                f"device profile '{name}': field 'radios': unknown link(s) {', '.join(unknown)}; "
                f"known links: {', '.join(sorted(links))}"
            )
