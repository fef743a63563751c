"""Jinja templates: a strict immutable sandbox, native rendering, and reference discovery.

A string that is exactly one `{{ expr }}` renders to the expression's native value (a list stays a
list); anything else renders to text. References to `steps`, `inputs`, `env`, `secrets`, `item`
and `index` are found by walking the Jinja AST, which is how dependencies are inferred; so are
names, filters and tests that would be undefined when the template renders.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, NamedTuple

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.parser import Parser
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from stepchain.template_interpreter import Program, supported
from stepchain.template_interpreter import Vars as Vars  # re-exported: the context roots

ROOTS = ("steps", "inputs", "env", "secrets", "item", "index", "run")
FILTER, TEST = "|filter", "|test"  # roots of references to unknown filters and tests
_SINGLE_EXPR = re.compile(r"^\s*\{\{-?(.*?)-?\}\}\s*$", re.DOTALL)


def _tojson(value: Any, indent: int | None = None) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; prompts want the JSON a person would write.
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The one Jinja environment: sandboxed, immutable, undefined names are errors."""
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.filters["tojson"] = _tojson
    env.filters["fromjson"] = json.loads
    return env


class Reference(NamedTuple):
    """One use of a context root in a template, e.g. steps.orders.output at template line 3."""

    root: str
    key: str | None  # step id, input name, variable name; None when not a literal
    attr: str | None  # for steps: output or status
    lineno: int


class Compiled:
    """A template prepared once: a program of closures (with its shape's texts and keys), a
    Jinja-compiled expression or template, or a literal."""

    __slots__ = ("is_native", "keys", "literal", "native", "program", "source", "text", "texts")

    def __init__(
        self,
        source: str,
        *,
        program: Program | None = None,
        is_native: bool = False,
        texts: tuple[str, ...] = (),
        keys: tuple[str, ...] = (),
        native: Any = None,
        text: Any = None,
        literal: bool = False,
    ) -> None:
        self.source = source
        self.program = program  # the interpreter's closures (an expression when is_native)
        self.is_native = is_native  # the string is exactly one {{ expr }}: a native value
        self.texts = texts  # for a shared shape: the text between tags, by marker
        self.keys = keys  # for a shared shape: the names and strings its placeholders stand for
        self.native = native  # Jinja-compiled expression (is exactly one {{ expr }})
        self.text = text  # jinja2.Template otherwise
        self.literal = literal  # no template syntax at all

    def render(self, context: dict[str, Any]) -> Any:
        program = self.program
        if program is not None:
            if self.is_native:
                return program.evaluate(context, self.keys)
            return program.render(context, self.texts, self.keys)
        if self.literal:
            return self.source
        if self.native is not None:
            return _defined(self.native(**context))
        return self.text.render(**context)


