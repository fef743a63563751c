"""Templates are bounded: time and size in `run` and `plan`, JSON values only, and a signal
always stops a run, even one busy rendering (SPEC §10 "Bounded everything")."""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest

NESTED = "{% for a in range(10**6) %}{% for b in range(10**6) %}x{% endfor %}{% endfor %}"
# no call inside the loops: only the checks compiled into every loop pass can stop it
EMPTY_LOOPS = (
    "{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}done"
)


def pipeline(write, template: str, timeout: int = 2):
    return write(
        "p.yaml",
        f"""
        version: 1
        name: bounded
        steps:
          - id: fine
            template: "kept"
          - id: t
            timeout: {timeout}
            template: {json.dumps(template)}
        """,
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (NESTED, "template error: Range too big"),
        (EMPTY_LOOPS, "template error: rendering took longer than the step's timeout allows (2s)"),
    ],
)
def test_plan_of_a_runaway_template_is_a_one_line_error_not_a_hang(cli, write, template, message):
    path = pipeline(write, template)
    # without bounds `plan` never returns; the test gives it 60 s
    result = cli.proc("plan", path, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: step t: {path}:8:15: steps[1].template: {message}")
    assert "Traceback" not in result.stderr
    assert "run      fine" in result.stdout  # the rest of the plan is still shown


def test_a_runaway_template_fails_its_step_and_keeps_the_others(cli, write):
    path = pipeline(write, EMPTY_LOOPS)
    result = cli.proc("run", path, "--json", timeout=60)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["steps"]["fine"] == {**doc["steps"]["fine"], "status": "completed", "output": "kept"}
    error = doc["steps"]["t"]["error"]
    assert error.startswith(
        f"{path}:8:15: steps[1].template: template error: rendering took longer than the step's "
        "timeout allows (2s)\n  hint: make the template do less"
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 10**10 }}",
        "{{ [0] * 10**10 }}",
        "{{ 'x'|center(10**10) }}",
        "{{ 'x'.rjust(10000000000) }}",
        "{{ '%0*d' % (10**10, 1) }}",
        "{{ '{:>{}}'.format(1, 10**10) }}",
        "{{ '{:>9999999999}'.format(1) }}",
        "{{ range(100000)|map('string')|join('x' * 1000) }}",
        "{{ ('x' * 1000000)|replace('x', 'yy' * 1000) }}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% set s %}{% for a in range(100000) %}{% for b in range(100000) %}"
        "xxxxxxxxxx{% endfor %}{% endfor %}{% endset %}{{ s|length }}",
        "{{ 7 ** 100000000 }}",
    ],
)
@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_template_cannot_make_more_than_the_size_limit(cli, write, command, template):
    path = pipeline(write, template, timeout=30)
    # each would take gigabytes (or hours) unbounded: the limit refuses it first
    result = cli.proc(command, path, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert f"{path}:8:15: steps[1].template: template error: rendering made " in result.stderr
    limit = "more than the size limit (10,000,000; STEPCHAIN_MAX_RENDER_SIZE)"
    assert limit in result.stderr or "a number of more than 100,000 bits" in result.stderr


def test_the_size_limit_is_a_setting_with_a_generous_default(cli, write, monkeypatch):
    path = pipeline(write, "{{ 'x' * 1000000 }}")
    doc = cli.json("run", path)
    assert doc["status"] == "completed" and len(doc["steps"]["t"]["output"]) == 1_000_000
    # large numbers are values, not widths
    path = pipeline(write, "{{ '%s-%d' % ('id', 12345678901) }} {{ '{}'.format(10**12) }}")
    assert cli.json("run", path)["steps"]["t"]["output"] == "id-12345678901 1000000000000"

    monkeypatch.setenv("STEPCHAIN_MAX_RENDER_SIZE", "1000")
    path = pipeline(write, "{% for i in range(600) %}ab{% endfor %}")
    doc = cli.json("run", path, "--no-cache")
    assert doc["steps"]["fine"]["output"] == "kept"
    assert doc["steps"]["t"]["error"] == (
        f"{path}:8:15: steps[1].template: template error: rendering made more than 1,000 "
        "characters of text, more than the size limit (1,000; STEPCHAIN_MAX_RENDER_SIZE)\n"
        "  hint: make the template make less, or raise STEPCHAIN_MAX_RENDER_SIZE if that much "
        "is meant"
    )

    monkeypatch.setenv("STEPCHAIN_MAX_RENDER_SIZE", "lots")
    result = cli("run", path)
    assert result.exit_code == 2
    assert "error: STEPCHAIN_MAX_RENDER_SIZE='lots' is not a positive whole number" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("step", "problem", "where"),
    [
        ('template: "{{ [1, range(3)] }}"', "holds a range at [1]", "5:15: steps[0].template"),
        (
            "template: \"{{ {'a': [1, 'b'.encode()]} }}\"",
            "holds a bytes at ['a'][1]",
            "5:15: steps[0].template",
        ),
        ("template: \"{{ 'nan'|float }}\"", "holds nan", "5:15: steps[0].template"),
        ('template: "text {{ lipsum }}"', "is a function", "5:15: steps[0].template"),
        (
            'template: "text {{ [1, lipsum] }}"',
            "holds a function at [1]",
            "5:15: steps[0].template",
        ),
        # a template inside a list: the position is the item's
        ("run: [echo, \"{{ 'b'.encode() }}\"]", "is a bytes", "5:17: steps[0].run[1]"),
    ],
)
def test_a_value_that_is_not_json_is_an_error_never_a_repr(
    cli, write, tmp_path, step, problem, where
):
    path = write(
        "p.yaml",
        f"""
        version: 1
        name: native
        steps:
          - id: t
            {step}
        """,
    )
    result = cli("run", path, "--json", "--allow-run")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["steps"]["t"]["error"]
    assert error.startswith(
        f"{path}:{where}: template error: the value {problem}, which is not JSON\n  hint: "
    )
    # no repr with a memory address anywhere: not printed, not recorded, not cached
    assert " at 0x" not in result.stdout + result.stderr
    for stored in (tmp_path / "home").rglob("*"):
        if stored.is_file():
            assert b" at 0x" not in stored.read_bytes()
    planned = cli("plan", path)
    assert planned.exit_code == 1
    assert f"error: step t: {path}:{where}: template error: the value {problem}" in planned.stderr


