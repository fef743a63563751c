"""StepChain: declarative YAML pipelines for LLM and tool workflows, validated, cached, resumable."""

from stepchain.errors import PipelineInvalid, StepChainError
from stepchain.executor import Executor, execute, resume_run
from stepchain.loader import load_pipeline
from stepchain.model import Pipeline, Step
from stepchain.records import RunState, Storage
from stepchain.results import RunResult, StepResult
from stepchain.settings import Settings, setup_stepchain

__version__ = "1.0.0"


def decompose(task: str, **kwargs):
    """Turn a task in plain words into a validated pipeline (see stepchain.decomposer)."""
    from stepchain.decomposer import decompose as _decompose

    return _decompose(task, **kwargs)


__all__ = [
    "Executor",
    "Pipeline",
    "PipelineInvalid",
    "RunResult",
    "RunState",
    "Settings",
    "Step",
    "StepChainError",
    "StepResult",
    "Storage",
    "__version__",
    "decompose",
    "execute",
    "load_pipeline",
    "resume_run",
    "setup_stepchain",
]
