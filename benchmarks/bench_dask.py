"""`--executor dask`: a CPU-bound `foreach` on a local Dask cluster against the local executor.

    python benchmarks/bench_dask.py [--items 60] [--ms 50] [--workers 2]

A `foreach` over --items items of a pure-Python function tool (~--ms ms of CPU each, calibrated
here). The local executor runs sync tools in threads, so the GIL serialises them; a LocalCluster of
--workers single-threaded worker processes runs them in parallel while this process coordinates
(cache, run record). Cold cache each time. No target: the figure is the speed-up, and on this
2-core machine it is only as good as the cores other processes leave free. Needs
`stepchain[dask]` (dask.distributed) in the environment that runs the benchmarks; skipped if absent.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, arguments, fresh_home, work_dir

TOOLS = '''
def burn(i: int, loops: int) -> int:
    """Pure-Python CPU work: holds the GIL the whole time."""
    total = i
    for k in range(loops):
        total = (total * 31 + k) % 1_000_003
    return total
'''

PIPELINE = """\
version: 1
name: bench-dask
inputs:
  items: {type: integer}
  loops: {type: integer}
tools:
  burn: {type: function, function: "benchtools:burn"}
steps:
  - id: fan
    foreach: range(inputs.items) | list
    tool: burn
    with: {i: "{{ item }}", loops: "{{ inputs.loops }}"}
"""


def timed(path: Path, inputs: dict, **executor) -> float:
    from stepchain import Executor

    os.environ["STEPCHAIN_HOME"] = str(fresh_home())
    start = time.perf_counter()
    result = Executor(8, **executor).run(path, inputs=inputs)
    if result.status != "completed":
        raise SystemExit(f"run failed: {result.steps['fan'].error}")
    return time.perf_counter() - start


def main() -> None:
    args = arguments(__doc__, items=60, ms=50.0, workers=2)
    report = Report(
        "Dask executor: CPU-bound foreach",
        f"{args.items} items of ~{args.ms:g} ms pure-Python CPU each; cold cache",
    )
    try:
        from distributed import LocalCluster
    except ImportError:
        report.note("skipped: dask.distributed is not installed (pip install 'stepchain[dask]')")
        return report.save(args.json)
    folder = work_dir("dask")
    (folder / "benchtools.py").write_text(TOOLS, encoding="utf-8")
    (folder / "fan.yaml").write_text(PIPELINE, encoding="utf-8")
    sys.path.insert(0, str(folder))
    from benchtools import burn

    start = time.perf_counter()
    burn(0, 200_000)
    loops = int(200_000 * args.ms / 1000 / (time.perf_counter() - start))
    inputs = {"items": args.items, "loops": loops}
    local = timed(folder / "fan.yaml", inputs)
    report.row("local executor (threads, one GIL)", f"{local:.2f} s")
    start = time.perf_counter()
    with LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        host="127.0.0.1",
    ) as cluster:
        up = time.perf_counter() - start
        timed(
            folder / "fan.yaml",
            {"items": 2 * args.workers, "loops": 1},
            executor="dask",
            scheduler=cluster.scheduler_address,
        )  # workers import the tool
        dask = timed(
            folder / "fan.yaml", inputs, executor="dask", scheduler=cluster.scheduler_address
        )
    report.row(
        f"dask, {args.workers} worker processes",
        f"{dask:.2f} s = {local / dask:.2f}× the local executor (ideal {args.workers}×)",
    )
    report.note(
        f"LocalCluster start-up {up:.1f} s, not included; load average now "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
    )
    report.save(args.json)


if __name__ == "__main__":
    main()
