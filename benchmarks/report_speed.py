"""How long `study report` takes to build a PDF: by default the 9 runs of the committed sample
report (report/sample-runs, the ids make_sample.sh reports). Each build is timed twice: cold
(an empty figure cache: every figure is drawn) and warm (the figures come from the cache, as on
a rebuild), each the best of --repeat builds. Prints the seconds and the machine.

    python benchmarks/report_speed.py [--runs report/sample-runs] [--ids 1,2,...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from pypdf import PdfReader

from study.record import cpu_name
from study.report import build_report, select_runs
from study.stores import read_file_store

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "report" / "sample-runs"))
    parser.add_argument("--ids", default="1,2,3,4,5,6,7,8,9", help="'' for every run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    records = select_runs(read_file_store(args.runs), ids=[i for i in args.ids.split(",") if i])
    times: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": [], "html": []}

    def timed(kind: str, out: Path, fmt: str, cache: Path) -> None:
        # Wall seconds and this process's CPU seconds (the build runs in-process).
        wall, cpu = time.perf_counter(), time.process_time()
        build_report(records, out, fmt, cache_dir=cache)
        times[kind].append((time.perf_counter() - wall, time.process_time() - cpu))

    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.repeat):
            cache = Path(tmp) / f"figures-{n}"  # a fresh cache: every figure drawn
            timed("cold", Path(tmp) / "cold.pdf", "pdf", cache)
            timed("warm", Path(tmp) / "warm.pdf", "pdf", cache)
            timed("html", Path(tmp) / "warm.html", "html", cache)
        pages = len(PdfReader(Path(tmp) / "warm.pdf").pages)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"runs: {len(records)} from {args.runs}")
    for kind, what in (
        ("cold", "PDF, cold (every figure drawn)"),
        ("warm", "PDF, warm (figures cached)    "),
        ("html", "HTML, warm                    "),
    ):
        wall, cpu = min(times[kind])
        print(f"{what}: best {wall:.2f} s wall, {cpu:.2f} s CPU, of {len(times[kind])}")
    print(f"pages: {pages}")


if __name__ == "__main__":
    main()