def _defined(value: Any) -> Any:
    """A native value must not be Undefined: fail as rendering it would."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return value


@lru_cache(maxsize=65536)
def compile_template(source: str) -> Compiled:
    """Prepare a template string; raises jinja2.TemplateSyntaxError."""
    if "{{" not in source and "{%" not in source and "{#" not in source:
        return Compiled(source, literal=True)
    shaped = _shaped(source)
    if shaped is not None:
        return shaped
    env = environment()
    tree = env.parse(source)
    match = _SINGLE_EXPR.match(source)
    if match and _is_single_output(tree):
        expr = _expression_tree(match.group(1))
        if supported(expr, env):
            return Compiled(source, program=Program(env, expr, shaped=False), is_native=True)
        return Compiled(
            source, native=env.compile_expression(match.group(1), undefined_to_none=False)
        )
    if supported(tree, env):
        return Compiled(source, program=Program(env, tree, shaped=False))
    return Compiled(source, text=env.from_string(source))


@lru_cache(maxsize=65536)
def compile_expression(expr: str) -> Any:
    """Prepare a `when`/`foreach` expression (no braces): a callable taking the context."""
    if not _UNSHAPEABLE.search(expr):
        keys: list[str] = []
        program = _shape_tree(_render_placeholders(expr, keys), expression=True)
        if program is not None:
            fixed = tuple(keys)
            return lambda **context: program.evaluate(context, fixed)
    env = environment()
    tree = _expression_tree(expr)
    if supported(tree, env):
        program = Program(env, tree, shaped=False)
        return lambda **context: program.evaluate(context)
    compiled = env.compile_expression(expr, undefined_to_none=False)
    return lambda **context: _defined(compiled(**context))


# Rendering by *shape*. Parsing a template costs about a millisecond (Jinja's lexer), and a
# pipeline's templates mostly differ only in their text, their string literals and which steps
# or inputs they name. A template whose tags split cleanly (see _SIMPLE_TAG) is reduced to a
# shape: each text segment becomes a marker \x00N\x00, and each literal key (steps.X,
# inputs["Y"]) and each string literal a placeholder __kN__ (a string literal's value is its text
# exactly, as there are no backslashes or \r). The shape is parsed and turned into closures once;
# a render passes the template's own texts and keys. Whitespace control (`-`) changes text next
# to tags, and \r is normalised by the lexer, so templates using either are parsed whole, as are
# any whose shape the interpreter cannot take.
_UNSHAPEABLE = re.compile(r"[{}\\\r\x00]|__k")  # braces, backslashes, \r, markers, placeholders


def _shaped(source: str) -> Compiled | None:
    if "\r" in source or "\x00" in source or "{#" in source:
        return None
    if "{%" in source and _RAW.search(source):
        return None
    pieces = _SIMPLE_TAG.split(source)
    texts, tags = pieces[::2], pieces[1::2]
    joined = "\x00".join(texts)
    if "{{" in joined or "{%" in joined or "{#" in joined or "{\x00" in joined:
        return None  # a tag the regex could not split as Jinja's lexer does
    for tag in tags:
        if tag[2] in "-+" or tag[-3] in "-+" or "__k" in tag or "\\" in tag:
            return None
    keys: list[str] = []
    if len(tags) == 1 and tags[0][1] == "{" and not texts[0].strip() and not texts[1].strip():
        program = _shape_tree(_render_placeholders(tags[0][2:-2], keys), expression=True)
        if program is None:
            return None
        return Compiled(source, program=program, is_native=True, keys=tuple(keys))
    shape = "".join(
        (f"\x00{i}\x00" if text else "") + (tags[i] if i < len(tags) else "")
        for i, text in enumerate(texts)
    )
    program = _shape_tree(_render_placeholders(shape, keys), expression=False)
    if program is None:
        return None
    return Compiled(source, program=program, texts=tuple(texts), keys=tuple(keys))


@lru_cache(maxsize=4096)
def _shape_tree(shape: str, *, expression: bool) -> Program | None:
    """A shape's program, or None when it must be rendered the ordinary way."""
    env = environment()
    try:
        tree = _expression_tree(shape) if expression else env.parse(shape)
    except TemplateSyntaxError:
        return None  # parsing the template itself reports the error as the user wrote it
    if not supported(tree, env):
        return None
    for node in (tree, *tree.find_all((nodes.Const, nodes.Getattr, nodes.Name))):
        if not isinstance(node, nodes.Const | nodes.Getattr | nodes.Name):
            continue
        text = (
            node.value
            if isinstance(node, nodes.Const)
            else getattr(node, "attr", None) or node.name
        )
        if isinstance(text, str) and "__k" in text and not _PLACEHOLDER.fullmatch(text):
            return None  # a placeholder inside a longer string: not a key after all
    return Program(env, tree, shaped=True)


def _expression_tree(expr: str) -> nodes.Expr:
    # Parsed as Jinja's compile_expression parses it, so syntax errors read the same.
    parser = Parser(environment(), expr, state="variable")
    tree = parser.parse_expression()
    if not parser.stream.eos:
        parser.fail("chunk after expression", parser.stream.current.lineno, TemplateSyntaxError)
    tree.set_environment(environment())
    return tree


def _is_single_output(tree: nodes.Template) -> bool:
    body = tree.body
    exprs = [n for n in body if not (isinstance(n, nodes.Output) and _is_blank(n))]
    return (
        len(exprs) == 1
        and isinstance(exprs[0], nodes.Output)
        and len([n for n in exprs[0].nodes if not _is_blank_data(n)]) == 1
    )


def _is_blank(node: nodes.Output) -> bool:
    return all(_is_blank_data(n) for n in node.nodes)


def _is_blank_data(node: nodes.Node) -> bool:
    return isinstance(node, nodes.TemplateData) and not node.data.strip()


def references(source: str, *, expression: bool = False) -> list[Reference]:
    """Every use of a context root in `source`; raises jinja2.TemplateSyntaxError."""
    if not expression and "{{" not in source and "{%" not in source:
        return []
    text = "{{ " + source + " }}" if expression else source
    skeleton = _skeleton(text)
    if skeleton is None:
        return _references(text)
    shape, keys = skeleton
    try:
        found = _indexed_references(shape)
    except TemplateSyntaxError:
        return _references(text)  # raises the error as the template itself would
    return [
        ref if i < 0 else Reference(ref.root, keys[i], ref.attr, ref.lineno) for ref, i in found
    ]


