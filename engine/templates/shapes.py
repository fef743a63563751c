"""A template's *shape*: its text with what varies between similar templates taken out.

Parsing and compiling a template costs about a millisecond, and a pipeline's templates mostly
differ only in their text, their string literals and which steps or inputs they name. Only
templates whose tags the regex below provably splits exactly as Jinja's lexer does are shaped:
no braces inside tags, strings without escapes, no {% raw %}. Two reductions:

- the *shape* (for rendering and references) is real Jinja source that renders every template
  of that shape, given the template's texts as `__t0`, `__t1`... and its keys as `__k0`, ...:
  each text segment becomes `{{ __tN }}` (keeping the segment's line breaks inside the tag, so
  line numbers stay the template's), each literal key after a root, `steps.X`, becomes
  `__ga[steps, __kN]` (`__ga` answers with the sandbox's own getattr, see compiled.py), and each
  string literal `__kN`. A string literal's value is exactly its text here (no backslashes, no
  \r, on one line), so passing it back is exact. Whitespace control (`-`) changes the text next to tags, so templates
  using it (or comments) get no shape; nor do templates with `__` in a tag, so these names are
  never the user's. `faithful` checks that a shape's parse holds exactly what was put in.
- the *skeleton* (for references only, when there is no shape): text reduced to its line
  breaks, keys to placeholders __kN__, strings that are not subscripts emptied.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from jinja2 import nodes

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


class Placed(NamedTuple):
    """How many of each thing a shape's source has in place of the template's own."""

    texts: int  # {{ __tN }}
    attributes: int  # __ga[root, __kN]
    keys: int  # __kN, the attributes' included


class Shape(NamedTuple):
    text: str  # the Jinja source of the shape: parsed once per distinct shape
    placed: Placed
    texts: tuple[str, ...]  # the text segments, by number (`__tN`)
    keys: tuple[str, ...]  # the keys and strings, by number (`__kN`)
    native: bool  # the template is exactly one {{ expr }} (blank text around it)


@lru_cache(maxsize=65536)
def shape_of(source: str) -> Shape | None:
    """The shape of a template, or None when it must be parsed whole."""
    if "\r" in source or "{#" in source:
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
    parts, marked = [], 0
    for i, text in enumerate(texts):
        if text:
            parts.append("{{ __t" + str(i) + _lines(text) + " }}")
            marked += 1
        if i < len(tags):
            parts.append(tags[i])
    shaped, keys, attributes = placeholders("".join(parts))
    if any("\n" in key for key in keys):
        return None  # a string literal over several lines: its placeholder would lose them
    native = len(tags) == 1 and tags[0][1] == "{" and not texts[0].strip() and not texts[1].strip()
    return Shape(shaped, Placed(marked, attributes, len(keys)), tuple(texts), keys, native)


# What varies between templates of one shape: a key after a root (steps.X; inputs["Y"] is a
# string) and a string literal; each is taken out and numbered in order.
_NAME = r"\.([A-Za-z_][A-Za-z0-9_]*)(?!\w)"
# Every alternative starts with a literal, so the regex engine skips ahead to candidates quickly.
_VARYING = re.compile(
    rf"steps{_NAME}|inputs{_NAME}|env{_NAME}|secrets{_NAME}|'([^'\\]*)'|\"([^\"\\]*)\""
)
_ROOT_NAMES = ("", "steps", "inputs", "env", "secrets")


def placeholders(text: str) -> tuple[str, tuple[str, ...], int]:
    """`text` with each key after a root replaced by `__ga[root, __kN]` and each string literal
    by `__kN`; with the keys and strings, and how many of them were keys after a root."""
    keys: list[str] = []
    attributes = 0

    def placeholder(match: re.Match[str]) -> str:
        nonlocal attributes
        group = match.lastindex or 0  # every alternative has a group
        if group > 4:  # a string literal
            keys.append(match.group(group))
            return f"__k{len(keys) - 1}"
        start = match.start()
        if start and (
            text[start - 1] == "." or text[start - 1].isalnum() or text[start - 1] == "_"
        ):
            return match.group()  # x.steps.a or mysteps.a: not a root
        keys.append(match.group(group))
        attributes += 1
        return f"__ga[{_ROOT_NAMES[group]}, __k{len(keys) - 1}]"

    return _VARYING.sub(placeholder, text), tuple(keys), attributes


SHAPE_NAME = re.compile(r"__(?:[tk][0-9]+|ga)")  # the names a shape's source puts in


def faithful(tree: nodes.Template, placed: Placed) -> bool:
    """Whether the parse of a shape's source holds each thing put in, as put in: `__tN` an output
    of its own, `__ga[root, __kN]` an item of `__ga`, `__kN` a value read (and not, say, a
    filter named `steps.x` that became something else, or `__k0` assigned to)."""
    names = texts = attributes = keys = 0
    for node in tree.find_all((nodes.Name, nodes.Output, nodes.Getitem)):
        if isinstance(node, nodes.Name):
            if SHAPE_NAME.fullmatch(node.name):
                names += 1
                keys += shape_key(node) is not None
        elif isinstance(node, nodes.Output):
            texts += sum(1 for child in node.nodes if shape_text(child) is not None)
        elif shape_attribute(node) is not None:
            attributes += 1
    # one name in each thing put in (an attribute holds two): none anywhere else
    expected = placed.texts + placed.attributes + placed.keys
    return names == expected and (texts, attributes, keys) == tuple(placed)


def _numbered(node: nodes.Node, prefix: str) -> int | None:
    if (
        isinstance(node, nodes.Name)
        and node.name.startswith(prefix)
        and node.ctx == "load"
        and node.name[3:].isdigit()
        and node.name[3:].isascii()
    ):
        return int(node.name[3:])
    return None


def shape_text(node: nodes.Node) -> int | None:
    """N when `node` is the name `__tN` read (a shape's text N), else None."""
    return _numbered(node, "__t")


def shape_key(node: nodes.Node) -> int | None:
    """N when `node` is the name `__kN` read (a shape's key or string N), else None."""
    return _numbered(node, "__k")


def shape_attribute(node: nodes.Node) -> tuple[nodes.Name, int] | None:
    """(root, N) when `node` is `__ga[root, __kN]`, a shape's `root.name`, else None."""
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "__ga"
        and node.node.ctx == "load"
        and isinstance(node.arg, nodes.Tuple)
        and len(node.arg.items) == 2
        and isinstance(node.arg.items[0], nodes.Name)
    ):
        index = shape_key(node.arg.items[1])
        if index is not None:
            return node.arg.items[0], index
    return None
