"""A YAML reader that no experiment file can turn against the machine reading it.

Why not ``yaml.safe_load``: it is safe from code execution, but not from

- alias bombs ("billion laughs": 9 levels of 9 aliases expand 1.4 KB to 10^9 nodes once
  anything walks the tree, e.g. validation or ``safe_dump``),
- deep nesting (the composer recurses: ``RecursionError``, or a C stack overflow with libyaml),
- duplicate keys (silently last-wins, so the value a reader sees is not the one that runs),
- YAML 1.1 coercions (``1:30`` is the sexagesimal 90, ``on``/``yes`` are true, ``0777`` octal).

This module keeps PyYAML (already a dependency, pure-Python parser so nothing recurses in C)
and swaps the resolver for the YAML 1.2 core schema. It checks the event stream (iteratively,
so depth itself cannot crash it) for depth and size before composing, then bounds the
*expanded* size of the composed graph before constructing Python objects. Every refusal is a
:class:`SpecError` with one line saying what is wrong and how to fix it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from tinytwin.errors import SpecError

MAX_FILE_BYTES = 1 << 20  # 1 MiB: the largest example is ~4 KB
MAX_DEPTH = 32  # nesting levels of mappings and lists; the examples need 5
MAX_NODES = 100_000  # nodes after expanding aliases; the examples have a few hundred
MAX_ALIASES = 1_000  # alias references (``*name``) in one document


class CoreResolver(BaseResolver):
    """YAML 1.2 core schema: only ``null``, booleans ``true``/``false``, decimal/0o/0x ints and
    floats (with ``.inf``/``.nan``) are implicit; everything else (``on``, ``1:30``) is a string."""


CoreResolver.yaml_implicit_resolvers = {}
CoreResolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
CoreResolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
CoreResolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
CoreResolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


class CoreConstructor(SafeConstructor):
    """Constructs core-schema scalars and refuses duplicate keys (YAML says keys are unique)."""

    def construct_yaml_int(self, node: Any) -> int:
        text = str(self.construct_scalar(node))
        if len(text) > 40:  # far beyond any bound; int() of 4300+ digits would raise ValueError
            raise ConstructorError(None, None, f"the number {text[:12]}... has {len(text)} digits", node.start_mark)
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)

    def construct_yaml_float(self, node: Any) -> float:
        text = str(self.construct_scalar(node)).lower()
        if text.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        if text == ".nan":
            return float("nan")
        return float(text)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise ConstructorError(None, None, "a key is a list or mapping", key_node.start_mark) from None
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark, seen[key])
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


CoreConstructor.add_constructor("tag:yaml.org,2002:int", CoreConstructor.construct_yaml_int)  # type: ignore[type-var]
CoreConstructor.add_constructor("tag:yaml.org,2002:float", CoreConstructor.construct_yaml_float)  # type: ignore[type-var]


class _DuplicateKey(Exception):
    def __init__(self, key: Any, mark: Any, first: Any) -> None:
        self.key, self.mark, self.first = key, mark, first


class StrictLoader(Reader, Scanner, Parser, Composer, CoreConstructor, CoreResolver):
    """PyYAML's pure-Python pipeline with the core resolver and the duplicate-key check."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        CoreConstructor.__init__(self)
        CoreResolver.__init__(self)


def decode(data: bytes, where: str) -> str:
    """The text of a YAML file: size-capped, strictly UTF-8."""
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(
            "", f"{where} is {len(data):,} bytes; an experiment file may be at most {MAX_FILE_BYTES:,} bytes"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("", f"{where} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8") from None


def parse(text: str, where: str) -> Any:
    """Parse one YAML document under the limits above; raise a one-line :class:`SpecError`."""
    try:
        _check_events(text, where)
        loader = StrictLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node, where)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except _DuplicateKey as dup:
        raise SpecError(
            "",
            f"{where}: key {dup.key!r} appears twice in one mapping (line {dup.first.line + 1} and line "
            f"{dup.mark.line + 1}); keep one",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError("", f"{where} is not valid YAML{at}: {problem}") from None


def _check_events(text: str, where: str) -> None:
    """Depth, node and alias counts from the parser's event stream (no recursion involved)."""
    depth = nodes = aliases = 0
    for event in yaml.parse(text, Loader=StrictLoader):  # type: ignore[arg-type]
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            nodes += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise SpecError("", f"{where} nests deeper than {MAX_DEPTH} levels (line {line}); flatten it")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise SpecError("", f"{where} uses more than {MAX_ALIASES} aliases (*name); write the values out")
        if nodes > MAX_NODES:
            raise SpecError("", f"{where} has more than {MAX_NODES:,} values; an experiment file is far smaller")


def _check_expanded_size(root: Node, where: str) -> None:
    """Refuse a graph whose alias-expanded tree exceeds :data:`MAX_NODES` (linear time, memoised)."""
    size: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        kids = _children(node)
        if children_done or not kids:
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            if size[id(node)] > MAX_NODES:
                raise SpecError(
                    "",
                    f"{where} expands to more than {MAX_NODES:,} values through aliases (*name); "
                    "an alias bomb? write the values out",
                )
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class CoreDumper(yaml.emitter.Emitter, yaml.serializer.Serializer, yaml.representer.SafeRepresenter, CoreResolver):
    """Writes YAML that :func:`parse` and ``yaml.safe_load`` both read back to the same values:
    strings that either schema would take for numbers, booleans or null are quoted."""

    def __init__(self, stream: Any, **kwds: Any) -> None:
        yaml.emitter.Emitter.__init__(
            self,
            stream,
            canonical=kwds.get("canonical"),
            indent=kwds.get("indent"),
            width=kwds.get("width"),
            allow_unicode=kwds.get("allow_unicode"),
            line_break=kwds.get("line_break"),
        )
        yaml.serializer.Serializer.__init__(
            self,
            encoding=kwds.get("encoding"),
            explicit_start=kwds.get("explicit_start"),
            explicit_end=kwds.get("explicit_end"),
            version=kwds.get("version"),
            tags=kwds.get("tags"),
        )
        yaml.representer.SafeRepresenter.__init__(
            self,
            default_style=kwds.get("default_style"),
            default_flow_style=kwds.get("default_flow_style", False),
            sort_keys=kwds.get("sort_keys", True),
        )
        CoreResolver.__init__(self)

    _yaml11 = yaml.resolver.Resolver()

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        """Core-schema tags, except that a string YAML 1.1 would read as something else (``on``,
        ``1:30``) is reported with 1.1's tag, so it gets quoted: every reader, strict or not
        (``yaml.safe_load`` in the dashboard and API), then reads the same text back."""
        tag = CoreResolver.resolve(self, kind, value, implicit)
        if tag == "tag:yaml.org,2002:str" and kind is yaml.ScalarNode and implicit[0]:
            other = self._yaml11.resolve(kind, value, implicit)
            if other != tag:
                return other
        return tag


def dump(data: Any) -> str:
    """YAML text of ``data`` that :func:`parse` reads back unchanged (keys in their order)."""
    return yaml.dump(data, Dumper=CoreDumper, sort_keys=False, allow_unicode=True)
