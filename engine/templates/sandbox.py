"""The one Jinja environment every template goes through, and parsing with it.

An `ImmutableSandboxedEnvironment`: no access to private or internal attributes, no mutation of
lists, dicts or sets, strict undefined (a missing name or attribute is an error, not ""),
autoescape off (prompts are not HTML), the template's trailing newline kept. Two filters of ours:
`tojson` (plain JSON, not HTML-escaped) and `fromjson`.

Jinja's optimizer (constant folding while compiling) is off: it takes about two thirds of the time
to compile a template with nested arithmetic, and folding only moves work a render does anyway
from render time to compile time, where most templates here are rendered once.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import Environment, StrictUndefined, Undefined, nodes, pass_context
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer


def _tojson(value: Any, indent: int | None = None) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; prompts want the JSON a person would write.
    # A value that is not JSON (bytes, a function) is an error, never its repr.
    return json.dumps(value, ensure_ascii=False, indent=indent)


# -- limits ---------------------------------------------------------------------------------
# A render is bounded in time (its step's timeout, at most MAX_RENDER_SECONDS) and in size: no
# value it makes (text, list, mapping) and not all it prints together (captured `{% set %}`
# blocks and macro bodies included) may exceed the size limit. Jinja's sandbox gives the hooks:
# every call a template makes (`call`), arithmetic (`intercepted_binops`), every filter (wrapped
# below), every value printed (`finalize`); and the compiled tree (`compile`) gets a check on
# every loop pass, every `~` and every piece of text printed. A hook also ends the render when a
# signal stops the run (stop_renders).

MAX_RENDER_SECONDS = 60.0  # a step's templates render within its timeout, and never longer
SIZE_SETTING = "STEPCHAIN_MAX_RENDER_SIZE"
DEFAULT_MAX_SIZE = 10_000_000  # characters of text, items of a list or mapping
MAX_INT_BITS = 100_000  # ~30,000 digits; Python prints at most 4,300 anyway


class RenderTimeout(Exception):
    """A render went past its time budget (render_budget)."""


class RenderTooLarge(Exception):
    """A render made or printed more than the size limit."""


class RenderInterrupted(BaseException):
    """SIGINT/SIGTERM came during a render (stop_renders): the run is stopping.

    A BaseException, like KeyboardInterrupt: no `except Exception` turns it into a step's
    failure."""


class _Budget:
    __slots__ = ("deadline", "max_size", "printed", "seconds")

    def __init__(self, seconds: float, max_size: int) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.max_size = max_size
        self.printed = 0


_BUDGET: ContextVar[_Budget | None] = ContextVar("stepchain_render_budget", default=None)
_STOP = threading.Event()  # set by a signal handler: every render in progress ends


def max_render_size() -> int:
    """The size limit: $STEPCHAIN_MAX_RENDER_SIZE, else DEFAULT_MAX_SIZE."""
    raw = os.environ.get(SIZE_SETTING, "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_SIZE
    if not raw.isdigit() or int(raw) < 1:
        from stepchain.errors import UsageError

        raise UsageError(
            f"{SIZE_SETTING}={raw!r} is not a positive whole number",
            f"set {SIZE_SETTING} to the most characters a template may render, "
            f"e.g. {DEFAULT_MAX_SIZE}",
        )
    return int(raw)


@lru_cache(maxsize=1)
def _unbounded() -> _Budget:
    """The limits of Jinja's own constant folding, while compiling: size only, no deadline."""
    return _Budget(math.inf, max_render_size())


@contextmanager
def render_budget(seconds: float) -> Iterator[None]:
    """Renders inside take at most `seconds` (at most MAX_RENDER_SECONDS) and stay within the
    size limit."""
    token = _BUDGET.set(_Budget(min(seconds, MAX_RENDER_SECONDS), max_render_size()))
    try:
        yield
    finally:
        _BUDGET.reset(token)


@contextmanager
def bounded() -> Iterator[None]:
    """The budget in force, or a MAX_RENDER_SECONDS one for a render outside any (a pipeline's
    outputs, a `when` that `plan` decides early)."""
    if _BUDGET.get() is not None:
        yield
        return
    with render_budget(MAX_RENDER_SECONDS):
        yield


