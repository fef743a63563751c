"""The result cache over real diskcache folders: what is stored, what misses, what degrades."""

from __future__ import annotations

import json
import logging
import re
import time

import diskcache
import pytest
from stepchain.cache import CACHE_FORMAT, PendingWrites, ResultCache, cache_key, canonical_json
from stepchain.errors import StepChainError
from stepchain.settings import Settings

PIPE = """
version: 1
name: words
inputs: {word: {type: string, default: abc}}
steps:
  - {id: a, template: "{{ inputs.word }}"}
  - {id: b, template: "{{ steps.a.output | length }}"}
  - {id: c, foreach: "[1, 2, 3]", template: "{{ steps.b.output }}-{{ item }}"}
  - {id: d, template: "{{ steps.c.output | join(',') }}"}
outputs: {d: "{{ steps.d.output }}"}
"""


@pytest.fixture
def cache(isolated_home):
    store = ResultCache(Settings.from_env())
    yield store
    store.close()


def old_format_cache(folder, entries):
    """A cache folder as StepChain wrote it with CACHE_FORMAT 1 (diskcache's JSONDisk)."""
    old = diskcache.Cache(str(folder), disk=diskcache.JSONDisk, disk_compress_level=1)
    for key, value in entries.items():
        old.set(key, value)
    old.close()


def test_entries_are_canonical_json_text_under_sha256_keys(cache):
    assert CACHE_FORMAT == 2
    key = cache_key("tool", {"tool": "echo", "arguments": {"value": "é"}})
    assert re.fullmatch("[0-9a-f]{64}", key)
    cache.put(key, {"b": [1, 2.5, None], "a": "é"}, {"total_tokens": 5}, None)
    cache.set_many([("mixed", {1: "x", "a": True}, None, None)])
    cache.close()
    with diskcache.Cache(str(cache.path)) as plain:  # the folder, through diskcache's own API
        assert sorted(plain) == sorted([key, "mixed"])
        text = plain.get(key)
        assert isinstance(text, str)  # stored as text: a pickled value would read back as a dict
        entry = json.loads(text)
        assert canonical_json(entry) == text
        assert set(entry) == {"created_at", "output", "usage"}
        assert entry["output"] == {"a": "é", "b": [1, 2.5, None]}
        assert entry["usage"] == {"total_tokens": 5}
        assert text.startswith('{"created_at":') and '"é"' in text
        mixed = plain.get("mixed")
        assert json.loads(mixed)["output"] == {"1": "x", "a": True}
        assert canonical_json(json.loads(mixed)) == mixed
    assert cache.get(key)["output"] == {"a": "é", "b": [1, 2.5, None]}  # reopened on use


def test_an_old_format_cache_is_a_miss_and_is_replaced(cache, isolated_home, caplog):
    key = cache_key("template", {"output": "x"})  # today's key, holding a format-1 entry
    old_format_cache(
        cache.path, {key: {"output": "stale", "usage": {}, "created_at": 0}, "k": {"output": 1}}
    )
    assert cache.get(key) is None
    assert cache.lookup_many([key, "k"]) == {}
    assert "cannot be opened" in caplog.text and "older StepChain" in caplog.text
    (aside,) = isolated_home.glob("cache.damaged-*")  # kept, out of the way
    assert (aside / "cache.db").exists()
    cache.put(key, "fresh", None, None)
    assert cache.get(key)["output"] == "fresh"
    assert cache.info()["entries"] == 1


def test_values_that_are_not_entries_are_misses(cache):
    cache.put("good", "yes", None, None)
    odd = {
        "pickled": {"output": "a dict, pickled by diskcache", "usage": {}},
        "bytes": b'{"output": 1, "usage": {}}',
        "number": 7,
        "not json": "not json {",
        "no output": '{"usage": {}}',
        "bad usage": '{"output": 1, "usage": [1]}',
        "a list": '["output"]',
    }
    with diskcache.Cache(str(cache.path)) as plain:
        for key, value in odd.items():
            plain.set(key, value)
    assert all(cache.get(key) is None for key in odd)
    assert cache.lookup_many([*odd, "good"]) == {"good": cache.get("good")}
    assert cache.get("good")["output"] == "yes"


