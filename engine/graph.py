"""The dependency graph: order, parallel layers, critical path, cycles and drawings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import networkx as nx


def build_graph(deps: Mapping[str, Iterable[str]]) -> nx.DiGraph:
    """Edges run from a dependency to the step that needs it (data flow)."""
    graph = nx.DiGraph()
    graph.add_nodes_from(deps)
    graph.add_edges_from((dep, step) for step, needs in deps.items() for dep in needs)
    return graph


def find_cycles(graph: nx.DiGraph, order: list[str]) -> list[list[str]]:
    """One cycle per strongly connected component, each starting at its earliest step."""
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


def layers(graph: nx.DiGraph) -> list[list[str]]:
    """Topological generations: every step of a layer can run in parallel."""
    return [sorted(layer) for layer in nx.topological_generations(graph)]


def critical_path(graph: nx.DiGraph, weights: Mapping[str, float] | None = None) -> list[str]:
    """The longest chain of dependent steps (by step count, or by the given weights)."""
    if graph.number_of_nodes() == 0:
        return []
    weight = weights or {}
    best: dict[str, tuple[float, str | None]] = {}
    for node in nx.topological_sort(graph):
        preds = [(best[p][0], p) for p in graph.predecessors(node)]
        length, parent = max(preds, default=(0.0, None))
        best[node] = (length + weight.get(node, 1.0), parent)
    node: str | None = max(best, key=lambda n: best[n][0])
    path = []
    while node is not None:
        path.append(node)
        node = best[node][1]
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
    doc = {
        "nodes": order,
        "edges": [[a, b] for a, b in sorted(graph.edges, key=_edge_key(order))],
        "layers": layers(graph),
        "critical_path": critical_path(graph),
    }
    return json.dumps(doc, indent=2) + "\n"


def _edge_key(order: list[str]):
    position = {s: i for i, s in enumerate(order)}
    return lambda e: (position[e[0]], position[e[1]])


def _escape_mermaid(text: str) -> str:
    return text.replace('"', "#quot;")
