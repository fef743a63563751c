"""The decomposer: a task in plain words -> a validated pipeline file. It never runs anything.

- The model answers in JSON mode (`json_object`), with the whole pipeline schema in its
  instructions. The pipeline schema cannot be strict structured output (open mappings such
  as `inputs`, `with` and `output_schema`; `oneOf`, `if`/`then`), and support for non-strict
  schemas varies between compatible servers, while JSON mode works everywhere. The answer is
  checked by the same validator as `stepchain validate` either way.
- Each answer is written out as YAML and validated as that file, so the problems fed back
  for repair point at FILE:LINE:COL of the numbered YAML the model is shown.
- Tools: only the ones given may be used; the `tools:` section is always exactly the given
  tools. They are described to the model from their configuration: nothing is imported and
  no MCP server is started.
- Every model call is cached like a step (the key is the whole request, earlier answers
  included), so the same task and settings replay the same answers without a request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from jsonschema import Draft202012Validator
from stepchain.cache import ResultCache, cache_key
from stepchain.errors import (
    PipelineInvalid,
    Problem,
    RetryableStepError,
    StepChainError,
    UsageError,
    no_running_loop,
)
from stepchain.llm.client import LLMClient, ModelCall
from stepchain.llm.limiter import Budget, Limiters, Limits, budget, declared_limits
from stepchain.llm.providers import check_provider_credentials, parse_providers, split_model
from stepchain.llm.usage import add_usage
from stepchain.pipeline.definition import DEFAULT_MODEL, Pipeline
from stepchain.pipeline.load import check_text, load_pipeline_text, read_text
from stepchain.pipeline.schema import pipeline_schema
from stepchain.pipeline.user_settings import load_user_settings
from stepchain.pipeline.v03_tools import tools_from_v03
from stepchain.pipeline.yaml_source import load_source
from stepchain.settings import LOGGER_NAME, Settings, current_settings

if TYPE_CHECKING:
    from openai import DefaultAsyncHttpxClient

log = logging.getLogger(LOGGER_NAME)
MAX_STEPS_LIMIT = 50
FILE = "decomposed.yaml"  # the name positions in repair feedback refer to
CALL_TIMEOUT = 180.0
MAX_ANSWER_CHARS = 1_000_000  # 50 steps with long prompts are a few hundred kB
TRANSIENT_ATTEMPTS = 3
_TOP_ORDER = (
    "version",
    "name",
    "description",
    "inputs",
    "env",
    "secrets",
    "defaults",
    "tools",
    "steps",
    "outputs",
)
_STEP_ORDER = ("id", "name", "description", "needs", "when", "foreach", "prompt", "tool", "run",
               "template", "system", "model", "provider", "temperature", "max_output_tokens", "output_schema",
               "tools", "max_tool_calls", "api", "with", "retries", "backoff", "timeout", "cache",
               "continue_on_error")  # fmt: skip
_SPACED_KEYS = ("tools:", "steps:", "outputs:")
_NEEDS_QUOTES = re.compile(
    r"[-+]?(0o[0-7_]+|0x[0-9a-f_]+|[0-9][0-9_]*(\.[0-9_]*)?(e[-+]?[0-9]+)?|\.inf|\.nan)"
    r"|~|null|true|false|yes|no|on|off|y|n",
    re.IGNORECASE,
)

INSTRUCTIONS = """\
You write StepChain pipelines: workflows of LLM and tool steps that an engine validates and \
runs later, after a person reviewed them. You never run anything. Answer with one JSON object: \
the pipeline document, matching the JSON Schema below.

Rules:
- version is 1; name is a short slug; description says in one sentence what the pipeline does.
- Use at most {max_steps} steps. Prefer a few well-scoped steps over many tiny ones.
- Every step has an id and exactly one kind: prompt (an LLM call), tool (a tool call), \
template (pure text rendering) or run (a shell command; avoid it unless the task needs one).
- Steps pass data through Jinja templates such as "{{{{ steps.ID.output }}}}"; dependencies \
are inferred from them, so `needs` is only for ordering without data. To pass structured data, \
give the producing step an output_schema and use steps.ID.output.FIELD or `| tojson`.
- Values the user supplies are inputs (name -> JSON Schema, with a default when sensible), \
used as "{{{{ inputs.NAME }}}}".
- foreach is an expression without braces that gives a list; the step then runs once per \
item, with "{{{{ item }}}}" and "{{{{ index }}}}".
- outputs maps names to templates of the final results.
- {tools}

