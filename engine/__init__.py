"""StepChain: declarative YAML pipelines for LLM and tool workflows, validated, cached, resumable.

The public names are imported on first use, so `stepchain validate` does not pay for the
executor, the cache or the LLM client; a type checker sees them through the imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "1.0.0"

if TYPE_CHECKING:
    from stepchain.decomposer import adecompose, decompose
    from stepchain.errors import (
        CommandsNotAllowed,
        CredentialsMissing,
        InputError,
        Interrupted,
        PipelineInvalid,
        Problem,
        RetryableStepError,
        RunLocked,
        RunNotFound,
        StepChainError,
        StepError,
        StepTimeout,
        UsageError,
    )
    from stepchain.pipeline.definition import Pipeline, Step
    from stepchain.pipeline.load import load_pipeline
    from stepchain.run.database import RunState, Storage
    from stepchain.run.executor import Executor, aexecute, execute, resume_run
    from stepchain.run.results import RunResult, StepResult
    from stepchain.settings import Settings, setup_stepchain

_ERRORS = (
    "CommandsNotAllowed",
    "CredentialsMissing",
    "InputError",
    "Interrupted",
    "PipelineInvalid",
    "Problem",
    "RetryableStepError",
    "RunLocked",
    "RunNotFound",
    "StepChainError",
    "StepError",
    "StepTimeout",
    "UsageError",
)
_PUBLIC = {
    "Executor": "stepchain.run.executor",
    "execute": "stepchain.run.executor",
    "aexecute": "stepchain.run.executor",
    "resume_run": "stepchain.run.executor",
    "load_pipeline": "stepchain.pipeline.load",
    "Pipeline": "stepchain.pipeline.definition",
    "Step": "stepchain.pipeline.definition",
    "RunState": "stepchain.run.database",
    "Storage": "stepchain.run.database",
    "RunResult": "stepchain.run.results",
    "StepResult": "stepchain.run.results",
    "Settings": "stepchain.settings",
    "setup_stepchain": "stepchain.settings",
    "decompose": "stepchain.decomposer",
    "adecompose": "stepchain.decomposer",
    **dict.fromkeys(_ERRORS, "stepchain.errors"),
}

__all__ = [
    "CommandsNotAllowed",
    "CredentialsMissing",
    "Executor",
    "InputError",
    "Interrupted",
    "Pipeline",
    "PipelineInvalid",
    "Problem",
    "RetryableStepError",
    "RunLocked",
    "RunNotFound",
    "RunResult",
    "RunState",
    "Settings",
    "Step",
    "StepChainError",
    "StepError",
    "StepResult",
    "StepTimeout",
    "Storage",
    "UsageError",
    "__version__",
    "adecompose",
    "aexecute",
    "decompose",
    "execute",
    "load_pipeline",
    "resume_run",
    "setup_stepchain",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stepchain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
