"""Consent to run a pipeline's programs and code, recorded per file content (like `direnv allow`).

`stepchain trust FILE` records the SHA-256 of the file's text and what it lets run in
`trusted.json` under the state folder. A run whose pipeline needs consent (pipeline/consent.py)
starts only if its exact text is trusted or the run was allowed (`--allow-run`,
`STEPCHAIN_ALLOW_RUN=1`); a changed file has another hash and needs consent again.
`stepchain trust --package NAME` records, in the same store, a package whose functions any
pipeline may use as function tools without further consent (SPEC §10).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stepchain.errors import CommandsNotAllowed, StepChainError, UsageError
from stepchain.pipeline.consent import (
    PACKAGES_KEY,
    TRUST_FILE,
    Runnable,
    needing_consent,
    package_problem,
    trusted_packages,
    what_runs,
)
from stepchain.pipeline.definition import Pipeline
from stepchain.settings import Settings


def _store(settings: Settings) -> Path:
    return settings.home / TRUST_FILE


def _read(settings: Settings) -> dict[str, Any]:
    path = _store(settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StepChainError(
            f"cannot read {path}: {exc}",
            f"remove {path} and trust your pipelines again with `stepchain trust FILE`",
        ) from None
    return data if isinstance(data, dict) else {}


def _key(pipeline: Pipeline) -> str:
    """Consent is for one file (its folder holds what it runs) with one content."""
    return str(pipeline.path.resolve()) if pipeline.path else "<pipeline without a file>"


def trust(pipeline: Pipeline, settings: Settings) -> list[Runnable]:
    """Record consent for this exact text of the pipeline; what it allows."""
    allowed = what_runs(pipeline, trusted_packages(settings))
    store = _read(settings)
    store[_key(pipeline)] = {
        "sha256": pipeline.hash,
        "trusted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "allows": [vars(r) for r in allowed],
    }
    _write(store, settings)
    return allowed


def trust_package(name: str, settings: Settings, *, forget: bool = False) -> list[str]:
    """Trust (or stop trusting) a package for function tools in every pipeline; all trusted.

    Raises:
        UsageError: `name` is not a package name, or a module that is never trusted.
    """
    problem = package_problem(name)
    if problem and not forget:
        raise UsageError(problem)
    if not forget and importlib.util.find_spec(name) is None:  # finds it, imports nothing
        raise UsageError(
            f"no package '{name}' is installed for {sys.executable}",
            f"install it first (pip install {name}), or check the name",
        )
    store = _read(settings)
    names = store.get(PACKAGES_KEY)
    packages = {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()
    if forget:
        packages.discard(name)
    else:
        packages.add(name)
    store[PACKAGES_KEY] = sorted(packages)
    _write(store, settings)
    return sorted(packages)


def _write(store: dict[str, Any], settings: Settings) -> None:
    settings.ensure_home()
    path = _store(settings)
    temporary = path.with_name(f".{TRUST_FILE}.{os.getpid()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(store, out, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise StepChainError(
            f"cannot write {path}: {exc.strerror or exc}; nothing was trusted",
            "free some space (or fix the folder's permissions), then try again",
        ) from None


def is_trusted(pipeline: Pipeline, settings: Settings) -> bool:
    entry = _read(settings).get(_key(pipeline))
    return isinstance(entry, dict) and entry.get("sha256") == pipeline.hash


def check_consent(pipeline: Pipeline, settings: Settings, allowed: bool) -> None:
    """Refuse, before anything starts, a pipeline that would run what nobody approved."""
    needed = needing_consent(pipeline, trusted_packages(settings))
    if not needed or allowed or is_trusted(pipeline, settings):
        return
    file = str(pipeline.path) if pipeline.path else f"pipeline {pipeline.name}"
    how = (
        f"run `stepchain trust {file}` (or pass allow_run=True for this run only)"
        if pipeline.path
        else "pass allow_run=True (a pipeline without a file cannot be trusted)"
    )
    tops = {r.what.split(".")[0] for r in needed if r.kind == "function tool module"}
    packages = sorted(top for top in tops if package_problem(top) is None)
    if packages:  # or trust them for every pipeline
        how += "; or trust the package for every pipeline: " + ", ".join(
            f"`stepchain trust --package {p}`" for p in packages
        )
    raise CommandsNotAllowed(
        f"{file} would run {', '.join(r.describe() for r in needed)}, "
        "and nobody approved this version of the file",
        f"review it, then {how}",
    )
