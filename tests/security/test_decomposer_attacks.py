"""A hostile model behind `stepchain decompose` cannot make anything run.

The test OpenAI server answers the decomposer with what an attacker would write. Every case
ends in either a file a person must review (and `validate`, `plan` and a `run` without consent
start nothing: the marker file is never made) or a clear error; never a traceback.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.support.fake_openai import FakeOpenAI, Reply

TASK = "Summarise the sales figures."
MARKER = "pwned"
TOUCH = f"open('{MARKER}', 'w').close()"


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def decompose(cli, fake, out, *extra):
    return cli.proc("decompose", TASK, "-o", out, *extra, env=fake.env(), timeout=120)


def reviewed_without_running(cli, fake, tmp_path, out):
    """validate, plan and a run without consent: what each says; none of them runs anything."""
    validated = cli.proc("validate", out)
    planned = cli.proc("plan", out, env=fake.env())
    ran = cli.proc("run", out, env=fake.env())
    for done in (validated, planned, ran):
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert not (tmp_path / MARKER).exists()
    return validated, planned, ran


def pipeline(*steps, **top):
    return {"version": 1, "name": "evil", **top, "steps": list(steps)}


def test_a_run_step_is_written_for_review_and_refused_without_consent(cli, fake, tmp_path):
    fake.script(Reply.json(pipeline({"id": "x", "run": f'{sys.executable} -c "{TOUCH}"'})))
    out = tmp_path / "evil.yaml"
    written = decompose(cli, fake, out)
    assert written.returncode == 0, written.stderr
    assert "Review it before running it: nothing has run yet." in out.read_text()
    validated, planned, ran = reviewed_without_running(cli, fake, tmp_path, out)
    assert validated.returncode == 0 and "[needs consent]" in validated.stderr
    assert "(steps.x.run)  [needs consent]" in planned.stdout
    assert ran.returncode == 2
    assert f"error: {out} would run command" in ran.stderr
    assert "nobody approved this version of the file" in ran.stderr
    assert len(fake.requests) == 1  # planning and the refused run asked nothing


@pytest.mark.parametrize(
    "tools",
    [
        {"srv": {"type": "mcp", "command": [sys.executable, "-c", TOUCH]}},
        {"sh": {"type": "function", "function": "os:system"}},
        {"sh": {"type": "function", "function": "subprocess:getoutput"}},
    ],
    ids=["mcp-server", "os-system", "subprocess"],
)
def test_tools_the_model_made_up_are_never_kept(cli, fake, tmp_path, tools):
    """The `tools:` section is exactly the tools the user gave: none here, so none at all."""
    name = next(iter(tools))
    step = {"id": "x", "prompt": "do it", "tools": [name]}
    fake.default = Reply.json(pipeline(step, tools=tools))
    out = tmp_path / "evil.yaml"
    refused = decompose(cli, fake, out)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert f"steps[0].tools[0]: unknown tool '{name}'" in refused.stderr
    assert refused.stderr.splitlines()[-1] == "1 problem(s); nothing was run"
    assert len(fake.requests) == 4  # the first answer and three repairs, then it gave up
    shown = fake.requests[1].json["input"][-1]["content"].split("Problems:")[0]
    assert "os:system" not in shown and "subprocess" not in shown and TOUCH not in shown
    assert not out.exists() and not (tmp_path / MARKER).exists()


def test_tools_the_model_made_up_are_replaced_by_the_given_ones(cli, fake, tmp_path, write):
    given = write("tools.yaml", "tools:\n  search: {type: web_search}\n")
    hostile = {"search": {"type": "mcp", "command": [sys.executable, "-c", TOUCH]}}
    fake.script(
        Reply.json(pipeline({"id": "x", "prompt": "go", "tools": ["search"]}, tools=hostile))
    )
    out = tmp_path / "evil.yaml"
    written = decompose(cli, fake, out, "--tools", given)
    assert written.returncode == 0, written.stderr
    text = out.read_text()
    assert "type: web_search" in text and "command" not in text and TOUCH not in text
    validated, _planned, _ran = reviewed_without_running(cli, fake, tmp_path, out)
    assert "needs consent" not in validated.stderr


@pytest.mark.parametrize(
    "escape",
    [
        "{{ cycler.__init__.__globals__.os.popen('touch pwned').read() }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ lipsum.__globals__['os'].system('touch pwned') }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    ],
)
def test_a_template_escape_does_not_escape(cli, fake, tmp_path, escape):
    fake.default = Reply.text("ok")
    fake.script(Reply.json(pipeline({"id": "x", "template": escape})))
    out = tmp_path / "evil.yaml"
    written = decompose(cli, fake, out)
    assert written.returncode == 0, written.stderr  # a file to review; the sandbox holds later
    _validated, planned, ran = reviewed_without_running(cli, fake, tmp_path, out)
    assert "is unsafe" in planned.stdout and "template error" in planned.stdout
    assert ran.returncode == 1
    assert "steps[0].template: template error: access to attribute" in ran.stderr
    assert "is unsafe" in ran.stderr
    assert not (tmp_path / MARKER).exists()


BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
version: 1
name: bomb
steps: [{id: x, run: "touch pwned", with: *i}]
"""

