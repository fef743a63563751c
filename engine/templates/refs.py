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
from stepchain.templates.roots import ROOTS
from stepchain.templates.sandbox import environment, parse
from stepchain.templates.shapes import (
    PLACEHOLDER,
    SHAPE_NAME,
    Placed,
    Shape,
    faithful,
    shape_attribute,
    shape_key,
    shape_of,
    skeleton,
)

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
    if indexed is None:
        return parsed_references(text)
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
        found = _placed_references(shape.text, shape.placed)
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
def _placed_references(shape: str, placed: Placed) -> list[_Placed] | None:
    """A shape's references, with the number of their key and attribute in the shape's keys (or
    -1); None when the shape's parse is not made of what was put in (see shapes.faithful). The
    tree is kept for the shape's compile: one parse per shape, from validation to rendering."""
    tree = parse(shape, spare=True)
    if not faithful(tree, placed):
        return None
    out = []
    for ref in _tree_references(tree, shape=True):
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
def _indexed_references(shape: str) -> list[tuple[Reference, int]] | None:
    """A skeleton's references, each with the index of its placeholder key (or -1); None when a
    placeholder ended up in something else (`x | steps.a` names a filter `steps.__k0__`)."""
    out = []
    for ref in _tree_references(environment().parse(shape)):
        key_at = _placeholder_number(ref.key)
        if key_at is None or _placeholder_number(ref.attr) != -1:
            return None
        out.append((ref, key_at))
    return out


def _tree_references(tree: nodes.Template, *, shape: bool = False) -> list[Reference]:
    """References in a parsed template; `shape`: a shape's source, whose keys are reported as
    their placeholders __kN__ (the long way's skeleton names them so too)."""
    found: list[Reference] = []
    _walk(tree, found, set(), shape)
    # any other free name is undefined when rendered (strict undefined): report it too; so are
    # unknown filters and tests
    bound: set[str] = set()
    loaded: set[tuple[str, int]] = set()
    unknown: list[Reference] = []
    env = environment()
    kinds = (nodes.Name, nodes.Macro, nodes.Import, nodes.FromImport, nodes.Filter, nodes.Test)
    for node in tree.find_all(kinds):  # one walk through the tree, in document order
        if isinstance(node, nodes.Name):
            if node.ctx == "load":
                loaded.add((node.name, node.lineno))
            elif node.ctx in ("store", "param"):
                bound.add(node.name)
        elif isinstance(node, nodes.Macro):
            bound.add(node.name)
        elif isinstance(node, nodes.Import):
            bound.add(node.target)
        elif isinstance(node, nodes.FromImport):
            bound |= {n if isinstance(n, str) else n[-1] for n in node.names}
        elif isinstance(node, nodes.Filter):
            if node.name not in env.filters:
                unknown.append(Reference(FILTER, node.name, None, node.lineno))
        elif isinstance(node, nodes.Test) and node.name not in env.tests:
            unknown.append(Reference(TEST, node.name, None, node.lineno))
    free = {
        (name, lineno)
        for name, lineno in loaded
        if name not in ROOTS
        and name not in bound
        and name not in _GLOBALS
        and not (shape and SHAPE_NAME.fullmatch(name))
    }
    found += [
        Reference(name, None, None, lineno)
        for name, lineno in sorted(free, key=lambda f: (f[1], f[0]))
    ]
    return found + unknown


_GLOBALS = {"range", "dict", "lipsum", "cycler", "joiner", "namespace", "loop", "self", "caller",
            "varargs", "kwargs"}  # fmt: skip


def _walk(node: nodes.Node, found: list[Reference], locals_: set[str], shape: bool) -> None:
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
        chain, base = _flatten(node, shape)
        if isinstance(base, nodes.Name) and base.name in ROOTS and base.name not in locals_:
            found.append(_reference(base, chain))
            for key, link in chain:
                if key is None and isinstance(link, nodes.Getitem):  # a computed key
                    _walk(link.arg, found, locals_, shape)
            return
    if isinstance(node, nodes.Name) and node.ctx == "load":
        if node.name in ROOTS and node.name not in locals_:
            found.append(Reference(node.name, None, None, node.lineno))
        return
    if isinstance(node, (nodes.For, nodes.Macro)):
        # names bound by a loop or macro shadow context roots inside it
        if isinstance(node, nodes.For):
            _walk(node.iter, found, locals_, shape)
        bound = {n.name for n in node.find_all(nodes.Name) if n.ctx in ("store", "param")}
        inner = locals_ | bound
        for child in node.iter_child_nodes(
            exclude=("iter",) if isinstance(node, nodes.For) else ()
        ):
            _walk(child, found, inner, shape)
        return
    for child in node.iter_child_nodes():
        _walk(child, found, locals_, shape)


def _flatten(
    node: nodes.Node, shape: bool
) -> tuple[list[tuple[str | None, nodes.Node]], nodes.Node]:
    """The links of an attribute and item chain (`steps.x['output']`), from its base; a key is
    None where it is computed. In a shape's source `__ga[root, __kN]` is `root.__kN__` and an
    item `[__kN]` is `['__kN__']` (the placeholders the skeleton's parse names them by)."""
    chain: list[tuple[str | None, nodes.Node]] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            chain.append((node.attr, node))
            node = node.node
            continue
        if shape:
            attribute = shape_attribute(node)
            if attribute is not None:
                chain.append((f"__k{attribute[1]}__", node))
                node = attribute[0]
                continue
            index = shape_key(node.arg)
            if index is not None:
                chain.append((f"__k{index}__", node))
                node = node.node
                continue
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, (str, int)):
            chain.append((str(node.arg.value), node))
        elif isinstance(node.arg, nodes.Const):
            chain.append((None, node.arg))  # a constant nothing names: nothing to walk either
        else:
            chain.append((None, node))
        node = node.node
    chain.reverse()
    return chain, node


def _reference(base: nodes.Name, chain: list[tuple[str | None, nodes.Node]]) -> Reference:
    key = chain[0][0] if chain else None
    attr = chain[1][0] if len(chain) > 1 else None
    return Reference(base.name, key, attr, base.lineno)
