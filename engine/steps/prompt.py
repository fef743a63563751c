"""`prompt` steps: an LLM call with a local tool-call loop and validated structured output.

Function tools and MCP tools run here, in the engine; hosted tools (web_search, file_search,
code_interpreter, hosted MCP) are passed to the provider, which runs them (Responses API only).
A tool that fails, or a call to a tool the step does not offer, is answered with an error
text, so the model can recover; only running past `max_tool_calls` fails the step.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any

from jsonschema import validators
from jsonschema.exceptions import best_match
from stepchain.errors import RetryableStepError, StepError
from stepchain.llm.output_format import json_schema_format, strict_compatible
from stepchain.llm.providers import qualified, split_model
from stepchain.llm.usage import add_usage
from stepchain.llm.wire import ModelCall, ToolCall
from stepchain.pipeline.definition import DEFAULT_MODEL, Step, ToolSpec
from stepchain.steps.base import Outcome, RunServices
from stepchain.templates.render import render_text, render_value

DEFAULT_MAX_TOOL_CALLS = 10
_ANSWER_QUOTE = 2000  # characters of a wrong answer quoted back to the model
FEEDBACK_MESSAGE = (
    "Your previous answer did not match the schema: {feedback}\n"
    "Answer again with only JSON that matches the schema."
)


class SchemaMismatch(RetryableStepError):
    """Structured output that is not JSON or fails output_schema; retried with `feedback`."""

    kind = "schema"

    def __init__(self, message: str, feedback: str, usage: dict[str, int]) -> None:
        super().__init__(message, "say in the prompt what JSON to produce, or loosen output_schema")
        self.feedback = feedback
        self.usage = usage  # tokens the failed attempt spent


def render_request(step: Step, context: dict[str, Any], run: RunServices) -> dict[str, Any]:
    """Everything that determines the answer; computed offline (MCP schemas are not in it)."""

    def text(name: str) -> str | None:
        value = step.get(name)
        if value is None:
            return None
        return render_text(value, context, run.path_of(step, name), run.locate)

    model = qualified(text("model") or DEFAULT_MODEL, step.get("provider"))
    provider = split_model(model, run.providers)[0] if run.providers else None
    where = {"base_url": provider.base_url} if provider is not None else {}  # in the cache key
    return {
        **where,
        "model": model,
        "system": text("system"),
        "prompt": text("prompt"),
        "temperature": step.get("temperature"),
        "max_output_tokens": step.get("max_output_tokens"),
        "output_schema": step.get("output_schema"),
        "tools": [_tool_identity(run, name) for name in step.get("tools") or []],
        "max_tool_calls": step.get("max_tool_calls", DEFAULT_MAX_TOOL_CALLS),
        "api": step.get("api", "auto"),
    }


async def execute(
    step: Step, request: dict[str, Any], run: RunServices, feedback: str | None = None
) -> Outcome:
    toolbox = await _Toolbox.build(run, request["tools"])
    schema = request["output_schema"]
    fmt, wrapped = json_schema_format(schema) if schema is not None else (None, False)
    messages: list[dict[str, Any]] = [{"role": "user", "content": request["prompt"]}]
    if feedback:
        messages.append({"role": "user", "content": FEEDBACK_MESSAGE.format(feedback=feedback)})
    client, model, provider_api = run.llm_for(request["model"])
    api = provider_api if request["api"] == "auto" and provider_api else request["api"]
    call = ModelCall(
        model=model,
        messages=messages,
        system=request["system"],
        temperature=request["temperature"],
        max_output_tokens=request["max_output_tokens"],
        output_format=fmt,
        tools=toolbox.definitions,
        api=api,
        # a little past the step's own timeout, so the step's limit is the one that speaks
        timeout=(step.timeout or 600.0) + 1.0,
    )
    usage: dict[str, int] = {}
    limit, made = request["max_tool_calls"], 0
    while True:
        turn = await client.complete(call)
        add_usage(usage, turn.usage)
        if not turn.calls:
            break
        made += len(turn.calls)
        if made > limit:
            raise _with_usage(
                StepError(
                    f"the model asked for more than max_tool_calls={limit} tool calls",
                    "raise max_tool_calls on the step, or make the prompt need fewer calls",
                ),
                usage,
            )
        results = await asyncio.gather(*(toolbox.run(c, step.timeout) for c in turn.calls))
        messages.append({"role": "assistant", "content": turn.text, "calls": turn.calls})
        messages += [
            {"role": "tool", "call_id": c.id, "content": r}
            for c, r in zip(turn.calls, results, strict=True)
        ]
    if turn.refusal and not turn.text:
        raise _with_usage(
            StepError(f"the model refused to answer: {turn.refusal}", kind="refused"), usage
        )
    if turn.truncated:
        limit_text = request["max_output_tokens"] or "the model's limit"
        raise _with_usage(
            StepError(
                f"the answer was cut off at max_output_tokens ({limit_text})",
                "raise max_output_tokens on the step, or ask for a shorter answer",
            ),
            usage,
        )
    if schema is None:
        return Outcome(turn.text, usage)
    return Outcome(_parse(turn.text, schema, wrapped, usage), usage)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse(text: str, schema: dict[str, Any], wrapped: bool, usage: dict[str, int]) -> Any:
    """The answer as a JSON value that matches `schema`; SchemaMismatch otherwise."""
    quoted = text if len(text) <= _ANSWER_QUOTE else text[:_ANSWER_QUOTE] + "..."
    try:
        value = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        problem = (
            f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        )
        raise SchemaMismatch(problem, f"{problem}. Your answer was: {quoted}", usage) from None
    except ValueError as exc:  # NaN, Infinity: Python reads them, JSON has no such numbers
        problem = f"the answer is not valid JSON ({exc})"
        raise SchemaMismatch(problem, f"{problem}. Your answer was: {quoted}", usage) from None
    if wrapped and isinstance(value, dict) and set(value) == {"value"}:
        value = value["value"]
    validator = validators.validator_for(schema)(schema)
    error = best_match(validator.iter_errors(value))
    if error is None:
        return value
    where = "".join(f"[{p!r}]" for p in error.absolute_path)
    problem = f"the answer does not match output_schema at ${where}: {error.message}"
    raise SchemaMismatch(problem, f"{problem}. Your answer was: {quoted}", usage)


def _with_usage(error: StepError, usage: dict[str, int]) -> StepError:
    error.usage = usage  # type: ignore[attr-defined]
    return error


# -- tools ----------------------------------------------------------------------------------
def _tool_identity(run: RunServices, name: str) -> dict[str, Any]:
    spec: ToolSpec = run.pipeline.tools[name]
    if spec.type == "function":
        return {**run.function_definition(name), **run.function_identity(name)}
    if spec.hosted:
        return {"name": name, "hosted": _hosted_definition(spec)}
    allowed = list(spec.allowed_tools) if spec.allowed_tools is not None else None
    return {
        "name": name,
        "type": "mcp",
        "server": run.mcp_identity(name),
        "allowed_tools": allowed,
    }


def _hosted_definition(spec: ToolSpec, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The provider's tool definition; header values only when given (they may be secrets)."""
    if spec.type == "web_search":
        return {"type": "web_search"}
    if spec.type == "file_search":
        return {
            "type": "file_search",
            "vector_store_ids": list(spec.extra.get("vector_store_ids") or []),
        }
    if spec.type == "code_interpreter":
        return {
            "type": "code_interpreter",
            "container": spec.extra.get("container") or {"type": "auto"},
        }
    definition: dict[str, Any] = {
        "type": "mcp",
        "server_label": spec.server_label or spec.name,
        "server_url": spec.server_url,
        "require_approval": spec.require_approval,
    }
    if spec.allowed_tools is not None:
        definition["allowed_tools"] = list(spec.allowed_tools)
    if spec.headers:
        definition["headers"] = headers if headers is not None else sorted(spec.headers)
    return definition


