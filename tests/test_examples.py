"""Every example pipeline validates, and the LLM examples run end to end against a loopback model."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO

from tests.support.fake_openai import FakeOpenAI, Reply

EXAMPLES = sorted((REPO / "pipelines").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_and_carries_the_schema_modeline(cli, path):
    result = cli("validate", path)
    assert result.exit_code == 0, result.stdout
    assert path.read_text().startswith("# yaml-language-server: $schema=")


def model(request: dict) -> Reply:
    """A deterministic stand-in model that answers in the shape each example asks for."""
    text = json.dumps(request)
    if "Revenue by product category" in text:
        return Reply.json(
            {
                "categories": [
                    {"name": "Software", "revenue": 10.5},
                    {"name": "Desk", "revenue": 3.0},
                ]
            }
        )
    if "Search the web" in text:
        developments = [
            {"title": f"t{i}", "summary": "s", "source": f"https://example.org/{i}"}
            for i in range(3)
        ]
        return Reply.json({"developments": developments})
    if "Give its likely industry" in text:
        return Reply.json(
            {"industry": "manufacturing", "description": "makes things", "size": "large"}
        )
    return Reply.text("a model's answer")


@pytest.fixture
def loopback_model(monkeypatch):
    with FakeOpenAI(responder=model) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


def test_sales_analysis_example(cli, tmp_path, loopback_model):
    shutil.copytree(REPO / "pipelines" / "examples", tmp_path / "ex")
    assert cli("trust", tmp_path / "ex" / "sales-analysis.yaml").exit_code == 0  # its MCP server
    doc = cli.json("run", tmp_path / "ex" / "sales-analysis.yaml", "-i", "quarter=Q1 2023")
    assert doc["status"] == "completed"
    assert doc["steps"]["outlook"]["output"] == ["a model's answer"] * 2
    assert "## Software: 10.5" in doc["outputs"]["report"]
    sent = loopback_model.requests_to("responses")[0].json
    assert "Q1 2023" in json.dumps(sent["input"])


def test_research_brief_example_passes_web_search_through(cli, loopback_model):
    doc = cli.json("run", REPO / "pipelines" / "examples" / "research-brief.yaml")
    assert doc["status"] == "completed"
    assert doc["outputs"]["sources"] == [f"https://example.org/{i}" for i in range(3)]
    first = loopback_model.requests_to("responses")[0].json
    assert {"type": "web_search"} in first["tools"]


def test_enrich_batch_example(cli, loopback_model):
    doc = cli.json("run", REPO / "pipelines" / "examples" / "enrich-batch.yaml")
    assert len(doc["steps"]["enrich"]["output"]) == 4
    assert "| Globex | manufacturing | large | makes things |" in doc["outputs"]["table"]
