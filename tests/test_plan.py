"""`stepchain plan` knows, before running, what will replay from the cache and what must run."""

from __future__ import annotations

import json

PIPE = """
version: 1
name: planned
inputs: {word: {type: string, default: abc}, loud: {type: boolean, default: false}}
tools: {echo: {type: function, function: "tools:echo"}}
steps:
  - {id: a, tool: echo, with: {value: "{{ inputs.word }}"}}
  - {id: b, tool: echo, with: {value: "{{ steps.a.output }}-b"}}
  - {id: shout, when: inputs.loud, template: "{{ steps.b.output | upper }}"}
  - {id: fan, foreach: "[1, 2]", tool: echo, with: {value: "{{ item }}"}}
  - {id: c, template: "{{ steps.b.output }} {{ steps.fan.output }}"}
"""


def plan(cli, *args):
    result = cli("plan", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return {k: v["action"] for k, v in json.loads(result.stdout)["steps"].items()}


def test_cold_plan_runs_roots_and_marks_downstream_unknown(cli, write, calls_log):
    path = write("p.yaml", PIPE)
    assert plan(cli, path) == {
        "a": "run",
        "b": "unknown",
        "shout": "skip",
        "fan": "run",
        "c": "unknown",
    }
    assert not calls_log.exists()  # planning calls no tool


def test_plan_after_a_run_replays_everything(cli, write, calls_log):
    path = write("p.yaml", PIPE)
    cli("run", path)
    assert plan(cli, path) == {
        "a": "replay",
        "b": "replay",
        "shout": "skip",
        "fan": "replay",
        "c": "replay",
    }
    text = cli("plan", path).stdout
    assert "layer 0: a, fan\nlayer 1: b\nlayer 2: c, shout\n" in text
    assert "critical path: a -> b -> " in text  # three steps long (c and shout tie)


def test_plan_is_exact_about_what_a_changed_input_reruns(cli, write, calls_log):
    path = write("p.yaml", PIPE)
    cli("run", path)
    changed = plan(cli, path, "-i", "word=xyz")
    assert changed == {"a": "run", "b": "unknown", "shout": "skip", "fan": "replay", "c": "unknown"}
    assert plan(cli, path, "-i", "loud=true")["shout"] == "run"


def test_batched_cache_lookup_finds_exactly_what_get_finds(tmp_path):
    import time

    import diskcache
    from stepchain.cache import ResultCache, cache_key
    from stepchain.settings import Settings

    cache = ResultCache(Settings(home=tmp_path / "home"))
    keys = [cache_key("template", {"output": str(i)}) for i in range(1200)]
    assert cache.lookup_many(keys) == {}  # an empty cache
    cache.set_many([(k, {"n": i}, None, None) for i, k in enumerate(keys[:600:2])])
    cache.put(keys[1], "soon gone", None, 0.01)  # expires before the lookup
    cache.put(keys[3], [1, 2], {"tokens": 3}, 3600.0)
    with diskcache.Cache(str(cache.path)) as other:  # values that are not entries: misses
        other.set(keys[5], "not an entry")
        other.set(keys[7], '{"usage": {}}')
    time.sleep(0.05)
    wanted = [*keys, keys[0], "0" * 64]  # a duplicate and a key never stored
    found = cache.lookup_many(wanted)
    expected = {k: cache.get(k) for k in wanted if cache.get(k) is not None}
    assert found == expected
    assert len(found) == 301 and keys[1] not in found and keys[5] not in found
    assert keys[7] not in found
    assert cache.lookup_many([]) == {}
    cache.close()


def test_plan_replays_the_cached_output_of_a_template_step(cli, write):
    """Downstream requests are rendered from what the cache holds, not from re-rendering."""
    path = write(
        "t.yaml",
        """
version: 1
name: t
inputs: {n: {type: integer, default: 1}}
steps:
  - {id: a, template: "{{ inputs.n }}"}
  - {id: b, template: "{{ steps.a.output }}!"}
""",
    )
    assert cli("run", path).exit_code == 0
    assert plan(cli, path) == {"a": "replay", "b": "replay"}
    from stepchain.cache import ResultCache, cache_key
    from stepchain.settings import Settings

    cache = ResultCache(Settings.from_env())  # make a's cached output differ from its rendering
    cache.put(cache_key("template", {"output": 1}), "other", None, None)
    cache.close()
    assert plan(cli, path) == {"a": "replay", "b": "run"}
