"""What a pipeline would run: programs and code, and which of them need the user's consent.

`run` steps and stdio MCP servers start programs; function tools import Python modules. A
module in the pipeline's own folder is the user's code, reviewed with the file: it needs no
consent. A module installed elsewhere (a package) needs consent like a program, and a module of
Python's standard library is never a function tool (`os:system` would be a shell).
Nothing here imports or starts anything.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepchain.errors import Problem
from stepchain.pipeline.definition import Pipeline
from stepchain.pipeline.yaml_source import Source


@dataclass(frozen=True)
class Runnable:
    """One thing a pipeline would start or import."""

    kind: str  # "command" | "MCP server" | "function tool module"
    what: str  # the command line, the server program, or the module
    where: str  # the place in the file, e.g. steps.hi.run
    needs_consent: bool

    def describe(self) -> str:
        return f"{self.kind} `{self.what}` ({self.where})"


def local_module_file(module: str, base_dir: Path) -> Path | None:
    """The file of `module` inside the pipeline's folder (a .py file or a package), if any."""
    parts = module.split(".")
    for candidate in (
        base_dir.joinpath(*parts).with_suffix(".py"),
        base_dir.joinpath(*parts, "__init__.py"),
    ):
        if candidate.is_file():
            return candidate
    return None


def is_standard_library(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def what_runs(pipeline: Pipeline) -> list[Runnable]:
    """Every command, MCP server program and function-tool module the pipeline would use."""
    found: list[Runnable] = []
    for step in pipeline.steps:
        if step.kind == "run":
            command = step.get("run")
            text = command if isinstance(command, str) else " ".join(map(str, command))
            found.append(Runnable("command", text, f"steps.{step.id}.run", True))
    for name, spec in pipeline.tools.items():
        if spec.type == "mcp" and spec.command:
            program = " ".join(spec.command)
            found.append(Runnable("MCP server", program, f"tools.{name}.command", True))
        elif spec.type == "function" and spec.function:
            module = spec.function.partition(":")[0]
            local = local_module_file(module, pipeline.base_dir) is not None
            where = f"tools.{name}.function"
            given = name in pipeline.functions  # the caller's own code, imported already
            found.append(Runnable("function tool module", module, where, not (local or given)))
    return found


def needing_consent(pipeline: Pipeline) -> list[Runnable]:
    return [r for r in what_runs(pipeline) if r.needs_consent]


def function_problems(source: Source, tools: dict[str, Any]) -> list[Problem]:
    """Function tools that name a module of the standard library (never allowed)."""
    problems = []
    for name, tool in tools.items():
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        target = tool.get("function")
        if not isinstance(target, str) or ":" not in target:
            continue  # the schema reports it
        module, _, attr = target.partition(":")
        path = ("tools", name, "function")
        if is_standard_library(module):
            problems.append(
                source.problem(
                    path,
                    f"'{target}' names module '{module.split('.')[0]}' of Python's standard "
                    "library; a function tool must be a module in the pipeline's folder "
                    "(or a package you trust)",
                )
            )
        elif any(part.startswith("_") for part in attr.split(".")):
            problems.append(
                source.problem(path, f"'{target}': a function tool cannot be a private name")
            )
    return problems
