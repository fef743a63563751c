"""The `stepchain` command: flags in, one engine function called, result out."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from stepchain import __version__
from stepchain.errors import PipelineInvalid, StepChainError, UsageError, for_command_line

RUN_ID_FLAG = click.option("--run-id", help="Name the run (default: <name>-<UTC time>-<4 hex>).")
RUN_FLAGS = [
    click.option(
        "--max-concurrent",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="Steps and foreach items running at once.",
    ),
    click.option("--fail-fast", is_flag=True, help="Start nothing new after the first failure."),
    click.option("--no-cache", is_flag=True, help="Ignore cache hits (results are still stored)."),
    click.option(
        "--refresh",
        multiple=True,
        metavar="STEP",
        help="Recompute this step whatever the cache holds (repeat for more steps).",
    ),
    click.option(
        "--allow-run",
        is_flag=True,
        default=None,
        help="Allow this run's commands, MCP servers and packages (see `stepchain trust`).",
    ),
    click.option(
        "--approve", is_flag=True, help="Approve MCP tools with require_approval: always."
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the run as one JSON document."),
    click.option(
        "--executor",
        type=click.Choice(["local", "dask"]),
        default="local",
        show_default=True,
        help="Where tools and commands run: here, or on a Dask cluster (needs --scheduler).",
    ),
    click.option("--scheduler", envvar="STEPCHAIN_DASK_SCHEDULER", help="Dask scheduler address."),
]


def run_flags(func: Any) -> Any:
    """The flags of `run` and `resume` (`resume` takes the run id as its argument instead)."""
    for option in reversed(RUN_FLAGS):
        func = option(func)
    return func


def input_flags(func: Any) -> Any:
    func = click.option("--inputs-file", type=click.Path(dir_okay=False), help="YAML/JSON inputs.")(
        func
    )
    return click.option(
        "-i", "--input", "assignments", multiple=True, metavar="K=V", help="An input."
    )(func)


class StepChainGroup(click.Group):
    """Shows StepChain errors as a message and a hint, with each error's own exit code."""

    group_class = type  # `runs`, `cache`, `bundle`: the same class, so the same help layout

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's first sentence in full, wrapped (click cuts them off at the width)."""
        rows = [
            (name, command.get_short_help_str(limit=1000))
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipelineInvalid as exc:
            click.echo("\n".join(p.format() for p in exc.problems), err=True)
            click.echo(f"{len(exc.problems)} problem(s); nothing was run", err=True)
            sys.exit(exc.exit_code)
        except StepChainError as exc:
            from stepchain.run.masking import printable

            click.echo(f"error: {printable(for_command_line(exc.message))}", err=True)
            if exc.hint:
                click.echo(f"  hint: {printable(for_command_line(exc.hint))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"error: cannot write{where}: {exc.strerror or exc}", err=True)
            click.echo("  hint: free some space (or raise the quota), then try again", err=True)
            sys.exit(1)
        except Exception as exc:
            if os.environ.get("STEPCHAIN_DEBUG"):
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
            click.echo(
                "  hint: this is a bug in StepChain; STEPCHAIN_DEBUG=1 shows the traceback",
                err=True,
            )
            sys.exit(70)


EPILOG = """\b
Environment:
  STEPCHAIN_HOME       cache and run records (default: ./.stepchain)
  OPENAI_API_KEY       the LLM provider's key (for prompt steps)
  OPENAI_BASE_URL      an OpenAI-compatible server: Ollama, vLLM, llama.cpp
  STEPCHAIN_LOG_LEVEL  the same as --log-level
  STEPCHAIN_ALLOW_RUN  1: the same as --allow-run
  STEPCHAIN_SETTINGS   providers and limits file (default: STEPCHAIN_HOME/settings.yaml)
  STEPCHAIN_LIMITS     rate limits, JSON: {"MODEL": {"rpm": N, "tpm": N}}
  STEPCHAIN_MAX_ANSWER_BYTES, STEPCHAIN_MAX_MCP_RESULT_BYTES, STEPCHAIN_MAX_RENDER_SIZE
                       size limits (README, "Security")

\b
Exit codes:
  0    success
  1    a run failed, a pipeline is invalid, or a check found a difference
  2    usage error: a bad flag, input or file
  70   internal error (a bug; STEPCHAIN_DEBUG=1 shows the traceback)
  130  interrupted (Ctrl-C or SIGTERM); resume with `stepchain resume RUN_ID`
"""


@click.group(cls=StepChainGroup, epilog=EPILOG)
@click.version_option(__version__, prog_name="stepchain")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    envvar="STEPCHAIN_LOG_LEVEL",
    help="Log on stderr from this level: INFO logs each step's start and finish, ERROR failures.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line with run_id, step_id, kind, attempt, duration, cached, tokens.",
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None, log_format: str) -> None:
    """StepChain: declarative YAML pipelines for LLM and tool workflows."""
    # The MCP SDK logs a traceback for every malformed line a server sends; StepChain reports
    # those as step errors already, so keep the SDK's own logging off the terminal.
    logging.getLogger("mcp").addHandler(logging.NullHandler())
    logging.getLogger("mcp").propagate = False
    if log_level or log_format != "text":
        from stepchain.settings import configure_logging, reset_logging

        configure_logging(log_level or "WARNING", log_format)
        ctx.call_on_close(reset_logging)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="text: FILE:LINE:COL lines; json: one document; github: workflow annotations.",
)
def validate(files: tuple[str, ...], fmt: str) -> None:
    """Check pipeline files; print every problem as FILE:LINE:COL: PATH: MESSAGE."""
    from stepchain.pipeline.load import check_file
    from stepchain.ui.reporting import format_problems

    problems = sorted(p for f in files for p in check_file(f))
    if problems or fmt == "json":
        click.echo(format_problems(problems, fmt))
    if not problems and fmt != "json":
        click.echo(f"{len(files)} file(s) valid", err=True)
        _list_runnables(files)
    sys.exit(1 if problems else 0)


