"""StepChain 0.3 tool lists as a version 1 `tools:` mapping, for `decompose(tools=...)`.

0.3 took a list: hosted tool names (`"web_search"`), MCP dicts named by `server_label`, and
function dicts with an `implementation` callable. Python callables are accepted too, in a list or
as the values of a mapping; each becomes `type: function` with `function: module:qualname`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from stepchain.errors import UsageError

HOSTED = ("web_search", "file_search", "code_interpreter")
_MCP_KEYS = ("command", "url", "server_url", "server_label", "env", "headers", "allowed_tools")


def tools_from_v03(tools: list[Any] | dict[str, Any], in_hand: bool = False) -> dict[str, Any]:
    """The `tools:` mapping for a 0.3 list (or a mapping whose values may be callables).

    `in_hand`: the callables are run as given (execute(..., tools=...)), so a top-level function
    of the running script (`__main__`) will do; otherwise (a file for later) it must be importable.

    Raises:
        UsageError: an entry of a kind 0.3 did not have, or a callable that cannot be named
            (a lambda, a function defined inside another function, or in __main__ unless in hand).
    """
    if isinstance(tools, dict):
        return {
            name: _entry(name, value, in_hand)[1] if _is_v03(value) else value
            for name, value in tools.items()
        }
    converted: dict[str, Any] = {}
    for index, entry in enumerate(tools):
        name, definition = _entry(index, entry, in_hand)
        converted[name] = definition
    return converted


def callables_of(tools: list[Any] | dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """The Python callables among the tools, by the name each tool gets."""
    items = tools.items() if isinstance(tools, dict) else ((None, e) for e in tools)
    found: dict[str, Callable[..., Any]] = {}
    for name, entry in items:
        func = entry.get("implementation") if isinstance(entry, dict) else entry
        if not callable(func):
            continue
        given = entry.get("function") if isinstance(entry, dict) else None
        named = given.get("name") if isinstance(given, dict) else None
        found[name or named or func.__name__] = func
    return found


def _is_v03(value: Any) -> bool:
    """A callable, or a 0.3 dict (an MCP tool named by server_label, a function with code)."""
    return callable(value) or (
        isinstance(value, dict)
        and ("implementation" in value or (value.get("type") == "mcp" and "cache_ttl" in value))
    )


def _entry(index: int | str, entry: Any, in_hand: bool) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str) and entry in HOSTED:
        return entry, {"type": entry}
    if callable(entry):
        name = index if isinstance(index, str) else entry.__name__
        return name, _function(entry, name, in_hand)
    if isinstance(entry, dict) and entry.get("type") == "mcp":
        name = index if isinstance(index, str) else entry.get("server_label")
        if not isinstance(name, str):
            raise UsageError(f"tools[{index!r}]: an MCP tool needs a server_label to name it")
        definition = {"type": "mcp", **{k: entry[k] for k in _MCP_KEYS if k in entry}}
        if entry.get("require_approval") in ("always", "never"):
            definition["require_approval"] = entry["require_approval"]
        if isinstance(entry.get("cache_ttl"), (int, float)):
            definition["cache"] = f"{entry['cache_ttl']:g}s"
        return name, definition
    if isinstance(entry, dict) and entry.get("type") == "function":
        given = entry.get("function")
        function: dict[str, Any] = given if isinstance(given, dict) else {}
        implementation = entry.get("implementation")
        name = (
            index
            if isinstance(index, str)
            else function.get("name") or getattr(implementation, "__name__", None)
        )
        if not callable(implementation) or not isinstance(name, str):
            raise UsageError(
                f"tools[{index!r}]: a function tool needs an `implementation` callable",
                "or declare it as {type: function, function: 'module:name'} under tools:",
            )
        definition = _function(implementation, name, in_hand)
        if function.get("description"):
            definition["description"] = function["description"]
        if isinstance(function.get("parameters"), dict):
            definition["parameters"] = function["parameters"]
        return name, definition
    raise UsageError(
        f"tools[{index!r}]: {entry!r} is not a tool StepChain knows",
        f"use one of {', '.join(HOSTED)}, an MCP or function tool dict, or a Python function",
    )


def _function(func: Callable[..., Any], name: str, in_hand: bool) -> dict[str, Any]:
    """`type: function` for a Python callable, by the import path a pipeline can name."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not module or (module == "__main__" and not in_hand) or "<" in qualname:
        raise UsageError(
            f"tool {name!r}: {qualname or func!r} cannot be imported by name "
            f"(module {module or 'unknown'})",
            "define it with def at the top level of a module"
            + ("" if in_hand else " next to the pipeline, not in __main__"),
        )
    definition: dict[str, Any] = {"type": "function", "function": f"{module}:{qualname}"}
    doc = inspect.getdoc(func)
    if doc:
        definition["description"] = doc.splitlines()[0]
    return definition
