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
        env = self.env
        if isinstance(node, nodes.Const):
            value = node.value
            if self.keys and isinstance(value, str) and value.startswith("__k"):
                return self._key(value)
            return value
        if isinstance(node, nodes.Name):
            if node.name in scope:
                return scope[node.name]
            if node.name in env.globals:
                return env.globals[node.name]
            return env.undefined(name=node.name)
        if isinstance(node, nodes.Getattr):
            attr = node.attr
            if self.keys and attr.startswith("__k"):
                attr = self._key(attr)
            return env.getattr(self._expr(node.node, scope), attr)
        if isinstance(node, nodes.Getitem):
            obj = self._expr(node.node, scope)
            return env.getitem(obj, self._expr(node.arg, scope))
        if isinstance(node, nodes.Slice):
            return slice(
                *(
                    None if n is None else self._expr(n, scope)
                    for n in (node.start, node.stop, node.step)
                )
            )
        if isinstance(node, nodes.Filter):
            value = self._expr(node.node, scope) if node.node is not None else None
            args, kwargs = self._args(node, scope)
            return env.call_filter(
                node.name, value, args, kwargs, context=self.context, eval_ctx=self.eval_ctx
            )
        if isinstance(node, nodes.Test):
            value = self._expr(node.node, scope)
            args, kwargs = self._args(node, scope)
            return env.call_test(
                node.name, value, args, kwargs, context=self.context, eval_ctx=self.eval_ctx
            )
        if isinstance(node, nodes.Compare):
            left = self._expr(node.expr, scope)
            for op in node.ops:
                right = self._expr(op.expr, scope)
                if not _COMPARE[op.op](left, right):
                    return False
                left = right
            return True
        if isinstance(node, nodes.And):
            left = self._expr(node.left, scope)
            return self._expr(node.right, scope) if left else left
        if isinstance(node, nodes.Or):
            left = self._expr(node.left, scope)
            return left if left else self._expr(node.right, scope)
        if isinstance(node, nodes.Not):
            return not self._expr(node.node, scope)
        if isinstance(node, nodes.Neg):
            return -self._expr(node.node, scope)
        if isinstance(node, nodes.Pos):
            return +self._expr(node.node, scope)
        if type(node) in _BINARY:
            return _BINARY[type(node)](self._expr(node.left, scope), self._expr(node.right, scope))
        if isinstance(node, nodes.Concat):
            return "".join(str(self._expr(n, scope)) for n in node.nodes)
        if isinstance(node, nodes.CondExpr):
            if self._expr(node.test, scope):
                return self._expr(node.expr1, scope)
            if node.expr2 is None:  # compiled Jinja uses the lenient Undefined here, not env's
                return Undefined(
                    "the inline if-expression evaluated to false and no else section was defined."
                )
            return self._expr(node.expr2, scope)
        if isinstance(node, nodes.List):
            return [self._expr(n, scope) for n in node.items]
        if isinstance(node, nodes.Tuple):
            return tuple(self._expr(n, scope) for n in node.items)
        if isinstance(node, nodes.Dict):
            return {self._expr(p.key, scope): self._expr(p.value, scope) for p in node.items}
        raise TypeError(f"cannot interpret {type(node).__name__}")  # pragma: no cover

    def _key(self, placeholder: str) -> str:
        match = _PLACEHOLDER.fullmatch(placeholder)
        return self.keys[int(match.group(1))] if match else placeholder

    def _args(self, node: nodes.Filter | nodes.Test, scope: dict[str, Any]) -> tuple[list, dict]:
        args = [self._expr(a, scope) for a in node.args]
        kwargs = {k.key: self._expr(k.value, scope) for k in node.kwargs}
        return args, kwargs
