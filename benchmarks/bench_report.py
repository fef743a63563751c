"""`stepchain report` on a 2,000-step run: the command's time, the file's size, the browser's render.

    python benchmarks/bench_report.py [--steps 2000] [--output-chars 2000]

1. A run of N template steps (20 layers, each step reading 3 upstream outputs, every output
   `--output-chars` long) through the API with a fresh STEPCHAIN_HOME.
2. `stepchain report RUN -o FILE` as a whole command (best of 3). Target: the file < 5 MB.
3. The file opened in Debian's chromium (headless, through Playwright, when both are installed):
   time from navigation to the `load` event plus one animation frame (layout and paint).
   Target: < 2 s.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, arguments, best_of, env_with, fresh_home, stepchain_cmd, work_dir

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def pipeline(steps: int, chars: int) -> str:
    width = max(1, steps // 20)
    lines = ["version: 1", "name: bench-report", "steps:"]
    for i in range(steps):
        layer, _ = divmod(i, width)
        reads = (
            ""
            if layer == 0
            else "".join(
                f"{{{{ steps.s{(layer - 1) * width + (i + k) % width}.output[:8] }}}}"
                for k in range(3)
            )
        )
        lines.append(f"  - {{id: s{i}, template: '{reads}{'x' * chars}-{i}'}}")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = arguments(__doc__, steps=2000, output_chars=2000)
    report = Report(
        f"Run report of a {args.steps:,}-step run",
        "`stepchain report` as a whole command; the file opened in headless chromium",
    )
    folder = work_dir("report")
    path = folder / "report.yaml"
    path.write_text(pipeline(args.steps, args.output_chars), encoding="utf-8")
    home = fresh_home()
    os.environ["STEPCHAIN_HOME"] = str(home)

    from stepchain import Executor, load_pipeline

    result = Executor().run(load_pipeline(path), run_id="bench-report")
    if result.status != "completed":
        raise SystemExit(f"run: {result.status}")
    out = folder / "run.html"
    argv = [*stepchain_cmd(), "report", "bench-report", "-o", str(out)]
    took, done = best_of(argv, 3, env=env_with(STEPCHAIN_HOME=str(home)))
    if done.returncode != 0:
        raise SystemExit(f"report: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    report.row("`stepchain report` (whole command)", f"{took:.2f} s")
    size = out.stat().st_size
    report.row("report size", f"{size / 1024 / 1024:.2f} MB", "< 5 MB", size < 5 * 1024 * 1024)

    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        report.note("chromium or playwright missing: render time not measured")
    else:
        times = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                for _ in range(3):
                    page = browser.new_page(viewport={"width": 1280, "height": 900})
                    start = time.perf_counter()
                    page.goto(out.as_uri(), wait_until="load")
                    page.evaluate("() => new Promise(r => requestAnimationFrame(() => r(1)))")
                    times.append(time.perf_counter() - start)
                    page.close()
            finally:
                browser.close()
        best = min(times)
        report.row("browser render (load + a frame), best of 3", f"{best:.2f} s", "< 2 s", best < 2)
    report.save(args.json)


if __name__ == "__main__":
    main()
