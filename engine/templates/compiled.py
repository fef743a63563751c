"""Templates compiled by Jinja, once: native values or text, each shape compiled once.

A string that is exactly one `{{ expr }}` renders to the expression's native value (a list stays
a list); anything else renders to text. Every render runs Jinja-compiled code in the sandbox
(sandbox.py): a text template is `from_string`; a native one is the template
`{% set result = expr %}` (as `compile_expression` builds it) whose module's `result` is the value.
Both are rendered with `make_module`: its `str` is the template's output, as `render` gives it.

Compiling costs about a millisecond, and a pipeline's templates mostly differ only in their text,
strings and the step and input names they mention. So a template with a shape (shapes.py) is
rendered by its shape's template, compiled once for all templates of that shape, which receives
the template's own texts and keys as variables: `__tN` for a text, `__kN` for a string, and
`__ga[root, __kN]` for `root.name`, where `__ga` answers with the sandbox's `getattr`, the very
call compiled Jinja makes for `root.name`. A shape's template is used only when its parse is made
of exactly what was put in (shapes.faithful) and every filter and test it names exists;
otherwise, and on any error compiling it, the template is compiled as written (which reports its
errors as the user wrote them). `tests/test_templates.py` checks on generated templates that
both ways render the same, errors included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateSyntaxError, Undefined, UndefinedError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from stepchain.templates.sandbox import environment, parse
from stepchain.templates.shapes import Placed, Shape, faithful, shape_of, shape_text

_SINGLE_EXPR = re.compile(r"^\s*\{\{-?(.*?)-?\}\}\s*$", re.DOTALL)


class Compiled:
    """A template prepared once; `render(context)` gives its text, or its native value."""

    __slots__ = ("expression", "extra", "native", "source", "template")

    def __init__(
        self,
        source: str,
        *,
        template: Template | None = None,
        native: bool = False,
        expression: Callable[..., Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.template = template  # text; or when native, `{% set result = expr %}`
        self.native = native
        self.expression = expression  # compile_expression's, where there is no such template
        self.extra = extra  # for a shape's template: this template's texts and keys

    @property
    def shared(self) -> bool:
        """Whether this is a shape's template, shared with the other templates of that shape."""
        return self.extra is not None

    def render(self, context: dict[str, Any]) -> Any:
        template = self.template
        if template is None:
            if self.expression is not None:
                return defined(self.expression(context))
            return self.source  # no template syntax at all
        # The context as Template.render makes it (the environment's globals under the
        # values), in one copy: a template's own globals are a ChainMap, slow to copy.
        variables = {**environment().globals, **context}
        if self.extra is not None:
            variables.update(self.extra)
        module = template.make_module(variables, shared=True)
        if self.native:
            return defined(getattr(module, "result"))  # noqa: B009
        return str(module)  # its output, as Template.render gives it


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
        extra = _variables(shape)
        if shape.native:
            native = _shape_native(shape.text, shape.placed)
            if native is not None:
                return Compiled(source, template=native, native=True, extra=extra)
        else:
            template = _shape_template(shape.text, shape.placed)
            if template is not None:
                return Compiled(source, template=template, extra=extra)
    tree = parse(source)  # the tree validation parsed, when it did
    match = _SINGLE_EXPR.match(source)
    if match and _is_single_output(tree):
        native = _native(tree)
        if native is None:
            return Compiled(source, expression=_expression(match.group(1)))
        return Compiled(source, template=native, native=True)
    return Compiled(source, template=environment().from_string(tree))


@lru_cache(maxsize=65536)
def compile_expression(expr: str) -> Compiled:
    """Prepare a `when`/`foreach` expression (no braces); raises jinja2.TemplateSyntaxError."""
    shape = shape_of("{{ " + expr + " }}")  # as references() shapes it: one parse for both
    if shape is not None and shape.native:
        native = _shape_native(shape.text, shape.placed)
        if native is not None:
            return Compiled(expr, template=native, native=True, extra=_variables(shape))
    return Compiled(expr, expression=_expression(expr))


def _variables(shape: Shape) -> dict[str, Any]:
    """What a template gives its shape's template: its texts, its keys, and `__ga`."""
    variables: dict[str, Any] = {"__ga": GETATTR}
    variables.update((f"__t{i}", text) for i, text in enumerate(shape.texts) if text)
    variables.update((f"__k{i}", key) for i, key in enumerate(shape.keys))
    return variables


def _expression(expr: str) -> Callable[..., Any]:
    return environment().compile_expression(expr, undefined_to_none=False)


def _native(tree: nodes.Template, *, shape: bool = False) -> Template | None:
    """A template that is one `{{ expr }}` as `{% set result = expr %}`, compiled; None when the
    expression is a tuple (`{{ a, b }}`), which an expression without braces cannot be. In a
    shape's tree the blank text around it is `{{ __tN }}`."""
    (output,) = [n for n in tree.body if isinstance(n, nodes.Output) and not _is_blank(n)]
    (expr,) = [
        n
        for n in output.nodes
        if not _is_blank_data(n) and not (shape and shape_text(n) is not None)
    ]
    if isinstance(expr, nodes.Tuple):
        return None  # compile_expression says what it thinks of it
    assign = nodes.Assign(nodes.Name("result", "store", lineno=1), expr, lineno=1)
    return environment().from_string(nodes.Template([assign], lineno=1))


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
def _shape_template(text: str, placed: Placed) -> Template | None:
    """The template shared by every template of a shape; None when it is not to be trusted."""
    try:
        tree = parse(text)  # the tree parsed for references, when it was
        return environment().from_string(tree) if _usable(tree, placed) else None
    except TemplateSyntaxError:
        return None  # compiling the template as written reports the error the user made


@lru_cache(maxsize=4096)
def _shape_native(text: str, placed: Placed) -> Template | None:
    """The expression shared by every single `{{ expr }}` (and `when`) of a shape."""
    try:
        tree = parse(text)
        return _native(tree, shape=True) if _usable(tree, placed) else None
    except TemplateSyntaxError:
        return None


def _usable(tree: nodes.Template, placed: Placed) -> bool:
    """A shape's parse holds what was put in, and every filter and test it names exists (the
    error for one that does not would name the shape's, not what the user wrote)."""
    if not faithful(tree, placed):
        return False
    env = environment()
    return all(
        node.name in (env.filters if isinstance(node, nodes.Filter) else env.tests)
        for node in tree.find_all((nodes.Filter, nodes.Test))
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
