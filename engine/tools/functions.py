"""Python function tools: `module:attribute`, imported from the pipeline's folder."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepchain.errors import RetryableStepError, StepChainError, StepError
from stepchain.pipeline.consent import local_module_file
from stepchain.pipeline.definition import ToolSpec
from stepchain.tools.source import source_fingerprint

Offload = Callable[..., Awaitable[Any]]
_SOURCE_MARK = "__stepchain_source__"  # set on a tool's module: the source it was imported from
_JSON_TYPES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


class NotImported(StepChainError):
    """A function tool that only an import could describe, where nothing may be imported."""


@dataclass(frozen=True)
class FunctionTool:
    """A loaded function tool: the callable, its JSON parameters schema and a code fingerprint."""

    name: str
    target: str
    func: Callable[..., Any]
    description: str
    parameters: dict[str, Any]
    fingerprint: str

    async def call(self, arguments: dict[str, Any], offload: Offload | None = None) -> Any:
        """Call the function; a sync one runs via `offload` (a thread, or a Dask worker)."""
        try:
            inspect.signature(self.func).bind(**arguments)
        except TypeError as exc:
            raise StepError(
                f"tool '{self.name}' called with wrong arguments: {exc}",
                f"its parameters are {json.dumps(self.parameters.get('properties', {}))}",
                kind="tool",
            ) from None
        try:
            if inspect.iscoroutinefunction(self.func):
                result = await self.func(**arguments)
            else:
                from stepchain.tools.blocking import run_in_thread

                result = await (offload or run_in_thread)(self.func, **arguments)
        except Exception as exc:
            raise _wrap(self.name, exc) from None
        try:
            json.dumps(result)
        except (TypeError, ValueError):
            raise StepError(
                f"tool '{self.name}' returned a {type(result).__name__}, which is not JSON-serialisable",
                "return dicts, lists, strings, numbers, booleans or None",
                kind="tool",
            ) from None
        return result

    def definition(self) -> dict[str, Any]:
        """As offered to a model (Responses API function tool)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


def load_function_tool(spec: ToolSpec, base_dir: Path) -> FunctionTool:
    module_name, _, attr = (spec.function or "").partition(":")
    folder = str(base_dir)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the pipeline's folder is where its tools live
    _forget_foreign(module_name, base_dir)
    source = source_fingerprint(spec, base_dir)
    _forget_edited(module_name, source)
    try:
        module = importlib.import_module(module_name)
        if getattr(module, _SOURCE_MARK, None) is None:
            setattr(module, _SOURCE_MARK, source)
        func = module
        for part in attr.split("."):
            func = getattr(func, part)
    except Exception as exc:  # an import error in user code: say which tool and why
        raise StepChainError(
            f"tool '{spec.name}': cannot import {spec.function}: {type(exc).__name__}: {exc}",
            f"make sure {module_name}.py is in {folder} or importable",
        ) from None
    if not callable(func):
        raise StepChainError(f"tool '{spec.name}': {spec.function} is not callable")
    _check_defined_here(spec, func, base_dir)
    return given_function_tool(spec, func)


def given_function_tool(spec: ToolSpec, func: Callable[..., Any]) -> FunctionTool:
    """A function tool for a callable in hand (imported here, or given from Python)."""
    return FunctionTool(
        name=spec.name,
        target=spec.function or "",
        func=func,
        description=spec.description or (inspect.getdoc(func) or "").split("\n\n")[0],
        parameters=spec.parameters or infer_parameters(func),
        fingerprint=code_fingerprint(func),
    )


