"""Rendering a step's templates against the run context, with errors that point into the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from stepchain.errors import StepError
from stepchain.templates.compiled import compile_expression, compile_template
from stepchain.templates.sandbox import (
    SIZE_SETTING,
    RenderTimeout,
    RenderTooLarge,
    bounded,
    not_json,
    sized,
)

Locate = Callable[[tuple], str]


class TemplateFailure(StepError):
    """A template that failed at render time; never retried (it would fail the same way)."""

    kind = "template"


def render_value(value: Any, context: dict[str, Any], path: tuple, locate: Locate) -> Any:
    """Render every string in `value` (recursively through lists and mappings)."""
    if isinstance(value, str):
        try:
            with bounded():
                rendered = sized(compile_template(value).render(context))
        except Exception as exc:  # any error inside a user's template is the user's to fix
            raise _failure(exc, path, locate) from None
        problem = not_json(rendered)  # a range, bytes, a function, NaN, also inside a list
        if problem is not None:
            raise TemplateFailure(
                f"{locate(path)}: template error: the value {problem}, which is not JSON",
                "give text, a number, a boolean, a list or a mapping (e.g. `| list`, `| string`)",
            )
        return rendered
    if isinstance(value, list):
        return [render_value(v, context, (*path, i), locate) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: render_value(v, context, (*path, k), locate) for k, v in value.items()}
    return value


def render_text(value: str, context: dict[str, Any], path: tuple, locate: Locate) -> str:
    """Render a template that must produce text (prompts, shell commands)."""
    rendered = render_value(value, context, path, locate)
    return rendered if isinstance(rendered, str) else _to_text(rendered)


def render_shell(value: str, context: dict[str, Any], path: tuple, locate: Locate) -> str:
    """Render a command line for the shell: each template value is quoted as one word."""
    from stepchain.templates.sandbox import shell_environment

    try:
        with bounded():
            return shell_environment().from_string(value).render(context)
    except Exception as exc:
        raise _failure(exc, path, locate) from None


def evaluate(expr: str, context: dict[str, Any], path: tuple, locate: Locate) -> Any:
    """Evaluate a `when` or `foreach` expression."""
    try:
        with bounded():
            return compile_expression(expr).render(context)
    except Exception as exc:
        raise _failure(exc, path, locate) from None


def _to_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _failure(exc: Exception, path: tuple, locate: Locate) -> TemplateFailure:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, RenderTimeout):
        hint = "make the template do less (a loop too many?), or raise the step's timeout:"
    elif isinstance(exc, RenderTooLarge):
        hint = f"make the template make less, or raise {SIZE_SETTING} if that much is meant"
    else:
        hint = "fix the template; `stepchain validate` checks names and syntax before a run"
    return TemplateFailure(f"{locate(path)}: template error: {message}", hint)
