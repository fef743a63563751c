"""How each supported Jinja node becomes a Python closure (see template_interpreter).

Each closure mirrors what compiled Jinja does for its node: the same sandboxed environment calls
(`environment.getattr`, `getitem`, `call_filter`, `call_test`), so sandboxing and strict undefined
behave the same; the only shortcuts are for plain dicts, lists and strings, where the result is
provably the one those calls return.
"""

from __future__ import annotations

import operator
import re
import types
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jinja2 import nodes
from jinja2.runtime import LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

_MARK = re.compile("\x00([0-9]+)[^\x00]*\x00")
_PLACEHOLDER = re.compile("__k([0-9]+)__")
BINARY_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
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


class Vars(dict):
    """A context root (inputs, env, steps, ...) where names win over dict methods.

    Jinja looks attributes up before items, so `inputs.items` would be dict.items; here an
    input, variable or step called `items`, `keys`, `values` or `get` is what it names.
    No instance attributes (`__slots__`), so any other name can only be one of its items.
    """

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return super().__getattribute__(name)


class Render:
    """One render's state: the shape's texts and keys, and what filters may ask for."""

    __slots__ = ("_context", "_eval_ctx", "env", "keys", "root", "texts")

    def __init__(self, env: Any, texts: tuple, keys: tuple, root: dict[str, Any]) -> None:
        self.env, self.texts, self.keys, self.root = env, texts, keys, root
        self._context: Any = None
        self._eval_ctx: Any = None

    @property
    def context(self) -> Any:  # a jinja2 Context, made only for filters that take one
        if self._context is None:
            self._context = self.env.context_class(self.env, self.root, None, {})
        return self._context

    @property
    def eval_ctx(self) -> nodes.EvalContext:
        if self._eval_ctx is None:
            self._eval_ctx = nodes.EvalContext(self.env)
        return self._eval_ctx


Code = Callable[[dict[str, Any], Render], Any]  # an expression: (scope, render) -> value
Emit = Callable[[dict[str, Any], Render, list[str]], None]  # a statement: appends text


_DICT_ATTRS = frozenset(dir(dict))
_METHODS = (types.MethodType, types.BuiltinMethodType)
_ITEMS = frozenset({str, list, tuple, dict, Vars})


