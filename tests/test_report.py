"""`stepchain report RUN_ID`: a recorded run as one self-contained HTML file, or a Markdown summary."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from stepchain.run.database import Storage
from stepchain.run.migrations import MIGRATIONS
from stepchain.run.results import StepResult

from tests.support.fake_openai import FakeOpenAI, Reply

V0 = Path(__file__).parent / "data" / "runs-v0.db"
LATEST = len(MIGRATIONS)

# six steps: a foreach, a failure and the step it blocks, a `when` skip, a secret declared
PIPELINE = (Path(__file__).parent / "pipelines" / "report_shop.yaml").read_text()


@pytest.fixture(autouse=True)
def shop_token(monkeypatch):
    monkeypatch.setenv("SHOP_TOKEN", "tok-very-secret")


def run(cli, path: Path, run_id: str, *args: str) -> None:
    result = cli("run", path, "--run-id", run_id, *args)
    assert result.exit_code in (0, 1) and f"run {run_id} " in result.stderr, result.stderr


def test_a_report_is_one_self_contained_html_file(cli, write, tmp_path):
    pipeline = write("shop.yaml", PIPELINE)
    run(cli, pipeline, "first")
    result = cli("report", "first", "-o", tmp_path / "run.html")
    assert result.exit_code == 0, result.stderr
    assert "wrote" in result.stderr
    page = (tmp_path / "run.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    # nothing is fetched: no external scripts, styles, images or links
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert "default-src 'none'" in page  # the page itself forbids network access
    # header: pipeline, run id, status, duration, tokens, cache hit rate
    for fact in ("shop", "first", "failed", "duration", "total tokens", "cache hit rate"):
        assert fact in page
    # the graph: one node per step, one edge per dependency
    svg = page[page.index('<svg id="graph"') : page.index("</svg>")]
    assert svg.count('class="node ') == 6
    assert (
        svg.count('class="edge"') == 4
    )  # items->each, items->broken, broken->after_broken, each->summary
    # the timeline: a row per step; the foreach step folded into one row with its count
    timeline = page[page.index('<div id="timeline">') :]
    assert "each ×3" in timeline
    assert timeline.count('class="track"') == 6
    # per step: status, output, error, skip reason
    assert "alpha #0" in page
    assert "template error: list object has no element 7" in page
    assert "steps.broken failed" in page
    assert "when: inputs.region == &quot;south&quot; is false" in page
    assert "tok-very-secret" not in page
    assert "No earlier run of this pipeline" in page


def test_the_report_compares_with_the_previous_run_of_the_pipeline(cli, write, tmp_path):
    pipeline = write("shop.yaml", PIPELINE)
    run(cli, pipeline, "first")
    pipeline.write_text(PIPELINE.replace("{{ item }} #{{ index }}", "{{ item }} no. {{ index }}"))
    run(cli, pipeline, "second")
    page = cli("report", "second").stdout
    assert "Changes against first" in page
    changes = page[page.index('<table id="changes">') :]
    changes = changes[: changes.index("</table>")]
    assert "<td>replayed</td><td>1</td>" in changes  # items
    assert "<td>ran again (request changed)</td><td>2</td>" in changes  # each, summary
    assert "Steps whose request changed or that are new: each, summary" in page

    summary = cli("report", "second", "--format", "md")
    assert summary.exit_code == 0, summary.stderr
    text = summary.stdout
    assert text.startswith("### StepChain run `second`: failed")
    assert "| shop | failed |" in text
    assert "| 0 | 33% |" in text  # tokens (templates cost none), cache hit rate: 1 of 3 done
    counts = text[text.index("| steps |") :].splitlines()[:3]
    assert counts == [
        "| steps | completed | cached | failed | skipped |",
        "| --- | --- | --- | --- | --- |",
        "| 6 | 2 | 1 | 1 | 2 |",
    ]
    assert "\nChanged or new since then: `each`, `summary`\n" in text
    assert "- `broken`: " in text
    assert (
        "Against `first`: " in text
        and "1 replayed" in text
        and "2 ran again (request changed)" in text
    )
    assert "<" not in text  # plain Markdown, short
    assert len(text.splitlines()) < 20


def test_a_second_identical_run_reports_every_step_replayed(cli, write):
    pipeline = write(
        "ok.yaml",
        """
        version: 1
        name: ok
        steps:
          - {id: a, template: "a"}
          - {id: b, template: "{{ steps.a.output }}b"}
        """,
    )
    run(cli, pipeline, "one")
    run(cli, pipeline, "two")
    text = cli("report", "two", "--format", "md").stdout
    assert "| ok | completed |" in text and "| 100% |" in text
    assert "Against `one`: 2 replayed" in text


def test_an_unknown_run_id_is_a_one_line_error(cli, tmp_path):
    result = cli("report", "nope", "-o", tmp_path / "run.html")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "error: no run with id 'nope'"
    assert "stepchain runs list" in result.stderr
    assert not (tmp_path / "run.html").exists()


def test_an_unwritable_output_is_a_one_line_error(cli, write, tmp_path):
    run(cli, write("shop.yaml", PIPELINE), "first")
    result = cli("report", "first", "-o", tmp_path / "missing" / "run.html")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: cannot write the report to {tmp_path}/missing/run.html:"
    )
    assert "No such file or directory" in result.stderr.splitlines()[0]


def test_runs_recorded_by_the_older_record_format_are_reported(cli, isolated_home, tmp_path):
    isolated_home.mkdir(mode=0o700)
    shutil.copyfile(V0, isolated_home / "runs.db")
    result = cli("report", "fixture-failed", "-o", tmp_path / "old.html")
    assert result.exit_code == 0, result.stderr
    page = (tmp_path / "old.html").read_text()
    svg = page[page.index('<svg id="graph"') : page.index("</svg>")]
    assert svg.count('class="node ') == 4 and svg.count('class="edge"') == 3
    assert "Changes against fixture-ok" in page
    assert "steps.rate failed" in page
    ok = cli("report", "fixture-ok", "--format", "md").stdout
    assert "| fixture | completed |" in ok
    interrupted = cli("report", "slow-interrupted", "--format", "md").stdout
    assert "interrupted" in interrupted and "- `wait`: " in interrupted


def test_a_run_in_progress_is_reported_as_far_as_it_got(cli, write, tmp_path):
    pipeline = write(
        "slow.yaml",
        """
        version: 1
        name: slow
        steps:
          - {id: first, template: "ready"}
          - {id: wait, run: [sleep, "30"]}
          - {id: after, template: "{{ steps.first.output }} {{ steps.wait.output }}"}
        """,
    )
    proc = cli.spawn("run", pipeline, "--run-id", "busy", "--allow-run")
    for _ in range(600):  # until the first step is recorded (bounded, not timed)
        storage = Storage()
        try:
            done = storage.exists("busy") and storage.load_run_state("busy").results
        finally:
            storage.close()
        if done or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    page = cli("report", "busy").stdout
    assert 'id="in-progress"' in page
    assert '<span class="badge s-pending" id="status">running</span>' in page
    svg = page[page.index('<svg id="graph"') : page.index("</svg>")]
    assert svg.count('class="node ') == 3  # the steps not recorded yet are drawn too
    # `wait` needs nothing: it runs (recorded when it finishes); `after` waits for it
    assert '<g class="node s-running" data-step="s1"' in svg
    assert '<g class="node s-pending" data-step="s2"' in svg
    timeline = page[page.index('<div id="timeline">') :]
    assert '<div class="track" data-step="s1"><div class="bar s-running" ' in timeline
    assert "width:100.000%" in timeline  # from the run's start to now
    assert "wait: running or waiting for a slot" in timeline
    md = cli("report", "busy", "--format", "md").stdout
    assert "running (in progress)" in md
    assert "| steps | completed | cached | failed | skipped | running | pending |" in md
    assert "| 3 | 1 | 0 | 0 | 0 | 1 | 1 |" in md  # steps not recorded yet are not skipped
    assert "steps</dt><dd>1 completed, 1 pending, 1 running</dd>" in page
    proc.kill()
    proc.wait()
    # killed before it could record its end: no longer in progress, but interrupted
    page = cli("report", "busy").stdout
    assert 'id="in-progress"' not in page and 'class="node s-running"' not in page
    assert '<span class="badge s-interrupted" id="status">interrupted</span>' in page
    assert "the process running this run is gone" in page and "stepchain resume busy" in page
    md = cli("report", "busy", "--format", "md").stdout
    assert md.startswith("### StepChain run `busy`: interrupted\n")
    assert "| 3 | 1 | 0 | 0 | 0 | 2 |" in md  # two steps never recorded (pending)


def test_an_output_too_large_to_embed_is_truncated_with_its_size(cli, write, tmp_path):
    pipeline = write(
        "big.yaml",
        f"""
        version: 1
        name: big
        steps:
          - id: big
            run: [{json.dumps(sys.executable)}, -c, "print('x' * 300000)"]
        """,
    )
    run(cli, pipeline, "big", "--allow-run")
    page = cli("report", "big").stdout
    assert "truncated: showing 65,536 of 300,001 characters (293.0 KB)" in page
    assert len(page) < 100_000


def test_a_2000_step_report_stays_under_5_mb(cli, write, tmp_path):
    steps = ["  - {id: s0, template: '" + "y" * 4000 + "'}"]
    steps += [
        f"  - {{id: s{i}, template: '{{{{ steps.s{i // 2}.output[:10] }}}}{'z' * 4000}'}}"
        for i in range(1, 2000)
    ]
    pipeline = write("wide.yaml", "version: 1\nname: wide\nsteps:\n" + "\n".join(steps) + "\n")
    run(cli, pipeline, "wide")
    result = cli("report", "wide", "-o", tmp_path / "wide.html")
    assert result.exit_code == 0, result.stderr
    size = (tmp_path / "wide.html").stat().st_size
    assert size < 5 * 1024 * 1024
    page = (tmp_path / "wide.html").read_text()
    assert page.count('class="node ') == 2000 and page.count('class="edge"') == 1999


def test_llm_steps_show_their_rendered_request_attempts_and_usage(cli, write, monkeypatch):
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        fake.script(
            Reply.rate_limit(retry_after=0),
            Reply.text("tides rise twice a day", input_tokens=12, output_tokens=6),
        )
        fake.responder = lambda request: Reply.text("an outline", input_tokens=5, output_tokens=3)
        pipeline = write(
            "llm.yaml",
            """
            version: 1
            name: llm
            steps:
              - {id: facts, prompt: "Facts about tides.", model: gpt-x}
              - id: outline
                foreach: '["history", "physics"]'
                prompt: "Outline {{ item }} using: {{ steps.facts.output }}"
            """,
        )
        run(cli, pipeline, "llm")
    page = cli("report", "llm").stdout
    facts = page[page.index('id="s0"') : page.index('id="s1"')]
    assert "Request, rendered" in facts
    assert "&quot;model&quot;: &quot;gpt-x&quot;" not in facts  # text is escaped, quotes kept
    assert '"model": "gpt-x"' in facts and '"prompt": "Facts about tides."' in facts
    # the 429 was waited out by the rate limiter, not retried: one attempt (SPEC §11)
    assert "attempts 1" in facts and "18 tokens" in facts
    outline = page[page.index('id="s1"') :]
    assert '"prompt": "Outline physics using: tides rise twice a day"' in outline
    assert "2 items" in outline
    # the 429 was waited out by the rate limiter (SPEC §11): one try, which completed, with
    # the wait inside it
    assert "attempts)" not in page  # no "(N attempts)" label for a single attempt
    doc = cli("runs", "show", "llm", "--json").stdout
    (only,) = json.loads(doc)["steps"]["facts"]["tries"]
    assert only["status"] == "completed" and [w["limiter"] for w in only["waits"]] == ["gpt-x"]
    assert "total tokens</dt><dd>34</dd>" in page


def test_a_recorded_pipeline_that_no_longer_loads_is_reported_without_edges(cli, tmp_path):
    storage = Storage()
    text = "version: 1\nname: legacy\nsteps:\n  - {id: a, template: x, colour: red}\n"
    storage.begin_run("legacy", name="legacy", path=None, text=text, text_hash="0" * 64, inputs={})
    storage.save_step("legacy", 0, StepResult("a", "completed", output="x", attempts=1))
    storage.save_step("legacy", 1, StepResult("b", "completed", output="y", attempts=1))
    storage.finish_run("legacy", "completed", {}, {})
    storage.close()
    page = cli("report", "legacy").stdout
    assert "the recorded pipeline no longer loads (&lt;recorded&gt;:4:" in page
    assert "colour" in page and "steps are shown without their dependencies" in page
    svg = page[page.index('<svg id="graph"') : page.index("</svg>")]
    assert svg.count('class="node ') == 2 and 'class="edge"' not in svg
    md = cli("report", "legacy", "--format", "md").stdout
    assert "> the recorded pipeline no longer loads" in md


def test_secrets_stay_masked_in_outputs_errors_and_requests(cli, write):
    pipeline = write(
        "leaky.yaml",
        """
        version: 1
        name: leaky
        secrets: [SHOP_TOKEN]
        steps:
          - {id: says, run: [sh, -c, 'echo "token=$SHOP_TOKEN"']}
          - {id: fails, run: [sh, -c, 'echo "bad $SHOP_TOKEN" >&2; exit 2']}
          - {id: quotes, run: [echo, "{{ steps.says.output }}"]}
        """,
    )
    run(cli, pipeline, "leaky", "--allow-run")
    for fmt in ("html", "md"):
        text = cli("report", "leaky", "--format", fmt).stdout
        assert "tok-very-secret" not in text
    page = cli("report", "leaky").stdout
    assert "token=***" in page and "bad ***" in page
    assert '"token=***\\n"' in page  # the rendered argv of `quotes`, masked too


def _track(page: str, row: str) -> list[str]:
    """The states of the bars in one timeline track (`s0`, or an item row's first bar)."""
    start = page.index(f'<div class="track" data-step="{row}">')
    track = page[start : page.index("</div></div>", start)]
    return re.findall(r'class="bar s-(\w+)"', track)


def test_a_wait_for_a_rate_limit_is_its_own_segment_of_the_attempt(cli, write, monkeypatch):
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        fake.script(Reply.rate_limit(retry_after=None, retry_after_ms=300))
        fake.default = Reply.text("calm seas")
        pipeline = write(
            "limited.yaml",
            """
            version: 1
            name: limited
            steps:
              - {id: ask, prompt: "Sea state?", model: gpt-test}
            """,
        )
        run(cli, pipeline, "limited")
        assert [r.reply.status for r in fake.requests if r.reply] == [429, 200]
    page = cli("report", "limited").stdout
    # queued, sent (answered 429), waiting for the rate limit, sent again and answered
    assert _track(page, "s0") == ["queued", "completed", "ratelimit", "completed"]
    assert "for the rate limit of gpt-test" in page
    assert '<i class="s-ratelimit"></i>waiting for a rate limit' in page  # the legend
    tries = page[page.index('<table class="tries">') :]
    assert "<td>1 × 0." in tries and "s for the rate limit of gpt-test</td>" in tries
    doc = json.loads(cli("runs", "show", "limited", "--json").stdout)
    (attempt,) = doc["steps"]["ask"]["tries"]
    (wait,) = attempt["waits"]
    assert wait["limiter"] == "gpt-test"
    assert attempt["started_at"] < wait["started_at"] < wait["finished_at"]
    assert wait["finished_at"] <= attempt["finished_at"]
    assert "<dt>rate-limit waits</dt><dd>1 (0." in page
    md = cli("report", "limited", "--format", "md").stdout
    assert "Waits for a rate limit: 1 (0." in md


def test_foreach_items_fold_into_one_row_that_unfolds_into_a_row_per_item(cli, write, monkeypatch):
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        fake.default = Reply.text("ok")
        pipeline = write(
            "fan.yaml",
            """
            version: 1
            name: fan
            limits:
              gpt-test: {rpm: 120}  # two a second: items beyond the first two wait
            steps:
              - id: each
                foreach: "range(4) | list"
                prompt: "item {{ item }}"
                model: gpt-test
            """,
        )
        run(cli, pipeline, "fan")
        run(cli, pipeline, "fan-again")
    page = cli("report", "fan").stdout
    timeline = page[page.index('<div id="timeline">') :]
    assert (
        '<button type="button" class="fold" data-fold="s0" aria-expanded="false" '
        'title="show each item">▸</button>each ×4' in timeline
    )
    rows = re.findall(r'<div class="label item" data-parent="s0" hidden>([^<]*)</div>', timeline)
    assert len(rows) == 4 and all(re.fullmatch(r"item \d · completed · \d\.\d\ds", r) for r in rows)
    items = re.findall(r'<div class="track item" data-parent="s0" hidden>(.*?)</div></div>', page)
    states = [re.findall(r'class="bar s-(\w+)"', track) for track in items]
    assert all(s[0] == "queued" and s[-1] == "completed" for s in states)
    assert sum("ratelimit" in s for s in states) >= 2  # declared limit: waited, never a 429
    assert "each[3] attempt 1: waiting " in page
    # the second run took every item from the cache
    again = cli("report", "fan-again").stdout
    cached = re.findall(r'<div class="label item" data-parent="s0" hidden>([^<]*)</div>', again)
    assert cached == [f"item {n} (cached)" for n in range(4)]


def test_a_large_foreach_unfolds_a_bounded_number_of_item_rows(cli, write, calls_log):
    pipeline = write(
        "many.yaml",
        """
        version: 1
        name: many
        tools:
          echo: {type: function, function: "tools:echo"}
        steps:
          - {id: each, foreach: "range(250) | list", tool: echo, with: {value: "{{ item }}"}}
        """,
    )
    run(cli, pipeline, "many")
    page = cli("report", "many").stdout
    assert page.count('<div class="label item" data-parent="s0" hidden>item ') == 200
    assert '<div class="label item muted" data-parent="s0" hidden>and 50 more items</div>' in page
    assert "250 items" in page


def test_the_item_rows_of_a_whole_report_are_bounded(cli, write, calls_log):
    steps = "".join(
        f'  - {{id: each{n}, foreach: "range(200) | list", tool: echo, with: {{value: "{{{{ item }}}}"}}}}\n'
        for n in range(11)
    )
    tools = "tools:\n  echo: {type: function, function: 'tools:echo'}\n"
    run(cli, write("wide.yaml", f"version: 1\nname: wide\n{tools}steps:\n{steps}"), "wide")
    page = cli("report", "wide").stdout
    assert page.count('<div class="label item" data-parent=') == 2000  # 10 steps' worth
    assert '<div class="label item muted" data-parent="s10" hidden>and 200 more items</div>' in page


def test_unreadable_attempts_in_a_run_record_are_left_out_with_a_note(cli):
    storage = Storage()
    text = "version: 1\nname: odd\nsteps:\n  - {id: a, template: x}\n  - {id: b, template: y}\n"
    storage.begin_run("odd", name="odd", path=None, text=text, text_hash="0" * 64, inputs={})
    at = datetime(2026, 1, 1, tzinfo=UTC)
    odd = StepResult("a", "completed", output="x", attempts=1, started_at=at, completed_at=at)
    odd.tries = [{"started_at": "yesterday", "status": '"><script>alert(1)</script>'}]
    storage.save_step("odd", 0, odd)
    fine = StepResult("b", "completed", output="y", attempts=1, started_at=at, completed_at=at)
    fine.item_tries = "not a list"  # type: ignore[assignment]
    storage.save_step("odd", 1, fine)
    storage.finish_run("odd", "completed", {}, {})
    storage.close()
    result = cli("report", "odd")
    assert result.exit_code == 0, result.stderr
    page = result.stdout
    assert "the attempts of step a in the run record are unreadable" in page
    assert "the attempts of step b in the run record are unreadable" in page
    assert "<script>alert" not in page and "yesterday" not in page
    assert page.count('class="node s-completed"') == 2


def test_a_run_database_from_a_newer_stepchain_is_refused_in_one_line(cli, write, isolated_home):
    run(cli, write("ok.yaml", "version: 1\nname: ok\nsteps:\n  - {id: a, template: a}\n"), "ok")
    path = isolated_home / "runs.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA user_version = 999")
    result = cli.proc("report", "ok")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: the run database {path} is of version 999, newer than this StepChain knows "
        f"(version {LATEST}); upgrade StepChain to use it"
    ]
