"""`--executor dask`: the same pipelines give the same results and records as the local executor,
on a real LocalCluster with two worker processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest
from stepchain import Executor, Settings, StepChainError, Storage, load_pipeline
from stepchain.run.dask_backend import DaskBackend

distributed = pytest.importorskip("distributed")

TOOLS = """
import os
import time
from pathlib import Path

HERE = Path(__file__).parent


def square(x: int) -> int:
    return x * x


def total(values: list) -> int:
    return sum(values)


def boom(message: str = "kaput"):
    raise ValueError(message)


def flaky(name: str) -> str:
    # ConnectionError on the first call (counted next to this module, so any process sees it)
    marker = HERE / f"{name}.count"
    count = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(count + 1))
    if count < 1:
        raise ConnectionError("connection reset")
    return f"{name} ok"


def crash_once(name: str) -> str:
    # The first call kills the process that runs it, as a segfault or the OOM killer would.
    marker = HERE / f"{name}.crashed"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return f"survived in {os.getpid()}"


def counted(log: str, x: int) -> int:
    with open(log, "a") as handle:
        handle.write(f"{x}\\n")
    return x


def nap(log: str, name: str, seconds: float) -> str:
    with open(log, "a") as handle:
        handle.write(f"start {name}\\n")
    time.sleep(seconds)
    with open(log, "a") as handle:
        handle.write(f"end {name}\\n")
    return name


def pid() -> int:
    return os.getpid()
"""

HEADER = """
version: 1
name: {name}
tools:
  square: {{type: function, function: "dtools:square"}}
  total: {{type: function, function: "dtools:total"}}
  boom: {{type: function, function: "dtools:boom"}}
  flaky: {{type: function, function: "dtools:flaky"}}
  crash_once: {{type: function, function: "dtools:crash_once"}}
  counted: {{type: function, function: "dtools:counted"}}
  nap: {{type: function, function: "dtools:nap"}}
  pid: {{type: function, function: "dtools:pid"}}
defaults:
  backoff: {{initial: 0.05, max: 0.1}}
"""

MIXED = """
inputs:
  n: {type: integer, default: 4}
steps:
  - id: squares
    foreach: "range(inputs.n) | list"
    tool: square
    with: {x: "{{ item }}"}
  - {id: sum, tool: total, with: {values: "{{ steps.squares.output }}"}}
  - {id: side, tool: square, with: {x: 12}}
  - id: big
    when: "steps.sum.output > 100"
    tool: square
    with: {x: "{{ steps.sum.output }}"}
  - id: small
    when: "steps.sum.output <= 100"
    template: "small sum {{ steps.sum.output }}"
  - {id: shaky, tool: flaky, with: {name: shaky}}
  - id: optional
    tool: boom
    with: {message: optional failed}
    continue_on_error: true
  - {id: after_optional, template: "{{ steps.optional.status }} {{ steps.optional.output }}"}
  - {id: broken, tool: boom}
  - {id: never, template: "{{ steps.broken.output }}"}
  - id: shell
    run: "echo sum={{ steps.sum.output }}; echo noise >&2"
  - id: argv
    run: [PYTHON, -c, "import sys; print(sys.argv[1] * 2)", "{{ steps.side.output }}"]
  - id: bad_command
    run: "echo first >&2; echo last words >&2; exit 3"
    continue_on_error: true
outputs:
  sum: "{{ steps.sum.output }}"
  report: "{{ steps.small.output }} / {{ steps.shell.output | trim }} / {{ steps.argv.output | trim }}"
"""

TIMINGS = ("started_at", "finished_at", "duration_s", "wait_s")  # wait_s: backoff has jitter


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        yield cluster


@pytest.fixture
def scheduler(cluster) -> str:
    cluster.wait_for_workers(2, timeout=60)  # a test that killed a worker leaves a restart behind
    return cluster.scheduler_address


@pytest.fixture(autouse=True)
def fresh_tool_module():
    sys.modules.pop("dtools", None)  # every test imports the dtools.py it wrote
    yield
    sys.modules.pop("dtools", None)


@pytest.fixture
def pipeline(tmp_path: Path):
    def write(body: str, name: str = "t") -> Path:
        (tmp_path / "dtools.py").write_text(TOOLS)
        text = HEADER.format(name=name) + textwrap.dedent(body).replace("PYTHON", sys.executable)
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return path

    return write


def dask(scheduler: str, **kwargs) -> Executor:
    return Executor(executor="dask", scheduler=scheduler, **kwargs)


def recorded(run_id: str, settings: Settings | None = None):
    """The run's record, or None when the run never started."""
    storage = Storage(settings)
    try:
        return storage.load_run_state(run_id) if storage.exists(run_id) else None
    finally:
        storage.close()


