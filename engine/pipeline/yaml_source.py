"""Safe YAML loading that remembers where every value came from.

Values are built straight from the parser's events (libyaml when available), iteratively, so no
document can exhaust the stack. Scalars follow the YAML 1.2 core schema, and the YAML 1.1 forms
that other tools would read differently (`on`, `yes`, `0755`, `1:30`) are reported with their
position and a hint to quote them. Aliases share their value and count against a budget, so an
alias bomb is refused quickly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import yaml
from stepchain.errors import Problem
from yaml import events as ev

try:  # libyaml is ~10x faster; its events carry the same positions
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


Path = tuple[str | int, ...]
MAX_NODES = 1_000_000  # values as aliases expand them; a real pipeline is far below
MAX_DEPTH = 200  # nesting; a real pipeline stays under 20
_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep: flatten the structure"

_NULL = {"", "~", "null", "Null", "NULL"}
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_YAML11_BOOL = {
    **dict.fromkeys(["yes", "Yes", "YES", "on", "On", "ON"], True),
    **dict.fromkeys(["no", "No", "NO", "off", "Off", "OFF"], False),
}
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_OCTAL_LOOKING = re.compile(r"[-+]?0[0-9]+")
_YAML11_NUMBER = re.compile(r"[-+]?(?:0b[01_]+|[0-9][0-9_]*_[0-9_]*(?:\.[0-9_]*)?)")
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_]*")


@dataclass
class Source:
    """A loaded YAML document, the positions of its values and keys, and its problems."""

    file: str
    text: str
    data: Any = None
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    ends: dict[Path, tuple[int, int]] = field(default_factory=dict)  # where each string ends
    block_scalars: set[Path] = field(default_factory=set)  # `|` strings: text starts a line below
    folded: set[Path] = field(default_factory=set)  # strings whose lines YAML joined (`>`, flow)
    reported: set[Path] = field(default_factory=set)  # values with a problem of their own
    renamed: dict[Path, Path] = field(default_factory=dict)  # upgraded path -> path as written
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

    def display(self, path: Path) -> str:
        """The path as the file spells it (a 0.3 plan's `max_retries`, not `retries`)."""
        for new, old in self.renamed.items():
            if path[: len(new)] == new:
                path = old + tuple(path[len(new) :])
                break
        return format_path(path)

    def problem(self, path: Path, message: str, *, key: bool = False) -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, self.display(path), message)

    @cached_property
    def lines(self) -> list[str]:
        """The text's lines as YAML counts them."""
        return _LINE_BREAK.split(self.text)

    def line(self, number: int) -> str:
        """Line `number` (1-based), or "" past the end."""
        return self.lines[number - 1] if 0 < number <= len(self.lines) else ""


