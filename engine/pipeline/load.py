"""From a file to a validated, typed Pipeline: parse, upgrade, schema, semantics, build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from stepchain.errors import PipelineInvalid, Problem, UsageError
from stepchain.pipeline.checks import check_semantics
from stepchain.pipeline.definition import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    KINDS,
    Backoff,
    Pipeline,
    Step,
    ToolSpec,
    parse_ttl,
)
from stepchain.pipeline.files import read_user_file
from stepchain.pipeline.schema import schema_problems
from stepchain.pipeline.v03 import is_v03_plan, upgrade_v03
from stepchain.pipeline.v03_tools import callables_of, tools_from_v03
from stepchain.pipeline.yaml_source import Source, load_source


def check_text(
    file: str, text: str, *, build: bool = True, tools: dict[str, Any] | None = None
) -> tuple[list[Problem], Pipeline | None]:
    """All problems of a pipeline text, sorted; the Pipeline when there are none.

    `tools` are definitions given from Python, added to the file's (replacing same names).
    """
    source = load_source(file, text)
    if source.data is None and source.problems:
        return sorted(source.problems), None
    if not isinstance(source.data, dict):
        problem = source.problem((), "a pipeline is a mapping with version, name and steps")
        return sorted([*source.problems, problem]), None
    if is_v03_plan(source.data):
        upgrade_v03(source)
    if tools:
        written = source.data.get("tools")
        source.data["tools"] = {**(written if isinstance(written, dict) else {}), **tools}
    problems = list(source.problems) + schema_problems(source)
    checked = check_semantics(source)
    problems = sorted(set(problems + checked.problems))
    if problems or not build:
        return problems, None
    return [], build_pipeline(source, checked.deps)


def read_text(path: str | Path) -> str:
    return read_user_file(path, "pipeline file", UsageError)


def load_pipeline(path: str | Path) -> Pipeline:
    """Load and validate a pipeline file.

    Raises:
        PipelineInvalid: with every problem found, each at FILE:LINE:COL.
        UsageError: when the file cannot be read.
    """
    text = read_text(path)
    problems, pipeline = check_text(str(path), text)
    if pipeline is None:
        raise PipelineInvalid(problems)
    pipeline.path = Path(path)
    return pipeline


def load_pipeline_text(text: str, file: str = "<pipeline>", base: Path | None = None) -> Pipeline:
    """Validate a pipeline given as text (e.g. a decomposer's answer)."""
    problems, pipeline = check_text(file, text)
    if pipeline is None:
        raise PipelineInvalid(problems)
    if base is not None:
        pipeline.path = base / file
    return pipeline


def with_tools(pipeline: Pipeline | str | Path, tools: dict[str, Any] | list[Any]) -> Pipeline:
    """The pipeline with tools given from Python added to its `tools:` (same names replaced).

    `tools` maps names to Python callables (function tools) or tool definitions, or is a
    StepChain 0.3 tool list (hosted tool names, MCP and function dicts, callables).

    Raises:
        UsageError: `tools` is neither, or a callable cannot be imported by name.
        PipelineInvalid: the pipeline with these tools has problems.
    """
    if not isinstance(tools, (dict, list)):
        raise UsageError(
            f"tools must be a mapping of names to functions or tool definitions, or a list; "
            f"got {type(tools).__name__}",
            'e.g. tools={"add": add}, or tools=["web_search", add]',
        )
    definitions, functions = tools_from_v03(tools, in_hand=True), callables_of(tools)
    if isinstance(pipeline, Pipeline):
        path, text = pipeline.path, pipeline.text
    else:
        path, text = Path(pipeline), read_text(pipeline)
    problems, built = check_text(str(path) if path else "<pipeline>", text, tools=definitions)
    if built is None:
        raise PipelineInvalid(problems)
    built.path = path
    built.functions = functions
    header = "# recorded with the tools given from Python (execute(..., tools=...))\n"
    built.record_text = header + yaml.safe_dump(built.source.data, sort_keys=False)
    return built


def build_pipeline(source: Source, deps: dict[str, set[str]]) -> Pipeline:
    data = source.data
    defaults = dict(data.get("defaults") or {})
    tools = data.get("tools") or {}
    steps = [
        _build_step(i, raw, defaults, deps[raw["id"]], tools) for i, raw in enumerate(data["steps"])
    ]
    return Pipeline(
        name=data["name"],
        description=data.get("description"),
        steps=steps,
        text=source.text,
        inputs=dict(data.get("inputs") or {}),
        env=tuple(data.get("env") or ()),
        secrets=tuple(data.get("secrets") or ()),
        defaults=defaults,
        tools={name: _build_tool(name, raw) for name, raw in (data.get("tools") or {}).items()},
        outputs=dict(data.get("outputs") or {}),
        limits=dict(data.get("limits") or {}),
        providers=dict(data.get("providers") or {}),
        source=source,
    )


def _build_step(
    index: int,
    raw: dict[str, Any],
    defaults: dict[str, Any],
    deps: set[str],
    tools: dict[str, Any],
) -> Step:
    get, default = raw.get, defaults.get  # a step's own value, else the pipeline's default
    kind = next(k for k in KINDS if k in raw)
    cache, cache_source, by_server = _cache_policy(index, raw, defaults, kind, tools)
    spec = dict(raw)
    if kind == "prompt":
        for key in ("model", "temperature", "max_output_tokens", "max_tool_calls", "api"):
            if key not in spec and key in defaults:
                spec[key] = defaults[key]
        if "provider" in defaults and not ({"model", "provider"} & set(raw)):
            # the default provider goes with the default model, not with a step's own model
            spec["provider"] = defaults["provider"]
    backoff = get("backoff", default("backoff", None))
    return Step(
        id=raw["id"],
        kind=kind,
        index=index,
        spec=spec,
        needs=frozenset(deps),
        name=get("name"),
        description=get("description"),
        when=get("when"),
        foreach=get("foreach"),
        retries=get("retries", default("retries", DEFAULT_RETRIES)),
        backoff=Backoff(**backoff) if backoff else _DEFAULT_BACKOFF,
        timeout=float(get("timeout", default("timeout", DEFAULT_TIMEOUT))),
        cache=cache is not False,
        cache_ttl=parse_ttl(cache) if isinstance(cache, str) else None,
        cache_source=cache_source,
        cache_by_server=by_server,
        continue_on_error=get("continue_on_error", default("continue_on_error", False)),
    )


def _cache_policy(
    index: int, raw: dict[str, Any], defaults: dict[str, Any], kind: str, tools: dict[str, Any]
) -> tuple[bool | str, str, bool]:
    """A step's `cache:` value, where it comes from, and whether MCP servers decide.

    The step's own `cache:` first, then (tool steps) the tool definition's, then `defaults`;
    an MCP tool with none of these is cached only when its server's annotations allow it.
    A prompt step is cached no longer than the tools it offers allow: the model's answer
    carries their results, so a live tool's answer would otherwise replay inside it.
    """
    if "cache" in raw:
        return raw["cache"], f"steps[{index}].cache", False
    tool = tools.get(raw["tool"].partition(".")[0]) if kind == "tool" else None
    if isinstance(tool, dict) and "cache" in tool:
        return tool["cache"], f"tools.{raw['tool'].partition('.')[0]}.cache", False
    offered = _offered(raw, tools) if kind == "prompt" else {}
    for name, definition in offered.items():
        if definition.get("cache") is False:
            return False, f"tools.{name}.cache, a tool the step offers", False
    by_server = any(_server_decides(d) for d in offered.values()) or _server_decides(tool)
    policy: tuple[bool | str, str] = (True, "the default")
    if "cache" in defaults:
        policy = (defaults["cache"], "defaults.cache")
        if defaults["cache"] is False:
            return False, "defaults.cache", False
    ttls = [(v["cache"], f"tools.{n}.cache") for n, v in offered.items() if _is_ttl(v)]
    if isinstance(policy[0], str):
        ttls.append(policy)
    if ttls:
        policy = min(ttls, key=lambda ttl: parse_ttl(ttl[0]))
    if by_server and policy[1] == "the default":
        policy = (True, "the MCP server's annotations")
    return policy[0], policy[1], by_server


def _offered(raw: dict[str, Any], tools: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tool definitions a prompt step offers the model, by name."""
    names = raw.get("tools") or []
    return {n: tools[n] for n in names if isinstance(n, str) and isinstance(tools.get(n), dict)}


def _server_decides(tool: Any) -> bool:
    """An MCP server the engine runs, with no `cache:` written: its annotations decide."""
    return (
        isinstance(tool, dict)
        and tool.get("type") == "mcp"
        and "server_url" not in tool
        and "cache" not in tool
    )


def _is_ttl(tool: dict[str, Any]) -> bool:
    return isinstance(tool.get("cache"), str)


_DEFAULT_BACKOFF = Backoff()  # frozen: one shared by every step that sets none


def _build_tool(name: str, raw: dict[str, Any]) -> ToolSpec:
    known = set(ToolSpec.__dataclass_fields__) - {"name", "extra"}
    fields = {k: v for k, v in raw.items() if k in known}
    if "command" in fields:
        fields["command"] = tuple(fields["command"])
    if "allowed_tools" in fields:
        fields["allowed_tools"] = tuple(fields["allowed_tools"])
    extra = {k: v for k, v in raw.items() if k not in known}
    return ToolSpec(name=name, extra=extra, **fields)


def check_file(path: str | Path) -> list[Problem]:
    """Every problem of one pipeline file (what `stepchain validate` prints)."""
    return check_text(str(path), read_text(path), build=False)[0]
