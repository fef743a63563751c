"""StepChain: declarative YAML pipelines for LLM and tool workflows, validated, cached, resumable.

The public names are imported on first use, so `stepchain validate` does not pay for the
executor, the cache or the LLM client.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "1.0.0"

_PUBLIC = {
    "Executor": "stepchain.run.executor",
    "execute": "stepchain.run.executor",
    "resume_run": "stepchain.run.executor",
    "load_pipeline": "stepchain.pipeline.load",
    "Pipeline": "stepchain.pipeline.definition",
    "Step": "stepchain.pipeline.definition",
    "RunState": "stepchain.run.records",
    "Storage": "stepchain.run.records",
    "RunResult": "stepchain.run.results",
    "StepResult": "stepchain.run.results",
    "Settings": "stepchain.settings",
    "setup_stepchain": "stepchain.settings",
    "PipelineInvalid": "stepchain.errors",
    "StepChainError": "stepchain.errors",
    "decompose": "stepchain.decomposer",
}

__all__ = [*sorted(_PUBLIC), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stepchain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
