"""Everything one run needs while it executes: options, context values, tools, connections."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from secrets import token_hex
from typing import TYPE_CHECKING, Any

from stepchain.errors import StepChainError, StepError
from stepchain.pipeline.definition import Pipeline, Step
from stepchain.pipeline.user_settings import UserSettings, load_user_settings
from stepchain.run.masking import MIN_SECRET, Masker, printable
from stepchain.settings import Settings
from stepchain.templates import Vars
from stepchain.templates.sandbox import max_render_size
from stepchain.tools.functions import (
    FunctionTool,
    NotImported,
    given_function_tool,
    load_function_tool,
)
from stepchain.tools.source import callable_fingerprint, source_fingerprint, static_definition

if TYPE_CHECKING:  # openai is imported only by runs with LLM steps
    from openai import DefaultAsyncHttpxClient


@dataclass
class RunOptions:
    """How to run: the flags of `stepchain run` and the arguments of `execute()`."""

    run_id: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    max_concurrent: int = 8
    fail_fast: bool = False
    no_cache: bool = False
    refresh: frozenset[str] = frozenset()
    allow_run: bool | None = None  # None: STEPCHAIN_ALLOW_RUN decides
    approve: bool = False
    executor: str = "local"
    scheduler: str | None = None
    offline: bool = False  # refuse to start if any step would call a model, tool or command
    handle_signals: bool = False  # the CLI turns SIGINT/SIGTERM into a clean interrupt
    # the caller's HTTP client for LLM requests (proxies, TLS, headers); never closed by a run
    http_client: DefaultAsyncHttpxClient | None = None


def default_run_id(pipeline: Pipeline) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{pipeline.name}-{stamp}-{token_hex(2)}"


# The step a task is running (set by the scheduler in each step's task), for what happens
# deep inside a step and concerns it, like an approval question.
current_step: ContextVar[str | None] = ContextVar("stepchain_current_step", default=None)


class Runtime:
    """Per-run state shared by the step kinds. Created by the executor, closed at the end."""

    def __init__(
        self, pipeline: Pipeline, settings: Settings, options: RunOptions, run_id: str, inputs: dict
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.options = options
        self.run_id = run_id
        self.inputs = inputs
        self.env = {name: os.environ.get(name) for name in pipeline.env}
        self.secrets = {name: os.environ.get(name) for name in pipeline.secrets}
        self.mask = Masker([v for v in self.secrets.values() if v])
        self._function_tools: dict[str, FunctionTool] = {}
        self._mcp_pool: Any = None
        self._llm: Any = None
        self._provider_clients: dict[str, Any] = {}  # provider name -> its LLMClient
        self._roots: dict[str, Any] | None = None  # the template context's fixed roots
        self.backend: Any = None  # a DaskBackend with --executor dask, else None (local)
        self.imports = True  # `plan` sets False: it imports no function tool's module
        # the observer's `paused(step_id)`, if it has one: the live table leaves the terminal
        # while a question is asked there
        self.pause_display: Callable[[str | None], AbstractContextManager[None]] | None = None

    def asking(self) -> AbstractContextManager[None]:
        """Around a question on the terminal: the live display pauses, the step's clock too."""
        if self.pause_display is None:
            return nullcontext()
        return self.pause_display(current_step.get())

    # -- checks before anything runs ------------------------------------------------------
    def preflight(self) -> None:
        """Fail before the first step for what would otherwise fail in the middle."""
        max_render_size()  # a malformed STEPCHAIN_MAX_RENDER_SIZE is a usage error, here
        missing = [n for n, v in {**self.env, **self.secrets}.items() if v is None]
        if missing:
            raise StepChainError(
                f"environment variable(s) not set: {', '.join(missing)}",
                "the pipeline declares them under env:/secrets:; export them before running",
            )
        short = sorted(n for n, v in self.secrets.items() if v is not None and len(v) < MIN_SECRET)
        if short:
            raise StepChainError(
                f"secret(s) {', '.join(short)} shorter than {MIN_SECRET} characters: "
                "too short to mask safely (every occurrence in outputs would be masked)",
                "use the real secret, or declare a value that is not secret under env: instead",
            )
        from stepchain.run.trust import check_consent

        if not self.options.offline:  # an offline run replays: it starts nothing
            check_consent(self.pipeline, self.settings, self.commands_allowed)
        for name, spec in self.pipeline.tools.items():
            if spec.type == "function":
                self.function_tool(name)
        if any(t.type == "mcp" for t in self.pipeline.tools.values()):
            from stepchain.run.mcp_servers import check_approval_possible
            from stepchain.tools.mcp.stdio import max_message_from_env

            check_approval_possible(self)
            max_message_from_env()  # a malformed STEPCHAIN_MAX_MCP_RESULT_BYTES fails here
        if self.pipeline.has_llm_steps and not self.options.offline:
            from stepchain.llm.client import check_credentials
            from stepchain.llm.limiter import limits_from_env
            from stepchain.llm.providers import check_provider_credentials, qualified, split_model

            default = False  # does a step use the default server (or a templated model)?
            for step in self.pipeline.steps:
                if step.kind != "prompt":
                    continue
                model = qualified(str(step.get("model") or ""), step.get("provider"))
                provider, _ = split_model(model, self.providers)
                if provider is not None:
                    check_provider_credentials(provider)
                else:  # the default server, or a model only its rendering tells
                    default = True
            if default:
                check_credentials()
            limits_from_env()  # a malformed STEPCHAIN_LIMITS fails here, not in a step
            self.settings.answer_limit()  # and so does a malformed STEPCHAIN_MAX_ANSWER_BYTES

    @property
    def approve(self) -> bool:
        return self.options.approve

    @property
    def commands_allowed(self) -> bool:
        if self.options.allow_run is not None:
            return self.options.allow_run
        return os.environ.get("STEPCHAIN_ALLOW_RUN", "").lower() in ("1", "true", "yes")

    # -- templates ------------------------------------------------------------------------
    def base_context(self) -> dict[str, Any]:
        if self._roots is None:
            self._roots = {
                "inputs": Vars(self.inputs),
                "env": Vars(self.env),
                "secrets": Vars(self.secrets),
                "run": Vars(id=self.run_id),
            }
        return dict(self._roots)

    @staticmethod
    def path_of(step: Step, *fields: str | int) -> tuple:
        return ("steps", step.index, *fields)

    def locate(self, path: tuple) -> str:
        return self.pipeline.locate(path)

    # -- tools ----------------------------------------------------------------------------
    def function_tool(self, name: str) -> FunctionTool:
        if name not in self._function_tools:
            spec, given = self.pipeline.tools[name], self.pipeline.functions.get(name)
            if given is None and not self.imports:
                raise NotImported(
                    f"tool '{name}': its definition is known only by importing it, "
                    "which plan does not do",
                    "give the tool `parameters:` (and `description:`) in the pipeline",
                )
            self._function_tools[name] = (
                given_function_tool(spec, given)
                if given is not None
                else load_function_tool(spec, self.pipeline.base_dir)
            )
        return self._function_tools[name]

    def function_identity(self, name: str) -> dict[str, Any]:
        """What identifies a function tool in cache keys: its target and its module's source."""
        spec, given = self.pipeline.tools[name], self.pipeline.functions.get(name)
        code = (
            callable_fingerprint(given)
            if given is not None
            else source_fingerprint(spec, self.pipeline.base_dir)
        )
        return {"function": spec.function or "", "code": code}

    def function_definition(self, name: str) -> dict[str, Any]:
        """The tool as offered to a model, read from its source without importing it."""
        spec = self.pipeline.tools[name]
        definition = static_definition(spec, self.pipeline.base_dir)
        if definition is None:  # not a plain top-level function: only importing tells
            definition = self.function_tool(name).definition()
        return definition

    def mcp_identity(self, name: str) -> dict[str, Any]:
        """What identifies an MCP server in cache keys (env names only: values may be secrets)."""
        from stepchain.run.mcp_servers import server_command

        spec = self.pipeline.tools[name]
        command = server_command(self, name) or []
        return {"command": command, "url": spec.url, "env": sorted(spec.env)}

    @property
    def mcp(self) -> Any:
        if self._mcp_pool is None:
            from stepchain.run.mcp_servers import make_pool

            self._mcp_pool = make_pool(self)
        return self._mcp_pool

    async def mcp_tools(self, server: str) -> list[dict[str, Any]]:
        """The tools an MCP server lists (starting it if need be)."""
        connection = await self.mcp.get(server)
        tools: list[dict[str, Any]] = await connection.list_tools()
        return tools

    async def mcp_replay_safe(self, server: str, tool: str) -> bool:
        """Whether the server's annotations let `server.tool`'s answer be cached."""
        return any(t["name"] == tool and t["replay_safe"] for t in await self.mcp_tools(server))

    async def replay_safe(self, step: Step, request: dict[str, Any]) -> bool:
        """Whether MCP servers with no `cache:` written let this request's result be cached.

        A tool step: the tool it called. A prompt step: every MCP tool it offered the model,
        since the answer may carry any of their results.
        """
        if step.kind == "tool":
            return await self.mcp_replay_safe(request["tool"], request["remote"])
        for identity in request.get("tools") or []:
            spec = self.pipeline.tools.get(identity["name"])
            if spec is None or spec.type != "mcp" or spec.hosted or spec.cache is not None:
                continue
            for tool in await self.mcp_tools(spec.name):
                offered = spec.allowed_tools is None or tool["name"] in spec.allowed_tools
                if offered and not tool["replay_safe"]:
                    return False
        return True

    async def run_command(self, request: dict[str, Any], cwd: str) -> tuple[int, bytes, bytes]:
        """A `run` step's command: here, or on a Dask worker with --executor dask."""
        if self.backend is not None:
            result: tuple[int, bytes, bytes] = await self.backend.run_command(request, cwd)
            return result
        from stepchain.steps.command import run_locally

        return await run_locally(request, cwd)

    async def call_mcp(self, server: str, tool: str, arguments: dict, timeout: float | None) -> Any:
        from stepchain.run.mcp_servers import call_tool

        return await call_tool(self, server, tool, arguments, timeout)

    @cached_property
    def approval_lock(self) -> Any:
        """One approval question at a time (asyncio is imported only by commands that run)."""
        import asyncio

        return asyncio.Lock()

    async def offload(self, func: Any, /, **kwargs: Any) -> Any:
        """Run blocking work: in a thread locally, or on a Dask worker with --executor dask."""
        if self.backend is None:
            from stepchain.tools.blocking import run_in_thread

            return await run_in_thread(func, **kwargs)
        return await self.backend.run(func, **kwargs)

    @cached_property
    def limiters(self) -> Any:
        """The run's rate limiters, one per (base URL, model); see llm.limiter."""
        from stepchain.llm.limiter import Limiters, declared_limits

        at = {
            (provider.base_url, model): limits
            for provider in self.providers.values()
            for model, limits in provider.limits.items()
        }
        declared = declared_limits(self.pipeline.limits, self.user_settings.limits)
        return Limiters(declared, at)

    @cached_property
    def user_settings(self) -> UserSettings:
        """Providers and account limits from the user settings file (see pipeline.user_settings)."""
        return load_user_settings(self.settings)

    @cached_property
    def providers(self) -> dict[str, Any]:
        """Named providers: the user settings', then the pipeline's (which win by name)."""
        from stepchain.llm.providers import parse_providers

        return parse_providers({**self.user_settings.providers, **self.pipeline.providers})

    def llm_for(self, model: str) -> tuple[Any, str, str | None]:
        """(the client, the model name it knows, the provider's api) for `model`, which may be
        `PROVIDER/MODEL`; without a provider, the default client (OPENAI_*) and no api."""
        from stepchain.llm.providers import split_model

        provider, name = split_model(model, self.providers)
        if provider is None:
            return self.llm, model, None
        client = self._provider_clients.get(provider.name)
        if client is None:
            import os

            from stepchain.llm.client import LLMClient
            from stepchain.llm.providers import check_provider_credentials

            check_provider_credentials(provider)
            client = LLMClient(
                os.environ[provider.api_key_env],
                provider.base_url,
                self.options.http_client,
                limiters=self.limiters,
                headers=provider.headers,
                max_answer_bytes=self.settings.answer_limit(),
            )
            self._provider_clients[provider.name] = client
        return client, name, provider.api

    @property
    def llm(self) -> Any:
        if self._llm is None:
            from stepchain.llm.client import LLMClient

            self._llm = LLMClient.from_env(
                self.options.http_client,
                limiters=self.limiters,
                max_answer_bytes=self.settings.answer_limit(),
            )
        return self._llm

    async def aclose(self) -> None:
        if self._mcp_pool is not None:
            await self._mcp_pool.close_all()
        if self._llm is not None:
            await self._llm.aclose()
        for client in self._provider_clients.values():
            await client.aclose()

    def describe_error(self, exc: BaseException) -> str:
        """The message recorded for a failed step, secrets masked."""
        text = str(exc) if isinstance(exc, StepChainError) else f"{type(exc).__name__}: {exc}"
        return printable(self.mask.text(text))


def is_tty() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


__all__ = ["RunOptions", "Runtime", "StepError", "default_run_id"]
