"""The dependency graph: order, parallel layers, critical path, cycles and drawings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import networkx as nx


def build_graph(deps: Mapping[str, Iterable[str]]) -> nx.DiGraph:
    """Edges run from a dependency to the step that needs it (data flow)."""
    import networkx as nx  # only drawing and cycle-finding need it, not plan

    graph = nx.DiGraph()
    graph.add_nodes_from(deps)
    graph.add_edges_from((dep, step) for step, needs in deps.items() for dep in needs)
    return graph


def find_cycles(graph: nx.DiGraph, order: list[str]) -> list[list[str]]:
    """One cycle per strongly connected component, each starting at its earliest step."""
    import networkx as nx

    position = {step: i for i, step in enumerate(order)}
    cycles = []
    for component in nx.strongly_connected_components(graph):
        first = min(component, key=lambda s: position.get(s, 0))
        if len(component) == 1 and not graph.has_edge(first, first):
            continue
        edges = nx.find_cycle(graph.subgraph(component), source=first)
        path = [edge[0] for edge in edges]
        start = path.index(first) if first in path else 0
        path = path[start:] + path[:start]
        cycles.append([*path, path[0]])
    return sorted(cycles, key=lambda c: position.get(c[0], 0))


# Layers and the critical path are computed here in plain Python, so that `stepchain plan` need
# not import networkx (a sixth of its start-up). They walk the graph exactly as networkx's
# topological_generations does (steps in file order, each step's dependents in file order), so
# the answers, ties included, are those networkx gives.
def _generations(deps: Mapping[str, Iterable[str]]) -> list[list[str]]:
    dependents: dict[str, list[str]] = {step: [] for step in deps}
    waiting: dict[str, int] = {}
    for step, needs in deps.items():
        unique = needs if isinstance(needs, frozenset | set) else dict.fromkeys(needs)  # once each
        waiting[step] = len(unique)
        for dep in unique:
            if dep in dependents:
                dependents[dep].append(step)
            else:  # not a step itself (never in a validated pipeline): a root, after the steps
                dependents[dep] = [step]
    waiting.update((dep, 0) for dep in dependents if dep not in waiting)
    ready = [step for step, count in waiting.items() if count == 0]
    generations = []
    while ready:
        generations.append(ready)
        ready = []
        for step in generations[-1]:
            for child in dependents[step]:
                waiting[child] -= 1
                if not waiting[child]:
                    ready.append(child)
    if sum(map(len, generations)) != len(waiting):
        raise ValueError("the dependency graph has a cycle")  # validation reports cycles first
    return generations


def layers(deps: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Topological generations: every step of a layer can run in parallel."""
    return layers_and_critical_path(deps)[0]


def critical_path(
    deps: Mapping[str, Iterable[str]], weights: Mapping[str, float] | None = None
) -> list[str]:
    """The longest chain of dependent steps (by step count, or by the given weights)."""
    return layers_and_critical_path(deps, weights)[1]


def layers_and_critical_path(
    deps: Mapping[str, Iterable[str]], weights: Mapping[str, float] | None = None
) -> tuple[list[list[str]], list[str]]:
    """Both at once, walking the graph once."""
    generations = _generations(deps)
    return [sorted(layer) for layer in generations], _longest(deps, generations, weights)


def _longest(
    deps: Mapping[str, Iterable[str]],
    generations: list[list[str]],
    weights: Mapping[str, float] | None,
) -> list[str]:
    weight = weights or {}
    length: dict[str, float] = {}  # of the longest chain ending at a step, the step included
    parent: dict[str, str | None] = {}  # the step before it on that chain
    for generation in generations:
        for node in generation:
            needs = deps.get(node)
            if needs:  # the longest, ties to the greatest name (as max() over tuples does)
                longest, parent[node] = max([(length[p], p) for p in needs])
            else:
                longest, parent[node] = 0.0, None
            length[node] = longest + weight.get(node, 1.0)
    if not length:
        return []
    last: str | None = max(length, key=length.__getitem__)
    path = []
    while last is not None:
        path.append(last)
        last = parent[last]
    return path[::-1]


def to_mermaid(graph: nx.DiGraph, order: list[str]) -> str:
    ids = {step: f"s{i}" for i, step in enumerate(order)}
    lines = ["flowchart TD"]
    lines += [f'    {ids[s]}["{_escape_mermaid(s)}"]' for s in order]
    lines += [f"    {ids[a]} --> {ids[b]}" for a, b in sorted(graph.edges, key=_edge_key(order))]
    return "\n".join(lines) + "\n"


def to_dot(graph: nx.DiGraph, order: list[str], name: str) -> str:
    lines = [f"digraph {json.dumps(name)} {{", "    rankdir=LR;"]
    lines += [f"    {json.dumps(s)};" for s in order]
    lines += [
        f"    {json.dumps(a)} -> {json.dumps(b)};"
        for a, b in sorted(graph.edges, key=_edge_key(order))
    ]
    return "\n".join([*lines, "}"]) + "\n"


def to_json(graph: nx.DiGraph, order: list[str]) -> str:
    deps = {step: graph.pred[step] for step in graph}
    doc = {
        "nodes": order,
        "edges": [[a, b] for a, b in sorted(graph.edges, key=_edge_key(order))],
        "layers": layers(deps),
        "critical_path": critical_path(deps),
    }
    return json.dumps(doc, indent=2) + "\n"


def _edge_key(order: list[str]):
    position = {s: i for i, s in enumerate(order)}
    return lambda e: (position[e[0]], position[e[1]])


def _escape_mermaid(text: str) -> str:
    return text.replace('"', "#quot;")
