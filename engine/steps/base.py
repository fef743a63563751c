"""What every step kind is: a module with `render_request` and `execute`, typed here.

A step kind sees the run only through `RunServices` (implemented by the run's context), so
`steps/` never imports `run/`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from stepchain.pipeline.definition import Pipeline, Step

if TYPE_CHECKING:
    from stepchain.llm.client import LLMClient
    from stepchain.llm.providers import Provider
    from stepchain.tools.functions import FunctionTool


@dataclass
class Outcome:
    """What executing a step's request produced."""

    output: Any
    usage: dict[str, int] = field(default_factory=dict)


class RunServices(Protocol):
    """What a step kind may use of the run it is part of."""

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def approve(self) -> bool:
        """MCP calls and hosted MCP servers with `require_approval: always` are approved."""
        ...

    @property
    def llm(self) -> LLMClient: ...

    @property
    def providers(self) -> dict[str, Provider]:
        """Named providers: the user settings' and the pipeline's (which win by name)."""
        ...

    def llm_for(self, model: str) -> tuple[LLMClient, str, str | None]:
        """(client, model name, provider api) for a model that may be `PROVIDER/MODEL`."""
        ...

    def base_context(self) -> dict[str, Any]: ...

    def path_of(self, step: Step, *fields: str | int) -> tuple[str | int, ...]: ...

    def locate(self, path: tuple[str | int, ...]) -> str: ...

    def function_tool(self, name: str) -> FunctionTool: ...

    def function_identity(self, name: str) -> dict[str, Any]: ...

    def mask(self, value: Any) -> Any:
        """The value with every secret (and its transformed forms) replaced by ***."""
        ...

    def function_definition(self, name: str) -> dict[str, Any]: ...

    def mcp_identity(self, name: str) -> dict[str, Any]: ...

    async def mcp_tools(self, server: str) -> list[dict[str, Any]]: ...

    async def call_mcp(
        self, server: str, tool: str, arguments: dict[str, Any], timeout: float | None
    ) -> Any: ...

    async def offload(self, func: Callable[..., Any], /, **kwargs: Any) -> Any: ...

    async def run_command(self, request: dict[str, Any], cwd: str) -> tuple[int, bytes, bytes]: ...

    def describe_error(self, exc: BaseException) -> str: ...


class StepKind(Protocol):
    """A step kind: render what determines the result, then produce the result."""

    def render_request(
        self, step: Step, context: dict[str, Any], run: RunServices
    ) -> dict[str, Any]: ...

    def execute(
        self, step: Step, request: dict[str, Any], run: RunServices, feedback: str | None = None
    ) -> Awaitable[Outcome]: ...
