"""Typed pipeline objects. Built once from a validated document and trusted afterwards."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

StepKind = Literal["prompt", "tool", "run", "template"]
KINDS: tuple[StepKind, ...] = ("prompt", "tool", "run", "template")
LLM_FIELDS = (
    "system",
    "model",
    "provider",
    "temperature",
    "max_output_tokens",
    "output_schema",
    "tools",
    "max_tool_calls",
    "api",
)
DEFAULT_TIMEOUT = 600.0
DEFAULT_RETRIES = 2
DEFAULT_MODEL = "gpt-4o-mini"
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, in seconds."""

    initial: float = 1.0
    factor: float = 2.0
    max: float = 60.0

    def delay(self, attempt: int) -> float:
        """Base delay before retry number `attempt` (1-based), before jitter."""
        return min(self.max, self.initial * self.factor ** (attempt - 1))


@dataclass(frozen=True)
class ToolSpec:
    """A named tool from the pipeline's `tools:` section."""

    name: str
    type: str
    function: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    command: tuple[str, ...] | None = None
    url: str | None = None
    server_url: str | None = None
    server_label: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    allowed_tools: tuple[str, ...] | None = None
    require_approval: str = "never"
    cache: bool | str | None = None  # None: not declared (MCP tools: the server's annotations)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hosted(self) -> bool:
        """Run by the LLM provider rather than by the engine."""
        return self.type in ("web_search", "file_search", "code_interpreter") or (
            self.type == "mcp" and self.server_url is not None
        )


@dataclass(frozen=True)
class Step:
    """One step, with defaults applied."""

    id: str
    kind: StepKind
    index: int
    spec: dict[str, Any]  # the step mapping as written, kind-specific fields included
    needs: frozenset[str]  # explicit and inferred dependencies
    name: str | None = None
    description: str | None = None
    when: str | None = None
    foreach: str | None = None
    retries: int = DEFAULT_RETRIES
    backoff: Backoff = Backoff()
    timeout: float | None = DEFAULT_TIMEOUT
    cache_ttl: float | None = None  # seconds; None = keep forever
    cache: bool = True
    continue_on_error: bool = False
    # Where the cache policy comes from, for `plan` ("steps[1].cache", "tools.git.cache", ...);
    # cache_by_server: an MCP tool with no policy written down: cached only when the server's
    # annotations say its answer is safe to replay (see tools.mcp.client.replay_safe).
    cache_source: str = "the default"
    cache_by_server: bool = False

    def get(self, key: str, default: Any = None) -> Any:
        """A kind-specific field (`prompt`, `with`, `run`, ...)."""
        return self.spec.get(key, default)

    # StepChain 0.3 names, kept for users of its API
    @property
    def tool(self) -> str | None:
        """The tool a tool step calls (`name` or `server.tool`); None for other kinds."""
        value: str | None = self.spec.get("tool")
        return value

    @property
    def tool_input(self) -> dict[str, Any]:
        """A tool step's arguments as written (`with:`, templates unrendered)."""
        return dict(self.spec.get("with") or {})

    @property
    def dependencies(self) -> list[str]:
        """The ids of the steps this one waits for (explicit `needs` and references), sorted."""
        return sorted(self.needs)


@dataclass
class Pipeline:
    """A validated pipeline, ready to plan and run."""

    name: str
    steps: list[Step]
    text: str
    path: Path | None = None
    description: str | None = None
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, ToolSpec] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> {rpm, tpm}
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> base_url, ...
    source: Any = field(
        default=None, repr=False, compare=False
    )  # yaml_source.Source, for positions
    # function tools given as Python callables (`execute(..., tools={"name": func})`): the
    # caller's own code, already imported, so run as given and needing no consent
    functions: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # what a run record keeps instead of `text` when tools were given from Python: the whole
    # pipeline with them written in, so the record loads again (`Storage().load_run_state`)
    record_text: str | None = field(default=None, repr=False, compare=False)

    @cached_property
    def by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def step(self, step_id: str) -> Step:
        return self.by_id[step_id]

    def locate(self, path: tuple) -> str:
        """FILE:LINE:COL: PATH for a place in the pipeline, for error messages."""
        from stepchain.pipeline.yaml_source import format_path

        file = str(self.path) if self.path else "<pipeline>"
        if self.source is None:
            return f"{file}:1:1: {format_path(path)}"
        line, col = self.source.where(path)
        return f"{file}:{line}:{col}: {self.source.display(path)}"

    @property
    def base_dir(self) -> Path:
        """The pipeline's folder: function tools import from here, commands run here."""
        return self.path.parent.resolve() if self.path else Path.cwd()

    @cached_property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def has_llm_steps(self) -> bool:
        return any(s.kind == "prompt" for s in self.steps)

    # StepChain 0.3 names, kept for users of its API
    @property
    def task_description(self) -> str | None:
        return self.description


def parse_ttl(value: str) -> float:
    """'7d' -> 604800.0."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhdw])", value)
    if not match:
        raise ValueError(f"not a TTL: {value!r}")
    return float(match.group(1)) * _TTL_UNITS[match.group(2)]
