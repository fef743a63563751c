"""Safe YAML loading that remembers where every value came from.

YAML is parsed with the YAML 1.2 core schema, so `on`, `yes` and `0755` never change meaning
silently: the YAML 1.1 forms are reported with their position and a hint to quote them.
Aliases are expanded under a budget, so an alias bomb is refused quickly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.resolver import BaseResolver

try:  # libyaml's parser is ~10x faster; positions are the same
    from yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml.composer import Composer
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser, Composer):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)


from stepchain.errors import Problem

Path = tuple[str | int, ...]
MAX_NODES = 1_000_000  # expanded values; a real pipeline is far below, an alias bomb far above

_TAG = "tag:yaml.org,2002:"
_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}
_LEADING_ZERO_INT = re.compile(r"^[-+]?0[0-9_]+$")


class _CoreResolver(BaseResolver):
    """YAML 1.2 core schema: only true/false are booleans, 0o17 is octal."""


_CoreResolver.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
]:
    _CoreResolver.add_implicit_resolver(_TAG + _tag, re.compile(_regexp), list(_first))


class _Composer(_Parser, _CoreResolver):  # type: ignore[misc, valid-type]
    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        _CoreResolver.__init__(self)


@dataclass
class Source:
    """A loaded YAML document, the positions of its values and keys, and its problems."""

    file: str
    text: str
    data: Any = None
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    block_scalars: set[Path] = field(default_factory=set)  # `|` and `>` strings: text starts a line below
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the value at `path`, or of its nearest ancestor."""
        table = self.key_positions if key else self.positions
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if key and probe in self.positions:
                return self.positions[probe]
            probe = probe[:-1]
        return self.positions.get((), (1, 1))

    def problem(self, path: Path, message: str, *, key: bool = False) -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, format_path(path), message)


def format_path(path: Path) -> str:
    """steps[2].retries, inputs.quarter, tools["my-db"]."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def load_source(file: str, text: str) -> Source:
    """Parse `text`; syntax errors and YAML 1.1 traps become problems, never exceptions."""
    source = Source(file=file, text=text)
    try:
        node = _Composer(text).get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        source.problems.append(Problem(file, line, col, "", _syntax_message(exc, text, line)))
        return source
    except yaml.YAMLError as exc:
        source.problems.append(Problem(file, 1, 1, "", f"YAML error: {exc}"))
        return source
    if node is None:
        source.positions[()] = (1, 1)
        source.data = None
        return source
    try:
        _check_expanded_size(node)
        source.data = _Builder(source).build(node, ())
    except _TooLarge:
        source.problems.append(
            Problem(
                file,
                1,
                1,
                "",
                f"document expands to more than {MAX_NODES:,} values through aliases "
                "(an alias bomb?); refusing to load it",
            )
        )
        source.data = None
    return source


def _syntax_message(exc: yaml.MarkedYAMLError, text: str, line: int) -> str:
    problem = exc.problem or "syntax error"
    lines = text.splitlines()
    offending = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in offending[: len(offending) - len(offending.lstrip())] or "'\\t'" in problem:
        return "YAML syntax error: tab character used for indentation; indent with spaces"
    context = f" ({exc.context})" if exc.context else ""
    return f"YAML syntax error: {problem}{context}"


class _TooLarge(Exception):
    pass


def _check_expanded_size(root: yaml.Node) -> None:
    """Count values as aliases would expand them, visiting each node once (memoised)."""
    sizes: dict[int, int] = {}
    order: list[yaml.Node] = []
    stack = [root]
    seen: set[int] = set()
    while stack:  # iterative post-order, so deep documents cannot hit the recursion limit
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        if isinstance(node, yaml.MappingNode):
            stack.extend(v for pair in node.value for v in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    for node in reversed(order):
        if isinstance(node, yaml.MappingNode):
            children = [v for pair in node.value for v in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        total = 1 + sum(sizes.get(id(c), 1) for c in children)
        if total > MAX_NODES:
            raise _TooLarge
        sizes[id(node)] = total


class _Builder:
    """Turns composed nodes into plain Python values, recording positions."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.count = 0

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge
        pos = (node.start_mark.line + 1, node.start_mark.column + 1)
        self.source.positions.setdefault(path, pos)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            kpos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key_node.tag == _TAG + "merge":
                self.source.problems.append(
                    Problem(self.source.file, *kpos, format_path(path), "merge keys (<<) are not supported")
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.source.problems.append(
                    Problem(self.source.file, *kpos, format_path(path), "mapping keys must be plain strings")
                )
                continue
            key = self._scalar(key_node, path, is_key=True)
            key = str(key) if not isinstance(key, str) else key
            child = (*path, key)
            if key in out:
                first = self.source.key_positions[child]
                self.source.problems.append(
                    Problem(
                        self.source.file,
                        *kpos,
                        format_path(child),
                        f"duplicate key '{key}' (first defined at line {first[0]})",
                    )
                )
                continue
            self.source.key_positions[child] = kpos
            out[key] = self.build(value_node, child)
        return out

    def _scalar(self, node: yaml.ScalarNode, path: Path, *, is_key: bool = False) -> Any:
        value = node.value
        tag = node.tag
        plain = node.style is None
        if node.style in ("|", ">"):
            self.source.block_scalars.add(path)
        if plain and value.lower() in _YAML11_BOOLS and value.lower() not in {"y", "n"}:
            what = "key" if is_key else "value"
            self.source.problems.append(
                Problem(
                    self.source.file,
                    node.start_mark.line + 1,
                    node.start_mark.column + 1,
                    format_path(path),
                    f"ambiguous {what} {value!r}: YAML 1.1 reads it as a boolean; "
                    f'quote it ("{value}") or write true/false',
                )
            )
            return value
        if plain and tag == _TAG + "int" and _LEADING_ZERO_INT.match(value):
            self.source.problems.append(
                Problem(
                    self.source.file,
                    node.start_mark.line + 1,
                    node.start_mark.column + 1,
                    format_path(path),
                    f"ambiguous number {value!r}: YAML 1.1 reads a leading zero as octal; "
                    f'quote it ("{value}") or write 0o{value.lstrip("+-0") or "0"} for octal',
                )
            )
            return value
        if tag == _TAG + "str" or not plain and tag in (_TAG + "str", "!"):
            return value
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            return value.lower() == "true"
        if tag == _TAG + "int":
            return int(value, 0) if value[:2] in ("0o", "0x") else int(value)
        if tag == _TAG + "float":
            low = value.lower()
            if low.endswith("inf"):
                return float("-inf") if low.startswith("-") else float("inf")
            return float(value) if "nan" not in low else float("nan")
        if not plain or tag == "?" or tag is None:
            return value
        self.source.problems.append(
            Problem(
                self.source.file,
                node.start_mark.line + 1,
                node.start_mark.column + 1,
                format_path(path),
                f"unsupported YAML tag {tag!r}; remove it",
            )
        )
        return value