def _list_runnables(files: tuple[str, ...]) -> None:
    """After a valid `validate`: what each file would start or import (SPEC §10)."""
    from stepchain.pipeline.consent import what_runs
    from stepchain.pipeline.load import load_pipeline
    from stepchain.ui.reporting import format_runnables

    for file in files:
        lines = format_runnables(what_runs(load_pipeline(file)))
        if lines:
            click.echo("\n".join([f"{file}:", *lines[2:]]), err=True)


@main.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option(
    "--package",
    "packages",
    multiple=True,
    metavar="NAME",
    help="Trust an installed package: its functions may be function tools in any pipeline.",
)
@click.option(
    "--forget-package", "forget", multiple=True, metavar="NAME", help="Stop trusting a package."
)
def trust(files: tuple[str, ...], packages: tuple[str, ...], forget: tuple[str, ...]) -> None:
    """Approve FILE's commands, MCP servers and function tools for its current content."""
    from stepchain.pipeline.load import load_pipeline
    from stepchain.run.trust import trust as record
    from stepchain.run.trust import trust_package
    from stepchain.settings import current_settings
    from stepchain.ui.reporting import format_runnables

    if not (files or packages or forget):
        raise UsageError("name a FILE to trust, or --package NAME", "see `stepchain trust --help`")
    for name in packages:
        trust_package(name, current_settings())
        click.echo(f"trusted package {name}: its functions may be function tools in any pipeline")
    for name in forget:
        left = trust_package(name, current_settings(), forget=True)
        click.echo(f"no longer trusted: {name} (trusted packages: {', '.join(left) or 'none'})")
    for file in files:
        pipeline = load_pipeline(file)
        allowed = record(pipeline, current_settings())
        lines = format_runnables(allowed)[2:] or ["  nothing: it runs no programs or code"]
        click.echo(
            "\n".join([f"trusted {file} (sha256 {pipeline.hash[:12]}); it may run:", *lines])
        )


