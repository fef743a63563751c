"""The installable distribution: build the wheel, install it in a fresh virtualenv, use it there.

SPEC §1: one distribution `stepchain`; `import stepchain` and the `stepchain` command work, the
pipeline schema ships inside the wheel, and nothing generic (`engine`, `cli`, `schemas`) lands
top-level in site-packages. The venv gets its dependencies from the environment running the tests
(its site-packages, appended by a .pth file: nothing is downloaded, and nothing leaks in from the
base interpreter), and the tests check that `stepchain` itself comes from the venv's wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["engine", "schemas", "cli.py", "pyproject.toml", "README.md"]


def run(
    *args: str | Path, cwd: Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["STEPCHAIN_HOME"] = str(cwd / "home")
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources so no build files land in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    out = work / "dist"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        out,
        source,
        cwd=work,
        timeout=300,
    )
    (built,) = out.glob("stepchain-*.whl")
    return built


@pytest.fixture(scope="module")
def venv_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed in it (dependencies from this environment)."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root / "venv", with_pip=False, symlinks=True)
    bin_dir = root / "venv" / "bin"
    python = bin_dir / "python"
    inner = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=root
        ).stdout.strip()
    )
    ours = [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]
    (inner / "_test_dependencies.pth").write_text(
        "".join(f"{p}\n" for p in ours if not p.is_relative_to(REPO))
    )
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "-q", wheel, cwd=root)  # fmt: skip
    return bin_dir


def test_the_wheel_holds_only_the_stepchain_package_and_its_metadata(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"stepchain", wheel.name.split("-py")[0] + ".dist-info"}
    assert "stepchain/schemas/pipeline.schema.json" in names
    assert "stepchain/cli.py" in names and "stepchain/__init__.py" in names
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
    entry_points = zipfile.ZipFile(wheel).read(
        f"{wheel.name.split('-py')[0]}.dist-info/entry_points.txt"
    )
    assert "stepchain = stepchain.cli:entry" in entry_points.decode()


def test_the_installed_package_is_imported_from_the_venv(venv_bin, tmp_path):
    result = run(
        venv_bin / "python", "-c", "import stepchain, sys; print(stepchain.__file__)", cwd=tmp_path
    )
    location = Path(result.stdout.strip())
    assert location.is_relative_to(venv_bin.parent), location
    assert "site-packages" in location.parts
    assert not location.is_relative_to(REPO)


def test_nothing_generic_is_importable_from_the_venv(venv_bin, tmp_path):
    site = run(
        venv_bin / "python",
        "-c",
        "import sysconfig; print(sysconfig.get_path('purelib'))",
        cwd=tmp_path,
    ).stdout.strip()
    installed = {p.name for p in Path(site).iterdir()}
    assert not installed & {"engine", "cli.py", "cli", "schemas"}, installed


def test_the_stepchain_command_reports_its_version(venv_bin, tmp_path):
    import stepchain

    result = run(venv_bin / "stepchain", "--version", cwd=tmp_path)
    assert result.stdout.strip() == f"stepchain, version {stepchain.__version__}"


def test_the_schema_comes_from_inside_the_wheel(venv_bin, tmp_path):
    result = run(venv_bin / "stepchain", "schema", cwd=tmp_path)
    published = json.loads(result.stdout)
    assert published == json.loads((REPO / "schemas" / "pipeline.schema.json").read_text())
    assert published["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_installed_command_validates_examples(venv_bin, tmp_path):
    example = REPO / "pipelines" / "sales-report.yaml"
    assert run(venv_bin / "stepchain", "validate", example, cwd=tmp_path).returncode == 0
    broken = REPO / "tests" / "broken" / "negative-retries.yaml"
    result = run(venv_bin / "stepchain", "validate", broken, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert (
        result.stdout.strip()
        == f"{broken}:8:14: steps[0].retries: -1 is less than the minimum of 0"
    )


def test_the_installed_command_runs_the_example_pipeline(venv_bin, tmp_path):
    for name in ("sales-report.yaml", "sales_tools.py"):
        shutil.copy2(REPO / "pipelines" / name, tmp_path / name)
    result = run(venv_bin / "stepchain", "run", "sales-report.yaml", "--json", cwd=tmp_path)
    record = json.loads(result.stdout)
    assert record["status"] == "completed"
    assert "# Sales Q4 2023" in record["outputs"]["report"]
