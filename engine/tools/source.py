"""Function tools read from their source file, never imported: for cache keys and for `plan`.

A tool's identity in cache keys is its target and the SHA-256 of its module's file, and its
definition (as offered to a model) comes from the function's `def` in that file, parsed with
`ast`: reviewing or planning a pipeline runs none of its code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stepchain.pipeline.consent import local_module_file
from stepchain.pipeline.definition import ToolSpec

# annotation names -> JSON types, as typing.get_origin() maps them at import time
_JSON_NAMES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "list": "array",
    "List": "array",
    "dict": "object",
    "Dict": "object",
}


def module_file(module: str, base_dir: Path) -> Path | None:
    """Where `module`'s source is: the pipeline's folder first, then the installed packages.

    Only the top-level name is looked up by importlib (which does not import it); the rest of
    a dotted name is followed through the package's folders.
    """
    local = local_module_file(module, base_dir)
    if local is not None:
        return local
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    origin = Path(spec.origin)
    if not rest:
        return origin
    folder = origin.parent.joinpath(*rest)
    for candidate in (folder.with_suffix(".py"), folder / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def source_fingerprint(spec: ToolSpec, base_dir: Path) -> str:
    """The SHA-256 of the tool's module file: editing the module invalidates its cached results."""
    path = module_file((spec.function or "").partition(":")[0], base_dir)
    try:
        content = path.read_bytes() if path else b""
    except OSError:
        content = b""
    return hashlib.sha256(content).hexdigest()[:16]


def callable_fingerprint(func: Callable[..., Any]) -> str:
    """For a callable given from Python: the SHA-256 of the file defining it (a script's too, where
    the module cannot be found by name), else of its own source, else of its name."""
    try:
        path = inspect.getsourcefile(func)
        content = Path(path).read_bytes() if path else b""
    except (OSError, TypeError):
        content = b""
    if not content:
        try:
            content = inspect.getsource(func).encode()
        except (OSError, TypeError):
            content = getattr(func, "__qualname__", repr(func)).encode()
    return hashlib.sha256(content).hexdigest()[:16]


def static_definition(spec: ToolSpec, base_dir: Path) -> dict[str, Any] | None:
    """The Responses API definition from the source, or None if only an import can tell."""
    module, _, attr = (spec.function or "").partition(":")
    if spec.parameters is not None and spec.description is not None:
        return _definition(spec, spec.description, spec.parameters)
    if "." in attr:
        return None
    path = module_file(module, base_dir)
    try:
        tree = ast.parse(path.read_bytes()) if path else None
    except (OSError, SyntaxError, ValueError):
        return None
    defs = [
        node
        for node in (tree.body if tree else [])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == attr
    ]
    # exactly one plain def, and nothing else in the module rebinding the name
    if len(defs) != 1 or _rebound(tree, attr) or defs[0].decorator_list:
        return None
    func = defs[0]
    description = spec.description or (ast.get_docstring(func) or "").split("\n\n")[0]
    return _definition(spec, description, spec.parameters or _parameters(func.args))


def _definition(spec: ToolSpec, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": spec.name,
        "description": description,
        "parameters": parameters,
    }


def _rebound(tree: ast.Module | None, name: str) -> bool:
    for node in tree.body if tree else []:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name) == name for a in node.names):
                return True
        elif isinstance(node, ast.ClassDef) and node.name == name:
            return True
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def _parameters(args: ast.arguments) -> dict[str, Any]:
    """The JSON Schema infer_parameters() gives at import time, from the `def` line."""
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = [
        *zip(positional, defaults, strict=True),
        *zip(args.kwonlyargs, args.kw_defaults, strict=True),
    ]
    properties: dict[str, Any] = {}
    required = []
    for arg, default in pairs:
        json_type = _json_type(arg.annotation)
        properties[arg.arg] = {"type": json_type} if json_type else {}
        if default is None:
            required.append(arg.arg)
    return {"type": "object", "properties": properties, "required": required}


def _json_type(annotation: ast.expr | None) -> str | None:
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    if isinstance(annotation, ast.Attribute):
        return _JSON_NAMES.get(annotation.attr) if annotation.attr[:1].isupper() else None
    if isinstance(annotation, ast.Name):
        return _JSON_NAMES.get(annotation.id)
    return None