def without_timings(doc):
    if isinstance(doc, dict):
        return {k: without_timings(v) for k, v in doc.items() if k not in TIMINGS}
    if isinstance(doc, list):  # a step's tries
        return [without_timings(v) for v in doc]
    return doc


def test_same_pipeline_gives_same_results_and_record_on_local_and_dask(
    pipeline, tmp_path, scheduler
):
    path = pipeline(MIXED)
    runs = {}
    for executor in ("local", "dask"):
        (tmp_path / "shaky.count").unlink(missing_ok=True)
        settings = Settings(home=tmp_path / f"home-{executor}")
        runner = Executor(settings=settings, executor=executor, scheduler=scheduler)
        result = runner.run(path, run_id="same", allow_run=True)
        record = recorded("same", settings).to_dict()
        runs[executor] = (without_timings(result.to_dict()), without_timings(record))

    assert runs["dask"] == runs["local"]
    result, record = runs["dask"]
    assert result["status"] == "failed"
    assert result["outputs"] == {"sum": 14, "report": "small sum 14 / sum=14 / 144144"}
    statuses = {sid: s["status"] for sid, s in result["steps"].items()}
    assert statuses == {
        "squares": "completed", "sum": "completed", "side": "completed", "big": "skipped",
        "small": "completed", "shaky": "completed", "optional": "failed",
        "after_optional": "completed", "broken": "failed", "never": "skipped",
        "shell": "completed", "argv": "completed", "bad_command": "failed",
    }  # fmt: skip
    steps = result["steps"]
    assert steps["squares"]["output"] == [0, 1, 4, 9]
    assert steps["shaky"]["attempts"] == 2
    assert steps["after_optional"]["output"] == "failed None"
    assert steps["broken"]["error"] == "tool 'boom' raised ValueError: kaput"
    assert steps["bad_command"]["error"] == "command exited with status 3: first\nlast words"
    assert record["status"] == "failed"


def test_sync_tools_and_commands_run_in_worker_processes(pipeline, scheduler):
    path = pipeline(
        """
        steps:
          - {id: tool, tool: pid}
          - {id: command, run: "echo $PPID"}
        """
    )
    result = dask(scheduler).run(path, allow_run=True)
    with distributed.Client(scheduler, set_as_default=False) as client:
        workers = set(client.run(os.getpid).values())
    assert result.steps["tool"].output in workers
    assert int(result.steps["command"].output) in workers
    assert os.getpid() not in workers


def test_backend_ships_functions_that_cannot_be_imported_by_name(pipeline, scheduler):
    path = pipeline("steps:\n  - {id: one, tool: pid}\n")

    async def on_the_cluster():
        backend = await DaskBackend.connect(scheduler, load_pipeline(path))
        try:
            factor = 3
            return await backend.run(lambda x: (x * factor, os.getpid()), x=5)
        finally:
            await backend.close()

    value, pid = asyncio.run(on_the_cluster())
    assert value == 15 and pid != os.getpid()


def test_foreach_items_are_separate_tasks_bounded_by_max_concurrent(pipeline, tmp_path, scheduler):
    log = tmp_path / "naps.log"
    path = pipeline(
        f"""
        steps:
          - id: fan
            foreach: "range(4) | list"
            tool: nap
            with: {{log: "{log}", name: "n{{{{ item }}}}", seconds: 0.3}}
        """
    )
    for limit in (1, 2):
        log.unlink(missing_ok=True)
        result = dask(scheduler, max_concurrent=limit).run(path, no_cache=True)
        assert result.steps["fan"].output == ["n0", "n1", "n2", "n3"]
        running = peak = 0
        for line in log.read_text().splitlines():
            running += 1 if line.startswith("start") else -1
            peak = max(peak, running)
        assert peak == limit


def test_worker_killed_mid_step_makes_the_step_retry_on_another_worker(
    pipeline, tmp_path, scheduler, cluster, monkeypatch
):
    # Dask would reschedule the task by itself; with no allowed failures the loss reaches the engine.
    monkeypatch.setattr(cluster.scheduler, "allowed_failures", 0)
    path = pipeline(
        "steps:\n  - {id: crashy, tool: crash_once, with: {name: crashy}, retries: 2}\n"
    )
    result = dask(scheduler).run(path)
    step = result.steps["crashy"]
    assert (step.status, step.attempts) == ("completed", 2)
    dead = (tmp_path / "crashy.crashed").read_text()
    assert step.output.startswith("survived in ") and not step.output.endswith(f" {dead}")


