"""Templates compiled by Jinja, once: native values or text, each shape compiled once.

A string that is exactly one `{{ expr }}` renders to the expression's native value (a list stays
a list), compiled with `compile_expression`; anything else renders to text, compiled with
`from_string`. Every render is compiled Jinja code in the sandbox (environment.py).

Compiling costs about a millisecond, and a pipeline's templates mostly differ only in their text,
strings and the step and input names they mention. So a template with a shape (shapes.py) is
rendered by its shape's template, compiled once for all templates of that shape, which receives
the template's own texts and keys as variables: `__t[N]` for a text, `__k[N]` for a string, and
`__ga[root, __k[N]]` for `root.name`, where `__ga` answers with the sandbox's `getattr`, the very
call compiled Jinja makes for `root.name`. Templates with `__` in a tag get no shape, so these
names cannot be the user's. A shape's template is used only when its parse is made of exactly
what was put in (`_faithful`); otherwise, and on any error compiling it, the template is compiled
as written (which reports its errors as the user wrote them).
`tests/test_templates.py` checks on generated templates that both ways render the same, errors
included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateSyntaxError, Undefined, UndefinedError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from stepchain.templates.environment import environment, parse
from stepchain.templates.shapes import UNSHAPEABLE, Placed, placeholders, shape_of, shared_source

_SINGLE_EXPR = re.compile(r"^\s*\{\{-?(.*?)-?\}\}\s*$", re.DOTALL)
Expression = Callable[..., Any]  # what Environment.compile_expression returns


class Compiled:
    """A template prepared once; `render(context)` gives its text, or its native value."""

    __slots__ = ("expression", "extra", "source", "template")

    def __init__(
        self,
        source: str,
        *,
        template: Template | None = None,
        expression: Expression | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.template = template  # renders to text
        self.expression = expression  # evaluates to a native value
        self.extra = extra  # for a shape's template: this template's texts and keys

    @property
    def shared(self) -> bool:
        """Whether this is a shape's template, shared with the other templates of that shape."""
        return self.extra is not None

    def render(self, context: dict[str, Any]) -> Any:
        if self.extra is not None:
            context = {**context, **self.extra}
        if self.expression is not None:
            return defined(self.expression(context))
        if self.template is not None:
            return self.template.render(context)
        return self.source  # no template syntax at all


def defined(value: Any) -> Any:
    """A native value must not be Undefined: fail as rendering it would."""
    if isinstance(value, Undefined):
        str(value)  # a StrictUndefined raises its UndefinedError here
        raise UndefinedError(  # a lenient one: compiled Jinja's `x if false` without else
            "the expression has no value (an inline if-expression without an else section?)"
        )
    return value


@lru_cache(maxsize=65536)
def compile_template(source: str) -> Compiled:
    """Prepare a template string; raises jinja2.TemplateSyntaxError."""
    if "{{" not in source and "{%" not in source and "{#" not in source:
        return Compiled(source)
    shape = shape_of(source)
    if shape is not None:
        extra = {"__t": shape.texts, "__k": shape.keys, "__ga": GETATTR}
        if shape.expression is not None:
            expression = _shape_expression(shape.expression)
            if expression is not None:
                return Compiled(source, expression=expression, extra=extra)
        else:
            template = _shape_template(shape.text)
            if template is not None:
                return Compiled(source, template=template, extra=extra)
    env = environment()
    tree = parse(source)  # the tree validation parsed, when it did
    inner = single_expression(source, tree)
    if inner is not None:
        expression = env.compile_expression(inner, undefined_to_none=False)
        return Compiled(source, expression=expression)
    return Compiled(source, template=env.from_string(tree))


@lru_cache(maxsize=65536)
def compile_expression(expr: str) -> Compiled:
    """Prepare a `when`/`foreach` expression (no braces); raises jinja2.TemplateSyntaxError."""
    if not UNSHAPEABLE.search(expr):
        shaped, keys = placeholders(expr)
        expression = _shape_expression(shaped)
        if expression is not None:
            return Compiled(expr, expression=expression, extra={"__k": keys, "__ga": GETATTR})
    expression = environment().compile_expression(expr, undefined_to_none=False)
    return Compiled(expr, expression=expression)


