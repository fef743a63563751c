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
from stepchain.templates.interpreter import Program, supported
from stepchain.templates.interpreter import Vars as Vars  # re-exported: the context roots
from stepchain.templates.shapes import (
    PLACEHOLDER,
    UNSHAPEABLE,
    Shape,
    placeholders,
    shape_of,
    skeleton,
)

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
    shape = shape_of(source)
    if shape is not None:
        if shape.expression is not None:
            program = _shape_tree(shape.expression, expression=True)
            if program is not None:
                return Compiled(source, program=program, is_native=True, keys=shape.keys)
        else:
            program = _shape_tree(shape.text, expression=False)
            if program is not None:
                return Compiled(source, program=program, texts=shape.texts, keys=shape.keys)
    env = environment()
    tree = _parse(source)
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
    if not UNSHAPEABLE.search(expr):
        shaped, keys = placeholders(expr)
        program = _shape_tree(shaped, expression=True)
        if program is not None:
            return lambda **context: program.evaluate(context, keys)
    env = environment()
    tree = _expression_tree(expr)
    if supported(tree, env):
        program = Program(env, tree, shaped=False)
        return lambda **context: program.evaluate(context)
    compiled = env.compile_expression(expr, undefined_to_none=False)
    return lambda **context: _defined(compiled(**context))


@lru_cache(maxsize=4096)
def _shape_tree(shape: str, *, expression: bool) -> Program | None:
    """A shape's program, or None when it must be rendered the ordinary way."""
    env = environment()
    try:
        tree = _expression_tree(shape) if expression else _parse(shape)
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
        if isinstance(text, str) and "__k" in text and not PLACEHOLDER.fullmatch(text):
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
    shape = shape_of(text)  # the shape rendering uses too: computed once per template
    if shape is not None:
        found = _shape_references(shape)
        if found is not None:
            return found
    reduced = skeleton(text)
    if reduced is None:
        return _references(text)
    shaped, keys = reduced
    try:
        indexed = _indexed_references(shaped)
    except TemplateSyntaxError:
        return _references(text)  # raises the error as the template itself would
    return [
        ref if i < 0 else Reference(ref.root, keys[i], ref.attr, ref.lineno) for ref, i in indexed
    ]


def _shape_references(shape: Shape) -> list[Reference] | None:
    """References found through the template's shape, or None to look the other way."""
    try:
        found = _placed_references(shape.text)
    except TemplateSyntaxError:
        return None
    if found is None:
        return None
    keys = shape.keys
    return [
        Reference(
            root,
            key if key_at < 0 else keys[key_at],
            attr if attr_at < 0 else keys[attr_at],
            lineno,
        )
        for root, key, key_at, attr, attr_at, lineno in found
    ]


@lru_cache(maxsize=4096)
def _placed_references(shape: str) -> list[tuple] | None:
    """A shape's references, with the placeholder number of their key and attribute (or -1);
    None when a placeholder ended up inside a longer name or string (not what it stood for)."""
    out = []
    for ref in _references(shape):
        key_at, attr_at = _placeholder_number(ref.key), _placeholder_number(ref.attr)
        if (key_at is None) or (attr_at is None):
            return None
        out.append((ref.root, ref.key, key_at, ref.attr, attr_at, ref.lineno))
    return out


def _placeholder_number(name: str | None) -> int | None:
    """-1 for a name that is no placeholder, its number for one, None for a mangled one."""
    if name is None or "__k" not in name:
        return -1
    match = PLACEHOLDER.fullmatch(name)
    return int(match.group(1)) if match else None


@lru_cache(maxsize=4096)
def _indexed_references(shape: str) -> list[tuple[Reference, int]]:
    """A skeleton's references, each with the index of its placeholder key (or -1)."""
    out = []
    for ref in _references(shape):
        match = PLACEHOLDER.fullmatch(ref.key or "")
        out.append((ref, int(match.group(1)) if match else -1))
    return out


# Trees parsed for references (validation), kept for the first render of the same text, which
# takes them out: loading then running or planning parses each template once, not twice.
_SPARE_TREES: dict[str, nodes.Template] = {}
_MAX_SPARE = 20_000  # ~6 KiB each; the oldest goes first (a process that only validates)


def _parse(text: str, *, spare: bool = False) -> nodes.Template:
    """`environment().parse(text)`, reusing (once) a tree parsed for references."""
    tree = _SPARE_TREES.pop(text, None)
    if tree is None:
        tree = environment().parse(text)
        if spare:
            if len(_SPARE_TREES) >= _MAX_SPARE:
                del _SPARE_TREES[next(iter(_SPARE_TREES))]
            _SPARE_TREES[text] = tree
    return tree


@lru_cache(maxsize=65536)
def _references(text: str) -> list[Reference]:
    tree = _parse(text, spare=True)
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