def test_tojson_of_a_value_that_is_not_json_is_an_error(cli, write):
    path = pipeline(write, "{{ [lipsum]|tojson }}")
    doc = cli.json("run", path)
    assert (
        "template error: Object of type function is not JSON serializable"
        in (doc["steps"]["t"]["error"])
    )


SLOW = """
version: 1
name: slow
env: [ROUNDS, PAUSE]
steps:
  - id: first
    run: [{python}, -c, "open('calls.log', 'a').write('first\\\\n')"]
  - id: loop
    needs: [first]
    timeout: 50
    template: "{{% for a in range(env.ROUNDS|int) %}}{{% for b in range(env.ROUNDS|int) %}}{{% endfor %}}{{% endfor %}}{{{{ env.ROUNDS }}}} rounds"
  - id: pause
    needs: [loop]
    run: "{python} -c 'import time, sys; open(\\"sleeping\\", \\"w\\").close(); time.sleep(float(sys.argv[1]))' {{{{ env.PAUSE }}}}"
  - id: last
    needs: [pause]
    template: "after {{{{ steps.loop.output }}}}"
"""


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("sig", "busy"),
    [(signal.SIGTERM, "loop"), (signal.SIGINT, "loop"), (signal.SIGTERM, "pause")],
)
def test_a_signal_stops_a_run_even_mid_render_and_the_run_resumes(cli, write, tmp_path, sig, busy):
    path = write("slow.yaml", SLOW.format(python=sys.executable))
    # the busy step renders (loop) or sleeps (pause) far longer than the test waits
    endless = {
        "ROUNDS": "100000" if busy == "loop" else "2",
        "PAUSE": "600" if busy == "pause" else "0",
    }
    proc = cli.spawn("--log-level", "info", "run", path, "--json", "--allow-run", env=endless)
    assert proc.stderr is not None
    if busy == "loop":
        for line in proc.stderr:  # the render starts right after the step logs its start
            if "step loop started" in line:
                break
    else:
        wait_for(lambda: (tmp_path / "sleeping").exists())  # the command is running
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["status"] == "interrupted"
    statuses = {sid: step["status"] for sid, step in doc["steps"].items()}
    assert statuses == {
        "first": "completed",
        "loop": "interrupted" if busy == "loop" else "completed",
        "pause": "interrupted" if busy == "pause" else "skipped",
        "last": "skipped",
    }
    assert doc["steps"][busy]["error"] == "interrupted"
    assert f"run {doc['run_id']} interrupted" in err
    assert f"resume with: stepchain resume {doc['run_id']}" in err
    assert "Traceback" not in err
    assert (tmp_path / "calls.log").read_text() == "first\n"

    listed = {r["run_id"]: r for r in cli.json("runs", "list")}
    assert listed[doc["run_id"]]["status"] == "interrupted"

    done = cli.proc(
        "resume", doc["run_id"], "--json", "--allow-run", env={"ROUNDS": "3", "PAUSE": "0"}
    )
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout)
    assert resumed["status"] == "completed"
    assert resumed["steps"]["first"]["cached"] is True  # kept, not run again
    assert resumed["steps"]["last"]["output"] == "after 3 rounds"
    assert (tmp_path / "calls.log").read_text() == "first\n"


def test_a_signal_while_the_outputs_render_ends_the_run_interrupted(cli, write):
    path = write(
        "out.yaml",
        """
        version: 1
        name: outs
        env: [ROUNDS]
        steps:
          - {id: only, template: "done"}
        outputs:
          slow: "{% for a in range(env.ROUNDS|int) %}{% for b in range(env.ROUNDS|int) %}{% endfor %}{% endfor %}{{ steps.only.output }}"
        """,
    )
    proc = cli.spawn("--log-level", "info", "run", path, "--json", env={"ROUNDS": "100000"})
    assert proc.stderr is not None
    for line in proc.stderr:  # the last step is done: the outputs render next
        if "step only completed" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["status"] == "interrupted"
    assert doc["steps"]["only"]["status"] == "completed"
    assert doc["outputs"] == {"slow": None}
    assert "Traceback" not in err

    done = cli.proc("resume", doc["run_id"], "--json", env={"ROUNDS": "2"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"] == {"slow": "done"}
