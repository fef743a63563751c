"""What a pipeline would run: programs and code, and which of them need the user's consent.

`run` steps and stdio MCP servers start programs; function tools import Python modules. A
module in the pipeline's own folder is the user's code, reviewed with the file: it needs no
consent. A package the user trusted (`stepchain trust --package NAME`, for every pipeline)
needs none either. Any other installed package needs consent for the file, like a program; a
module of Python's standard library is a function tool only once trusted as a package, and
the modules that start programs or load code (`os`, `subprocess`, ...) never are.
Nothing here imports or starts anything.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepchain.errors import Problem
from stepchain.pipeline.definition import Pipeline
from stepchain.pipeline.yaml_source import Source
from stepchain.settings import Settings, current_settings

TRUST_FILE = "trusted.json"  # under the state folder; its "packages" key: the trusted packages
PACKAGES_KEY = "packages"  # never a file's key (those are absolute paths)

# Standard modules that start programs, load or run code, or reach into the interpreter: a
# function from them is a shell or an eval, so they are never trusted as packages.
# fmt: off
NEVER_TRUSTED = frozenset((
    "os", "posix", "nt", "subprocess", "shutil", "builtins", "importlib", "runpy", "pty", "code",
    "codeop", "ctypes", "sys", "multiprocessing", "concurrent", "asyncio", "pickle", "marshal",
    "shelve", "pdb", "bdb", "webbrowser", "platform", "pydoc", "socket", "signal", "threading",
    "_thread", "gc", "inspect", "types", "site", "sysconfig", "zipimport", "pkgutil", "venv",
    "ensurepip", "distutils", "tempfile", "glob", "pathlib", "io", "fileinput", "linecache",
    "tracemalloc", "cProfile", "profile", "trace", "timeit", "doctest", "unittest",
))
# fmt: on
_PACKAGE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Runnable:
    """One thing a pipeline would start or import."""

    kind: str  # "command" | "MCP server" | "function tool module"
    what: str  # the command line, the server program, or the module
    where: str  # the place in the file, e.g. steps.hi.run
    needs_consent: bool
    trusted_package: bool = False  # a function tool module of a package the user trusted

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


def never_trusted(name: str) -> bool:
    """A module no trust can make a function tool: one that starts programs or loads code."""
    top = name.split(".")[0]
    return top in NEVER_TRUSTED or top.startswith("_")


def package_problem(name: str) -> str | None:
    """Why `name` cannot be trusted as a package, or None."""
    if not _PACKAGE_NAME.fullmatch(name):
        return f"'{name}' is not the name of a package (a top-level module name, like yaml)"
    if never_trusted(name):
        return (
            f"'{name}' starts programs or loads code; it is never trusted as a package "
            "(write the function you need in the pipeline's folder)"
        )
    return None


def trusted_packages(settings: Settings | None = None) -> frozenset[str]:
    """The packages the user trusted; none when the store is missing or unreadable.

    (A damaged store is reported by the run, which reads it in full: stepchain.run.trust.)
    """
    path = current_settings(settings).home / TRUST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    names = data.get(PACKAGES_KEY) if isinstance(data, dict) else None
    if not isinstance(names, list):
        return frozenset()
    return frozenset(n for n in names if isinstance(n, str) and package_problem(n) is None)


def is_trusted_package(module: str, trusted: frozenset[str]) -> bool:
    top = module.split(".")[0]
    return top in trusted and not never_trusted(top)


def what_runs(pipeline: Pipeline, trusted: frozenset[str] | None = None) -> list[Runnable]:
    """Every command, MCP server program and function-tool module the pipeline would use.

    `trusted`: the packages the user trusted (default: read from the state folder).
    """
    if trusted is None:
        trusted = trusted_packages()
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
            package = not local and is_trusted_package(module, trusted)
            where = f"tools.{name}.function"
            given = name in pipeline.functions  # the caller's own code, imported already
            found.append(
                Runnable(
                    "function tool module", module, where, not (local or package or given), package
                )
            )
    return found


def needing_consent(pipeline: Pipeline, trusted: frozenset[str] | None = None) -> list[Runnable]:
    return [r for r in what_runs(pipeline, trusted) if r.needs_consent]


def function_problems(
    source: Source, tools: dict[str, Any], trusted: frozenset[str] | None = None
) -> list[Problem]:
    """Function tools that name a module of the standard library the user did not trust.

    `trusted`: the packages the user trusted (default: read from the state folder, when needed).
    """
    problems = []
    for name, tool in tools.items():
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        target = tool.get("function")
        if not isinstance(target, str) or ":" not in target:
            continue  # the schema reports it
        module, _, attr = target.partition(":")
        path = ("tools", name, "function")
        top = module.split(".")[0]
        if is_standard_library(module) and trusted is None:
            trusted = trusted_packages()
        if is_standard_library(module) and not is_trusted_package(module, trusted or frozenset()):
            how = (
                f"'{top}' starts programs or loads code and is never trusted"
                if never_trusted(top)
                else f"or a package you trust: `stepchain trust --package {top}`"
            )
            problems.append(
                source.problem(
                    path,
                    f"'{target}' names module '{top}' of Python's standard "
                    f"library; a function tool must be a module in the pipeline's folder ({how})",
                )
            )
        elif any(part.startswith("_") for part in attr.split(".")):
            problems.append(
                source.problem(path, f"'{target}': a function tool cannot be a private name")
            )
    return problems
