"""Benchmark: `--executor dask` against the local executor (issue 6).

    python benchmarks/bench_dask.py [--items 1000] [--ms 50] [--workers 2] [--no-record]

1. A `foreach` over --items items of a CPU-bound, pure-Python function tool (about --ms
   milliseconds each): wall time with the local executor (sync tools run in threads, so the GIL
   serialises them) and with a LocalCluster of --workers single-threaded worker processes.
2. The per-task overhead of the Dask path: the same foreach over a no-op tool, with
   --max-concurrent 8 (throughput: tasks pipelined) and 1 (latency: one round trip at a time).

Every run uses a fresh STEPCHAIN_HOME (cold cache). Figures go to RESULTS.md under `## Dask`.
Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fresh_home, machine, machine_line, table, update_results, work_dir

TOOLS = '''
def burn(i: int, loops: int) -> int:
    """Pure-Python CPU work: holds the GIL the whole time."""
    total = i
    for k in range(loops):
        total = (total * 31 + k) % 1_000_003
    return total


def noop(i: int) -> int:
    return i
'''

PIPELINE = """
version: 1
name: bench-dask
inputs:
  items: {{type: integer}}
  loops: {{type: integer, default: 0}}
tools:
  work: {{type: function, function: "benchtools:{tool}"}}
steps:
  - id: fan
    foreach: "range(inputs['items']) | list"
    tool: work
    with: {with_}
"""


def calibrate(ms: float) -> int:
    """Loops of `burn` that take about `ms` milliseconds in this process."""
    namespace: dict = {}
    exec(TOOLS, namespace)
    burn, loops = namespace["burn"], 100_000
    start = time.perf_counter()
    burn(0, loops)
    elapsed = time.perf_counter() - start
    return max(1, int(loops * (ms / 1000) / elapsed))


def write_pipelines(folder: Path) -> dict[str, Path]:
    (folder / "benchtools.py").write_text(TOOLS)
    paths = {}
    for tool, with_ in (
        ("burn", '{i: "{{ item }}", loops: "{{ inputs.loops }}"}'),
        ("noop", '{i: "{{ item }}"}'),
    ):
        paths[tool] = folder / f"{tool}.yaml"
        paths[tool].write_text(PIPELINE.format(tool=tool, with_=with_))
    return paths


def timed_run(
    path: Path, inputs: dict, *, scheduler: str | None, max_concurrent: int = 8, client=None
) -> dict[str, float]:
    """Wall seconds of one cold run; with `client`, also CPU seconds: here, in workers, others."""
    from stepchain import Executor, Settings

    executor = Executor(
        max_concurrent,
        settings=Settings(home=fresh_home()),
        executor="dask" if scheduler else "local",
        scheduler=scheduler,
    )
    before = _cpu(client)
    start = time.perf_counter()
    result = executor.run(path, inputs=inputs)
    wall = time.perf_counter() - start
    after = _cpu(client)
    if result.status != "completed":
        raise SystemExit(f"benchmark run failed: {result.steps['fan'].error}")
    used = {key: after[key] - before[key] for key in after}
    used["others"] = used.pop("machine") - used["here"] - used["workers"]
    return {"wall": wall, **used}


def _cpu(client) -> dict[str, float]:
    """CPU seconds so far: this process (coordinator, and an in-process scheduler), the Dask
    workers, and the whole machine (from /proc/stat, so other processes' load shows)."""
    here = os.times()
    workers = sum(client.run(time.process_time).values()) if client is not None else 0.0
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return {
        "here": here.user + here.system,
        "workers": workers,
        "machine": busy / os.sysconf("SC_CLK_TCK"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--ms", type=float, default=50.0, help="CPU milliseconds per item")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    info = machine()
    paths = write_pipelines(work_dir("dask"))
    loops = calibrate(args.ms)
    cpu_inputs = {"items": args.items, "loops": loops}
    noop_inputs = {"items": args.items}
    print(machine_line(info))
    print(f"{args.items} items, {loops} loops each (~{args.ms:g} ms of pure-Python CPU)")

    local = timed_run(paths["burn"], cpu_inputs, scheduler=None, client=None)
    print(f"local executor, CPU-bound:        {local['wall']:8.2f} s")
    local_noop = timed_run(paths["noop"], noop_inputs, scheduler=None)["wall"]
    local_noop_1 = timed_run(paths["noop"], noop_inputs, scheduler=None, max_concurrent=1)["wall"]

    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        startup = time.perf_counter() - start
        address = cluster.scheduler_address
        timed_run(paths["noop"], {"items": 2 * args.workers}, scheduler=address)  # warm workers
        dask = timed_run(paths["burn"], cpu_inputs, scheduler=address, client=client)
        print(f"dask, {args.workers} workers, CPU-bound:    {dask['wall']:8.2f} s")
        dask_noop = timed_run(paths["noop"], noop_inputs, scheduler=address)["wall"]
        dask_noop_1 = timed_run(paths["noop"], noop_inputs, scheduler=address, max_concurrent=1)[
            "wall"
        ]

    ideal = dask["workers"] / args.workers  # the measured work, perfectly split, no overhead
    per_item = {
        name: seconds / args.items * 1000
        for name, seconds in {
            "local8": local_noop,
            "local1": local_noop_1,
            "dask8": dask_noop,
            "dask1": dask_noop_1,
        }.items()
    }

    def row(name: str, run: dict[str, float]) -> list[str]:
        return [
            name,
            f"{run['wall']:.2f}",
            f"{local['wall'] / run['wall']:.2f}×",
            f"{run['here']:.1f}",
            f"{run['workers']:.1f}" if run is dask else "",
            f"{run['others'] / run['wall']:.2f}",
        ]

    cpu_rows = [
        row("local executor (threads, GIL)", local),
        row(f"dask, {args.workers} worker processes", dask),
        [f"ideal: workers' CPU / {args.workers}, no overhead", f"{ideal:.2f}", "", "", "", ""],
    ]
    overhead_rows = [
        [
            "--max-concurrent 8 (throughput)",
            f"{per_item['local8']:.2f}",
            f"{per_item['dask8']:.2f}",
        ],
        [
            "--max-concurrent 1 (round trip)",
            f"{per_item['local1']:.2f}",
            f"{per_item['dask1']:.2f}",
        ],
    ]
    header = [
        "executor",
        "wall s",
        "speed-up",
        "CPU s, this process",
        "CPU s, workers",
        "other processes' load (cores)",
    ]
    body = "\n\n".join(
        [
            "## Dask",
            f"`python benchmarks/bench_dask.py` — {machine_line(info)}",
            f"A `foreach` over {args.items} items of a pure-Python function tool "
            f"(~{args.ms:g} ms of CPU each). Wall time of the whole run, cold cache; CPU seconds "
            "used by this process (the coordinator, plus the LocalCluster's scheduler and nannies, "
            "which live in it) and by the worker processes; and the average load of everything "
            "else on the machine during the run:",
            table(header, cpu_rows),
            f"Per-item cost of a no-op tool over {args.items} items, ms "
            f"(the Dask path's overhead per task; LocalCluster start-up: {startup:.2f} s, "
            "not included):",
            table(["", "local ms/item", "dask ms/item"], overhead_rows),
            f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}. The "
            "Dask run needs both cores free to approach the ideal; on a shared machine, other "
            "processes' load comes straight off its speed-up.",
        ]
    )
    print()
    print(body)
    if not args.no_record:
        update_results("dask", body)


if __name__ == "__main__":
    main()