class _Toolbox:
    """The tools offered to the model in one execution, and how to run the local ones."""

    def __init__(self, run: RunServices) -> None:
        self.services = run
        self.definitions: list[dict[str, Any]] = []
        self.local: dict[str, tuple[str, str | None]] = {}  # offered name -> (tool, MCP tool)
        self.servers: dict[str, str] = {}  # offered-name prefix -> MCP server

    @classmethod
    async def build(cls, run: RunServices, identities: list[dict[str, Any]]) -> _Toolbox:
        box = cls(run)
        for identity in identities:
            name = identity["name"]
            spec: ToolSpec = run.pipeline.tools[name]
            if spec.type == "function":
                definition = dict(run.function_definition(name))
                definition["strict"] = strict_compatible(definition["parameters"])
                box.definitions.append(definition)
                box.local[name] = (name, None)
            elif spec.hosted:
                box.definitions.append(box._hosted(spec))
            else:
                await box._add_mcp(spec)
        return box

    def _hosted(self, spec: ToolSpec) -> dict[str, Any]:
        headers = None
        if spec.headers:
            path = ("tools", spec.name, "headers")
            headers = render_value(
                dict(spec.headers), self.services.base_context(), path, self.services.locate
            )
        definition = _hosted_definition(spec, headers)
        if definition["type"] == "mcp" and spec.require_approval == "always":
            if not self.services.approve:
                raise StepError(
                    f"hosted MCP server '{spec.name}' has require_approval: always",
                    "review what it may do, then approve its calls with approve=True",
                )
            definition["require_approval"] = "never"  # approved up front by --approve
        return definition

    async def _add_mcp(self, spec: ToolSpec) -> None:
        prefix = _offered_name(spec.name, "")
        self.servers[prefix] = spec.name
        for tool in await self.services.mcp_tools(spec.name):
            if spec.allowed_tools is not None and tool["name"] not in spec.allowed_tools:
                continue
            offered = _offered_name(spec.name, tool["name"])
            parameters = tool.get("input_schema") or {"type": "object", "properties": {}}
            self.local[offered] = (spec.name, tool["name"])
            self.definitions.append(
                {
                    "type": "function",
                    "name": offered,
                    "description": f"{tool.get('description') or tool['name']} (MCP server {spec.name})",
                    "parameters": parameters,
                    "strict": strict_compatible(parameters),
                }
            )

    async def run(self, call: ToolCall, timeout: float | None) -> str:
        """The tool's result as text for the model; failures become error text too."""
        target = self.local.get(call.name)
        if target is None:
            return self._not_offered(call.name)
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            return f"error: the arguments are not valid JSON ({exc.msg}); send a JSON object"
        if not isinstance(arguments, dict):
            return "error: the arguments must be a JSON object"
        tool, remote = target
        try:
            if remote is None:
                result = await self.services.function_tool(tool).call(
                    arguments, offload=self.services.offload
                )
            else:
                result = await self.services.call_mcp(tool, remote, arguments, timeout)
        except Exception as exc:  # the model sees the failure and may try differently
            return f"error: {self.services.describe_error(exc)}"
        if isinstance(result, str):
            return result
        return json.dumps(result, ensure_ascii=False, default=str)

    def _not_offered(self, name: str) -> str:
        available = ", ".join(sorted(self.local)) or "none"
        for prefix, server in self.servers.items():
            if name.startswith(prefix):
                return (
                    f"error: tool '{name[len(prefix) :]}' of MCP server '{server}' is not allowed "
                    f"for this step; available tools: {available}"
                )
        return f"error: there is no tool named '{name}'; available tools: {available}"


def _offered_name(server: str, tool: str) -> str:
    """`server__tool`, as a valid function name (letters, digits, _ and -; at most 64)."""
    raw = f"{server}__{tool}"
    name = re.sub(r"[^A-Za-z0-9_-]", "_", raw)
    if len(name) > 64:
        name = f"{name[:55]}_{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return name
