"""How long `study report` takes to build a PDF: by default every run of the committed sample
(report/sample-runs, as make_sample.sh reports it). Three builds are timed: cold (an
empty figure cache: every figure is drawn), warm (the figures come from the cache, as on a
rebuild) and the HTML page. Each build runs in a fresh Python process, as `study report` does,
so no build inherits another's memory or caches; the imports are timed apart from the build.
Prints the best and the median of --repeat builds of each kind, in CPU seconds, and the machine.

    python benchmarks/report_speed.py [--runs report/sample-runs] [--ids 1,2,...] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(runs: str, ids: str, out: Path, fmt: str, cache: Path) -> None:
    """One build in this (fresh) process: prints its CPU and wall seconds as JSON."""
    cpu = time.process_time()
    import matplotlib.figure  # noqa: F401  what a build imports, timed apart from it
    import weasyprint  # noqa: F401

    from study.report import build_report, select_runs
    from study.stores import read_file_store

    imports = time.process_time() - cpu
    records = select_runs(read_file_store(runs), ids=[i for i in ids.split(",") if i] or None)
    cpu, wall = time.process_time(), time.perf_counter()
    build_report(records, out, fmt, cache_dir=cache)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(json.dumps({"cpu": cpu, "wall": wall, "imports": imports, "runs": len(records)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "report" / "sample-runs"))
    parser.add_argument("--ids", default="", help="a comma list; '' (default) for every run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", nargs=3, metavar=("OUT", "FORMAT", "CACHE"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        out, fmt, cache = args.child
        return child(args.runs, args.ids, Path(out), fmt, Path(cache))

    def build(out: Path, fmt: str, cache: Path) -> dict:
        command = [sys.executable, __file__, "--runs", args.runs, "--ids", args.ids,
                   "--child", str(out), fmt, str(cache)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:  # the build's own one-line error, not a traceback of this one
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            sys.exit(f"report_speed: the {fmt} build failed: {lines[-1]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    times: dict[str, list[dict]] = {"cold": [], "warm": [], "html": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.repeat):
            cache = Path(tmp) / f"figures-{n}"  # a fresh cache: every figure drawn
            times["cold"].append(build(Path(tmp) / "cold.pdf", "pdf", cache))
            times["warm"].append(build(Path(tmp) / "warm.pdf", "pdf", cache))
            times["html"].append(build(Path(tmp) / "warm.html", "html", cache))
        from pypdf import PdfReader

        pages = len(PdfReader(Path(tmp) / "warm.pdf").pages)
    from study.record import cpu_name

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"runs: {times['cold'][0]['runs']} from {args.runs}; pages: {pages}")
    imports = statistics.median(t["imports"] for t in times["cold"])
    print(f"imports (a fresh process, before any build): {imports:.2f} s CPU, median")
    for kind, what in (
        ("cold", "PDF, cold (every figure drawn)"),
        ("warm", "PDF, warm (figures cached)    "),
        ("html", "HTML, warm                    "),
    ):
        cpu = [t["cpu"] for t in times[kind]]
        wall = [t["wall"] for t in times[kind]]
        print(f"{what}: best {min(cpu):.2f} s CPU, median {statistics.median(cpu):.2f} "
              f"(wall best {min(wall):.2f} s), of {len(cpu)}")  # fmt: skip


if __name__ == "__main__":
    main()