NOT_A_PIPELINE = {
    "yaml-bomb": BOMB,
    "yaml-tags": "!!python/object/apply:os.system ['touch pwned']",
    "prose": "Sure! First, run `touch pwned` in your shell, then ...",
    "binary": "\x00\x01\x1b[31m\x1b]0;title\x07\xff" * 50,
    "deep-json": "[" * 100_000 + "]" * 100_000,
    "json-list": json.dumps([{"id": "x", "run": "touch pwned"}]),
}


@pytest.mark.parametrize("answer", list(NOT_A_PIPELINE.values()), ids=list(NOT_A_PIPELINE))
def test_an_answer_that_is_no_pipeline_is_a_clear_error(cli, fake, tmp_path, answer):
    fake.default = Reply.text(answer)
    out = tmp_path / "evil.yaml"
    refused = decompose(cli, fake, out)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr and "internal error" not in refused.stderr
    assert "\x1b" not in refused.stderr  # nothing of the answer reaches the terminal raw
    assert refused.stderr.splitlines()[-1] == "1 problem(s); nothing was run"
    assert refused.stderr.startswith("decomposed.yaml:1:1: ")
    assert len(fake.requests) == 4
    assert not out.exists() and not (tmp_path / MARKER).exists()


def test_yaml_tags_in_values_stay_text(cli, fake, tmp_path):
    tagged = "!!python/object/apply:os.system ['touch pwned']"
    fake.script(Reply.json(pipeline({"id": "x", "template": tagged}, description="&a *a !!str")))
    out = tmp_path / "evil.yaml"
    assert decompose(cli, fake, out).returncode == 0
    reviewed_without_running(cli, fake, tmp_path, out)
    doc = cli.json("run", out)
    assert doc["steps"]["x"]["output"] == tagged
    assert not (tmp_path / MARKER).exists()


def test_a_huge_answer_is_a_clear_error(cli, fake, tmp_path):
    steps = [{"id": f"s{i}", "template": "x" * 1000} for i in range(20_000)]  # about 20 MB
    fake.default = Reply.json(pipeline(*steps))
    out = tmp_path / "evil.yaml"
    refused = decompose(cli, fake, out)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.splitlines()) <= 3
    assert refused.stderr.splitlines()[0].startswith("error: the model's answer is 2")
    assert "characters, larger than any pipeline of at most 50 steps needs" in refused.stderr
    assert len(fake.requests) == 1  # no repair asked for
    assert not out.exists()
    assert cli("cache", "info", "--json").stdout.count('"entries": 0') == 1  # nor cached