The JSON Schema of a pipeline:
{schema}
"""
NO_TOOLS = "No tools are available: do not define tools or use tool steps or `tools:`."
TOOLS = (
    "Use only these tools, exactly as given (a prompt step offers them with tools: [NAME]; a tool "
    "step calls a function tool as tool: NAME and an MCP tool as tool: NAME.REMOTE_TOOL):\n"
)
REPAIR = """\
Your pipeline has problems. Here it is as the YAML file the positions refer to:

{numbered}

Problems:
{problems}

{reminder} Answer with the whole corrected pipeline as one JSON object."""


def decompose(
    task: str,
    *,
    tools: dict[str, Any] | list[Any] | str | Path | None = None,
    max_steps: int = 10,
    model: str | None = None,
    temperature: float = 0.2,
    settings: Settings | None = None,
    max_repairs: int = 3,
    no_cache: bool = False,
    http_client: DefaultAsyncHttpxClient | None = None,
) -> Pipeline:
    """Ask the LLM for a pipeline that does `task`; validated, never run.

    Args:
        task: what the pipeline should do, in plain words.
        tools: named tools the pipeline may use (the shape of a pipeline's `tools:`), the
            path of a YAML/JSON file holding them, or a StepChain 0.3 list such as
            `["web_search", {"type": "mcp", "server_label": ...}, my_function]`.
        max_steps: at most this many steps (1 to 50).
        model: the model to ask (default gpt-4o-mini).
        temperature: sampling temperature of that model.
        settings: where the cache lives (default: $STEPCHAIN_HOME or ./.stepchain).
        max_repairs: how many times problems are fed back before giving up.
        no_cache: ask the model again even when the cache holds its answers (they are
            replaced by the new ones).
        http_client: your own `openai.DefaultAsyncHttpxClient` for the requests (proxies,
            TLS, headers); it is left open.

    Raises:
        PipelineInvalid: the model's last answer still had problems (all listed).
        UsageError: max_steps out of range, or the tools are unreadable or invalid.
        CredentialsMissing: a request is needed and OPENAI_API_KEY is not set.
        StepError: the LLM server failed or refused the request.
        StepChainError: called inside a running event loop (await `adecompose` there).
    """
    no_running_loop("decompose", "adecompose")
    text = decompose_to_yaml(
        task,
        tools=tools,
        max_steps=max_steps,
        model=model,
        temperature=temperature,
        settings=settings,
        max_repairs=max_repairs,
        no_cache=no_cache,
        http_client=http_client,
    )
    return load_pipeline_text(text, FILE)


async def adecompose(
    task: str,
    *,
    tools: dict[str, Any] | list[Any] | str | Path | None = None,
    max_steps: int = 10,
    model: str | None = None,
    temperature: float = 0.2,
    settings: Settings | None = None,
    max_repairs: int = 3,
    no_cache: bool = False,
    http_client: DefaultAsyncHttpxClient | None = None,
) -> Pipeline:
    """`decompose` for async code: await it inside a running event loop (same arguments)."""
    text = await adecompose_to_yaml(
        task,
        tools=tools,
        max_steps=max_steps,
        model=model,
        temperature=temperature,
        settings=settings,
        max_repairs=max_repairs,
        no_cache=no_cache,
        http_client=http_client,
    )
    return load_pipeline_text(text, FILE)


def decompose_to_yaml(
    task: str,
    *,
    tools: dict[str, Any] | list[Any] | str | Path | None = None,
    max_steps: int = 10,
    model: str | None = None,
    temperature: float = 0.2,
    settings: Settings | None = None,
    max_repairs: int = 3,
    no_cache: bool = False,
    schema_ref: str | None = None,
    http_client: DefaultAsyncHttpxClient | None = None,
) -> str:
    """Like decompose(), but the YAML text with its header comment (what `-o FILE` writes).

    `schema_ref` is the `$schema` of the yaml-language-server modeline (default
    `../schemas/pipeline.schema.json`, as in every pipeline of this project).
    """
    no_running_loop("decompose_to_yaml", "adecompose_to_yaml")
    return asyncio.run(
        adecompose_to_yaml(
            task,
            tools=tools,
            max_steps=max_steps,
            model=model,
            temperature=temperature,
            settings=settings,
            max_repairs=max_repairs,
            no_cache=no_cache,
            schema_ref=schema_ref,
            http_client=http_client,
        )
    )


async def adecompose_to_yaml(
    task: str,
    *,
    tools: dict[str, Any] | list[Any] | str | Path | None = None,
    max_steps: int = 10,
    model: str | None = None,
    temperature: float = 0.2,
    settings: Settings | None = None,
    max_repairs: int = 3,
    no_cache: bool = False,
    schema_ref: str | None = None,
    http_client: DefaultAsyncHttpxClient | None = None,
) -> str:
    """`decompose_to_yaml` for async code."""
    if not isinstance(max_steps, int) or not 1 <= max_steps <= MAX_STEPS_LIMIT:
        raise UsageError(f"max_steps must be between 1 and {MAX_STEPS_LIMIT}, not {max_steps!r}")
    if max_repairs < 0:
        raise UsageError(f"max_repairs must be 0 or more, not {max_repairs!r}")
    given = load_tools(tools)
    model = model or DEFAULT_MODEL
    asker = _Asker(model, temperature, current_settings(settings), no_cache, http_client)
    body = await _draft(asker, task, given, max_steps, max_repairs)
    return header(task, model, schema_ref) + body


# The modeline of every pipeline this project writes (SPEC §2, pipelines/*.yaml): pipelines in
# `pipelines/`, the schema in `schemas/` (`stepchain schema > schemas/pipeline.schema.json`).
# One relative reference, the same wherever and however the file is written: the schema's $id
# names no server that serves it, and a path computed from the working directory moves.
SCHEMA_MODELINE = "../schemas/pipeline.schema.json"


def header(task: str, model: str, schema_ref: str | None = None) -> str:
    """The comment block on top of a decomposed pipeline: modeline, task, model, date."""
    ref = schema_ref or SCHEMA_MODELINE
    task_lines = task.strip().splitlines() or [""]
    lines = [
        f"# yaml-language-server: $schema={ref}",
        "# Written by `stepchain decompose`. Review it before running it: nothing has run yet.",
        f"# task: {task_lines[0]}",
        *(f"#   {line}" for line in task_lines[1:]),
        f"# model: {model}",
        f"# date: {datetime.now(UTC).date().isoformat()}",
    ]
    return "\n".join(lines) + "\n"


def load_tools(tools: dict[str, Any] | list[Any] | str | Path | None) -> dict[str, Any]:
    """The named tools, from a mapping or a YAML/JSON file, checked against the schema.

    A StepChain 0.3 list (`["web_search", {...}]`) and Python callables are accepted too.
    """
    if tools is None:
        return {}
    where = "tools"
    if isinstance(tools, list) or (
        isinstance(tools, dict) and any(callable(v) for v in tools.values())
    ):
        tools = tools_from_v03(tools)
    if isinstance(tools, (str, Path)):
        where = str(tools)
        source = load_source(where, read_text(tools))
        if source.problems:
            raise UsageError("\n".join(p.format() for p in sorted(source.problems)))
        tools = source.data
    if (
        isinstance(tools, dict)
        and isinstance(tools.get("tools"), dict)
        and "type" not in tools["tools"]
    ):
        tools = tools["tools"]  # a file with a top-level `tools:` section, like a pipeline's
    if not isinstance(tools, dict):
        raise UsageError(f"{where}: tools must be a mapping of names to tool definitions")
    schema = pipeline_schema()
    validator = Draft202012Validator({"$defs": schema["$defs"], **schema["properties"]["tools"]})
    errors = sorted(validator.iter_errors(tools), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [
            f"{where}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in errors
        ]
        raise UsageError(
            "invalid tools:\n" + "\n".join(lines),
            "fix them; they use the shape of a pipeline's tools:",
        )
    return dict(tools)


async def _draft(
    asker: _Asker, task: str, given: dict[str, Any], max_steps: int, max_repairs: int
) -> str:
    tools_text = TOOLS + json.dumps(given, indent=2) if given else NO_TOOLS
    asker.system = INSTRUCTIONS.format(
        max_steps=max_steps,
        tools=tools_text,
        schema=json.dumps(pipeline_schema(), separators=(",", ":")),
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Task: {task}"}]
    try:
        for attempt in range(max_repairs + 1):
            answer = await asker.ask(messages)
            text, problems = _check(answer, given, max_steps)
            if not problems:
                log.info("decompose: valid after %d answer(s); usage %s", attempt + 1, asker.usage)
                return text
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": _repair_message(text, problems, given)})
    finally:
        await asker.aclose()
    error = PipelineInvalid(problems)
    error.hint = (
        f"the model's pipeline still had problems after {max_repairs} repair(s); try a clearer "
        "task, another model, or more steps"
    )
    error.text = text  # type: ignore[attr-defined]  # the last draft, for whoever wants to fix it
    raise error


def _check(answer: str, given: dict[str, Any], max_steps: int) -> tuple[str, list[Problem]]:
    """The answer as YAML and its problems (the validator's, plus max_steps)."""
    try:
        doc = json.loads(answer)
    except json.JSONDecodeError as exc:
        problem = Problem(
            FILE, 1, 1, "", f"the answer is not valid JSON: {exc.msg} at char {exc.pos}"
        )
        return answer, [problem]
    except RecursionError:
        return answer, [Problem(FILE, 1, 1, "", "the answer is nested too deeply to read")]
    if not isinstance(doc, dict):
        return answer, [Problem(FILE, 1, 1, "", "the answer must be one JSON object: the pipeline")]
    doc.pop("$schema", None)  # the header's modeline says it
    doc.pop("tools", None)
    if given:
        doc["tools"] = given  # exactly the given tools, whatever the model wrote there
    text = to_yaml(doc)
    problems, _ = check_text(FILE, text)
    steps = doc.get("steps")
    if isinstance(steps, list) and len(steps) > max_steps:
        where = load_source(FILE, text)
        problems.append(
            where.problem(("steps",), f"{len(steps)} steps, but at most {max_steps} are allowed")
        )
    return text, sorted(problems)


def _repair_message(text: str, problems: list[Problem], given: dict[str, Any]) -> str:
    width = len(str(text.count("\n") + 1))
    numbered = "\n".join(f"{i:>{width}} | {line}" for i, line in enumerate(text.splitlines(), 1))
    listed = "\n".join(f"- {p.format()}" for p in problems)
    reminder = f"Use only the given tools: {', '.join(given)}." if given else NO_TOOLS
    return REPAIR.format(numbered=numbered, problems=listed, reminder=reminder)


class _Asker:
    """Model calls through the result cache; the client is created on the first real request."""

    def __init__(
        self,
        model: str,
        temperature: float,
        settings: Settings,
        no_cache: bool,
        http_client: DefaultAsyncHttpxClient | None = None,
    ) -> None:
        self.model, self.temperature, self.system = model, temperature, ""
        # a PROVIDER/MODEL names a provider of the user settings, as in a pipeline step
        user = load_user_settings(settings)
        self.provider, self.name = split_model(model, parse_providers(user.providers))
        self.limiters = Limiters(declared_limits(user.limits), self._provider_limits())
        self.cache = ResultCache(settings)
        self.settings = settings
        self.no_cache = no_cache
        self.http_client = http_client
        self.client: LLMClient | None = None
        self.usage: dict[str, int] = {}

    def _provider_limits(self) -> dict[tuple[str, str], Limits]:
        if self.provider is None:
            return {}
        return {(self.provider.base_url, m): lim for m, lim in self.provider.limits.items()}

    def _client(self) -> LLMClient:
        """The client of the model's provider (or OPENAI_*), sharing the loop's rate limiters."""
        if self.provider is None:
            return LLMClient.from_env(
                self.http_client,
                limiters=self.limiters,
                max_answer_bytes=self.settings.answer_limit(),
            )
        check_provider_credentials(self.provider)
        return LLMClient(
            os.environ[self.provider.api_key_env],
            self.provider.base_url,
            self.http_client,
            limiters=self.limiters,
            headers=self.provider.headers,
            max_answer_bytes=self.settings.answer_limit(),
        )

    async def ask(self, messages: list[dict[str, Any]]) -> str:
        call = ModelCall(
            model=self.name,
            messages=[dict(m) for m in messages],
            system=self.system,
            temperature=self.temperature,
            output_format={"type": "json_object"},
            api=self.provider.api if self.provider is not None else "auto",
            timeout=CALL_TIMEOUT,
        )
        request = {
            k: getattr(call, k)
            for k in ("model", "messages", "system", "temperature", "output_format", "api")
        }
        if self.provider is not None:  # where the request goes is part of it, as for steps
            request.update(model=self.model, base_url=self.provider.base_url)
        key = cache_key("decompose", request)
        entry = None if self.no_cache else self.cache.get(key)
        if entry is not None and isinstance(entry["output"], str):
            return entry["output"]
        if self.client is None:
            self.client = self._client()
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            # 429s are waited out (the limiter's pause) up to the call's own timeout
            deadline = asyncio.get_running_loop().time() + CALL_TIMEOUT
            token = budget.set(Budget(deadline, CALL_TIMEOUT))
            try:
                turn = await self.client.complete(call)
                break
            except RetryableStepError as exc:
                if attempt == TRANSIENT_ATTEMPTS:
                    raise
                delay = exc.retry_after if exc.retry_after is not None else 2.0 ** (attempt - 1)
                log.info("decompose: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            finally:
                budget.reset(token)
        add_usage(self.usage, turn.usage)
        if len(turn.text) > MAX_ANSWER_CHARS:  # not worth a repair, nor a place in the cache
            raise StepChainError(
                f"the model's answer is {len(turn.text):,} characters, larger than any pipeline "
                f"of at most {MAX_STEPS_LIMIT} steps needs ({MAX_ANSWER_CHARS:,}); nothing was "
                "written",
                "try again, or another model",
            )
        self.cache.put(key, turn.text, turn.usage, None)
        return turn.text

    async def aclose(self) -> None:
        self.cache.close()
        if self.client is not None:
            await self.client.aclose()


# -- YAML out -------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line text; quotes for strings YAML could read as something else."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # `steps:` items indented, as people write them


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    if _NEEDS_QUOTES.fullmatch(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


def _represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.SequenceNode:
    short = all(isinstance(v, (str, int, float, bool)) and "\n" not in str(v) for v in value)
    flow = short and len(json.dumps(value)) <= 60  # [python, server.py] reads better than a column
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def to_yaml(doc: dict[str, Any]) -> str:
    """The pipeline as YAML, keys in reading order (version, name, ..., steps, outputs)."""
    ordered = _ordered(doc, _TOP_ORDER)
    if isinstance(ordered.get("steps"), list):
        ordered["steps"] = [
            _ordered(s, _STEP_ORDER) if isinstance(s, dict) else s for s in ordered["steps"]
        ]
    text = yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)
    lines: list[str] = []
    for line in text.splitlines():
        # a blank line between steps and before the big sections; nothing else starts there
        if lines and (
            line.startswith(_SPACED_KEYS) or (line.startswith("  - id: ") and lines[-1] != "steps:")
        ):
            lines.append("")
        lines.append(line)
    return "\n".join(lines) + "\n"


def _ordered(mapping: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    first = {k: mapping[k] for k in order if k in mapping}
    return {**first, **{k: v for k, v in mapping.items() if k not in first}}
