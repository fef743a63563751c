"""`stepchain plan` and `stepchain graph`: layers, critical path and drawings of inferred dependencies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESEARCH = REPO / "tests" / "pipelines" / "valid_research.yaml"

# dependencies valid_research.yaml states only through its templates (and one `needs`)
RESEARCH_EDGES = {
    ("sources", "per-source"),  # foreach: steps.sources.output.sources
    ("orders", "returns"),  # with: {gain: "{{ steps.orders.output | length }}"}
    ("per-source", "outline"),  # {% set first = steps["per-source"].output | first %}
    ("returns", "chart"),  # run: [..., "{{ steps.returns.output | tojson }}"]
    ("outline", "brief"),  # prompt: ... {{ steps.outline.output }}
    ("chart", "brief"),  # needs: [chart]
}

DIAMOND = """
version: 1
name: diamond
steps:
  - id: fetch
    prompt: Fetch
  - id: left
    prompt: "Left of {{ steps.fetch.output }}"
  - id: right
    template: "{% for r in steps.fetch.output %}{{ r }}{% endfor %}"
  - id: deeper
    prompt: "{{ steps.right.output }}"
  - id: join
    template: "{{ steps.left.output }} {{ steps.deeper.output }}"
  - id: alone
    run: [echo, hi]