class _Getattr:
    """`__ga[obj, name]` in a shape's template: `obj.name` exactly as compiled Jinja does it,
    `environment.getattr(obj, name)` (attribute first, then item; the sandbox's checks)."""

    __slots__ = ("env",)

    def __init__(self, env: ImmutableSandboxedEnvironment) -> None:
        self.env = env

    def __getitem__(self, key: tuple[Any, str]) -> Any:
        try:
            return self.env.getattr(*key)
        except (TypeError, LookupError) as exc:
            # the sandbox's getitem would take these for "no such item" and look elsewhere;
            # no value a template sees raises them on attribute access, but say what happened
            raise UndefinedError(f"{type(exc).__name__}: {exc}") from exc


GETATTR = _Getattr(environment())


@lru_cache(maxsize=4096)
def _shape_template(shaped: str) -> Template | None:
    """The template shared by every template of a shape; None when the shape's Jinja source
    does not say exactly what the shape says, or does not compile."""
    source, placed = shared_source(shaped)
    env = environment()
    try:
        tree = env.parse(source)
        return env.from_string(tree) if _faithful(tree, placed, env) else None
    except TemplateSyntaxError:
        return None  # compiling the template as written reports the error the user made


@lru_cache(maxsize=4096)
def _shape_expression(shaped: str) -> Expression | None:
    """The expression shared by every expression (or single `{{ expr }}`) of a shape."""
    source, placed = shared_source(shaped)
    env = environment()
    try:
        if not _faithful(env.parse("{{ " + source + " }}"), placed, env):
            return None
        return env.compile_expression(source, undefined_to_none=False)
    except TemplateSyntaxError:
        return None


def _faithful(tree: nodes.Template, placed: Placed, env: ImmutableSandboxedEnvironment) -> bool:
    """Whether the parse of a shape's source holds each thing `shared_source` put in, as put in
    (`__t[N]` an output, `__ga[root, __k[N]]` an item of __ga, `__k[N]` an item of __k), and no
    filter or test that would fail (their names would be the shape's, not the template's)."""
    names = sum(1 for n in tree.find_all(nodes.Name) if n.name in ("__t", "__k", "__ga"))
    if names != placed.texts + placed.attributes + placed.keys:
        return False  # one name in each thing put in (an attribute holds two): none elsewhere
    texts = attributes = keys = 0
    for output in tree.find_all(nodes.Output):
        texts += sum(1 for child in output.nodes if _is_item(child, "__t"))
    for item in tree.find_all(nodes.Getitem):
        if _is_item(item, "__k"):
            keys += 1
        elif (
            isinstance(item.node, nodes.Name)
            and item.node.name == "__ga"
            and isinstance(item.arg, nodes.Tuple)
            and len(item.arg.items) == 2
            and isinstance(item.arg.items[0], nodes.Name)
            and _is_item(item.arg.items[1], "__k")
        ):
            attributes += 1
    if (texts, attributes, keys) != tuple(placed):
        return False
    return all(
        node.name in (env.filters if isinstance(node, nodes.Filter) else env.tests)
        for node in tree.find_all((nodes.Filter, nodes.Test))
    )


def _is_item(node: nodes.Node, name: str) -> bool:
    """Whether `node` is `name[N]` for a literal integer N."""
    return (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name == name
        and isinstance(node.arg, nodes.Const)
        and type(node.arg.value) is int
    )


def single_expression(source: str, tree: nodes.Template) -> str | None:
    """The expression of a template that is exactly one `{{ expr }}` (whitespace around it
    allowed), which renders to its native value; None for any other template."""
    match = _SINGLE_EXPR.match(source)
    return match.group(1) if match and _is_single_output(tree) else None


def _is_single_output(tree: nodes.Template) -> bool:
    body = [n for n in tree.body if not (isinstance(n, nodes.Output) and _is_blank(n))]
    return (
        len(body) == 1
        and isinstance(body[0], nodes.Output)
        and len([n for n in body[0].nodes if not _is_blank_data(n)]) == 1
    )


def _is_blank(node: nodes.Output) -> bool:
    return all(_is_blank_data(n) for n in node.nodes)


def _is_blank_data(node: nodes.Node) -> bool:
    return isinstance(node, nodes.TemplateData) and not node.data.strip()
