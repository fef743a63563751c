"""Function tools resolve to the pipeline's folder or to packages the user trusted (SPEC §10).

`stepchain trust --package NAME` trusts a package for every pipeline; anything else installed
needs the file's consent, the standard library needs the package trusted, and the modules that
start programs or load code (`os`, `subprocess`, ...) are never trusted.
"""

from __future__ import annotations

import json

import pytest

PIPELINE = """
version: 1
name: pkg
tools:
  fn:
    type: function
    function: "{target}"
steps:
  - id: call
    tool: fn
    with: {args}
"""


def pipeline(write, target, args="{}"):
    return write("p.yaml", PIPELINE.format(target=target, args=args))


@pytest.fixture
def package(tmp_path, monkeypatch, request):
    """An installed package (on sys.path, outside the pipeline's folder) that marks its import."""
    name = f"outside_{request.node.name.split('[')[0][-20:]}".replace("-", "_")
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(
        "from pathlib import Path\n"
        "from subprocess import getoutput\n"
        "Path(__file__).with_name('imported').touch()\n\n"
        "def hello(who: str = 'you') -> str:\n"
        "    return f'hi {who}'\n"
    )
    monkeypatch.syspath_prepend(str(site))
    return name, site / name / "imported"


def test_a_standard_module_is_refused_until_trusted(cli, write):
    path = pipeline(write, "json:dumps", "{obj: [1, 2]}")
    checked = cli("validate", path)
    assert checked.exit_code == 1
    assert checked.stdout.splitlines() == [
        f"{path}:6:15: tools.fn.function: 'json:dumps' names module 'json' of Python's standard "
        "library; a function tool must be a module in the pipeline's folder (or a package you "
        "trust: `stepchain trust --package json`)"
    ]
    refused = cli("run", path, "--allow-run")  # a run's consent is not trust in a package
    assert refused.exit_code == 1 and "nothing was run" in refused.stderr
    assert "no runs recorded yet" in cli("runs", "list").stdout

    trusted = cli("trust", "--package", "json")
    assert trusted.exit_code == 0
    assert (
        trusted.stdout
        == "trusted package json: its functions may be function tools in any pipeline\n"
    )
    validated = cli("validate", path)
    assert validated.exit_code == 0
    assert "function tool module `json` (tools.fn.function)  [a trusted package]" in (
        validated.stderr
    )
    assert cli.json("run", path)["steps"]["call"]["output"] == "[1, 2]"  # no file consent needed

    forgot = cli("trust", "--forget-package", "json")
    assert forgot.stdout == "no longer trusted: json (trusted packages: none)\n"
    assert cli("validate", path).exit_code == 1


def test_an_installed_package_needs_consent_and_names_how_to_trust_it(cli, write, package):
    name, imported = package
    path = pipeline(write, f"{name}:hello", "{who: me}")
    refused = cli("run", path)
    assert refused.exit_code == 2
    assert refused.stderr.splitlines() == [
        f"error: {path} would run function tool module `{name}` (tools.fn.function), and nobody "
        "approved this version of the file",
        f"  hint: review it, then run `stepchain trust {path}` (or pass --allow-run for this run "
        f"only); or trust the package for every pipeline: `stepchain trust --package {name}`",
    ]
    assert not imported.exists()  # refused before anything was imported
    assert "[needs consent]" in cli("plan", path).stdout

    assert cli("trust", "--package", name).exit_code == 0
    assert f"function tool module `{name}` (tools.fn.function)  [a trusted package]" in (
        cli("plan", path).stdout
    )
    doc = cli.json("run", path)
    assert doc["status"] == "completed" and doc["steps"]["call"]["output"] == "hi me"
    assert imported.exists()
    shown = json.loads(cli("runs", "list", "--json").stdout)
    assert shown[0]["status"] == "completed"


def test_a_trusted_package_cannot_hand_out_what_it_imported(cli, write, tmp_path, package):
    name, _imported = package
    assert cli("trust", "--package", name, "--package", "json").exit_code == 0
    for target, module in ((f"{name}:getoutput", name), ("json:codecs.open", "json")):
        path = pipeline(write, target, "{cmd: 'touch pwned'}")
        result = cli("run", path)
        assert result.exit_code == 1
        assert result.stderr.startswith(
            f"error: tool 'fn': {target} is defined outside package '{module}' (in "
        )
        assert f"hint: a function tool must be a function of the package it names ({module})" in (
            result.stderr
        )
    assert not (tmp_path / "pwned").exists()
    assert "no runs recorded yet" in cli("runs", "list").stdout


@pytest.mark.parametrize(
    "name", ["os", "subprocess", "shutil", "builtins", "importlib", "sys", "pickle", "ctypes"]
)
def test_modules_that_start_programs_are_never_trusted(cli, write, tmp_path, name):
    refused = cli("trust", "--package", name)
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: '{name}' starts programs or loads code; it is never trusted as a package "
        "(write the function you need in the pipeline's folder)\n"
    )
    assert not (cli("trust", "--package", "json").exit_code)  # trusting another changes nothing
    path = pipeline(write, "os:system", "{command: 'touch pwned'}")
    checked = cli("validate", path)
    assert checked.exit_code == 1
    assert (
        "'os:system' names module 'os' of Python's standard library; a function tool must be a "
        "module in the pipeline's folder ('os' starts programs or loads code and is never trusted)"
    ) in checked.stdout
    assert cli("run", path, "--allow-run").exit_code == 1
    assert not (tmp_path / "pwned").exists()


def test_a_hand_edited_trust_store_cannot_trust_os(cli, write, tmp_path, isolated_home):
    isolated_home.mkdir()
    (isolated_home / "trusted.json").write_text(json.dumps({"packages": ["os", "subprocess"]}))
    for target in ("os:system", "subprocess:getoutput"):
        path = pipeline(write, target, "{cmd: 'touch pwned'}")
        assert "is never trusted" in cli("validate", path).stdout
        assert cli("run", path, "--allow-run").exit_code == 1
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "yaml.composer",
            "'yaml.composer' is not the name of a package (a top-level module name, like yaml)",
        ),
        ("_posixsubprocess", "'_posixsubprocess' is not the name of a package"),
        ("no_such_package_here", "no package 'no_such_package_here' is installed for "),
    ],
)
def test_trusting_a_package_checks_its_name(cli, name, message, isolated_home):
    refused = cli("trust", "--package", name)
    assert refused.exit_code == 2
    assert refused.stderr.startswith(f"error: {message}")
    assert not (isolated_home / "trusted.json").exists()


def test_trust_needs_a_file_or_a_package(cli):
    result = cli("trust")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: name a FILE to trust, or --package NAME",
        "  hint: see `stepchain trust --help`",
    ]


def test_trusting_files_keeps_the_trusted_packages(cli, write, isolated_home):
    assert cli("trust", "--package", "json").exit_code == 0
    path = write("c.yaml", "version: 1\nname: c\nsteps: [{id: a, run: [echo, hi]}]\n")
    assert cli("trust", path).exit_code == 0
    store = json.loads((isolated_home / "trusted.json").read_text())
    assert store["packages"] == ["json"] and str(path.resolve()) in store
