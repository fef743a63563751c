"""`stepchain validate` and `stepchain plan` as whole commands, on pipelines of the kind people write.

    python benchmarks/bench_validate_plan.py [--repeat 3]

The generated pipeline is a research report, 10 steps per topic, all kinds mixed: a function tool
fetching sources, a template cleaning them (a `{% for %}` loop, filters), an LLM prompt with a
system text and an `output_schema`, a `foreach` prompt over its facts, a tool scoring them, a `run`
step drawing a chart (`when:` on an input), a summary prompt (a model override on some), a
Markdown template with conditionals, a prompt comparing the topic with the previous one (edges
across topics), and a closing note with `needs:`. The texts are phrased from
a seeded choice of sentences and topics, so they read like prose and differ from topic to topic.

- 500 steps (50 topics): `stepchain validate FILE` < 1 s.
- 10,000 steps (1,000 topics): `stepchain validate FILE` < 3 s, `stepchain plan FILE` < 8 s.

Wall time of the whole command (start-up, imports, YAML, schema, checks, graph, output), best
of --repeat; `plan` against an empty STEPCHAIN_HOME.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, arguments, best_of, env_with, fresh_home, stepchain_cmd, work_dir

SUBJECTS = ["solar inverters", "heat pumps", "battery recycling", "cold-chain logistics",
            "warehouse robots", "small modular reactors", "e-bike sharing", "vertical farming",
            "payment fraud", "satellite broadband", "green hydrogen", "smart meters"]  # fmt: skip
REGIONS = [
    "Northern Europe",
    "the Gulf states",
    "Southeast Asia",
    "the US Midwest",
    "Brazil",
    "Japan",
]
ANGLES = ["market size and growth", "regulation", "the main competitors", "supply-chain risks",
          "pricing", "customer adoption"]  # fmt: skip
OPENERS = [
    "You are a careful analyst who cites every number.",
    "You are a market researcher; be concise and concrete.",
    "You are a sceptical reviewer: flag anything unsupported.",
]

TOOLS_PY = '''"""Function tools of the generated benchmark pipeline (never called by validate or plan)."""


def fetch_docs(query: str, limit: int = 5) -> list[dict]:
    return [{"title": f"{query} #{i}", "text": f"About {query}.", "url": f"https://example.org/{i}"}
            for i in range(limit)]


def score_claims(claims: list, threshold: float = 0.5) -> dict:
    return {"checked": len(claims), "threshold": threshold}
'''


def q(text: str) -> str:
    return json.dumps(text)


def block(text: str, indent: int = 6) -> list[str]:
    return [" " * indent + line if line else "" for line in text.strip("\n").splitlines()]


def topic_steps(n: int, rng: random.Random, prev: str | None) -> list[str]:
    subject, region, angle = rng.choice(SUBJECTS), rng.choice(REGIONS), rng.choice(ANGLES)
    t = f"t{n}"
    title = f"{subject} in {region}"
    out = [
        f"  - id: fetch_{t}",
        f"    name: Sources on {title}",
        "    tool: fetch",
        f'    with: {{query: {q(f"{subject} {region} {angle}")}, limit: "{{{{ inputs.sources }}}}"}}',
        f"  - id: clean_{t}",
        "    template: |",
    ]
    out += block(f"""
Sources on {title} ({angle}):
{{% for doc in steps.fetch_{t}.output %}}
[{{{{ loop.index }}}}] {{{{ doc.title | trim }}}}: {{{{ doc.text | truncate({rng.randint(120, 400)}) }}}} <{{{{ doc.url }}}}>
{{% endfor %}}""")
    out += [f"  - id: facts_{t}", f"    system: {q(rng.choice(OPENERS))}", "    prompt: |"]
    out += block(f"""
From the sources below, list the {rng.randint(3, 8)} most important facts about {angle} for
{title}. Quote figures exactly and name the source number of each fact.
{{{{ steps.clean_{t}.output }}}}""")
    out += [
        "    output_schema:",
        "      type: object",
        "      properties: {facts: {type: array, items: {type: object, properties: "
        "{claim: {type: string}, source: {type: integer}}, required: [claim, source]}}}",
        "      required: [facts]",
        f"  - id: check_{t}",
        f"    foreach: steps.facts_{t}.output.facts",
        "    prompt: |",
    ]
    out += block(f"""