def format_path(path: Path) -> str:
    """steps[2].retries, inputs.quarter, tools["my-db"]."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def load_source(file: str, text: str) -> Source:
    """Parse `text`; syntax errors and YAML 1.1 traps become problems, never exceptions."""
    source = Source(file=file, text=text)
    builder = _Builder(source)
    try:
        source.data = builder.build(_Parser(text))
    except yaml.YAMLError as exc:
        problem = syntax_problem(source, exc)
        if not any((p.line, p.col) == (problem.line, problem.col) for p in source.problems):
            source.problems.append(problem)
        source.data = None
    except _Refused as exc:
        source.problems.append(Problem(file, exc.line, exc.col, "", exc.message))
        source.data = None
    if source.data is None and not source.problems and builder.empty:
        empty = "the file is empty: a pipeline needs version: 1, name and steps"
        source.problems.append(Problem(file, 1, 1, "", empty))
    source.positions.setdefault((), (1, 1))
    return source


class _Refused(Exception):
    def __init__(self, line: int, col: int, message: str) -> None:
        super().__init__(message)
        self.line, self.col, self.message = line, col, message


_SKIP = object()  # a value that is reported and left out (complex keys, merge keys)


@dataclass
class _Frame:
    container: Any  # dict or list being filled
    path: Path | None  # None: the subtree is reported elsewhere and thrown away
    anchor: str | None
    start: tuple[int, int]
    is_map: bool
    size: int = 1  # values as aliases expand them
    key: Any = None  # mapping: the pending key, or None while a key is expected
    raw_template: bool = False  # an unquoted {{ ... }} YAML took for a flow mapping


_SCALAR, _ALIAS = ev.ScalarEvent, ev.AliasEvent
_CLOSE = (ev.MappingEndEvent, ev.SequenceEndEvent)
_STR = "tag:yaml.org,2002:str"
_MAYBE_TYPED = set("~nNtTfFyYoO0123456789+-.") | {""}  # first characters of non-text plain scalars


class _Builder:
    """Builds plain Python values from parser events, recording positions and problems."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.total = 0  # values so far, aliases expanded
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.empty = False

    def build(self, parser: Any) -> Any:
        get = parser.get_event
        get()  # stream start
        if isinstance(get(), ev.StreamEndEvent):
            self.empty = True
            return None
        root = self._document(get)
        event = get()  # the next document's start, or the stream's end
        if isinstance(event, ev.DocumentStartEvent):
            raise _Refused(
                event.start_mark.line + 1,
                event.start_mark.column + 1,
                "a pipeline file holds one YAML document: remove this '---' and what follows, "
                "or merge it into the first document",
            )
        return root

    def _document(self, get: Any) -> Any:
        stack: list[_Frame] = []
        positions = self.source.positions
        value: Any = None
        while True:
            event = get()
            kind = type(event)
            mark = event.start_mark
            start = (mark.line + 1, mark.column + 1)
            frame = stack[-1] if stack else None
            if kind in _CLOSE:
                closed = stack.pop()  # the frame of the collection this event closes
                value, size, counted = *self._close(closed, event), 1
            elif kind is ev.DocumentEndEvent:
                return value
            elif frame is not None and frame.is_map and frame.key is None:
                frame.key = self._key(event, frame, get, start)
                continue
            else:
                if frame is None:
                    path: Path | None = ()
                elif frame.path is None or frame.key is _SKIP:
                    path = None
                else:
                    path = (*frame.path, frame.key if frame.is_map else len(frame.container))
                if path is not None:
                    positions.setdefault(path, start)
                if kind is _SCALAR:
                    value, size = self._scalar(event, path, start), 1
                elif kind is _ALIAS:
                    value, size = self._alias(event, path, start)
                else:
                    if len(stack) >= MAX_DEPTH:
                        raise _Refused(
                            *start,
                            _TOO_DEEP,
                        )
                    stack.append(self._open(event, path, start))
                    continue
                counted = size
            self.total += counted
            if self.total > MAX_NODES:
                raise _Refused(
                    *start,
                    f"the document expands to more than {MAX_NODES:,} values through aliases "
                    "(an alias bomb?); refusing to load it: write the values out instead of aliasing",
                )
            if stack:
                parent = stack[-1]
                parent.size += size
                if not parent.is_map:
                    parent.container.append(value)
                else:
                    if parent.key is not _SKIP:
                        parent.container[parent.key] = value
                    parent.key = None

    def _open(self, event: Any, path: Path | None, start: tuple[int, int]) -> _Frame:
        is_map = type(event) is ev.MappingStartEvent
        self._check_tag(event, path, start, "map" if is_map else "seq")
        frame = _Frame({} if is_map else [], path, event.anchor, start, is_map)
        if (
            is_map
            and event.flow_style
            and self.source.text.startswith("{{", event.start_mark.index)
        ):
            frame.raw_template, frame.path = True, None
            self._report(
                start,
                path,
                "a value starting with {{ must be quoted, or YAML reads it as a mapping: "
                "write '{{ ... }}' in quotes",
            )
        return frame

    def _close(self, frame: _Frame, event: Any) -> tuple[Any, int]:
        value = frame.container
        if frame.raw_template:  # keep the text, so the template is still checked
            value = self._slice(frame.start, (event.end_mark.line + 1, event.end_mark.column + 1))
        if frame.anchor is not None:
            self.anchors[frame.anchor] = (value, frame.size)
        return value, frame.size

    def _key(self, event: Any, frame: _Frame, get: Any, start: tuple[int, int]) -> Any:
        """The key for the next value; _SKIP (after reporting) when it cannot be one."""
        if type(event) is not _SCALAR:
            self._report(start, frame.path, "mapping keys must be plain names: quote this key")
            if type(event) is not _ALIAS:
                _skip_subtree(get)
            return _SKIP
        key, plain = event.value, event.implicit[0]
        if plain and key == "<<":
            self._report(
                start, frame.path, "merge keys (<<) are not supported: write the fields out"
            )
            return _SKIP
        child = None if frame.path is None else (*frame.path, key)
        if key in frame.container:
            first = self.source.key_positions.get(child, start) if child else start
            message = f"duplicate key '{key}' (first defined at line {first[0]}): keep one of them"
            self._report(start, child, message)
            return _SKIP
        if child is not None:
            self.source.key_positions[child] = start
            if plain and key in _YAML11_BOOL:
                word = str(_YAML11_BOOL[key]).lower()
                message = f"ambiguous key '{key}': YAML 1.1 reads it as the boolean {word}; quote it (\"{key}\")"
                self._report(start, child, message)
        return key

    def _alias(self, event: Any, path: Path | None, start: tuple[int, int]) -> tuple[Any, int]:
        if event.anchor in self.anchors:
            return self.anchors[event.anchor]
        self._refuse(
            path,
            start,
            f"unknown alias '*{event.anchor}': define &{event.anchor} before using it, "
            "or quote the value if the * is text",
        )
        return None, 1

    def _scalar(self, event: Any, path: Path | None, start: tuple[int, int]) -> Any:
        value: str = event.value
        tag = event.tag
        if tag is not None and tag != "!" and tag != _STR:
            self._check_tag(event, path, start, "str")
            return value
        if path is not None:
            end = event.end_mark
            if end.line > event.start_mark.line:  # for positions inside multi-line text
                self.source.ends[path] = (end.line + 1, end.column + 1)
                (self.source.block_scalars if event.style == "|" else self.source.folded).add(path)
        if not event.implicit[0] or value[:1] not in _MAYBE_TYPED:
            return value  # quoted, a block scalar, tagged !!str, or plainly text
        return self._plain(value, path, start)

    def _plain(self, value: str, path: Path | None, start: tuple[int, int]) -> Any:
        if value in _NULL:
            return None
        if value in _BOOL:
            return _BOOL[value]
        if _INT.fullmatch(value) and not _OCTAL_LOOKING.fullmatch(value):
            if len(value) > 400:  # beyond any real setting, and slow or refused by int()
                return self._refuse(
                    path, start, f"number with {len(value)} digits: quote it if it is text"
                )
            return int(value, 0) if value[:2] in ("0o", "0x") else int(value)
        if _FLOAT.fullmatch(value) and not _OCTAL_LOOKING.fullmatch(value):
            low = value.lower()
            if "inf" in low:
                return float("-inf") if low.startswith("-") else float("inf")
            return float("nan") if "nan" in low else float(value)
        message = _yaml11_trap(value)
        if message:
            self._refuse(path, start, message)
        return value

    def _check_tag(self, event: Any, path: Path | None, start: tuple[int, int], kind: str) -> None:
        if event.tag not in (None, "!", f"tag:yaml.org,2002:{kind}"):
            shown = event.tag.replace("tag:yaml.org,2002:", "!!")
            self._refuse(
                path,
                start,
                f"YAML tag {shown} is not supported: remove it (quote the value if it is text)",
            )

    def _slice(self, start: tuple[int, int], end: tuple[int, int]) -> str:
        lines = self.source.lines[start[0] - 1 : end[0]]
        if len(lines) == 1:
            return lines[0][start[1] - 1 : end[1] - 1]
        return "\n".join([lines[0][start[1] - 1 :], *lines[1:-1], lines[-1][: end[1] - 1]])

    def _refuse(self, path: Path | None, start: tuple[int, int], message: str) -> None:
        """Report a value; the schema then stays silent about it."""
        if path is not None:
            self.source.reported.add(path)
        self._report(start, path, message)

    def _report(self, start: tuple[int, int], path: Path | None, message: str) -> None:
        if path is not None:  # None: inside something already reported
            self.source.problems.append(
                Problem(self.source.file, *start, self.source.display(path), message)
            )


