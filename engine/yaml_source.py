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
from yaml import events as ev

from stepchain.errors import Problem

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
    ambiguous: set[Path] = field(default_factory=set)  # values already reported as YAML 1.1 traps
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
        source.problems.append(syntax_problem(source, exc))
        source.data = None
    except _Refused as exc:
        source.problems.append(Problem(file, exc.line, exc.col, "", exc.message))
        source.data = None
    if source.data is None and not source.problems and builder.empty:
        source.problems.append(
            Problem(file, 1, 1, "", "the file is empty: a pipeline needs version: 1, name and steps")
        )
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
    size: int = 1  # values as aliases expand them
    key: Any = None  # mapping: the pending key, or None while a key is expected
    raw_template: bool = False  # an unquoted {{ ... }} YAML took for a flow mapping


class _Builder:
    """Builds plain Python values from parser events, recording positions and problems."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.total = 0
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.empty = False

    def build(self, parser: Any) -> Any:
        get = parser.get_event
        get()  # stream start
        event = get()
        if isinstance(event, ev.StreamEndEvent):
            self.empty = True
            return None
        root = self._document(get)
        event = get()  # the next document's start, or the stream's end
        if isinstance(event, ev.DocumentStartEvent):
            mark = event.start_mark
            raise _Refused(
                mark.line + 1,
                mark.column + 1,
                "a pipeline file holds one YAML document: remove this '---' and what follows, "
                "or merge it into the first document",
            )
        return root

    def _document(self, get: Any) -> Any:
        stack: list[_Frame] = []
        while True:
            event = get()
            kind = type(event)
            if kind is ev.DocumentEndEvent:
                return value
            frame = stack[-1] if stack else None
            start = (event.start_mark.line + 1, event.start_mark.column + 1)
            if kind is ev.MappingEndEvent or kind is ev.SequenceEndEvent:
                stack.pop()
                value, size = self._close(frame, event)
                self._count(1, start)
            elif frame is not None and frame.key is None and isinstance(frame.container, dict):
                frame.key = self._key(event, frame, get)
                continue
            else:
                path = self._child_path(frame)
                if path is not None:
                    self.source.positions.setdefault(path, start)
                if kind is ev.ScalarEvent:
                    value, size = self._scalar(event, path), 1
                elif kind is ev.AliasEvent:
                    value, size = self._alias(event, path)
                else:
                    if len(stack) >= MAX_DEPTH:
                        raise _Refused(
                            *start,
                            f"nested more than {MAX_DEPTH} levels deep: flatten the structure",
                        )
                    stack.append(self._open(event, path, start))
                    continue
                self._count(size, start)
            if stack:
                self._add(stack[-1], value, size)

    def _child_path(self, frame: _Frame | None) -> Path | None:
        if frame is None:
            return ()
        if frame.path is None or frame.key is _SKIP:
            return None
        if isinstance(frame.container, dict):
            return (*frame.path, frame.key)
        return (*frame.path, len(frame.container))

    def _open(self, event: Any, path: Path | None, start: tuple[int, int]) -> _Frame:
        is_map = isinstance(event, ev.MappingStartEvent)
        self._check_tag(event, path, start, "map" if is_map else "seq")
        frame = _Frame({} if is_map else [], path, event.anchor, start)
        if is_map and event.flow_style and self.source.line(start[0])[start[1] - 1 :].startswith("{{"):
            frame.raw_template, frame.path = True, None
            if path is not None:
                self.source.problems.append(
                    Problem(
                        self.source.file,
                        *start,
                        self.source.display(path),
                        "a value starting with {{ must be quoted, or YAML reads it as a mapping: "
                        "write '{{ ... }}' in quotes",
                    )
                )
        return frame

    def _close(self, frame: _Frame, event: Any) -> tuple[Any, int]:
        value = frame.container
        if frame.raw_template:
            value = self._slice(frame.start, (event.end_mark.line + 1, event.end_mark.column + 1))
        if frame.anchor is not None:
            self.anchors[frame.anchor] = (value, frame.size)
        return value, frame.size

    def _add(self, frame: _Frame, value: Any, size: int) -> None:
        frame.size += size
        if isinstance(frame.container, list):
            frame.container.append(value)
            return
        if frame.key is not _SKIP:
            frame.container[frame.key] = value
        frame.key = None

    def _count(self, size: int, start: tuple[int, int]) -> None:
        self.total += size
        if self.total > MAX_NODES:
            raise _Refused(
                *start,
                f"the document expands to more than {MAX_NODES:,} values through aliases "
                "(an alias bomb?); refusing to load it: write the values out instead of aliasing",
            )

    def _key(self, event: Any, frame: _Frame, get: Any) -> Any:
        """The key for the next value; _SKIP (after reporting) when it cannot be one."""
        kind = type(event)
        kpos = (event.start_mark.line + 1, event.start_mark.column + 1)
        where = frame.path
        if kind is not ev.ScalarEvent:
            if frame.path is not None:
                self._report(kpos, where, "mapping keys must be plain names: quote this key")
            if kind is not ev.AliasEvent:
                _skip_subtree(get)
            return _SKIP
        key = event.value
        plain = bool(event.implicit[0])
        if plain and key == "<<":
            if frame.path is not None:
                self._report(
                    kpos, where, "merge keys (<<) are not supported: write the fields out"
                )
            return _SKIP
        child = None if frame.path is None else (*frame.path, key)
        if key in frame.container:
            if child is not None:
                first = self.source.key_positions.get(child, kpos)
                self._report(
                    kpos,
                    self.source.display(child),
                    f"duplicate key '{key}' (first defined at line {first[0]}): keep one of them",
                )
            return _SKIP
        if child is not None:
            self.source.key_positions[child] = kpos
            if plain and key in _YAML11_BOOL:
                self._report(
                    kpos,
                    self.source.display(child),
                    f"ambiguous key '{key}': YAML 1.1 reads it as the boolean "
                    f"{str(_YAML11_BOOL[key]).lower()}; quote it (\"{key}\")",
                )
        return key

    def _alias(self, event: Any, path: Path | None) -> tuple[Any, int]:
        if event.anchor in self.anchors:
            return self.anchors[event.anchor]
        mark = event.start_mark
        if path is not None:
            self._report(
                (mark.line + 1, mark.column + 1),
                self.source.display(path),
                f"unknown alias '*{event.anchor}': define &{event.anchor} before using it, "
                "or quote the value if the * is text",
            )
        return None, 1

    def _scalar(self, event: Any, path: Path | None) -> Any:
        value: str = event.value
        start = (event.start_mark.line + 1, event.start_mark.column + 1)
        if event.tag not in (None, "!", "tag:yaml.org,2002:str"):
            self._check_tag(event, path, start, "str")
            return value
        if path is not None and isinstance(value, str):
            self._record_string(event, path, start)
        if not event.implicit[0]:
            return value  # quoted, a block scalar, or tagged !!str
        return self._plain(value, path, start)

    def _record_string(self, event: Any, path: Path, start: tuple[int, int]) -> None:
        end = (event.end_mark.line + 1, event.end_mark.column + 1)
        self.source.ends[path] = end
        if event.style == "|":
            self.source.block_scalars.add(path)
        elif end[0] > start[0]:
            self.source.folded.add(path)

    def _plain(self, value: str, path: Path | None, start: tuple[int, int]) -> Any:
        if value in _NULL:
            return None
        if value in _BOOL:
            return _BOOL[value]
        if _INT.fullmatch(value) and not _OCTAL_LOOKING.fullmatch(value):
            return int(value, 0) if value[:2] in ("0o", "0x") else int(value)
        if _FLOAT.fullmatch(value) and not _OCTAL_LOOKING.fullmatch(value):
            low = value.lower()
            if "inf" in low:
                return float("-inf") if low.startswith("-") else float("inf")
            return float("nan") if "nan" in low else float(value)
        message = _yaml11_trap(value)
        if message and path is not None:
            self.source.ambiguous.add(path)
            self._report(start, self.source.display(path), message)
        return value

    def _check_tag(self, event: Any, path: Path | None, start: tuple[int, int], kind: str) -> None:
        tag = event.tag
        if tag in (None, "!", f"tag:yaml.org,2002:{kind}") or path is None:
            return
        shown = tag.replace("tag:yaml.org,2002:", "!!")
        self._report(
            start,
            self.source.display(path),
            f"YAML tag {shown} is not supported: remove it (quote the value if it is text)",
        )

    def _slice(self, start: tuple[int, int], end: tuple[int, int]) -> str:
        lines = self.source.lines[start[0] - 1 : end[0]]
        if len(lines) == 1:
            return lines[0][start[1] - 1 : end[1] - 1]
        return "\n".join([lines[0][start[1] - 1 :], *lines[1:-1], lines[-1][: end[1] - 1]])

    def _report(self, pos: tuple[int, int], path: Path | str, message: str) -> None:
        shown = path if isinstance(path, str) else self.source.display(path)
        self.source.problems.append(Problem(self.source.file, pos[0], pos[1], shown, message))


def _skip_subtree(get: Any) -> None:
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
        number = f"0o{digits} for octal" if set(digits) <= set("01234567") else f"{digits} for the number"
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
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        index = source.text.find(char)
        line, col = _position(source.text, max(index, 0))
        return Problem(
            source.file,
            line,
            col,
            "",
            f"YAML syntax error: character U+{ord(char[:1] or ' '):04X} is not allowed in YAML: "
            "remove it",
        )
    if not isinstance(exc, yaml.MarkedYAMLError):  # pragma: no cover - every parser error is marked
        return Problem(source.file, 1, 1, "", f"YAML syntax error: {exc}")
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    at = exc.context_mark
    context = (line, col) if at is None else (at.line + 1, at.column + 1)
    found, place, message = _explain(source, exc, (line, col), context)
    if not found:
        detail = f" ({exc.context})" if exc.context else ""
        message = f"{exc.problem or 'syntax error'}{detail}"
    return Problem(source.file, *place, "", f"YAML syntax error: {message}")


def _explain(
    source: Source, exc: yaml.MarkedYAMLError, pos: tuple[int, int], context: tuple[int, int]
) -> tuple[bool, tuple[int, int], str]:
    problem, ctx = exc.problem or "", exc.context or ""
    text = source.line(pos[0])
    char = text[pos[1] - 1 : pos[1]]
    opener = source.line(context[0])[context[1] - 1 : context[1]]
    template = re.search(r"(?:^|[:\-?]\s+)(\{[{%#])", text)
    if char == "\t" or "tab" in problem:
        return True, pos, "tab character used for indentation: indent with spaces"
    if template and not re.search(r"[\"']\s*\{[{%#]", text):
        start = (pos[0], template.start(1) + 1)
        return True, start, "a value starting with { must be quoted: write '{{ ... }}' in quotes"
    if "end of stream" in problem and "quoted scalar" in ctx:
        return True, context, f"this quoted string is never closed: add the closing {opener}"
    if "alias" in ctx or "anchor" in ctx:
        sign = "*" if "alias" in ctx else "&"
        return True, context, f"a value starting with {sign} is read as an alias or anchor: quote it"
    if "escape" in problem:
        if char != "\\" and text[pos[1] - 2 : pos[1] - 1] == "\\":
            pos = (pos[0], pos[1] - 1)
        escape = source.line(pos[0])[pos[1] - 1 : pos[1] + 1]
        return True, pos, (
            f"unknown escape '{escape}' in a double-quoted string: use single quotes, "
            "or write \\\\ for a backslash"
        )
    if "flow sequence" in ctx or "flow mapping" in ctx:
        close = "]" if "sequence" in ctx else "}"
        if pos[0] != context[0]:
            return True, context, f"this '{opener}' is never closed: add '{close}'"
        return True, pos, f"expected ',' or '{close}' here: separate items with ', '"
    if "cannot start any token" in problem:
        return True, pos, f"a value cannot start with '{char}': quote the value"
    if "mapping values are not allowed" in problem:
        return True, pos, (
            "unexpected ':' in an unquoted value: quote the value, or fix the indentation "
            "if this line starts a new field"
        )
    if "expected ':'" in problem:
        return True, context, "expected 'key: value' here: add the missing ': ' or quote the line"
    if "block scalar" in ctx:
        return True, pos, "after | or > the text starts on the next line: move it down"
    if "block collection" in ctx or "block mapping" in ctx or "block end" in problem:
        return True, pos, (
            f"bad indentation: this line does not line up with the block that starts at "
            f"line {context[0]}, column {context[1]}: align it with its siblings"
        )
    return False, pos, ""


def _position(text: str, index: int) -> tuple[int, int]:
    before = text[:index]
    lines = _LINE_BREAK.split(before)
    return len(lines), len(lines[-1]) + 1
