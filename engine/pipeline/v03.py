"""Loading StepChain 0.3 plan files as version 1 pipelines."""

from __future__ import annotations

from typing import Any

from stepchain.pipeline.yaml_source import Source

_RENAMED = {"dependencies": "needs", "max_retries": "retries"}
_HOSTED = (
    "web_search",
    "file_search",
    "code_interpreter",
)  # 0.3 used these names without declaring


def is_v03_plan(data: Any) -> bool:
    """A 0.3 plan has steps but no `version`, and 0.3 field names or a `goal`."""
    if not isinstance(data, dict) or "version" in data or not isinstance(data.get("steps"), list):
        return False
    if "goal" in data:
        return True
    return any(isinstance(s, dict) and (_RENAMED.keys() & s.keys()) for s in data["steps"])


def upgrade_v03(source: Source) -> None:
    """Rewrite a 0.3 plan in place as a version 1 pipeline; problems keep the 0.3 field names."""
    data = source.data
    upgraded: dict[str, Any] = {"version": 1}
    upgraded["name"] = str(data.get("name") or _name_from_file(source.file))
    if "goal" in data:
        upgraded["description"] = data["goal"]
        _rename(source, ("goal",), ("description",))
    for key, value in data.items():
        if key not in ("goal", "name", "version"):
            upgraded[key] = value
    for i, step in enumerate(upgraded["steps"]):
        if not isinstance(step, dict):
            continue
        for old, new in _RENAMED.items():
            if old in step and new not in step:
                step[new] = step.pop(old)
                _rename(source, ("steps", i, old), ("steps", i, new))
    _declare_hosted_tools(upgraded)
    source.data = upgraded


def _declare_hosted_tools(data: dict[str, Any]) -> None:
    """0.3 steps named provider tools (tools: [web_search]) without declaring them."""
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, dict):
        return
    used = {
        name
        for step in data["steps"]
        if isinstance(step, dict) and isinstance(step.get("tools"), list)
        for name in step["tools"]
        if name in _HOSTED and name not in (tools or {})
    }
    if used:
        data["tools"] = {**(tools or {}), **{name: {"type": name} for name in sorted(used)}}


def _name_from_file(file: str) -> str:
    stem = file.replace("\\", "/").rsplit("/", 1)[-1].split(".", 1)[0]
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in stem).lstrip("_.-")
    return cleaned or "plan"


def _rename(source: Source, old: tuple, new: tuple) -> None:
    """Move recorded positions to the new path, remembering how the file spelt it."""
    for places in (source.positions, source.key_positions, source.ends):
        for path in [p for p in places if p[: len(old)] == old]:
            places[new + path[len(old) :]] = places.pop(path)
    for paths in (source.block_scalars, source.folded, source.reported):
        for path in [p for p in paths if p[: len(old)] == old]:
            paths.discard(path)
            paths.add(new + path[len(old) :])
    source.renamed[new] = old