Is this claim about {subject} plausible for {region}? Answer "yes", "no" or "unclear", then one
sentence why. Claim {{{{ index + 1 }}}}: {{{{ item.claim }}}} (source [{{{{ item.source }}}}])""")
    out += [
        f"  - id: score_{t}",
        "    tool: score",
        f'    with: {{claims: "{{{{ steps.check_{t}.output }}}}", threshold: {rng.randint(4, 8) / 10}}}',
        f"  - id: chart_{t}",
        "    when: inputs.charts",
        f'    run: [python, chart.py, "{{{{ steps.score_{t}.output | tojson }}}}", {q(title)}]',
        f"  - id: summary_{t}",
    ]
    if rng.random() < 0.3:
        out.append("    model: gpt-4o")
    out += [f"    temperature: {rng.choice([0, 0.2, 0.4])}", "    prompt: |"]
    out += block(f"""
Write a {rng.choice(["short", "one-paragraph", "three-sentence"])} summary of {angle} for {title},
for {{{{ inputs.audience }}}}. Use only these checked facts:
{{% for f in steps.facts_{t}.output.facts %}}- {{{{ f.claim }}}} -> {{{{ steps.check_{t}.output[loop.index0] }}}}
{{% endfor %}}Score: {{{{ steps.score_{t}.output.checked }}}} claims checked.""")
    out += [f"  - id: section_{t}", "    template: |"]
    out += block(f"""
## {title[0].upper() + title[1:]}
{{{{ steps.summary_{t}.output }}}}
{{% if steps.chart_{t}.status == "completed" %}}![chart]({{{{ steps.chart_{t}.output | trim }}}}){{% endif %}}""")
    out += [f"  - id: compare_{t}", "    prompt: |"]
    if prev:
        out += block(
            f"Compare {title} with the previous topic in two sentences.\n"
            f"This one: {{{{ steps.summary_{t}.output }}}}\nPrevious: {{{{ steps.summary_{prev}.output }}}}"
        )
    else:
        out += block(f"Say in two sentences why {title} matters to {{{{ inputs.audience }}}}.")
    out += [
        f"  - id: note_{t}",
        f"    needs: [section_{t}]",
        f"    template: {q(f'{title}: {{{{ steps.compare_{t}.output | truncate(200) }}}} ({angle})')}",
    ]
    return out


def pipeline_yaml(topics: int) -> str:
    rng = random.Random(500 + topics)
    lines = [
        "version: 1",
        f"name: research-{topics}",
        f"description: Research report over {topics} topics (generated by benchmarks/bench_validate_plan.py).",
        "inputs:",
        "  audience: {type: string, default: a product manager}",
        "  sources: {type: integer, default: 5, minimum: 1, maximum: 20}",
        "  charts: {type: boolean, default: true}",
        "defaults: {model: gpt-4o-mini, retries: 2, timeout: 120}",
        "tools:",
        '  fetch: {type: function, function: "research_tools:fetch_docs"}',
        '  score: {type: function, function: "research_tools:score_claims"}',
        "steps:",
    ]
    for n in range(topics):
        lines += topic_steps(n, rng, f"t{n - 1}" if n else None)
    lines += ["outputs:", f"  last: {q('{{ steps.note_t' + str(topics - 1) + '.output }}')}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = arguments(__doc__, repeat=3)
    report = Report(
        f"validate and plan (whole commands, best of {args.repeat})",
        "generated research-report pipelines mixing prompts, templates, function tools, "
        "run steps, foreach, when, output_schema",
    )
    folder = work_dir("validate")
    (folder / "research_tools.py").write_text(TOOLS_PY, encoding="utf-8")
    (folder / "chart.py").write_text("import sys\nprint('chart.png', sys.argv[2])\n")
    env = env_with(STEPCHAIN_HOME=str(fresh_home()))
    cases = [(50, "validate", 1.0), (1000, "validate", 3.0), (1000, "plan", 8.0)]
    for topics, command, target in cases:
        path = folder / f"research-{topics * 10}.yaml"
        if not path.exists():
            path.write_text(pipeline_yaml(topics), encoding="utf-8")
        best, done = best_of([*stepchain_cmd(), command, str(path)], args.repeat, env=env, cwd=folder)  # fmt: skip
        what = f"`stepchain {command}`, {topics * 10:,} steps ({path.stat().st_size / 1e6:.1f} MB)"
        if done.returncode != 0:
            failure = (done.stdout + done.stderr).strip()[-300:]
            report.row(
                what, f"FAILED (exit {done.returncode}): {failure}", f"< {target:g} s", False
            )
        else:
            report.row(what, f"{best:.2f} s", f"< {target:g} s", best < target)
    report.save(args.json)


if __name__ == "__main__":
    main()