def test_a_result_that_is_not_json_is_skipped_not_the_batch(cache, caplog):
    cache.set_many(
        [
            ("a", 1, None, None),
            ("bad", object(), None, None),
            ("d", {"ok": True}, {"total_tokens": 1}, None),
        ]
    )
    assert cache.get("a")["output"] == 1 and cache.get("d")["output"] == {"ok": True}
    assert cache.get("bad") is None
    assert "could not write cache entry bad" in caplog.text
    assert cache.info()["entries"] == 2


def test_a_circular_result_is_skipped(cache, caplog):
    loop: list = []
    loop.append(loop)
    cache.set_many([("loop", loop, None, None), ("fine", "x", None, None)])
    assert cache.get("loop") is None and cache.get("fine")["output"] == "x"
    assert "could not write cache entry loop" in caplog.text


def test_ttl_expires(cache):
    cache.put("brief", "soon gone", None, 0.3)
    cache.set_many([("also", 1, None, 0.3), ("kept", 2, None, None)])
    assert cache.get("brief")["output"] == "soon gone"
    with diskcache.Cache(str(cache.path)) as plain:
        assert plain.get("brief", expire_time=True)[1] is not None
        assert plain.get("kept", expire_time=True)[1] is None
    time.sleep(0.4)
    assert cache.get("brief") is None
    assert cache.lookup_many(["brief", "also", "kept"]).keys() == {"kept"}


def test_pending_ttl_counts_from_when_the_result_was_made(cache):
    writes = PendingWrites(cache)
    writes.add("brief", "x", None, 0.2)
    writes.add("kept", "y", None, 60)
    assert writes.get("brief")["output"] == "x"
    time.sleep(0.3)
    assert writes.get("brief") is None
    writes.flush(force=True)
    assert cache.get("brief") is None and cache.get("kept")["output"] == "y"


def test_a_cache_that_cannot_be_opened_at_all_is_no_cache(cache, monkeypatch, caplog):
    def refuse(self):
        raise PermissionError("not allowed")

    monkeypatch.setattr(ResultCache, "_connect", refuse)
    assert cache.get("k") is None and cache.lookup_many(["k"]) == {}
    cache.put("k", "v", None, None)  # nothing written, nothing raised
    assert "running without a cache" in caplog.text
    with pytest.raises(StepChainError, match="cannot be opened"):
        cache.info()


@pytest.mark.parametrize("damage", ["garbage", "half", "format 1", "a file", "bad pages"])
def test_a_damaged_cache_degrades_through_the_real_cli(cli, write, isolated_home, damage):
    path = write("p.yaml", PIPE)
    first = cli.proc("run", path, "--json")
    assert first.returncode == 0, first.stderr
    entries = json.loads(cli("cache", "info", "--json").stdout)["entries"]
    folder = isolated_home / "cache"
    db = folder / "cache.db"
    if damage == "garbage":
        db.write_bytes(b"this is not sqlite" * 100)
    elif damage == "half":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    elif damage == "bad pages":  # the header intact, everything after the first page not
        data = db.read_bytes()
        db.write_bytes(data[:4096] + b"\x5a" * (len(data) - 4096))
    elif damage == "format 1":
        for file in folder.iterdir():
            file.unlink()
        old_format_cache(folder, {"k": {"output": 1, "usage": {}}})
    else:
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
        folder.write_text("not a folder")

    again = cli.proc("run", path, "--json")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert "cannot be opened" in again.stderr  # one warning says what happened
    doc = json.loads(again.stdout)
    assert doc["outputs"] == json.loads(first.stdout)["outputs"] == {"d": "3-1,3-2,3-3"}
    assert not any(step["cached"] for step in doc["steps"].values())
    assert list(isolated_home.glob("cache.damaged-*"))

    third = cli.proc("run", path, "--json")  # the new cache works
    assert third.returncode == 0 and "Traceback" not in third.stderr
    assert all(step["cached"] for step in json.loads(third.stdout)["steps"].values())
    assert json.loads(cli("cache", "info", "--json").stdout)["entries"] == entries > 0


def test_warnings_are_logged_once_per_damaged_read(cache, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="stepchain")
    cache.put("k", "v", None, None)

    def broken(self, key, default=None, **kwargs):
        raise OSError("disk I/O error")

    monkeypatch.setattr(diskcache.Cache, "get", broken)
    assert cache.lookup_many(["k", "k2", "k3"]) == {}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreadable" in warnings[0].getMessage()