class Builder:
    """Turns nodes into closures. Each closure mirrors what compiled Jinja does for its node."""

    def __init__(self, env: ImmutableSandboxedEnvironment, shaped: bool) -> None:
        self.env = env
        self.shaped = shaped  # __kN__ in names and strings are placeholders for keys

    def _key_index(self, text: Any) -> int | None:
        if not self.shaped or not isinstance(text, str) or not text.startswith("__k"):
            return None
        match = _PLACEHOLDER.fullmatch(text)
        return int(match.group(1)) if match else None

    # -- statements -----------------------------------------------------------------------
    def block(self, body: list[nodes.Node]) -> Emit:
        emits = [self.statement(node) for node in body]
        if len(emits) == 1:
            return emits[0]

        def block(scope: dict, r: Render, out: list[str]) -> None:
            for emit in emits:
                emit(scope, r, out)

        return block

    def statement(self, node: nodes.Node) -> Emit:
        if isinstance(node, nodes.Output):
            parts = [self.output_part(child) for child in node.nodes]

            def output(scope: dict, r: Render, out: list[str]) -> None:
                out.extend([part(scope, r) for part in parts])

            return output
        if isinstance(node, nodes.If):
            return self.if_(node)
        if isinstance(node, nodes.For):
            return self.for_(node)
        if isinstance(node, nodes.Assign):
            assign, value = self.target(node.target), self.expr(node.node)
            return lambda scope, r, out: assign(scope, value(scope, r))
        raise TypeError(f"cannot interpret {type(node).__name__}")  # supported() admits no other

    def output_part(self, node: nodes.Node) -> Code:
        if isinstance(node, nodes.TemplateData):
            data = node.data
            if not self.shaped or "\x00" not in data:
                return lambda scope, r: data
            match = _MARK.fullmatch(data)
            if match:
                i = int(match.group(1))
                return lambda scope, r: r.texts[i]
            return lambda scope, r: _MARK.sub(lambda m: r.texts[int(m.group(1))], data)
        code = self.expr(node)
        return lambda scope, r: str(code(scope, r))

    def if_(self, node: nodes.If) -> Emit:
        branches = [(self.expr(node.test), self.block(node.body))]
        branches += [(self.expr(b.test), self.block(b.body)) for b in node.elif_]
        otherwise = self.block(node.else_) if node.else_ else None

        def if_(scope: dict, r: Render, out: list[str]) -> None:
            for test, body in branches:
                if test(scope, r):
                    body(scope, r, out)
                    return
            if otherwise is not None:
                otherwise(scope, r, out)

        return if_

    def for_(self, node: nodes.For) -> Emit:
        iterable, assign = self.expr(node.iter), self.target(node.target)
        body = self.block(node.body)
        otherwise = self.block(node.else_) if node.else_ else None
        undefined = self.env.undefined

        def for_(scope: dict, r: Render, out: list[str]) -> None:
            loop = LoopContext(iterable(scope, r), undefined)
            ran = False
            for item, _ in loop:  # a LoopContext yields (item, loop)
                ran = True
                inner = dict(scope)  # names set in the body stay in the body, as in Jinja
                inner["loop"] = loop
                assign(inner, item)
                body(inner, r, out)
            if not ran and otherwise is not None:
                otherwise(scope, r, out)

        return for_

    def target(self, target: nodes.Node) -> Callable[[dict, Any], None]:
        if isinstance(target, nodes.Name):
            name = target.name

            def assign(scope: dict, value: Any) -> None:
                scope[name] = value

            return assign
        if isinstance(target, nodes.Tuple):
            subs, unpack_values = (
                [self.target(item) for item in target.items],
                _unpacker(len(target.items)),
            )

            def unpack(scope: dict, value: Any) -> None:
                for sub, item in zip(subs, unpack_values(value), strict=True):
                    sub(scope, item)

            return unpack
        raise TypeError(f"cannot assign to {type(target).__name__}")  # the parser makes no other

    # -- expressions ----------------------------------------------------------------------
    def expr(self, node: nodes.Node) -> Code:
        build = _BUILDERS.get(type(node))
        if build is not None:
            return build(self, node)
        if type(node) in BINARY_OPERATORS:
            op, left, right = (
                BINARY_OPERATORS[type(node)],
                self.expr(node.left),
                self.expr(node.right),
            )
            return lambda scope, r: op(left(scope, r), right(scope, r))
        raise TypeError(f"cannot interpret {type(node).__name__}")  # supported() admits no other

    def const(self, node: nodes.Const) -> Code:
        value, index = node.value, self._key_index(node.value)
        if index is not None:
            return lambda scope, r: r.keys[index]
        return lambda scope, r: value

    def name(self, node: nodes.Name) -> Code:
        name, env = node.name, self.env

        def lookup(scope: dict, r: Render) -> Any:
            if name in scope:
                return scope[name]
            if name in env.globals:
                return env.globals[name]
            return env.undefined(name=name)

        return lookup

    def path(self, node: nodes.Getattr | nodes.Getitem) -> Code:
        """A name followed by literal attributes and items (steps.x.output, item['k'][0])."""
        top, links = node, []
        while isinstance(node, nodes.Getattr | nodes.Getitem):
            if isinstance(node, nodes.Getattr):
                index = self._key_index(node.attr)
                key: Any = node.attr
                links.append((True, key, -1 if index is None else index, _plain_attr(key)))
            elif isinstance(node.arg, nodes.Const):
                index = self._key_index(node.arg.value)
                links.append((False, node.arg.value, -1 if index is None else index, None))
            else:
                break  # a computed item: the links are built one by one
            node = node.node
        if not isinstance(node, nodes.Name) or len(links) < 2:
            return self.getattr(top) if isinstance(top, nodes.Getattr) else self.getitem(top)
        links.reverse()
        base, env, undefined = self.name(node), self.env, self.env.undefined

        def path(scope: dict, r: Render) -> Any:
            obj = base(scope, r)
            for is_attr, key, index, plain in links:
                if index >= 0:
                    key = r.keys[index]
                    if is_attr:
                        plain = key[:1] != "_" and key not in _DICT_ATTRS  # _plain_attr(key)
                kind = type(obj)
                if is_attr:
                    if plain and (kind is dict or kind is Vars):
                        if key in obj:
                            value = obj[key]
                            if not isinstance(value, _METHODS):  # a str.format gets wrapped
                                obj = value
                                continue
                        else:
                            obj = undefined(obj=obj, name=key)
                            continue
                    obj = env.getattr(obj, key)
                else:
                    if kind in _ITEMS:
                        try:
                            obj = obj[key]
                            continue
                        except (TypeError, LookupError):
                            pass  # the sandbox then tries an attribute, or says undefined
                    obj = env.getitem(obj, key)
            return obj

        return path

    def getattr(self, node: nodes.Getattr) -> Code:
        obj, env, index = self.expr(node.node), self.env, self._key_index(node.attr)
        if index is None:
            attr = node.attr
            plain = _plain_attr(attr)
            return lambda scope, r: _getattr(env, obj(scope, r), attr, plain)
        return lambda scope, r: _getattr(env, obj(scope, r), r.keys[index], None)

    def getitem(self, node: nodes.Getitem) -> Code:
        obj, arg, env = self.expr(node.node), self.expr(node.arg), self.env
        fixed = self._fixed(node.arg)
        if isinstance(node.arg, nodes.Slice):  # compiled Jinja slices directly, not via getitem
            if fixed is not None:  # e.g. (x | string)[:16]: no call for the slice
                bounds = fixed[0]
                return lambda scope, r: obj(scope, r)[bounds]
            return lambda scope, r: obj(scope, r)[arg(scope, r)]
        if fixed is not None:  # e.g. x['name']: no call for the key
            key = fixed[0]
            return lambda scope, r: _item(env, obj(scope, r), key)
        return lambda scope, r: _item(env, obj(scope, r), arg(scope, r))

    def _fixed(self, node: nodes.Node) -> tuple[Any] | None:
        """(value,) for a constant (not a placeholder) or a slice of constants, else None."""
        if isinstance(node, nodes.Const):
            return None if self._key_index(node.value) is not None else (node.value,)
        if isinstance(node, nodes.Slice):
            bounds = [node.start, node.stop, node.step]
            parts = [(None,) if n is None else self._fixed(n) for n in bounds]
            if all(p is not None and not isinstance(p[0], slice) for p in parts):
                return (slice(*(p[0] for p in parts)),)
        return None

    def slice(self, node: nodes.Slice) -> Code:
        fixed = self._fixed(node)
        if fixed is not None:
            value = fixed[0]
            return lambda scope, r: value
        parts = [None if n is None else self.expr(n) for n in (node.start, node.stop, node.step)]
        return lambda scope, r: slice(*[None if p is None else p(scope, r) for p in parts])

    def filter(self, node: nodes.Filter) -> Code:
        value = self.expr(node.node) if node.node is not None else (lambda scope, r: None)
        return self._call(node, value, self.env.filters, self.env.call_filter)

    def test(self, node: nodes.Test) -> Code:
        return self._call(node, self.expr(node.node), self.env.tests, self.env.call_test)

    def _call(self, node: nodes.Filter | nodes.Test, value: Code, known: dict, slow: Any) -> Code:
        name, env = node.name, self.env
        args = [self.expr(a) for a in node.args]
        kwargs = [(k.key, self.expr(k.value)) for k in node.kwargs]
        func = known.get(name)
        pass_arg = _PassArg.from_obj(func) if func is not None else None
        if func is not None and pass_arg is None and not kwargs:
            if not args:
                return lambda scope, r: func(value(scope, r))
            return lambda scope, r: func(value(scope, r), *[a(scope, r) for a in args])
        if func is not None and pass_arg is _PassArg.environment and not kwargs:
            return lambda scope, r: func(env, value(scope, r), *[a(scope, r) for a in args])

        def call(scope: dict, r: Render) -> Any:
            return slow(
                name,
                value(scope, r),
                [a(scope, r) for a in args],
                {k: v(scope, r) for k, v in kwargs},
                context=r.context,
                eval_ctx=r.eval_ctx,
            )

        return call

    def compare(self, node: nodes.Compare) -> Code:
        first = self.expr(node.expr)
        ops = [(_COMPARE[op.op], self.expr(op.expr)) for op in node.ops]

        def compare(scope: dict, r: Render) -> Any:
            left = first(scope, r)
            for op, code in ops:
                right = code(scope, r)
                if not op(left, right):
                    return False
                left = right
            return True

        return compare

    def and_(self, node: nodes.And) -> Code:
        left, right = self.expr(node.left), self.expr(node.right)

        def and_(scope: dict, r: Render) -> Any:
            value = left(scope, r)
            return right(scope, r) if value else value

        return and_

    def or_(self, node: nodes.Or) -> Code:
        left, right = self.expr(node.left), self.expr(node.right)

        def or_(scope: dict, r: Render) -> Any:
            value = left(scope, r)
            return value if value else right(scope, r)

        return or_

    def unary(self, node: nodes.UnaryExpr) -> Code:
        op = {nodes.Not: operator.not_, nodes.Neg: operator.neg, nodes.Pos: operator.pos}
        func, operand = op[type(node)], self.expr(node.node)
        return lambda scope, r: func(operand(scope, r))

    def concat(self, node: nodes.Concat) -> Code:
        parts = [self.expr(n) for n in node.nodes]
        # all parts first, then their text: compiled Jinja builds a tuple, then str_join()s it
        return lambda scope, r: "".join([str(v) for v in [p(scope, r) for p in parts]])

    def cond(self, node: nodes.CondExpr) -> Code:
        test, yes = self.expr(node.test), self.expr(node.expr1)
        no = None if node.expr2 is None else self.expr(node.expr2)

        def cond(scope: dict, r: Render) -> Any:
            if test(scope, r):
                return yes(scope, r)
            if no is None:  # compiled Jinja uses the lenient Undefined here, not env's
                return Undefined(
                    "the inline if-expression evaluated to false and no else section was defined."
                )
            return no(scope, r)

        return cond

    def list_(self, node: nodes.List) -> Code:
        items = [self.expr(n) for n in node.items]
        return lambda scope, r: [i(scope, r) for i in items]

    def tuple_(self, node: nodes.Tuple) -> Code:
        items = [self.expr(n) for n in node.items]
        return lambda scope, r: tuple([i(scope, r) for i in items])

    def dict_(self, node: nodes.Dict) -> Code:
        pairs = [(self.expr(p.key), self.expr(p.value)) for p in node.items]
        return lambda scope, r: {k(scope, r): v(scope, r) for k, v in pairs}


