"""Rendering templates by walking Jinja's AST instead of compiling them to Python.

Compiling a Jinja template costs milliseconds (parse, code generation, `compile()`); a pipeline
renders thousands of distinct templates once each, so compilation, not rendering, would bound the
engine's throughput. Templates made only of the common nodes (output, names, attribute and item
access, slices, filters, tests, comparisons, arithmetic, `if`, `for`, `set`) are evaluated here
directly, through the same sandboxed environment calls the compiled code would make
(`environment.getattr`, `getitem`, `call_filter`, `call_test`), so sandboxing and strict
undefined behave the same. Anything else returns None from `plan()` and is compiled as usual.
`tests/test_template_interpreter.py` checks both paths agree.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from jinja2 import nodes
from jinja2.runtime import LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

_MARK = re.compile("\x00([0-9]+)\x00")
_PLACEHOLDER = re.compile("__k([0-9]+)__")
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    nodes.Add: operator.add,
    nodes.Sub: operator.sub,
    nodes.Mul: operator.mul,
    nodes.Div: operator.truediv,
    nodes.FloorDiv: operator.floordiv,
    nodes.Mod: operator.mod,
    nodes.Pow: operator.pow,
}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gteq": operator.ge,
    "lt": operator.lt,
    "lteq": operator.le,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}
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
    *_BINARY,
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


class Interpreter:
    """Evaluates one parsed template (or expression) against a context."""

    def __init__(
        self,
        env: ImmutableSandboxedEnvironment,
        tree: nodes.Node,
        texts: tuple[str, ...] = (),
        keys: tuple[str, ...] = (),
    ) -> None:
        self.env = env
        self.tree = tree
        self.texts = texts  # a shared shape's text segments, for its \x00N\x00 markers
        self.keys = keys  # a shared shape's names, for its __kN__ placeholders
        self.eval_ctx = nodes.EvalContext(env)
        self.context: Any = None  # a jinja2 Context, for filters that take one (map, sum, ...)

    # -- entry points ---------------------------------------------------------------------
    def render(self, context: dict[str, Any]) -> str:
        """Render a parsed template to text."""
        out: list[str] = []
        self.context = self.env.context_class(self.env, context, None, {})
        self._block(self.tree.body, dict(context), out)
        return "".join(out)

    def evaluate(self, context: dict[str, Any]) -> Any:
        """Evaluate a parsed expression to its native value; undefined is an error."""
        self.context = self.env.context_class(self.env, context, None, {})
        value = self._expr(self.tree, dict(context))
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
        return value

    # -- statements -----------------------------------------------------------------------
    def _block(self, body: list[nodes.Node], scope: dict[str, Any], out: list[str]) -> None:
        for node in body:
            if isinstance(node, nodes.Output):
                for child in node.nodes:
                    if isinstance(child, nodes.TemplateData):
                        data = child.data
                        if self.texts and "\x00" in data:
                            data = _MARK.sub(lambda m: self.texts[int(m.group(1))], data)
                        out.append(data)
                    else:
                        out.append(str(self._expr(child, scope)))
            elif isinstance(node, nodes.If):
                self._if(node, scope, out)
            elif isinstance(node, nodes.For):
                self._for(node, scope, out)
            elif isinstance(node, nodes.Assign):
                self._assign(node.target, self._expr(node.node, scope), scope)
            else:  # pragma: no cover - supported() admits nothing else
                raise TypeError(f"cannot interpret {type(node).__name__}")

    def _if(self, node: nodes.If, scope: dict[str, Any], out: list[str]) -> None:
        if self._expr(node.test, scope):
            self._block(node.body, scope, out)
            return
        for branch in node.elif_:
            if self._expr(branch.test, scope):
                self._block(branch.body, scope, out)
                return
        self._block(node.else_, scope, out)

    def _for(self, node: nodes.For, scope: dict[str, Any], out: list[str]) -> None:
        iterable = self._expr(node.iter, scope)
        loop = LoopContext(iterable, self.env.undefined)
        ran = False
        for item, _ in loop:  # a LoopContext yields (item, loop)
            ran = True
            inner = dict(scope)  # names set in the body stay in the body, as in Jinja
            inner["loop"] = loop
            self._assign(node.target, item, inner)
            self._block(node.body, inner, out)
        if not ran:
            self._block(node.else_, scope, out)

    def _assign(self, target: nodes.Node, value: Any, scope: dict[str, Any]) -> None:
        if isinstance(target, nodes.Name):
            scope[target.name] = value
        elif isinstance(target, nodes.Tuple):
            values = list(value)
            if len(values) != len(target.items):
                raise ValueError(f"cannot unpack {len(values)} values into {len(target.items)}")
            for sub, item in zip(target.items, values, strict=True):
                self._assign(sub, item, scope)
        else:  # pragma: no cover - the parser only makes names and tuples as targets
            raise TypeError(f"cannot assign to {type(target).__name__}")

    # -- expressions ----------------------------------------------------------------------
    def _expr(self, node: nodes.Node, scope: dict[str, Any]) -> Any:
        return _EVALUATORS[type(node)](self, node, scope)

    def _const(self, node: nodes.Const, scope: dict[str, Any]) -> Any:
        value = node.value
        if self.keys and isinstance(value, str) and value.startswith("__k"):
            return self._key(value)
        return value

    def _name(self, node: nodes.Name, scope: dict[str, Any]) -> Any:
        if node.name in scope:
            return scope[node.name]
        if node.name in self.env.globals:
            return self.env.globals[node.name]
        return self.env.undefined(name=node.name)

    def _getattr(self, node: nodes.Getattr, scope: dict[str, Any]) -> Any:
        attr = node.attr
        if self.keys and attr.startswith("__k"):
            attr = self._key(attr)
        return self.env.getattr(self._expr(node.node, scope), attr)

    def _getitem(self, node: nodes.Getitem, scope: dict[str, Any]) -> Any:
        return self.env.getitem(self._expr(node.node, scope), self._expr(node.arg, scope))

    def _slice(self, node: nodes.Slice, scope: dict[str, Any]) -> Any:
        parts = (node.start, node.stop, node.step)
        return slice(*(None if n is None else self._expr(n, scope) for n in parts))

    def _filter(self, node: nodes.Filter, scope: dict[str, Any]) -> Any:
        value = self._expr(node.node, scope) if node.node is not None else None
        args, kwargs = self._args(node, scope)
        return self.env.call_filter(
            node.name, value, args, kwargs, context=self.context, eval_ctx=self.eval_ctx
        )

    def _test(self, node: nodes.Test, scope: dict[str, Any]) -> Any:
        value = self._expr(node.node, scope)
        args, kwargs = self._args(node, scope)
        return self.env.call_test(
            node.name, value, args, kwargs, context=self.context, eval_ctx=self.eval_ctx
        )

    def _compare(self, node: nodes.Compare, scope: dict[str, Any]) -> Any:
        left = self._expr(node.expr, scope)
        for op in node.ops:
            right = self._expr(op.expr, scope)
            if not _COMPARE[op.op](left, right):
                return False
            left = right
        return True

    def _and(self, node: nodes.And, scope: dict[str, Any]) -> Any:
        left = self._expr(node.left, scope)
        return self._expr(node.right, scope) if left else left

    def _or(self, node: nodes.Or, scope: dict[str, Any]) -> Any:
        left = self._expr(node.left, scope)
        return left if left else self._expr(node.right, scope)

    def _binary(self, node: nodes.BinExpr, scope: dict[str, Any]) -> Any:
        return _BINARY[type(node)](self._expr(node.left, scope), self._expr(node.right, scope))

    def _concat(self, node: nodes.Concat, scope: dict[str, Any]) -> Any:
        return "".join(str(self._expr(n, scope)) for n in node.nodes)

    def _cond(self, node: nodes.CondExpr, scope: dict[str, Any]) -> Any:
        if self._expr(node.test, scope):
            return self._expr(node.expr1, scope)
        if node.expr2 is None:  # compiled Jinja uses the lenient Undefined here, not env's
            return Undefined(
                "the inline if-expression evaluated to false and no else section was defined."
            )
        return self._expr(node.expr2, scope)

    def _key(self, placeholder: str) -> str:
        match = _PLACEHOLDER.fullmatch(placeholder)
        return self.keys[int(match.group(1))] if match else placeholder

    def _args(self, node: nodes.Filter | nodes.Test, scope: dict[str, Any]) -> tuple[list, dict]:
        args = [self._expr(a, scope) for a in node.args]
        kwargs = {k.key: self._expr(k.value, scope) for k in node.kwargs}
        return args, kwargs


_EVALUATORS: dict[type, Callable[[Interpreter, Any, dict[str, Any]], Any]] = {
    nodes.Const: Interpreter._const,
    nodes.Name: Interpreter._name,
    nodes.Getattr: Interpreter._getattr,
    nodes.Getitem: Interpreter._getitem,
    nodes.Slice: Interpreter._slice,
    nodes.Filter: Interpreter._filter,
    nodes.Test: Interpreter._test,
    nodes.Compare: Interpreter._compare,
    nodes.And: Interpreter._and,
    nodes.Or: Interpreter._or,
    nodes.Not: lambda self, node, scope: not self._expr(node.node, scope),
    nodes.Neg: lambda self, node, scope: -self._expr(node.node, scope),
    nodes.Pos: lambda self, node, scope: +self._expr(node.node, scope),
    nodes.Concat: Interpreter._concat,
    nodes.CondExpr: Interpreter._cond,
    nodes.List: lambda self, node, scope: [self._expr(n, scope) for n in node.items],
    nodes.Tuple: lambda self, node, scope: tuple(self._expr(n, scope) for n in node.items),
    nodes.Dict: lambda self, node, scope: {
        self._expr(p.key, scope): self._expr(p.value, scope) for p in node.items
    },
    **dict.fromkeys(_BINARY, Interpreter._binary),
}
