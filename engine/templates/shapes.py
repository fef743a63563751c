"""A template's *shape*: its text with what varies between similar templates taken out.

Parsing a template costs about a millisecond (Jinja's lexer), and a pipeline's templates mostly
differ only in their text, their string literals and which steps or inputs they name. Only
templates whose tags the regex below provably splits exactly as Jinja's lexer does are shaped:
no braces inside tags, strings without escapes, no {% raw %}. Two reductions:

- the *shape* (for rendering and references): each text segment becomes a marker \x00N\x00
  (keeping the segment's line breaks, so line numbers stay the template's), each literal key
  (steps.X, inputs["Y"]) and each string literal a placeholder __kN__. A string literal's value
  is exactly its text here (no backslashes, no \r), so putting it back is exact. Whitespace
  control (`-`) changes the text next to tags, so templates using it (or comments) get no shape.
- the *skeleton* (for references only, when there is no shape): text reduced to its line
  breaks, keys to placeholders, strings that are not subscripts emptied.

A shape is rendered as one real Jinja template (`shared_source`): each marker becomes
`{{ __t[N] }}`, each key `root.__kN__` becomes `__ga[root, __k[N]]` (the sandbox's own getattr,
see compiled.py) and each string placeholder `__k[N]`; a template of that shape renders with its
texts and keys passed as `__t` and `__k`. Templates with `__` in a tag get no shape, so these
names are never the user's.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

# A template's *skeleton*: its tags with every literal reference key replaced by a placeholder and
# its text reduced to its line breaks. Templates that differ only in text and in which steps or
# inputs they name share a skeleton, so a generated 10,000-step pipeline parses a few templates,
# not 10,000. Only templates whose tags the regex below provably splits exactly as Jinja's lexer
# does get a skeleton: no braces inside tags, strings without escapes, no {% raw %}.
SIMPLE_TAG = re.compile(
    r"""(\{\{(?:[^'"{}]++|'[^'\\]*'|"[^"\\]*")*+\}\}"""
    r"""|\{%(?:[^'"{}%]++|%(?!\})|'[^'\\]*'|"[^"\\]*")*+%\}"""
    r"|\{#.*?#\})",
    re.DOTALL,
)
_KEY = re.compile(
    r"(?<![\w.])(steps|inputs|env|secrets)(?:\.([A-Za-z_][A-Za-z0-9_]*)(?!\w)"
    r"|\[(['\"])([A-Za-z0-9_-]+)\3\])"
)
_STRING = re.compile(r"'[^'\\]*'|\"[^\"\\]*\"")
PLACEHOLDER = re.compile(r"__k([0-9]+)__")
RAW = re.compile(r"\{%[-+]?\s*raw\b")
_NEWLINES = re.compile(r"\r\n|\r|\n")


def skeleton(text: str) -> tuple[str, list[str]] | None:
    if ("{%" in text and RAW.search(text)) or "__k" in text:
        return None  # {% raw %} changes the lexer; __k is what placeholders look like
    pieces = SIMPLE_TAG.split(text)  # text, tag, text, tag, ..., text
    texts = pieces[::2]
    joined = "\0".join(texts)
    if "{{" in joined or "{%" in joined or "{#" in joined or "{\0" in joined:
        return None  # a tag the regex could not split: leave it to Jinja
    parts = [_lines(p) if i % 2 == 0 or p.startswith("{#") else p for i, p in enumerate(pieces)]
    keys: list[str] = []
    return _blank_strings(_with_placeholders("".join(parts), keys)), keys


def _with_placeholders(text: str, keys: list[str]) -> str:
    """Replace each literal key (steps.X, inputs["Y"]) by __kN__, appending the keys."""

    def placeholder(match: re.Match[str]) -> str:
        keys.append(match.group(2) or match.group(4))
        if match.group(2):
            return f"{match.group(1)}.__k{len(keys) - 1}__"
        return f"{match.group(1)}['__k{len(keys) - 1}__']"

    return _KEY.sub(placeholder, text)


def _lines(text: str) -> str:
    """Only the line breaks of `text`, so line numbers stay those of the template."""
    if "\n" not in text and "\r" not in text:
        return ""
    return "".join(_NEWLINES.findall(text))


def _blank_strings(body: str) -> str:
    """Empty every string literal that is not a subscript (steps.x['output'] keeps its key)."""
    if "'" not in body and '"' not in body:
        return body
    out, pos = [], 0
    for match in _STRING.finditer(body):
        before = body[: match.start()].rstrip()
        subscript = before.endswith("[") and before[:-1].rstrip()[-1:] in _SUBSCRIPTABLE
        out.append(body[pos : match.start()])
        literal = match.group()
        out.append(literal if subscript else literal[0] + _lines(literal) + literal[0])
        pos = match.end()
    out.append(body[pos:])
    return "".join(out)


_SUBSCRIPTABLE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_)]'\"")


class Shape(NamedTuple):
    text: str  # markers and tags with placeholders: parsed once per distinct shape
    texts: tuple[str, ...]  # the text segments, by marker number
    keys: tuple[str, ...]  # what each placeholder stands for, by number
    expression: str | None  # when the template is exactly one {{ expr }}: the shaped expr


@lru_cache(maxsize=65536)
def shape_of(source: str) -> Shape | None:
    """The shape of a template, or None when it must be parsed whole."""
    if "\r" in source or "\x00" in source or "{#" in source:
        return None
    if "{%" in source and RAW.search(source):
        return None
    pieces = SIMPLE_TAG.split(source)
    texts, tags = pieces[::2], pieces[1::2]
    joined = "\x00".join(texts)
    if "{{" in joined or "{%" in joined or "{#" in joined or "{\x00" in joined:
        return None  # a tag the regex could not split as Jinja's lexer does
    for tag in tags:
        if tag[2] in "-+" or tag[-3] in "-+" or "__" in tag or "\\" in tag:
            return None
    parts = []
    for i, text in enumerate(texts):
        if text:
            parts.append(f"\x00{i}{_lines(text)}\x00")
        if i < len(tags):
            parts.append(tags[i])
    shaped, keys = placeholders("".join(parts))
    if any("\n" in key for key in keys):
        return None  # a string literal over several lines: its placeholder would lose them
    expression = None
    if len(tags) == 1 and tags[0][1] == "{" and not texts[0].strip() and not texts[1].strip():
        expression = shaped[shaped.index("{{") + 2 : shaped.rindex("}}")]
    return Shape(shaped, tuple(texts), keys, expression)


# What varies between templates of one shape: a key after a root (steps.X; inputs["Y"] is a
# string) and a string literal; each becomes a placeholder __kN__, numbered in order.
_NAME = r"\.([A-Za-z_][A-Za-z0-9_]*)(?!\w)"
# Every alternative starts with a literal, so the regex engine skips ahead to candidates quickly.
_VARYING = re.compile(
    rf"steps{_NAME}|inputs{_NAME}|env{_NAME}|secrets{_NAME}|'([^'\\]*)'|\"([^\"\\]*)\""
)
_ROOT_PREFIXES = ("", "steps.", "inputs.", "env.", "secrets.")
UNSHAPEABLE = re.compile(r"[{}\\\r\x00]|__")  # an expression parsed whole: braces, \\, \r, __


def placeholders(text: str) -> tuple[str, tuple[str, ...]]:
    """`text` with each key and string literal replaced by __kN__, and what they were."""
    keys: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        group = match.lastindex or 0  # every alternative has a group
        if group > 4:  # a string literal
            keys.append(match.group(group))
            return f"'__k{len(keys) - 1}__'"
        start = match.start()
        if start and (
            text[start - 1] == "." or text[start - 1].isalnum() or text[start - 1] == "_"
        ):
            return match.group()  # x.steps.a or mysteps.a: not a root
        keys.append(match.group(group))
        return f"{_ROOT_PREFIXES[group]}__k{len(keys) - 1}__"

    return _VARYING.sub(placeholder, text), tuple(keys)


class Placed(NamedTuple):
    """How many of each construct `shared_source` put into a shape's Jinja source."""

    texts: int  # {{ __t[N] }}
    attributes: int  # __ga[root, __k[N]]
    keys: int  # __k[N], the attributes' included


_SHARED = re.compile(
    r"\x00([0-9]+)(\n*)\x00|(steps|inputs|env|secrets)\.__k([0-9]+)__|'__k([0-9]+)__'"
)


def shared_source(shaped: str) -> tuple[str, Placed]:
    """A shape (or a shaped expression) as Jinja source rendering any template of that shape,
    given its texts as `__t`, its keys as `__k` and the sandbox's getattr as `__ga`; with what was
    put in, so that the parse can be checked to be made of exactly that."""
    counts = [0, 0, 0]

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is not None:  # a text marker, keeping the text's line breaks
            counts[0] += 1
            return "{{ __t[" + match.group(1) + "]" + match.group(2) + " }}"
        counts[2] += 1
        if match.group(3) is not None:  # root.__kN__: an attribute named by a key
            counts[1] += 1
            return f"__ga[{match.group(3)}, __k[{match.group(4)}]]"
        return f"__k[{match.group(5)}]"  # a string literal

    source = _SHARED.sub(replace, shaped)
    return source, Placed(*counts)