def stop_renders() -> None:
    """From a signal handler: every render in progress ends with RenderInterrupted."""
    _STOP.set()


def resume_renders() -> None:
    """Renders may run again (the interrupt was handled; e.g. a run's outputs render)."""
    _STOP.clear()


def check() -> _Budget:
    """The render's budget; raises if the render must end (a signal, or past its deadline)."""
    if _STOP.is_set():
        raise RenderInterrupted
    budget = _BUDGET.get()
    if budget is None:
        return _unbounded()
    if time.monotonic() > budget.deadline:
        raise RenderTimeout(
            f"rendering took longer than the step's timeout allows ({budget.seconds:g}s)"
        )
    return budget


def sized(value: Any) -> Any:
    """`value`, if within the size limit; else RenderTooLarge."""
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
        budget = _BUDGET.get() or _unbounded()
        if len(value) > budget.max_size:
            unit = "characters" if isinstance(value, (str, bytes)) else "items"
            raise _too_large(f"a value of {len(value):,} {unit}", budget)
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise RenderTooLarge(f"rendering made a number of more than {MAX_INT_BITS:,} bits")
    return value


def _too_large(what: str, budget: _Budget) -> RenderTooLarge:
    return RenderTooLarge(
        f"rendering made {what}, more than the size limit ({budget.max_size:,}; {SIZE_SETTING})"
    )


def _printed(value: Any) -> None:
    """Count what a render prints, wherever it goes (output, a `{% set %}` block, a macro)."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.printed += len(value) if isinstance(value, str) else len(str(value))
        if budget.printed > budget.max_size:
            raise _too_large(f"more than {budget.max_size:,} characters of text", budget)


@pass_context
def _loop_pass(context: Any, iterable: Any) -> Iterator[Any]:
    """A loop's items, each pass checking the clock and for a signal (pass_context: Jinja
    never runs it while compiling)."""
    for item in iterable:
        check()
        yield item


@pass_context
def _text(context: Any, value: Any) -> Any:
    """A piece of a template's own text, counted as printed when it is."""
    check()
    _printed(value)
    return value


@pass_context
def _concat(context: Any, value: Any) -> Any:
    check()
    return sized(value)


def _checked_ints(args: tuple, kwargs: dict[str, Any], budget: _Budget) -> None:
    """A width, count or padding past the size limit would allocate it before any check."""
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > budget.max_size:
            raise _too_large(f"a width or count of {arg:,}", budget)


def _estimate(name: str, text: Any, args: tuple, budget: _Budget) -> None:
    """Refuse before the fact what would build text past the limit from small parts."""
    if not isinstance(text, (str, bytes)):
        return
    size = 0
    if name == "replace" and len(args) >= 2 and isinstance(args[0], type(text)):
        old, new = args[0], args[1]
        count = text.count(old) if old else len(text) + 1
        size = len(text) + count * max(0, len(new) - len(old))
    elif name == "indent" and args and isinstance(args[0], str):
        size = len(text) + len(args[0]) * (text.count("\n") + 1)
    if size > budget.max_size:
        raise _too_large(f"text of about {size:,} characters", budget)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)  # keeps jinja_pass_arg (pass_environment, pass_eval_context)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = check()
        _checked_ints(args, kwargs, budget)
        values = [a for a in args if not isinstance(a, (Environment, EvalContext, Context))]
        if values:
            _estimate(name, values[0], tuple(values[1:]), budget)
            if name == "join" and len(values) > 1 and isinstance(values[1], str):
                items = list(values[0])  # a generator (map, select) is read once, here
                if len(values[1]) * len(items) > budget.max_size:
                    size = len(values[1]) * len(items)
                    raise _too_large(f"text of about {size:,} characters", budget)
                args = tuple(items if a is values[0] else a for a in args)
        return sized(func(*args, **kwargs))

    return guarded


