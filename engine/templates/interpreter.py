"""Rendering templates by turning Jinja's AST into Python closures instead of compiled code.

Compiling a Jinja template costs milliseconds (parse, code generation, `compile()`); a pipeline
renders thousands of distinct templates once each, so compilation, not rendering, would bound the
engine's throughput. Templates made only of the common nodes (output, names, attribute and item
access, slices, filters, tests, comparisons, arithmetic, `if`, `for`, `set`) are turned into a
tree of small closures once (per *shape*, see templates.py), and a render is a few closure calls.
They make the same sandboxed environment calls the compiled code would make (`environment.getattr`,
`getitem`, `call_filter`, `call_test`), so sandboxing and strict undefined behave the same; the
only shortcuts are for plain dicts, lists and strings, where the result is provably the one those
calls return. Anything else is left to Jinja (`supported()` says no).
`tests/test_template_interpreter.py` checks both paths agree.
"""

from __future__ import annotations

from typing import Any

from jinja2 import nodes
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from stepchain.templates.closures import BINARY_OPERATORS, Builder, Code, Emit, Render
from stepchain.templates.closures import Vars as Vars  # re-exported: the context roots

_SUPPORTED = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Const,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Slice,
    nodes.Filter,
    nodes.Test,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Neg,
    nodes.Pos,
    nodes.Concat,
    nodes.CondExpr,
    nodes.List,
    nodes.Tuple,
    nodes.Dict,
    nodes.Pair,
    nodes.Keyword,
    nodes.If,
    nodes.For,
    nodes.Assign,
    *BINARY_OPERATORS,
)


def supported(tree: nodes.Node, env: ImmutableSandboxedEnvironment) -> bool:
    """Whether every node of `tree` is one this interpreter evaluates."""
    for node in (tree, *tree.find_all(nodes.Node)):  # find_all leaves out the root itself
        if not isinstance(node, _SUPPORTED):
            return False
        if isinstance(node, nodes.For) and (node.recursive or node.test is not None):
            return False
        if isinstance(node, nodes.Filter | nodes.Test) and (node.dyn_args or node.dyn_kwargs):
            return False
        if isinstance(node, nodes.Filter) and node.name not in env.filters:
            return False  # compiling reports an unknown filter the way users know
        if isinstance(node, nodes.Test) and node.name not in env.tests:
            return False
    return True


class Program:
    """A parsed template (or expression) turned into closures; shared by every template of a
    shape, which passes its own texts (for the \\x00N\\x00 markers) and keys (for __kN__)."""

    def __init__(self, env: ImmutableSandboxedEnvironment, tree: nodes.Node, *, shaped: bool):
        self.env = env
        builder = Builder(env, shaped)
        if isinstance(tree, nodes.Template):
            self._emit: Emit | None = builder.block(tree.body)
            self._code: Code | None = None
        else:
            self._emit, self._code = None, builder.expr(tree)

    def render(self, context: dict[str, Any], texts: tuple = (), keys: tuple = ()) -> str:
        """Render a template to text."""
        out: list[str] = []
        self._emit(dict(context), Render(self.env, texts, keys, context), out)
        return "".join(out)

    def evaluate(self, context: dict[str, Any], keys: tuple = ()) -> Any:
        """Evaluate an expression to its native value; undefined is an error."""
        value = self._code(dict(context), Render(self.env, (), keys, context))
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
        return value


class Interpreter:
    """Renders one parsed tree (kept for callers that hold a tree, not a shape)."""

    def __init__(self, env: ImmutableSandboxedEnvironment, tree: nodes.Node) -> None:
        self.program = Program(env, tree, shaped=False)

    def render(self, context: dict[str, Any]) -> str:
        return self.program.render(context)

    def evaluate(self, context: dict[str, Any]) -> Any:
        return self.program.evaluate(context)
