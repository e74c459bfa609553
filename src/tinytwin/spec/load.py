"""Reading an experiment file: YAML, ``--set`` overrides, validation, one-line errors."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tinytwin.errors import SpecError
from tinytwin.spec.bounds import check_values
from tinytwin.spec.schema import ExperimentSpec
from tinytwin.spec.strict_yaml import decode, dump, parse


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> tuple[ExperimentSpec, str]:
    """Read, override and validate an experiment file.

    Returns the validated spec and the YAML text of the effective spec (after overrides),
    which is stored with the run so a run can always be reproduced from its database.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(
            "", f"experiment file {path} not found; pass the path of a YAML file such as examples/quickstart.yaml"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError("", f"cannot read experiment file {path}: {exc.strerror}") from None
    raw = parse(decode(data, str(path)), str(path))
    if not isinstance(raw, dict):
        raise SpecError("", f"{path} must contain a mapping of keys (name, rounds, dataset, fleet, ...)")
    for item in overrides:
        apply_override(raw, item)
    spec = validate_spec(raw)
    return spec, dump(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``key.path=value`` override; the value is parsed as YAML (``3``, ``0.1``, ``[8, 8]``)."""
    if "=" not in item:
        raise SpecError("--set", f"{item!r} must look like key.path=value, e.g. algorithm.lr=0.05")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise SpecError("--set", f"{item!r} has an empty key path")
    try:
        value = parse(text, f"--set {key.strip()}")
    except SpecError as exc:
        if "not valid YAML" not in str(exc):
            raise
        value = text  # not YAML: the text itself (a name, a path)
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, parts[: i + 1])
    last = parts[-1]
    if isinstance(node, list):
        index = _index(node, last, parts)
        node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError(".".join(parts[:-1]), "is not a mapping or list, so it has no keys to set")


def _child(node: Any, part: str, path: list[str]) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise SpecError(".".join(path[:-1]), "is not a mapping or list, so it has no keys to set")
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _index(node: list[Any], part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise SpecError(".".join(path), f"index must be 0..{len(node) - 1}")
    return int(part)


def validate_spec(raw: dict[str, Any]) -> ExperimentSpec:
    """Validate a raw mapping; the first error becomes a :class:`SpecError` naming its key path."""
    check_values(raw)
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        raise _spec_error(exc) from None


_PATH_IN_MESSAGE = re.compile(r"^([A-Za-z_][\w]*(?:\.[\w]+)*): (.*)$", re.S)


def _spec_error(exc: ValidationError) -> SpecError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    msg = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    # Strict unions report a sub-location such as "int" or "float": drop it.
    loc = [
        p
        for p in loc
        if p not in ("int", "float", "str", "bool", "function-after[_check_participation(), AlgorithmSpec]")
    ]
    if kind == "extra_forbidden":
        parent = _model_at(ExperimentSpec, loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else ""
        msg = f"unknown key; allowed keys here: {allowed}" if allowed else "unknown key"
    elif kind == "missing":
        msg = "is required"
    else:
        match = _PATH_IN_MESSAGE.match(msg)
        if match and not match.group(1)[0].isupper():
            sub = match.group(1).split(".")
            loc = sub if sub[0] in ExperimentSpec.model_fields else loc + sub
            msg = match.group(2)
        if kind.startswith(("int_", "float_", "string_", "bool_", "list_", "dict_", "model_")) or kind.endswith(
            "_type"
        ):
            msg = f"{msg} (got {err.get('input')!r})"
    return SpecError(".".join(loc), msg)


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model class found at ``loc`` inside ``model`` (list indices skipped)."""
    current: Any = model
    for part in loc:
        if part.isdigit():
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return None
        current = _inner_model(field.annotation)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None