def _item(env: Any, value: Any, key: Any) -> Any:
    """`value[key]` as the sandbox's `getitem` gives it, directly for plain containers."""
    if type(value) in _ITEMS:
        try:
            return value[key]
        except (TypeError, LookupError):
            pass  # the sandbox then tries an attribute, or says undefined
    return env.getitem(value, key)


@lru_cache(maxsize=64)
def _unpacker(count: int) -> Callable[[Any], tuple]:
    """`a, b = value` for `count` names, so a wrong count fails with Python's own message, as
    in compiled Jinja (`too many values to unpack (expected 2)`)."""
    names = ", ".join(f"v{i}" for i in range(count))
    namespace: dict[str, Any] = {}
    exec(f"def unpack(value):\n    {names}, = value\n    return {names},", namespace)
    return namespace["unpack"]


def _plain_attr(attr: str) -> bool:
    """An attribute name that a dict (or Vars) can only answer with one of its items."""
    return not attr.startswith("_") and attr not in _DICT_ATTRS


def _getattr(env: Any, obj: Any, attr: str, plain: bool | None) -> Any:
    """env.getattr(obj, attr), short-cut for dicts where it provably gives the same answer.

    A dict (or a Vars: no __dict__ either) has no attribute outside dir(dict), so the sandbox
    would answer with the item, or undefined; a Vars answers with the item first. Underscore
    names and method values go the long way.
    """
    kind = type(obj)
    if kind is dict or kind is Vars:
        if plain is None:
            plain = _plain_attr(attr)
        if plain:
            if dict.__contains__(obj, attr):
                value = dict.__getitem__(obj, attr)
                if not isinstance(value, _METHODS):  # a str.format method gets wrapped
                    return value
            else:
                return env.undefined(obj=obj, name=attr)
    return env.getattr(obj, attr)


_BUILDERS: dict[type, Callable[[Builder, Any], Code]] = {
    nodes.Const: Builder.const,
    nodes.Name: Builder.name,
    nodes.Getattr: Builder.path,
    nodes.Getitem: Builder.path,
    nodes.Slice: Builder.slice,
    nodes.Filter: Builder.filter,
    nodes.Test: Builder.test,
    nodes.Compare: Builder.compare,
    nodes.And: Builder.and_,
    nodes.Or: Builder.or_,
    nodes.Not: Builder.unary,
    nodes.Neg: Builder.unary,
    nodes.Pos: Builder.unary,
    nodes.Concat: Builder.concat,
    nodes.CondExpr: Builder.cond,
    nodes.List: Builder.list_,
    nodes.Tuple: Builder.tuple_,
    nodes.Dict: Builder.dict_,
}
