"""Mutation testing of the code whose verdicts users rely on, with cosmic-ray (run by hand, not
in CI: the whole campaign takes about an hour or two of CPU).

    pip install cosmic-ray==8.7.0
    python benchmarks/mutation.py                   # every target
    python benchmarks/mutation.py stats --max 40    # one target, its first 40 mutants only

Each target is a module (or some of its functions) and the fast, in-process tests that judge
it. cosmic-ray changes the module in place, one mutant at a time, and runs the tests: a mutant
the tests fail on is killed; one they pass on survived, and is listed with its diff. So run it
on a clean work tree (it refuses otherwise) and leave the tree alone meanwhile; should it be
stopped midway, `git checkout study/` undoes the mutant it left. Results go to
benchmarks/results/mutation/: `<target>.txt` (score and every survivor) and `score.json`.
Each survivor is then killed by a new test, or explained in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "mutation"
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]

# name: (module, functions to mutate (None: all of it), the tests that judge it)
TARGETS = {
    "stats": ("study/stats.py", None, ["tests/test_stats.py"]),
    "reproduce": (
        "study/reproduce.py",
        # The comparison and what it prints; the CLI around it trains, so it is not here.
        [
            "compare",
            "_top1",
            "_test_count",
            "Verdict",
            "differences",
            "_dict_differences",
            "_versions",
            "_code",
            "render",
        ],
        ["tests/test_compare.py"],
    ),  # fmt: skip
    "claims": ("study/claims.py", None, ["tests/test_claims.py"]),
    "identity": (
        "study/identity.py",
        None,
        [
            "tests/test_identity.py",
            "tests/test_claims.py",
            "tests/test_sweep.py",
            "-k",
            "not sweep or plan or heartbeat or latest_checkpoint",
        ],
    ),  # fmt: skip
    # The sweep's decision per cell: done, left alone (a live heartbeat), resumed, or run.
    "sweep-plan": (
        "study/sweep.py",
        ["plan", "describe", "cell_key", "identity", "_run_order"],
        ["tests/test_sweep.py", "-k", "plan or heartbeat or latest_checkpoint"],
    ),
    # The health rule (study.health): its thresholds and verdicts, judged by its unit tests
    # (the real-data runs in test_health.py are left out: too slow per mutant).
    "health": (
        "study/health.py",
        None,
        ["tests/test_health.py", "-m", "not realdata"],
    ),
    "protocols": ("study/protocols.py", None, ["tests/test_protocols.py"]),
    # When the report may rank models, and the seed's claims checked by the same rule.
    "ranking": ("study/report/ranking.py", None, ["tests/test_ranking.py"]),
    "seed-claims": ("study/report/seed_claims.py", None, ["tests/test_seed_claims.py"]),
    # The stores' reading of a run's record, judged in process (test_stores.py trains runs).
    "records": ("study/stores/records.py", None, ["tests/test_records.py"]),
}


def function_lines(module: Path, names: list[str]) -> list[tuple[int, int]]:
    """The line ranges of the named top-level functions and classes of a module."""
    tree = ast.parse(module.read_text())
    found = {
        node.name: (node.lineno, node.end_lineno)
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{module}: no function or class {', '.join(missing)}")
    return [found[n] for n in names]


def skip_outside(session: Path, ranges, limit: int | None) -> int:
    """Mark the mutants outside `ranges` (and past the first `limit`) skipped; the number
    left to run."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        outside, kept = [], []
        for item in db.pending_work_items:
            lines = [(m.start_pos[0], m.end_pos[0]) for m in item.mutations]
            inside = ranges is None or all(
                any(start <= hi and lo <= end for lo, hi in ranges) for start, end in lines
            )
            (kept if inside else outside).append(item.job_id)
        if limit is not None:
            outside += kept[limit:]
            kept = kept[:limit]
        if outside:
            db.set_multiple_results(
                outside,
                WorkResult(output="not a target", worker_outcome=WorkerOutcome.SKIPPED),
            )
    return len(kept)


def results(session: Path) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db

    counts = {"killed": 0, "survived": 0, "incompetent": 0, "skipped": 0, "pending": 0}
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        done = {item.job_id: result for item, result in db.completed_work_items}
        for item in db.work_items:
            result = done.get(item.job_id)
            if result is None:
                counts["pending"] += 1
            elif result.worker_outcome == "skipped":
                counts["skipped"] += 1
            elif result.test_outcome is None:
                counts["incompetent"] += 1
            else:
                counts[result.test_outcome.value] += 1
                if result.test_outcome == "survived":
                    survivors.append(result.diff or "")
    tested = counts["killed"] + counts["survived"]
    counts["score"] = round(counts["killed"] / tested, 4) if tested else None
    return {"counts": counts, "survivors": survivors}


def run_target(name: str, limit: int | None, timeout: float) -> dict:
    module, functions, tests = TARGETS[name]
    work = OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    config, session = work / f"{name}.toml", work / f"{name}.sqlite"
    command = shlex.join(["nice", "-n", "15", *PYTEST, *tests])
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    session.unlink(missing_ok=True)
    cr = [sys.executable, "-m", "cosmic_ray.cli"]
    subprocess.run([*cr, "init", str(config), str(session)], cwd=ROOT, check=True)
    ranges = function_lines(ROOT / module, functions) if functions else None
    left = skip_outside(session, ranges, limit)
    print(f"{name}: {left} mutants of {module} to run ({command})", flush=True)
    baseline = subprocess.run([*cr, "baseline", str(config)], cwd=ROOT)
    if baseline.returncode != 0:
        raise SystemExit(f"{name}: the tests fail on the unmutated code; fix that first")
    subprocess.run([*cr, "exec", str(config), str(session)], cwd=ROOT, check=True)
    found = results(session)
    lines = [f"{name}: {module}" + (f" ({', '.join(functions)})" if functions else ""),
             f"tests: {' '.join(tests)}", json.dumps(found["counts"]), ""]  # fmt: skip
    for i, diff in enumerate(found["survivors"], 1):
        lines += [f"--- survivor {i}", diff.strip(), ""]
    (OUT / f"{name}.txt").write_text("\n".join(lines))
    print(f"{name}: {found['counts']}", flush=True)
    return found["counts"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"some of: {', '.join(TARGETS)} (default all)")
    parser.add_argument("--max", type=int, help="run only the first N mutants of each target")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)}; expected some of {', '.join(TARGETS)}")
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "study"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    if dirty:
        raise SystemExit("study/ has uncommitted changes: mutants are made in place; commit first")
    os.environ.setdefault("STUDY_CACHE_DIR", str(OUT / "work" / "cache"))
    # No bytecode written for a mutant, so no later run can load a stale one.
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    scores_path = OUT / "score.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    try:
        for name in args.targets or list(TARGETS):
            scores[name] = run_target(name, args.max, args.timeout)
            scores_path.write_text(json.dumps(scores, indent=2) + "\n")
    finally:  # a mutant left behind by a stop
        subprocess.run(["git", "checkout", "--", "study"], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
