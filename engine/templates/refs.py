"""What a template refers to, found by walking its Jinja AST.

References to `steps`, `inputs`, `env`, `secrets`, `item`, `index` and `run` are how dependencies
are inferred (`{% for r in steps.search.output %}` counts) and how validation finds unknown steps
and inputs; free names, filters and tests that would be undefined at render time are reported
too. Templates that differ only in text and names share a shape or a skeleton (see shapes.py), so
a generated pipeline of 10,000 steps parses a few templates, not 10,000.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from jinja2 import TemplateSyntaxError, nodes
from stepchain.templates.environment import environment, parse
from stepchain.templates.roots import ROOTS
from stepchain.templates.shapes import PLACEHOLDER, Shape, shape_of, skeleton

FILTER, TEST = "|filter", "|test"  # roots of references to unknown filters and tests


class Reference(NamedTuple):
    """One use of a context root in a template, e.g. steps.orders.output at template line 3."""

    root: str
    key: str | None  # step id, input name, variable name; None when not a literal
    attr: str | None  # for steps: output or status
    lineno: int


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
        return parsed_references(text)
    shaped, keys = reduced
    try:
        indexed = _indexed_references(shaped)
    except TemplateSyntaxError:
        return parsed_references(text)  # raises the error as the template itself would
    return [
        ref if i < 0 else Reference(ref.root, keys[i], ref.attr, ref.lineno) for ref, i in indexed
    ]


@lru_cache(maxsize=65536)
def parsed_references(text: str) -> list[Reference]:
    """The references of `text`, the long way: its own parse (kept for its first compile)."""
    return _tree_references(parse(text, spare=True))


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


_Placed = tuple[str, str | None, int, str | None, int, int]


@lru_cache(maxsize=4096)
def _placed_references(shape: str) -> list[_Placed] | None:
    """A shape's references, with the placeholder number of their key and attribute (or -1);
    None when a placeholder ended up inside a longer name or string (not what it stood for)."""
    out = []
    for ref in _tree_references(environment().parse(shape)):
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
    for ref in _tree_references(environment().parse(shape)):
        match = PLACEHOLDER.fullmatch(ref.key or "")
        out.append((ref, int(match.group(1)) if match else -1))
    return out


def _tree_references(tree: nodes.Template) -> list[Reference]:
    found: list[Reference] = []
    _walk(tree, found, set())
    # any other free name is undefined when rendered (strict undefined): report it too
    bound = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    bound |= {n.name for n in tree.find_all(nodes.Macro)}
    bound |= {n.target for n in tree.find_all(nodes.Import)}
    for imported in tree.find_all(nodes.FromImport):
        bound |= {n if isinstance(n, str) else n[-1] for n in imported.names}
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
        is_filter = isinstance(node, nodes.Filter)
        if node.name not in (env.filters if is_filter else env.tests):
            found.append(Reference(FILTER if is_filter else TEST, node.name, None, node.lineno))
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
        if isinstance(node, nodes.For):
            _walk(node.iter, found, locals_)
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
    keys: list[nodes.Node] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Const):
            keys.append(node.arg)
        node = node.node
    return keys


def _reference(base: nodes.Name, chain: list[tuple[str | None, nodes.Node]]) -> Reference:
    key = chain[0][0] if chain else None
    attr = chain[1][0] if len(chain) > 1 else None
    return Reference(base.name, key, attr, base.lineno)