def _skip_subtree(get: Any) -> None:
    """Consume the events of a collection whose start was just read."""
    depth = 1
    while depth:
        event = get()
        if isinstance(event, (ev.MappingStartEvent, ev.SequenceStartEvent)):
            depth += 1
        elif isinstance(event, (ev.MappingEndEvent, ev.SequenceEndEvent)):
            depth -= 1


def _yaml11_trap(value: str) -> str | None:
    """What a YAML 1.1 reader (PyYAML, many tools) would make of a plain scalar we read as text."""
    if value in _YAML11_BOOL:
        word = str(_YAML11_BOOL[value]).lower()
        return (
            f"ambiguous value '{value}': YAML 1.1 reads it as {word}; write {word} for a boolean, "
            f'or quote it ("{value}") for text'
        )
    if _OCTAL_LOOKING.fullmatch(value):
        digits = value.lstrip("+-0") or "0"
        number = (
            f"0o{digits} for octal"
            if set(digits) <= set("01234567")
            else f"{digits} for the number"
        )
        return (
            f"ambiguous number '{value}': YAML 1.1 reads a leading zero as octal; "
            f'quote it ("{value}") for text, or write {number}'
        )
    if _YAML11_NUMBER.fullmatch(value) or _SEXAGESIMAL.fullmatch(value):
        return (
            f"ambiguous value '{value}': YAML 1.1 reads it as a number; "
            f'quote it ("{value}") for text, or write the number plainly'
        )
    return None