class _Bounds(NodeTransformer):
    """Checks compiled into a template: every loop pass, every `~`, every text printed."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filter(node.iter, "_loop_pass")
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter(node, "_concat")

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            _filter(n, "_text") if isinstance(n, nodes.TemplateData) else n for n in node.nodes
        ]
        return node


def _filter(node: nodes.Expr, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, whose calls, operators and loops keep the render's limits."""

    intercepted_binops = frozenset({"+", "*", "**", "%", "//"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = check()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes)):  # 'x'.center(10**10), 'x'.replace(...)
            _checked_ints(args, kwargs, budget)
            _estimate(getattr(__obj, "__name__", ""), owner, args, budget)
        return sized(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = check()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, bytes, list, tuple))
                    and isinstance(times, int)
                    and len(seq) * times > budget.max_size
                ):
                    raise _too_large(f"a value of {len(seq) * times:,} items", budget)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and left not in (0, 1, -1) and math.log2(abs(left)) * right > MAX_INT_BITS:
                raise RenderTooLarge(f"rendering made a number of more than {MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, (str, bytes)):
            _checked_ints(right if isinstance(right, tuple) else (right,), {}, budget)
        return sized(super().call_binop(context, operator, left, right))

    def compile(  # type: ignore[override]
        self,
        source: str | nodes.Template,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> Any:
        """Every template (text, native or expression) is compiled with the checks above."""
        if isinstance(source, str):
            source = self.parse(source, name, filename)
        return super().compile(_Bounds().visit(source), name, filename, raw, defer_init)


def _finalize(value: Any) -> Any:
    """What `{{ … }}` prints in text: JSON values only (never a repr with a memory address),
    counted as printed."""
    not_json(value, raising=True)
    _printed(value)
    return value


def not_json(value: Any, *, raising: bool = False) -> str | None:
    """Where `value` holds something JSON cannot (bytes, a range, a function, NaN), what and
    where ("holds a range at [1]"); None when it is JSON. With `raising`, a TypeError saying so."""
    problem = _not_json(value, "")
    if problem is not None and raising:
        raise TypeError(f"the value {problem}, which is not JSON")
    return problem


def _not_json(value: Any, where: str) -> str | None:
    if isinstance(value, (str, bool, int, type(None), Undefined)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"holds {value!r}{' at ' + where if where else ''}"
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = _not_json(item, f"{where}[{index}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                return f"holds a {type(key).__name__} key{' at ' + where if where else ''}"
            problem = _not_json(item, f"{where}[{key!r}]")
            if problem is not None:
                return problem
        return None
    kind = type(value).__name__
    return f"holds a {kind} at {where}" if where else f"is a {kind}"


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The one Jinja environment: sandboxed, immutable, undefined names are errors, bounded."""
    env = _Sandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        optimized=False,
        finalize=_finalize,
    )
    env.filters["tojson"] = _tojson
    env.filters["fromjson"] = json.loads
    for name, func in list(env.filters.items()):
        env.filters[name] = _guard_filter(name, func)
    env.filters.update(_loop_pass=_loop_pass, _text=_text, _concat=_concat)
    return env


def _shell_word(value: Any) -> str:
    _finalize(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return shlex.quote(text)


@lru_cache(maxsize=1)
def shell_environment() -> ImmutableSandboxedEnvironment:
    """The sandbox for string-form `run:` commands: every `{{ value }}` becomes one shell word."""
    env = environment().overlay(finalize=_shell_word)
    assert isinstance(env, ImmutableSandboxedEnvironment)
    return env


# Trees parsed for references (validation), kept for the first compile of the same text, which
# takes them out: loading then running or planning parses each template once, not twice.
_SPARE_TREES: dict[str, nodes.Template] = {}
_MAX_SPARE = 20_000  # ~6 KiB each; the oldest goes first (a process that only validates)


def parse(text: str, *, spare: bool = False) -> nodes.Template:
    """`environment().parse(text)`, reusing (once) a tree kept by an earlier `spare=True`.

    Raises jinja2.TemplateSyntaxError. A tree kept is handed out once: to the compile of the
    same text, so that validating then running parses a template (or a shape) once.
    """
    tree = _SPARE_TREES.pop(text, None)
    if tree is None:
        tree = environment().parse(text)
        if spare:
            if len(_SPARE_TREES) >= _MAX_SPARE:
                del _SPARE_TREES[next(iter(_SPARE_TREES))]
            _SPARE_TREES[text] = tree
    return tree