def _check_defined_here(spec: ToolSpec, func: Callable[..., Any], base_dir: Path) -> None:
    """A tool from the pipeline's folder must be code of that folder, not something it imported.

    `tools:os.system` (a module that imported os) would otherwise reach any callable.
    """
    module = (spec.function or "").partition(":")[0]
    if local_module_file(module, base_dir) is None:
        _check_defined_in_package(spec, func, module.split(".")[0])
        return
    code = getattr(inspect.unwrap(func), "__code__", None)
    file = Path(code.co_filename).resolve() if code is not None else None
    if file is None or not file.is_relative_to(base_dir.resolve()):
        where = f"in {file}" if file else "not in Python code"
        raise StepChainError(
            f"tool '{spec.name}': {spec.function} is defined outside the pipeline's folder ({where})",
            "a function tool must be a function written in the pipeline's folder",
        )


def _check_defined_in_package(spec: ToolSpec, func: Callable[..., Any], top: str) -> None:
    """A package's tool must be a function of that package (trusted, or consented to).

    `json:codecs.open` would otherwise reach whatever the package imported.
    """
    unwrapped = inspect.unwrap(func)
    code = getattr(unwrapped, "__code__", None)
    if code is None:  # a builtin (C) function: its own module says where it is from
        inside = str(getattr(unwrapped, "__module__", None) or "").split(".")[0] == top
        where = f"in module {getattr(unwrapped, '__module__', None)}"
    elif code.co_filename.startswith("<frozen "):
        inside = code.co_filename[len("<frozen ") : -1].split(".")[0] == top
        where = f"in {code.co_filename}"
    else:
        package = importlib.util.find_spec(top)  # imported already: nothing runs here
        roots: list[Path] = []
        if package is not None:
            roots = [Path(p).resolve() for p in (package.submodule_search_locations or [])]
            if not roots and package.origin:
                roots = [Path(package.origin).resolve()]
        file = Path(code.co_filename).resolve()
        inside = any(file == root or file.is_relative_to(root) for root in roots)
        where = f"in {file}"
    if not inside:
        raise StepChainError(
            f"tool '{spec.name}': {spec.function} is defined outside package '{top}' ({where})",
            f"a function tool must be a function of the package it names ({top})",
        )


def _forget_edited(module_name: str, source: str) -> None:
    """Drop a module imported before its file was edited: the code run is the code in the key."""
    loaded = sys.modules.get(module_name)
    if loaded is not None and getattr(loaded, _SOURCE_MARK, source) != source:
        top = module_name.split(".")[0]
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]


def _forget_foreign(module_name: str, base_dir: Path) -> None:
    """Drop a same-named module imported from another pipeline's folder, so this one's loads.

    Two pipelines may both ship a `tools.py`; in one process the first would otherwise win.
    """
    top = module_name.split(".")[0]
    local = base_dir / f"{top}.py" if (base_dir / f"{top}.py").exists() else base_dir / top
    loaded = sys.modules.get(top)
    if loaded is None or not local.exists():
        return
    origin = Path(getattr(loaded, "__file__", None) or "/nonexistent").resolve()
    if local.resolve() not in (origin, origin.parent):
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]


def infer_parameters(func: Callable[..., Any]) -> dict[str, Any]:
    """A JSON Schema for the function's keyword arguments, from its signature and hints."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        hints = {}
    properties: dict[str, Any] = {}
    required = []
    for name, param in inspect.signature(func).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        origin = typing.get_origin(hints.get(name)) or hints.get(name)
        json_type = _JSON_TYPES.get(origin)  # type: ignore[arg-type]
        properties[name] = {"type": json_type} if json_type else {}
        if param.default is inspect.Parameter.empty:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def code_fingerprint(func: Callable[..., Any]) -> str:
    # The cache key includes the function's code: editing a tool invalidates its cached results.
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        source = getattr(func, "__qualname__", repr(func))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _wrap(name: str, exc: Exception) -> StepError:
    if isinstance(exc, StepError):  # already classified (e.g. a Dask worker that died)
        return exc
    message = f"tool '{name}' raised {type(exc).__name__}: {exc}"
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return RetryableStepError(message, kind="tool")
    return StepError(message, kind="tool")