@main.command()
def schema() -> None:
    """Print the pipeline JSON Schema (Draft 2020-12)."""
    from stepchain.pipeline.schema import schema_text

    click.echo(schema_text(), nl=False)


@main.command()
@click.argument("file", type=click.Path())
@input_flags
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default=None,
    help="text (default), json, or markdown (a pull-request comment).",
)
@click.option("--against", type=click.Path(dir_okay=False), help="Compare with this lock file.")
def plan(
    file: str,
    assignments: tuple[str, ...],
    inputs_file: str | None,
    as_json: bool,
    fmt: str | None,
    against: str | None,
) -> None:
    """Show layers, the critical path, and what will replay from cache or run."""
    from stepchain.pipeline.load import load_pipeline
    from stepchain.run.plan import plan_pipeline
    from stepchain.ui.reporting import format_plan

    fmt = fmt or ("json" if as_json else "text")
    pipeline = load_pipeline(file)
    inputs = _inputs(pipeline, assignments, inputs_file)
    if against is None and fmt != "markdown":
        result = plan_pipeline(pipeline, inputs)
        click.echo(json.dumps(result.to_dict(), indent=2) if fmt == "json" else format_plan(result))
        _plan_errors(result)
        return
    from stepchain.run.lock import check_lock
    from stepchain.ui.markdown import render_plan

    if against is None:
        planned = plan_pipeline(pipeline, inputs)
        click.echo(render_plan(pipeline, planned, fmt), nl=False)
    else:
        planned, locked, changes = check_lock(pipeline, inputs, lock_file=against)
        click.echo(render_plan(pipeline, planned, fmt, changes, locked, against), nl=False)
    _plan_errors(planned)


def _plan_errors(planned: Any) -> None:
    """A step whose request cannot be rendered (a template error, a render past its limits)
    fails the plan: one line each on stderr, exit 1."""
    from stepchain.run.masking import printable

    errors = [s for s in planned.steps if s.action == "error"]
    for step in errors:
        click.echo(f"error: step {step.step_id}: {printable(step.detail or '')}", err=True)
    if errors:
        sys.exit(1)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@input_flags
@click.option("--check", is_flag=True, help="Exit 1 if a lock no longer matches; write nothing.")
@click.option("--skip-unlocked", is_flag=True, help="Skip files without a FILE.lock (hooks).")
def lock(
    files: tuple[str, ...],
    assignments: tuple[str, ...],
    inputs_file: str | None,
    check: bool,
    skip_unlocked: bool,
) -> None:
    """Write FILE.lock: per step the request and output digests, model and usage."""
    from stepchain.pipeline.load import load_pipeline
    from stepchain.run.lock import check_lock_file, lock_path, write_lock

    failed = 0
    for file in files:
        if skip_unlocked and not lock_path(file).exists():
            continue
        pipeline = load_pipeline(file)
        inputs = _inputs(pipeline, assignments, inputs_file)
        if not check:
            path, changed = write_lock(pipeline, inputs)
            click.echo(f"{'wrote' if changed else 'unchanged:'} {path}", err=True)
            continue
        try:
            click.echo(check_lock_file(pipeline, inputs), err=True)
        except StepChainError as exc:
            if len(files) == 1:
                raise
            click.echo(f"error: {exc.message}", err=True)
            failed = max(failed, exc.exit_code)
    if failed:
        sys.exit(failed)


@main.group()
def bundle() -> None:
    """Portable replay bundles: the cache entries a pipeline or run needs."""


@bundle.command("export")
@click.argument("target")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="B (.gz: gzip)"
)
def bundle_export(target: str, output: str) -> None:
    """Write the cache entries pipeline FILE or run RUN_ID needs to a bundle."""
    from stepchain.run.bundle import export_bundle

    report = export_bundle(target, output)
    click.echo(f"wrote {report.entries} entries of {report.pipeline} to {report.path}", err=True)
    if report.missing:
        click.echo(
            f"  not in the cache (they will need calls): {', '.join(report.missing)}", err=True
        )


