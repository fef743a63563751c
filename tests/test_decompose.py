"""The decomposer: a task in words -> a validated pipeline, against a fake OpenAI server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import stepchain
from stepchain.decomposer import decompose_to_yaml
from stepchain.errors import CredentialsMissing, PipelineInvalid, UsageError
from stepchain.pipeline.load import check_text

from tests.support.fake_openai import FakeOpenAI, Reply

TASK = "Summarise a topic, then list three follow-up questions."
GOOD = {
    "steps": [
        {
            "id": "summary",
            "prompt": "Summarise {{ inputs.topic }}.\nKeep it under 100 words.",
            "system": "You are a careful writer.",
        },
        {"id": "questions", "prompt": "Three follow-up questions on:\n{{ steps.summary.output }}"},
    ],
    "outputs": {"questions": "{{ steps.questions.output }}"},
    "name": "topic-brief",
    "version": 1,
    "inputs": {"topic": {"type": "string", "default": "tides"}},
}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("STEPCHAIN_HOME", str(tmp_path / "home"))
        yield server


def with_steps(n: int) -> dict:
    steps = [{"id": f"s{i}", "prompt": f"Part {i} of the work."} for i in range(n)]
    return {"version": 1, "name": "many", "steps": steps}


def sent_text(request) -> str:
    return json.dumps(request.json)


def test_valid_answer_becomes_reviewable_yaml_with_a_header(fake):
    fake.script(Reply.json(GOOD))
    text = decompose_to_yaml(TASK, model="gpt-test")
    lines = text.splitlines()
    assert lines[0] == "# yaml-language-server: $schema=../schemas/pipeline.schema.json"
    assert f"# task: {TASK}" in lines
    assert "# model: gpt-test" in lines
    assert any(re.fullmatch(r"# date: \d{4}-\d{2}-\d{2}", line) for line in lines)
    body = [line for line in lines if not line.startswith("#")]
    keys = [line.split(":")[0] for line in body if re.match(r"[a-z]", line)]
    assert "steps:\n  - id: summary\n" in text
    assert keys == ["version", "name", "inputs", "steps", "outputs"]
    assert (
        "    prompt: |-\n      Summarise {{ inputs.topic }}.\n      Keep it under 100 words."
        in text
    )
    problems, pipeline = check_text("brief.yaml", text)
    assert problems == [] and [s.id for s in pipeline.steps] == ["summary", "questions"]
    [request] = fake.requests
    assert request.json["model"] == "gpt-test"
    assert request.json["text"] == {"format": {"type": "json_object"}}
    assert request.json["store"] is False
    assert "at most 10 steps" in request.json["instructions"]
    assert '"$defs"' in request.json["instructions"]  # the pipeline schema itself
    assert TASK in request.json["input"][0]["content"]


def test_decompose_returns_a_pipeline_that_can_run(fake):
    fake.script(Reply.json(GOOD), Reply.text("Tides follow the moon."), Reply.text("1? 2? 3?"))
    pipeline = stepchain.decompose(TASK)
    assert isinstance(pipeline, stepchain.Pipeline)
    assert pipeline.name == "topic-brief"
    assert pipeline.step("questions").needs == {"summary"}
    assert len(fake.requests) == 1  # it never runs anything by itself
    result = stepchain.Executor().run(pipeline)
    assert result.outputs == {"questions": "1? 2? 3?"}


def test_invalid_answer_is_repaired_with_positioned_feedback(fake):
    broken = json.loads(json.dumps(GOOD))
    broken["steps"][0]["retries"] = -1
    broken["steps"][1]["prompt"] = "Questions on {{ steps.sumary.output }}"
    fake.script(Reply.json(broken), Reply.json(GOOD))
    text = decompose_to_yaml(TASK)
    assert check_text("x.yaml", text)[0] == []
    _, second = fake.requests
    feedback = second.json["input"][-1]["content"]
    assert re.search(
        r"decomposed\.yaml:\d+:\d+: steps\[0\]\.retries: -1 is less than the minimum of 0", feedback
    )
    assert re.search(r"decomposed\.yaml:\d+:\d+: steps\[1\]\.prompt: .*sumary", feedback)
    assert (
        " 1 | version: 1\n 2 | name: topic-brief" in feedback
    )  # the numbered YAML the positions point into
    assert second.json["input"][1] == {"role": "assistant", "content": json.dumps(broken)}


def test_answer_that_is_not_json_is_fed_back(fake):
    fake.script(Reply.text("Sure! Here is your pipeline: version 1 ..."), Reply.json(GOOD))
    assert "topic-brief" in decompose_to_yaml(TASK)
    assert "not valid JSON" in fake.requests[1].json["input"][-1]["content"]


def test_too_many_steps_are_a_problem_fed_back(fake):
    fake.script(Reply.json(with_steps(3)), Reply.json(with_steps(2)))
    pipeline = stepchain.decompose(TASK, max_steps=2)
    assert len(pipeline.steps) == 2
    assert "at most 2 steps" in fake.requests[0].json["instructions"]
    assert "3 steps, but at most 2 are allowed" in fake.requests[1].json["input"][-1]["content"]


def test_gives_up_after_max_repairs_listing_the_problems(fake):
    fake.default = Reply.json(with_steps(4))
    with pytest.raises(PipelineInvalid) as info:
        stepchain.decompose(TASK, max_steps=3, max_repairs=1)
    assert len(fake.requests) == 2
    assert "4 steps, but at most 3 are allowed" in str(info.value)
    assert "after 1 repair" in str(info.value)


@pytest.mark.parametrize("bad", [0, 51])
def test_max_steps_is_bounded(fake, bad):
    with pytest.raises(UsageError, match="between 1 and 50"):
        stepchain.decompose(TASK, max_steps=bad)
    assert fake.requests == []


def test_same_task_twice_sends_one_request(fake):
    fake.script(*[Reply.json(GOOD)] * 3)
    first = decompose_to_yaml(TASK)
    second = decompose_to_yaml(TASK)
    assert first == second
    assert len(fake.requests) == 1
    decompose_to_yaml(TASK, temperature=0.7)  # other settings: another question
    assert len(fake.requests) == 2
    decompose_to_yaml(TASK, no_cache=True)  # asked again on purpose
    assert len(fake.requests) == 3


def test_cached_answer_needs_no_credentials(fake, monkeypatch):
    fake.script(Reply.json(GOOD))
    decompose_to_yaml(TASK)
    monkeypatch.delenv("OPENAI_API_KEY")
    assert "topic-brief" in decompose_to_yaml(TASK)
    with pytest.raises(CredentialsMissing, match="OPENAI_API_KEY"):
        decompose_to_yaml("Another task")
    assert len(fake.requests) == 1


def test_given_tools_are_offered_and_kept_exactly(fake, tmp_path: Path):
    tools_file = tmp_path / "tools.yaml"
    tools_file.write_text(
        "tools:\n"
        "  roi:\n"
        "    type: function\n"
        "    function: finance:calculate_roi\n"
        "    description: ROI in percent\n"
        "  search: {type: web_search}\n"
    )
    answer = {
        "version": 1,
        "name": "roi",
        "tools": {
            "roi": {"type": "function", "function": "evil:other"},
            "shell": {"type": "web_search"},
        },
        "steps": [{"id": "calc", "tool": "roi", "with": {"cost": 10, "gain": 15}}],
    }
    fake.script(Reply.json(answer))
    pipeline = stepchain.decompose(TASK, tools=tools_file)
    assert set(pipeline.tools) == {"roi", "search"}
    assert pipeline.tools["roi"].function == "finance:calculate_roi"  # never imported
    assert "finance:calculate_roi" in fake.requests[0].json["instructions"]


def test_invalid_tools_are_a_usage_error(fake):
    with pytest.raises(UsageError, match="roi"):
        stepchain.decompose(TASK, tools={"roi": {"type": "function"}})
    assert fake.requests == []