def test_dask_reschedules_a_task_whose_worker_died_without_spending_an_attempt(pipeline, scheduler):
    path = pipeline(
        "steps:\n  - {id: crashy, tool: crash_once, with: {name: crashy}, retries: 0}\n"
    )
    step = dask(scheduler).run(path).steps["crashy"]
    assert (step.status, step.attempts) == ("completed", 1)


def test_resume_after_a_cluster_side_failure_reruns_only_what_failed(
    pipeline, tmp_path, scheduler, cluster, monkeypatch
):
    monkeypatch.setattr(cluster.scheduler, "allowed_failures", 0)
    log = tmp_path / "counted.log"
    path = pipeline(
        f"""
        steps:
          - {{id: first, tool: counted, with: {{log: "{log}", x: 7}}}}
          - {{id: crashy, tool: crash_once, with: {{name: crashy}}, retries: 0}}
          - {{id: after, template: "{{{{ steps.first.output }}}} {{{{ steps.crashy.output }}}}"}}
        """
    )
    failed = dask(scheduler).run(path, run_id="r")
    assert failed.status == "failed"
    assert failed.steps["after"].status == "skipped"
    error = failed.steps["crashy"].error
    assert "the Dask worker running dtools:crash_once was lost" in error
    assert "KilledWorker" in error

    resumed = dask(scheduler).run(path, run_id="r", resume=True)
    assert resumed.status == "completed"
    assert resumed.steps["first"].cached and resumed.steps["crashy"].attempts == 1
    assert resumed.steps["after"].output.startswith("7 survived in ")
    assert log.read_text().splitlines() == ["7"]  # the completed step was not run again


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_scheduler_fails_before_anything_runs(pipeline, tmp_path, cli, monkeypatch):
    from stepchain.run import dask_backend

    monkeypatch.setattr(dask_backend, "CONNECT_TIMEOUT", 0.5)
    log = tmp_path / "counted.log"
    path = pipeline(f'steps:\n  - {{id: first, tool: counted, with: {{log: "{log}", x: 1}}}}\n')
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(StepChainError) as caught:
        dask(address).run(path, run_id="never")
    message = str(caught.value)
    assert f"cannot reach the Dask scheduler at {address}" in message
    assert "`dask scheduler`" in message and f"`dask worker {address}`" in message
    assert not recorded("never")
    assert not log.exists()

    monkeypatch.setenv("STEPCHAIN_DASK_SCHEDULER", address)
    result = cli("run", path, "--executor", "dask", "--run-id", "never")
    assert result.exit_code == 1
    assert f"cannot reach the Dask scheduler at {address}" in result.stderr
    assert not recorded("never")


def test_dask_executor_without_a_scheduler_address_says_how_to_start_one(pipeline):
    path = pipeline("steps:\n  - {id: one, tool: square, with: {x: 2}}\n")
    with pytest.raises(StepChainError, match=r"needs the address of a Dask scheduler") as caught:
        dask(None).run(path)
    assert "--scheduler tcp://HOST:8786 (scheduler= from Python" in str(caught.value)


def test_dask_executor_without_a_scheduler_is_bad_usage_on_the_cli(cli, pipeline):
    path = pipeline("steps:\n  - {id: one, tool: square, with: {x: 2}}\n")
    result = cli("run", path, "--executor", "dask")
    assert result.exit_code == 2
    assert "error: --executor dask needs the address of a Dask scheduler" in result.stderr


def test_python_api_reads_the_scheduler_address_from_the_environment(
    pipeline, scheduler, monkeypatch
):
    monkeypatch.setenv("STEPCHAIN_DASK_SCHEDULER", scheduler)
    path = pipeline("steps:\n  - {id: one, tool: pid}\n")
    assert Executor(executor="dask").run(path).steps["one"].output != os.getpid()


