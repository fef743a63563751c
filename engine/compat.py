"""Loading StepChain 0.3 plan files as version 1 pipelines."""

from __future__ import annotations

from typing import Any

from stepchain.yaml_source import Source

_RENAMED = {"dependencies": "needs", "max_retries": "retries"}


def is_v03_plan(data: Any) -> bool:
    """A 0.3 plan has steps but no `version`, and 0.3 field names or a `goal`."""
    if not isinstance(data, dict) or "version" in data or not isinstance(data.get("steps"), list):
        return False
    if "goal" in data:
        return True
    return any(isinstance(s, dict) and (_RENAMED.keys() & s.keys()) for s in data["steps"])


def upgrade_v03(source: Source) -> None:
    """Rewrite a 0.3 plan in place (data and positions) as a version 1 pipeline."""
    data = source.data
    upgraded: dict[str, Any] = {"version": 1}
    upgraded["name"] = str(data.get("name") or _name_from_file(source.file))
    if "goal" in data:
        upgraded["description"] = data["goal"]
        _move(source, ("goal",), ("description",))
    for key, value in data.items():
        if key not in ("goal", "name", "version"):
            upgraded[key] = value
    for i, step in enumerate(upgraded["steps"]):
        if not isinstance(step, dict):
            continue
        for old, new in _RENAMED.items():
            if old in step and new not in step:
                step[new] = step.pop(old)
                _move(source, ("steps", i, old), ("steps", i, new))
    source.data = upgraded


def _name_from_file(file: str) -> str:
    stem = file.rsplit("/", 1)[-1].split(".", 1)[0]
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in stem).lstrip("_.-")
    return cleaned or "plan"


def _move(source: Source, old: tuple, new: tuple) -> None:
    for table in (source.positions, source.key_positions):
        for path in [p for p in table if p[: len(old)] == old]:
            table[new + path[len(old) :]] = table.pop(path)