@bundle.command("import")
@click.argument("bundle_file", type=click.Path(dir_okay=False))
@click.option(
    "--pipeline", type=click.Path(dir_okay=False), help="Refuse a bundle of another file."
)
def bundle_import(bundle_file: str, pipeline: str | None) -> None:
    """Verify a bundle, then store all its entries in the cache (or none)."""
    from stepchain.pipeline.load import load_pipeline
    from stepchain.run.bundle import import_bundle

    report = import_bundle(bundle_file, pipeline=load_pipeline(pipeline) if pipeline else None)
    click.echo(f"imported {report.entries} entries of {report.pipeline}", err=True)


@main.command()
@click.argument("file", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot", "json"]), default="mermaid")
def graph(file: str, fmt: str) -> None:
    """Draw the dependency graph (mermaid renders in GitHub pull requests)."""
    from stepchain.pipeline import graph as graphs
    from stepchain.pipeline.load import load_pipeline

    pipeline = load_pipeline(file)
    g = graphs.build_graph({s.id: s.needs for s in pipeline.steps})
    order = [s.id for s in pipeline.steps]
    if fmt == "mermaid":
        click.echo(graphs.to_mermaid(g, order), nl=False)
    elif fmt == "dot":
        click.echo(graphs.to_dot(g, order, pipeline.name), nl=False)
    else:
        click.echo(graphs.to_json(g, order), nl=False)


@main.command()
@click.argument("file", type=click.Path())
@input_flags
@RUN_ID_FLAG
@run_flags
@click.option("--resume", is_flag=True, help="Reuse the completed steps of --run-id.")
@click.option("--offline", is_flag=True, help="Refuse to start if any step would need a call.")
def run(
    file: str, assignments: tuple[str, ...], inputs_file: str | None, resume: bool, **flags: Any
) -> None:
    """Run a pipeline."""
    from stepchain.pipeline.load import load_pipeline

    if resume and not flags["run_id"]:
        raise UsageError("--resume needs --run-id", "or use `stepchain resume RUN_ID`")
    pipeline = load_pipeline(file)
    _run(pipeline, _inputs(pipeline, assignments, inputs_file), resume, **flags)


@main.command()
@click.argument("run_id")
@run_flags
def resume(run_id: str, **flags: Any) -> None:
    """Resume a run: reuse its completed steps and run the rest."""
    from stepchain.run.executor import recorded_pipeline

    flags["run_id"] = run_id
    _run(recorded_pipeline(run_id), {}, True, **flags)


def _run(
    pipeline: Any, inputs: dict[str, Any], resume: bool, *, as_json: bool, **flags: Any
) -> None:
    from stepchain.run.executor import Executor
    from stepchain.ui.live_table import LiveTable

    unknown = [s for s in flags["refresh"] if s not in pipeline.by_id]
    if unknown:
        raise UsageError(f"--refresh {unknown[0]}: no such step in {pipeline.name}")
    executor = Executor(
        flags.pop("max_concurrent"),
        executor=flags.pop("executor"),
        scheduler=flags.pop("scheduler"),
    )
    run_id = flags.pop("run_id")
    with LiveTable(pipeline) as table:
        result = executor.run(
            pipeline,
            run_id=run_id,
            inputs=inputs,
            resume=resume,
            observer=table,
            handle_signals=True,
            **flags,
        )
    from stepchain.run.masking import printable

    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        for name, value in result.outputs.items():
            text = value if isinstance(value, str) else json.dumps(value)
            click.echo(f"{name}: {printable(text)}")
    failed = [r for r in result.results if r.status == "failed"]
    for r in failed:
        click.echo(
            f"step {r.step_id} failed: {printable(for_command_line(r.error or ''))}", err=True
        )
    click.echo(f"run {result.run_id} {result.status}", err=True)
    if result.status != "completed":
        click.echo(f"  resume with: stepchain resume {result.run_id}", err=True)
    sys.exit(result.exit_code)


def _inputs(pipeline: Any, assignments: tuple[str, ...], inputs_file: str | None) -> dict[str, Any]:
    from stepchain.pipeline.inputs import parse_assignments, read_inputs_file

    values = read_inputs_file(inputs_file) if inputs_file else {}
    values.update(parse_assignments(list(assignments), pipeline))
    return values


@main.group()
def runs() -> None:
    """Recorded runs."""


@runs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest runs shown."
)
def runs_list(as_json: bool, limit: int) -> None:
    """List recent runs."""
    from stepchain.run.database import Storage
    from stepchain.ui.reporting import format_runs

    storage = Storage()
    rows = storage.list_runs(limit)
    storage.close()
    click.echo(json.dumps(rows, indent=2) if as_json else format_runs(rows))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def runs_show(run_id: str, as_json: bool) -> None:
    """Show one run: inputs, every step's status, output, error, attempts, timings, tokens."""
    from stepchain.run.database import Storage
    from stepchain.ui.reporting import format_run

    storage = Storage()
    state = storage.load_run_state(run_id)
    storage.close()
    click.echo(json.dumps(state.to_dict(), indent=2, default=str) if as_json else format_run(state))