"""


def test_plan_shows_parallel_layers_and_the_critical_path(cli, write):
    result = cli("plan", write("diamond.yaml", DIAMOND))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "pipeline diamond: 6 steps in 4 layers"
    assert [line for line in lines if line.startswith("layer ")] == [
        "layer 0: alone, fetch",
        "layer 1: left, right",
        "layer 2: deeper",
        "layer 3: join",
    ]
    assert "critical path: fetch -> right -> deeper -> join" in lines


def test_plan_json_has_layers_critical_path_and_every_step(cli, write):
    plan = cli.json("plan", write("diamond.yaml", DIAMOND))
    assert plan["layers"] == [["alone", "fetch"], ["left", "right"], ["deeper"], ["join"]]
    assert plan["critical_path"] == ["fetch", "right", "deeper", "join"]
    assert set(plan["steps"]) == {"fetch", "left", "right", "deeper", "join", "alone"}
    assert plan["steps"]["join"]["needs"] == ["deeper", "left"]
    assert plan["steps"]["join"]["layer"] == 3


def test_graph_json_has_nodes_edges_layers_and_critical_path(cli):
    result = cli("graph", RESEARCH, "--format", "json")
    assert result.exit_code == 0, result.stderr
    graph = json.loads(result.stdout)
    assert graph["nodes"] == [
        "sources",
        "orders",
        "per-source",
        "returns",
        "outline",
        "chart",
        "brief",
    ]
    assert {tuple(edge) for edge in graph["edges"]} == RESEARCH_EDGES
    assert graph["layers"] == [
        ["orders", "sources"],
        ["per-source", "returns"],
        ["chart", "outline"],
        ["brief"],
    ]
    assert graph["critical_path"] == ["sources", "per-source", "outline", "brief"]


def test_graph_mermaid_is_a_flowchart_of_the_inferred_dependencies(cli):
    result = cli("graph", RESEARCH, "--format", "mermaid")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "flowchart TD"
    labels: dict[str, str] = {}
    edges = set()
    for line in lines[1:]:
        node = re.fullmatch(r'    (\w+)\["([^"]*)"\]', line)
        edge = re.fullmatch(r"    (\w+) --> (\w+)", line)
        assert node or edge, f"not a mermaid node or edge: {line!r}"
        if node:
            labels[node.group(1)] = node.group(2)
        else:
            edges.add((labels[edge.group(1)], labels[edge.group(2)]))
    assert sorted(labels.values()) == sorted(
        ["sources", "orders", "per-source", "returns", "outline", "chart", "brief"]
    )
    assert edges == RESEARCH_EDGES


def test_graph_mermaid_is_the_default_format(cli):
    assert cli("graph", RESEARCH).stdout == cli("graph", RESEARCH, "--format", "mermaid").stdout


def parse_dot(text: str) -> tuple[str, list[str], set[tuple[str, str]]]:
    """The subset of DOT that `stepchain graph --format dot` writes, parsed strictly."""
    lines = text.splitlines()
    header = re.fullmatch(r'digraph ("(?:[^"\\]|\\.)*") \{', lines[0])
    assert header, lines[0]
    assert lines[-1] == "}"
    quoted = r'"(?:[^"\\]|\\.)*"'
    nodes, edges = [], set()
    for line in lines[1:-1]:
        if line.strip() == "rankdir=LR;":
            continue
        node = re.fullmatch(rf"    ({quoted});", line)
        edge = re.fullmatch(rf"    ({quoted}) -> ({quoted});", line)
        assert node or edge, f"not a DOT statement: {line!r}"
        if node:
            nodes.append(json.loads(node.group(1)))
        else:
            edges.add((json.loads(edge.group(1)), json.loads(edge.group(2))))
    return json.loads(header.group(1)), nodes, edges


def test_graph_dot_parses_to_the_same_graph(cli):
    result = cli("graph", RESEARCH, "--format", "dot")
    assert result.exit_code == 0, result.stderr
    name, nodes, edges = parse_dot(result.stdout)
    assert name == "valid-research"
    assert nodes == ["sources", "orders", "per-source", "returns", "outline", "chart", "brief"]
    assert edges == RESEARCH_EDGES


def test_every_example_pipeline_draws_in_every_format(cli):
    for path in [*sorted((REPO / "pipelines").glob("**/*.yaml")), RESEARCH]:
        mermaid = cli("graph", path, "--format", "mermaid")
        assert mermaid.exit_code == 0 and mermaid.stdout.startswith("flowchart TD\n"), path
        graph = json.loads(cli("graph", path, "--format", "json").stdout)
        _, nodes, edges = parse_dot(cli("graph", path, "--format", "dot").stdout)
        assert (nodes, edges) == (graph["nodes"], {tuple(e) for e in graph["edges"]}), path
        assert sorted(s for layer in graph["layers"] for s in layer) == sorted(graph["nodes"]), path


@pytest.mark.parametrize("command", ["plan", "graph"])
def test_an_invalid_pipeline_is_not_planned_or_drawn(cli, command):
    path = REPO / "tests" / "broken" / "cycle-three-steps.yaml"
    result = cli(command, path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"{path}:6:9: steps[0].id: cycle: a -> b -> c -> a" in result.stderr


def test_graph_rejects_an_unknown_format(cli):
    assert cli("graph", RESEARCH, "--format", "png").exit_code == 2


def _networkx_layers_and_critical_path(deps):
    """What layers and the critical path were when networkx computed them (the reference)."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(deps)
    graph.add_edges_from((dep, step) for step, needs in deps.items() for dep in needs)
    generations = [sorted(layer) for layer in nx.topological_generations(graph)]
    best = {}
    for node in nx.topological_sort(graph):
        preds = [(best[p][0], p) for p in graph.predecessors(node)]
        length, parent = max(preds, default=(0.0, None))
        best[node] = (length + 1.0, parent)
    path, node = [], max(best, key=lambda n: best[n][0]) if best else None
    while node is not None:
        path.append(node)
        node = best[node][1]
    return generations, path[::-1]


@pytest.mark.parametrize("seed", range(40))
def test_layers_and_critical_path_are_what_networkx_gives(seed):
    import random

    from stepchain.pipeline.graph import critical_path, layers

    rng = random.Random(seed)
    names = [f"s{i}" for i in range(rng.randint(0, 40))]
    rng.shuffle(names)  # file order is not name order
    deps = {
        name: frozenset(rng.sample(names[:i], rng.randint(0, min(i, 3))))
        for i, name in enumerate(names)
    }
    expected_layers, expected_path = _networkx_layers_and_critical_path(deps)
    assert layers(deps) == expected_layers
    assert critical_path(deps) == expected_path