# A template's *skeleton*: its tags with every literal reference key replaced by a placeholder and
# its text reduced to its line breaks. Templates that differ only in text and in which steps or
# inputs they name share a skeleton, so a generated 10,000-step pipeline parses a few templates,
# not 10,000. Only templates whose tags the regex below provably splits exactly as Jinja's lexer
# does get a skeleton: no braces inside tags, strings without escapes, no {% raw %}.
_SIMPLE_TAG = re.compile(
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
_PLACEHOLDER = re.compile(r"__k([0-9]+)__")
_RAW = re.compile(r"\{%[-+]?\s*raw\b")
_NEWLINES = re.compile(r"\r\n|\r|\n")


def _skeleton(text: str) -> tuple[str, list[str]] | None:
    if ("{%" in text and _RAW.search(text)) or "__k" in text:
        return None  # {% raw %} changes the lexer; __k is what placeholders look like
    pieces = _SIMPLE_TAG.split(text)  # text, tag, text, tag, ..., text
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


_TOKEN = re.compile(_KEY.pattern + r"|'([^'\\]*)'|\"([^\"\\]*)\"")


def _render_placeholders(text: str, keys: list[str]) -> str:
    """Replace each literal key and each string literal by __kN__, appending what they were."""

    def placeholder(match: re.Match[str]) -> str:
        root, attr, _, item, single, double = match.groups()
        if root is None:
            keys.append(single if single is not None else double)
            return f"'__k{len(keys) - 1}__'"
        keys.append(attr or item)
        return f"{root}.__k{len(keys) - 1}__" if attr else f"{root}['__k{len(keys) - 1}__']"

    return _TOKEN.sub(placeholder, text)


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


@lru_cache(maxsize=4096)
def _indexed_references(shape: str) -> list[tuple[Reference, int]]:
    """A skeleton's references, each with the index of its placeholder key (or -1)."""
    out = []
    for ref in _references(shape):
        match = _PLACEHOLDER.fullmatch(ref.key or "")
        out.append((ref, int(match.group(1)) if match else -1))
    return out


@lru_cache(maxsize=65536)
def _references(text: str) -> list[Reference]:
    tree = environment().parse(text)
    found: list[Reference] = []
    _walk(tree, found, set())
    # any other free name is undefined when rendered (strict undefined): report it too
    bound = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    bound |= {n.name for n in tree.find_all(nodes.Macro)}
    bound |= {n.target for n in tree.find_all(nodes.Import)}
    for node in tree.find_all(nodes.FromImport):
        bound |= {n if isinstance(n, str) else n[-1] for n in node.names}
    free = {
        (n.name, n.lineno)
        for n in tree.find_all(nodes.Name)
        if n.ctx == "load"
        and n.name not in ROOTS
        and n.name not in bound
        and n.name not in _GLOBALS
    }
    found += [
        Reference(name, None, None, lineno)
        for name, lineno in sorted(free, key=lambda f: (f[1], f[0]))
    ]
    env = environment()
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        known = env.filters if isinstance(node, nodes.Filter) else env.tests
        if node.name not in known:
            found.append(
                Reference(
                    FILTER if isinstance(node, nodes.Filter) else TEST, node.name, None, node.lineno
                )
            )
    return found


_GLOBALS = {"range", "dict", "lipsum", "cycler", "joiner", "namespace", "loop", "self", "caller",
            "varargs", "kwargs"}  # fmt: skip


def _walk(node: nodes.Node, found: list[Reference], locals_: set[str]) -> None:
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
        chain, base = _flatten(node)
        if isinstance(base, nodes.Name) and base.name in ROOTS and base.name not in locals_:
            found.append(_reference(base, chain))
            for key_node in _dynamic_keys(node):
                _walk(key_node, found, locals_)
            return
    if isinstance(node, nodes.Name) and node.ctx == "load":
        if node.name in ROOTS and node.name not in locals_:
            found.append(Reference(node.name, None, None, node.lineno))
        return
    if isinstance(node, (nodes.For, nodes.Macro)):
        # names bound by a loop or macro shadow context roots inside it
        _walk(node.iter, found, locals_) if isinstance(node, nodes.For) else None
        bound = {n.name for n in node.find_all(nodes.Name) if n.ctx in ("store", "param")}
        inner = locals_ | bound
        for child in node.iter_child_nodes(
            exclude=("iter",) if isinstance(node, nodes.For) else ()
        ):
            _walk(child, found, inner)
        return
    for child in node.iter_child_nodes():
        _walk(child, found, locals_)


def _flatten(node: nodes.Node) -> tuple[list[tuple[str | None, nodes.Node]], nodes.Node]:
    chain: list[tuple[str | None, nodes.Node]] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            chain.append((node.attr, node))
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, (str, int)):
            chain.append((str(node.arg.value), node))
        else:
            chain.append((None, node))
        node = node.node
    chain.reverse()
    return chain, node


def _dynamic_keys(node: nodes.Node) -> list[nodes.Node]:
    keys = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Const):
            keys.append(node.arg)
        node = node.node
    return keys


def _reference(base: nodes.Name, chain: list[tuple[str | None, nodes.Node]]) -> Reference:
    key = chain[0][0] if chain else None
    attr = chain[1][0] if len(chain) > 1 else None
    return Reference(base.name, key, attr, base.lineno)
