"""Replay bundles: exactly the cache entries a pipeline or a run needs, in one portable file.

A bundle is JSON lines (gzip when its name ends in `.gz`), never pickle. Line 1 is the header
`{"stepchain_bundle": FORMAT, "pipeline", "pipeline_hash", "cache_format", "entries"}`; each
further line one entry `{"key", "output", "usage", "sha256"}`, where `sha256` is the digest of
the canonical JSON of the entry without it. Import verifies every line before it writes any.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from stepchain.cache import CACHE_FORMAT, ResultCache, canonical_json
from stepchain.errors import BundleError
from stepchain.pipeline.definition import Pipeline
from stepchain.pipeline.load import load_pipeline
from stepchain.run.database import Storage
from stepchain.run.plan import plan_pipeline
from stepchain.settings import Settings, current_settings

BUNDLE_FORMAT = 1


@dataclass
class BundleReport:
    """What an export wrote or an import stored."""

    path: Path
    pipeline: str
    pipeline_hash: str
    entries: int
    missing: list[str] = field(default_factory=list)  # steps with nothing cached to export


def entry_digest(key: str, output: Any, usage: Any) -> str:
    payload = canonical_json({"key": key, "output": output, "usage": usage})
    return hashlib.sha256(payload.encode()).hexdigest()


def export_bundle(
    target: str | Path, out: str | Path, settings: Settings | None = None
) -> BundleReport:
    """Write the entries pipeline file or run id `target` needs to `out`.

    A pipeline file gives the keys `plan` computes (its replayable steps); a run id the keys its
    run record holds (with the requests of its foreach items, from the pipeline it ran).
    """
    settings = current_settings(settings)
    if Path(target).is_file():
        pipeline = load_pipeline(target)
        keys, missing = _pipeline_keys(pipeline, {}, settings, "plan")
    else:
        pipeline, keys, missing = _run_keys(str(target), settings)
    cache = ResultCache(settings)
    try:
        entries = cache.lookup_many(keys)
    finally:
        cache.close()
    out = Path(out)
    part = out.with_name(out.name + ".part")  # renamed into place when complete
    with _open_write(part, gzipped=out.name.endswith(".gz")) as stream:
        header = {
            "stepchain_bundle": BUNDLE_FORMAT,
            "pipeline": pipeline.name,
            "pipeline_hash": pipeline.hash,
            "cache_format": CACHE_FORMAT,
            "entries": len(entries),
        }
        stream.write(json.dumps(header) + "\n")
        for key, entry in entries.items():
            output, usage = entry["output"], entry.get("usage") or {}
            line = {"key": key, "output": output, "usage": usage}
            line["sha256"] = entry_digest(key, output, usage)
            stream.write(canonical_json(line) + "\n")
    part.replace(out)
    return BundleReport(out, pipeline.name, pipeline.hash, len(entries), missing)


def _pipeline_keys(
    pipeline: Pipeline, inputs: dict[str, Any], settings: Settings, run_id: str
) -> tuple[list[str], list[str]]:
    plan = plan_pipeline(pipeline, inputs, settings, run_id=run_id)
    keys = [key for sp in plan.steps if sp.action == "replay" for key in sp.keys]
    missing = [sp.step_id for sp in plan.steps if sp.action in ("run", "unknown", "error")]
    return keys, missing


def _run_keys(run_id: str, settings: Settings) -> tuple[Pipeline, list[str], list[str]]:
    storage = Storage(settings)
    try:
        if not storage.exists(run_id):
            raise BundleError(
                f"{run_id}: no such pipeline file or run id",
                "give a pipeline file, or a run id from `stepchain runs list`",
            )
        state = storage.load_run_state(run_id)
    finally:
        storage.close()
    pipeline = state.plan
    planned, _ = _pipeline_keys(pipeline, state.inputs, settings, run_id)
    recorded = [
        r.cache_key
        for r in state.results
        if r.status == "completed" and r.cache_key and pipeline.step(r.step_id).foreach is None
    ]
    missing = [r.step_id for r in state.results if r.status != "completed"]
    return pipeline, list(dict.fromkeys([*recorded, *planned])), missing


def import_bundle(
    path: str | Path, settings: Settings | None = None, pipeline: Pipeline | None = None
) -> BundleReport:
    """Verify every line of bundle `path`, then store all its entries at once (or none).

    Raises:
        BundleError: unreadable, truncated, of a newer format, for another pipeline than
            `pipeline`, or an entry whose digest does not match; the message names the line.
    """
    path = Path(path)
    header, entries = read_bundle(path)
    if pipeline is not None and header["pipeline_hash"] != pipeline.hash:
        raise BundleError(
            f"{path}:1: bundle is for pipeline {header['pipeline']} "
            f"(sha256:{str(header['pipeline_hash'])[:12]}), not {pipeline.path or pipeline.name} "
            f"(sha256:{pipeline.hash[:12]})",
            "export a bundle from the pipeline file as it is now, or import without --pipeline",
        )
    cache = ResultCache(current_settings(settings))
    try:
        cache.set_many((key, output, usage, None) for key, output, usage in entries)
        stored = sum(1 for key, _, _ in entries if key in cache)
    finally:
        cache.close()
    if stored != len(entries):
        raise BundleError(
            f"{path}: only {stored} of {len(entries)} entries could be stored in the cache",
            "check the cache folder (`stepchain cache info`) and its free space, then import again",
        )
    return BundleReport(path, str(header["pipeline"]), str(header["pipeline_hash"]), stored)


def read_bundle(path: Path) -> tuple[dict[str, Any], list[tuple[str, Any, dict[str, Any]]]]:
    """The header and the verified entries of a bundle file."""
    hint = "export the bundle again (`stepchain bundle export FILE|RUN_ID -o B`)"
    try:
        with _open_read(path) as stream:
            lines = stream.read().split("\n")
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle ({exc})", hint) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BundleError(
            f"{path}: the gzip stream is damaged or truncated ({exc})", hint
        ) from None
    except UnicodeDecodeError:
        raise BundleError(f"{path}: not a text (JSON lines) bundle", hint) from None
    if lines and lines[-1] == "":
        lines.pop()
    else:
        raise BundleError(f"{path}:{len(lines)}: the last line is cut off (truncated)", hint)
    header = _header(path, lines[0] if lines else "", hint)
    entries: list[tuple[str, Any, dict[str, Any]]] = []
    for number, text in enumerate(lines[1:], 2):
        entries.append(_entry(path, number, text, hint))
    if len(entries) != header["entries"]:
        raise BundleError(
            f"{path}:{len(lines)}: the header promises {header['entries']} entries, "
            f"the bundle has {len(entries)} (truncated)",
            hint,
        )
    return header, entries


def _header(path: Path, text: str, hint: str) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict) or "stepchain_bundle" not in header:
        raise BundleError(f"{path}:1: not a stepchain bundle (no header line)", hint)
    version = header["stepchain_bundle"]
    if not isinstance(version, int) or version > BUNDLE_FORMAT:
        raise BundleError(
            f"{path}:1: bundle format {version!r} is newer than this StepChain reads "
            f"({BUNDLE_FORMAT})",
            "upgrade StepChain to import it",
        )
    if header.get("cache_format") != CACHE_FORMAT:
        raise BundleError(
            f"{path}:1: bundle holds cache format {header.get('cache_format')!r}, this "
            f"StepChain uses {CACHE_FORMAT}",
            "export the bundle again with this StepChain version",
        )
    if not isinstance(header.get("entries"), int) or not isinstance(
        header.get("pipeline_hash"), str
    ):
        raise BundleError(f"{path}:1: the header lacks `entries` or `pipeline_hash`", hint)
    return header


def _entry(path: Path, number: int, text: str, hint: str) -> tuple[str, Any, dict[str, Any]]:
    try:
        line = json.loads(text)
    except ValueError:
        raise BundleError(f"{path}:{number}: not valid JSON (truncated or damaged)", hint) from None
    if not isinstance(line, dict) or not {"key", "output", "usage", "sha256"} <= line.keys():
        raise BundleError(f"{path}:{number}: not a bundle entry (key/output/usage/sha256)", hint)
    key, output, usage = line["key"], line["output"], line["usage"]
    if not isinstance(key, str) or not isinstance(usage, dict):
        raise BundleError(f"{path}:{number}: not a bundle entry (key/output/usage/sha256)", hint)
    if entry_digest(key, output, usage) != line["sha256"]:
        raise BundleError(
            f"{path}:{number}: entry {key[:12]} does not match its sha256 (tampered or damaged)",
            "nothing was imported; get the bundle again from its source",
        )
    return key, output, usage


def _open_write(path: Path, *, gzipped: bool) -> IO[str]:
    try:
        if gzipped:
            return gzip.open(path, "wt", encoding="utf-8")
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise BundleError(f"{path}: cannot write the bundle ({exc.strerror})") from None


def _open_read(path: Path) -> IO[str]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")