def test_dask_executor_without_the_extra_says_what_to_install(pipeline, scheduler, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    path = pipeline("steps:\n  - {id: one, tool: square, with: {x: 2}}\n")
    with pytest.raises(StepChainError, match=r"pip install 'stepchain\[dask\]'"):
        dask(scheduler).run(path, run_id="x")
    assert not recorded("x")


def test_tool_the_workers_cannot_import_fails_before_anything_runs(
    tmp_path, scheduler, monkeypatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "hidden_tools.py").write_text("def hello():\n    return 'hi'\n")
    monkeypatch.syspath_prepend(str(elsewhere))  # importable here, not on the workers
    path = tmp_path / "hidden.yaml"
    path.write_text(
        "version: 1\nname: hidden\ntools:\n  hello: {type: function, function: 'hidden_tools:hello'}\n"
        "steps:\n  - {id: one, tool: hello}\n"
    )
    # a module outside the pipeline's folder is a package: it needs consent
    assert Executor().run(path, allow_run=True).steps["one"].output == "hi"
    with pytest.raises(StepChainError) as caught:
        dask(scheduler).run(path, run_id="hidden", allow_run=True)
    message = str(caught.value)
    assert "the Dask workers cannot run this pipeline" in message
    assert message.count("cannot import hidden_tools:hello (ModuleNotFoundError") == 2
    assert not recorded("hidden")


def test_edited_tool_runs_its_new_code_on_long_lived_workers(pipeline, tmp_path, scheduler):
    path = pipeline("steps:\n  - {id: one, tool: square, with: {x: 3}}\n")
    assert dask(scheduler).run(path).steps["one"].output == 9
    source = tmp_path / "dtools.py"
    source.write_text(source.read_text().replace("return x * x", "return x * x * x"))
    sys.modules.pop("dtools")  # the coordinator re-imports it, as a new `stepchain run` would
    assert dask(scheduler).run(path).steps["one"].output == 27


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_step_timeout_kills_the_command_on_the_worker(pipeline, tmp_path, scheduler):
    path = pipeline(
        """
        steps:
          - {id: slow, run: "echo $$ > pid; exec sleep 30", timeout: 1, retries: 0}
        """
    )
    step = dask(scheduler).run(path, allow_run=True).steps["slow"]
    assert (step.status, step.error) == ("failed", "timed out after 1s")
    pid = int((tmp_path / "pid").read_text())
    assert wait_for(lambda: not alive(pid), timeout=5), "the command outlived its step"


def test_sigint_cancels_the_cluster_work_and_leaves_a_resumable_run(
    pipeline, tmp_path, scheduler, cli, cluster
):
    path = pipeline(
        """
        steps:
          - {id: quick, tool: square, with: {x: 5}}
          - id: slow
            needs: [quick]
            run: "if [ -f go ]; then echo resumed; else echo $$ > pid; exec sleep 30; fi"
        """
    )
    proc = cli.spawn(
        "run",
        path,
        "--executor",
        "dask",
        "--scheduler",
        scheduler,
        "--allow-run",
        "--run-id",
        "sig",
    )
    try:
        assert wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text())
        pid = int((tmp_path / "pid").read_text())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert wait_for(lambda: not alive(pid), timeout=5), "the command outlived the interrupt"
    assert wait_for(lambda: not cluster.scheduler.tasks, timeout=5), "tasks left on the cluster"
    state = recorded("sig")
    assert {r.step_id: r.status for r in state.results} == {
        "quick": "completed",
        "slow": "interrupted",
    }

    (tmp_path / "go").touch()
    resumed = dask(scheduler).run(path, run_id="sig", resume=True, allow_run=True)
    assert resumed.status == "completed"
    assert resumed.steps["quick"].cached
    assert resumed.steps["slow"].output == "resumed\n"


def test_llm_calls_stay_in_the_coordinator_under_one_limiter_per_run(
    pipeline, scheduler, monkeypatch
):
    from tests.support.fake_openai import FakeOpenAI, Reply, request_text

    def echo(body: dict) -> Reply:
        return Reply.text(f"done {request_text(body)}")

    path = pipeline(
        """
        limits:
          gpt-test: {rpm: 480}
        steps:
          - id: each
            foreach: "range(25) | list"
            prompt: "item {{ item }}"
            model: gpt-test
            retries: 0
          - {id: where, tool: pid}
        """
    )
    with FakeOpenAI(rpm=600, responder=echo) as fake:  # the server allows 10 a second
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        result = dask(scheduler, max_concurrent=25).run(path)
        rejected = fake.limits.rejected if fake.limits is not None else None
    assert result.status == "completed"
    assert result.steps["each"].output == [f"done item {i}" for i in range(25)]
    assert result.steps["where"].output != os.getpid()  # tools did go to the workers
    assert rejected == 0  # one limiter for the run held the declared limit