@main.command()
@click.argument("run_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default="html")
def report(run_id: str, output: str | None, fmt: str) -> None:
    """A run as one self-contained HTML file (or a Markdown summary for a CI job page)."""
    from stepchain.ui.report import render_report, write_report

    text = render_report(run_id, fmt)
    if output:
        write_report(text, output)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@main.group()
def cache() -> None:
    """The result cache."""


@cache.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def cache_info(as_json: bool) -> None:
    """Where the cache is, how many entries, how many bytes."""
    from stepchain.cache import ResultCache
    from stepchain.settings import current_settings

    store = ResultCache(current_settings())
    info = store.info()
    store.close()
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"cache    {info['path']}\nentries  {info['entries']}\nbytes    {info['bytes']}")


@cache.command("clear")
def cache_clear() -> None:
    """Delete every cached result (run records are kept)."""
    from stepchain.cache import ResultCache
    from stepchain.settings import current_settings

    store = ResultCache(current_settings())
    removed = store.clear()
    store.close()
    click.echo(f"removed {removed} cache entries")


@main.command()
@click.argument("task")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the YAML here.")
@click.option(
    "--tools", "tools_file", type=click.Path(dir_okay=False), help="YAML/JSON of named tools."
)
@click.option(
    "--max-steps",
    type=click.IntRange(1, 50),
    default=10,
    show_default=True,
    help="At most this many steps in the pipeline.",
)
@click.option("--model", help="Model for the decomposer.")
@click.option(
    "--temperature",
    type=click.FloatRange(0, 2),
    default=0.2,
    show_default=True,
    help="Sampling temperature of the decomposer's model.",
)
def decompose(
    task: str,
    output: str | None,
    tools_file: str | None,
    max_steps: int,
    model: str | None,
    temperature: float,
) -> None:
    """Write a pipeline for TASK (YAML only, for review; nothing is run)."""
    from stepchain.decomposer import decompose_to_yaml

    text = decompose_to_yaml(
        task,
        tools=tools_file,
        max_steps=max_steps,
        model=model,
        temperature=temperature,
    )
    if output:
        partial = Path(output).with_name(f".{Path(output).name}.{os.getpid()}")
        try:  # all or nothing: never half a pipeline where the file was
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, output)
        except OSError as exc:
            with contextlib.suppress(OSError):  # e.g. its folder is a file
                partial.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                exc.filename = output
                raise  # a full disk: one line, exit 1, like every other write
            raise UsageError(
                f"cannot write {output}: {exc.strerror}", "choose another -o"
            ) from None
        click.echo(f"wrote {output}; review it, then: stepchain validate {output}", err=True)
    else:
        click.echo(text, nl=False)


def entry() -> None:
    """The `stepchain` console command."""
    main()


if __name__ == "__main__":
    entry()