def syntax_problem(source: Source, exc: yaml.YAMLError) -> Problem:
    """A parser error as a problem that says what to change, the same with or without libyaml."""
    if isinstance(exc, yaml.reader.ReaderError):
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)[:1]
        line, col = _position(source.text, max(source.text.find(char or "?"), 0))
        message = f"character U+{ord(char or '?'):04X} is not allowed in YAML: remove it"
        return Problem(source.file, line, col, "", f"YAML syntax error: {message}")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    pos = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    opened = getattr(exc, "context_mark", None)
    opened_at = (opened.line + 1, opened.column + 1) if opened else pos
    problem, context = getattr(exc, "problem", None) or "", getattr(exc, "context", None) or ""
    if "maximum nesting depth" in problem:  # libyaml >= 0.2.6 (PyYAML 6.0.4) stops at 1,000 levels
        return Problem(source.file, pos[0], pos[1], "", _TOO_DEEP)
    place, message = _explain(source, problem, context, pos, opened_at) or (
        pos,
        f"{problem or exc}" + (f" ({context})" if context else ""),
    )
    return Problem(source.file, place[0], place[1], "", f"YAML syntax error: {message}")


_UNQUOTED_TEMPLATE = re.compile(r"(?:^|[:?-]\s+)(\{[{%#])")


def _explain(
    source: Source, problem: str, context: str, pos: tuple[int, int], opened: tuple[int, int]
) -> tuple[tuple[int, int], str] | None:
    """The commonest parser complaints, in words that say what to change."""
    text = source.line(pos[0])
    char = text[pos[1] - 1 : pos[1]]
    opener = source.line(opened[0])[opened[1] - 1 : opened[1]]
    template = _UNQUOTED_TEMPLATE.search(text)
    if char == "\t" or "tab" in problem:
        return pos, "tab character used for indentation: indent with spaces"
    if template and not re.search(r"[\"']\s*\{[{%#]", text):
        return (pos[0], template.start(1) + 1), (
            "a value starting with { must be quoted: write '{{ ... }}' in quotes"
        )
    if "end of stream" in problem and "quoted scalar" in context:
        return opened, f"this quoted string is never closed: add the closing {opener}"
    if "alias" in context or "anchor" in context:
        sign = "*" if "alias" in context else "&"
        return opened, f"a value starting with {sign} is read as an alias or anchor: quote it"
    if "escape" in problem:
        if char != "\\" and text[pos[1] - 2 : pos[1] - 1] == "\\":
            pos = (pos[0], pos[1] - 1)  # libyaml points at the backslash, PyYAML after it
        escape = text[pos[1] - 1 : pos[1] + 1]
        return pos, (
            f"unknown escape '{escape}' in a double-quoted string: use single quotes, "
            "or write \\\\ for a backslash"
        )
    if "flow sequence" in context or "flow mapping" in context:
        close = "]" if "sequence" in context else "}"
        if pos[0] != opened[0]:
            return opened, f"this '{opener}' is never closed: add '{close}'"
        return pos, f"expected ',' or '{close}' here: separate items with ', '"
    if "cannot start any token" in problem:
        return pos, f"a value cannot start with '{char}': quote the value"
    if "mapping values are not allowed" in problem:
        return pos, (
            "unexpected ':' in an unquoted value: quote the value, "
            "or fix the indentation if this line starts a new field"
        )
    if "expected ':'" in problem:
        return opened, "expected 'key: value' here: add the missing ': ' or quote the line"
    if "block scalar" in context:
        return pos, "after | or > the text starts on the next line: move it down"
    if "block collection" in context or "block mapping" in context or "block end" in problem:
        return pos, (
            f"bad indentation: this line does not line up with the block that starts at "
            f"line {opened[0]}, column {opened[1]}: align it with its siblings"
        )
    return None


def _position(text: str, index: int) -> tuple[int, int]:
    lines = _LINE_BREAK.split(text[:index])
    return len(lines), len(lines[-1]) + 1
