"""Step kinds. Each module renders its request and executes it; the registry maps kinds to them."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass
class Outcome:
    """What executing a step's request produced."""

    output: Any
    usage: dict[str, int] = field(default_factory=dict)


_MODULES = {"template": "template", "tool": "tool", "run": "command", "prompt": "prompt"}


_LOADED: dict[str, ModuleType] = {}


def kind_module(kind: str) -> ModuleType:
    """The module that implements a step kind (imported on first use)."""
    module = _LOADED.get(kind)
    if module is None:
        module = _LOADED[kind] = importlib.import_module(f"stepchain.steps.{_MODULES[kind]}")
    return module
