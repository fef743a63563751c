"""String-form `run:` commands go through a shell: template values are quoted as one word."""

from __future__ import annotations

import pytest

PAYLOADS = [
    "x; touch pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "x && touch pwned",
    "x | tee pwned",
    "'; touch pwned; echo '",
    "x\ntouch pwned",
    "> pwned",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_an_input_cannot_add_a_command(cli, write, tmp_path, payload):
    path = write(
        "p.yaml",
        """
        version: 1
        name: shell
        inputs:
          who: {type: string}
        steps:
          - id: greet
            run: "printf '%s' {{ inputs.who }}"
        """,
    )
    doc = cli.json("run", path, "--allow-run", "-i", f"who={payload}")
    assert doc["status"] == "completed"
    assert doc["steps"]["greet"]["output"] == payload
    assert not (tmp_path / "pwned").exists()


def test_values_inside_loops_and_non_text_values_are_quoted_too(cli, write, tmp_path):
    path = write(
        "p.yaml",
        """
        version: 1
        name: shell
        inputs:
          xs: {type: array, default: ["a b", "c;touch pwned"]}
          n: {type: integer, default: 3}
        steps:
          - id: list
            run: "printf '[%s]' {% for x in inputs.xs %}{{ x }} {% endfor %} {{ inputs.n }} {{ inputs.xs }}"
        """,
    )
    doc = cli.json("run", path, "--allow-run")
    assert doc["steps"]["list"]["output"] == '[a b][c;touch pwned][3][["a b", "c;touch pwned"]]'
    assert not (tmp_path / "pwned").exists()


def test_the_shell_syntax_written_in_the_file_still_works(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: shell
        inputs:
          word: {type: string, default: "hello world"}
        steps:
          - id: pipe
            run: "echo {{ inputs.word }} | tr a-z A-Z"
        """,
    )
    assert cli.json("run", path, "--allow-run")["steps"]["pipe"]["output"] == "HELLO WORLD\n"
