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

import json
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _tojson(value: Any, indent: int | None = None) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; prompts want the JSON a person would write.
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


class RenderTimeout(Exception):
    """A render went past its time budget (render_budget)."""


# When the render in progress must end (time.monotonic()), set by render_budget for one step.
_DEADLINE: ContextVar[float | None] = ContextVar("stepchain_render_deadline", default=None)


@contextmanager
def render_budget(seconds: float) -> Iterator[None]:
    """Renders inside take at most `seconds`: each call a template makes checks the clock
    (a loop runs `range()` or a method per pass, so a runaway nested loop stops in time)."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, whose calls also check the render's time budget."""

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = _DEADLINE.get()
        if deadline is not None and time.monotonic() > deadline:
            raise RenderTimeout("rendering took longer than the step's timeout allows")
        return super().call(__context, __obj, *args, **kwargs)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The one Jinja environment: sandboxed, immutable, undefined names are errors."""
    env = _Sandbox(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, optimized=False
    )
    env.filters["tojson"] = _tojson
    env.filters["fromjson"] = json.loads
    return env


def _shell_word(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
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
