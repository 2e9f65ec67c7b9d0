"""`study sweep`: a grid of models x data sets x seeds, each cell one ordinary recorded run.

    study sweep --models vgg16,resnet50 --datasets mnist,cifar10 --seeds 3 with paper
    study sweep seed-study [with KEY=VALUE ...]

Each cell is `python -m study run with <config> model=M dataset=D seed=S -c sweep:<id>` in its
own process (a crash in one cell stops only that cell), its output appended to a log file under
`<store>/sweep-<id>/` (for MongoDB: `./sweeps/sweep-<id>/`).

- Tag: every run a sweep starts carries Sacred's comment `sweep:<id>` (run.json's
  `meta.comment`); the id is derived from the grid and its config, so the same command is the
  same sweep. The tag is for people and tools; it does not decide what runs.
- Matching: a cell is *done* when the store holds a COMPLETED run whose config equals the
  cell's resolved config (Sacred's config with study's config hook applied, as `study run` would
  record it) except for the keys in identity.PLACE_KEYS, which say where or on what a run ran,
  not what was trained. Any such run counts, tagged or not: a cell trained by hand is not
  trained again.
- Otherwise, the latest FAILED / INTERRUPTED / dead RUNNING run of the cell with a checkpoint
  is resumed (`resume=<id>`, the same run continues); without one the cell runs afresh. A
  RUNNING file-store run whose heartbeat is recent (another process is training it) is left
  alone.
- The store is read again before each cell, so several sweeps (or a Slurm array of
  `--print-commands` lines) can share a store; a cell is claimed (study.claims) before it runs
  and the store read again under the claim, so sweeps of one grid started together run each
  cell once between them, and each waits for the cells the others run.
- SIGTERM / Ctrl-C: the running cell is stopped as `study run` stops (recorded INTERRUPTED),
  no further cell starts, and the summary is printed; rerunning the sweep resumes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from study.atomic import write_atomic
from study.errors import StudyError
from study.identity import CLAIM_TOUCH_S, STALE_S, run_order, trained

# Where a multi-node job's first node tells the others the command its cell starts
# (study.cluster.run_on_node).
COMMAND_FILE = "STUDY_CELL_COMMAND_FILE"
# Keys the grid sets itself.
GRID_KEYS = ("model", "dataset", "seed")
# While the cells of other processes run, the store is looked at again this often.
POLL_S = 5.0
TAG_PREFIX = "sweep:"


@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    config: tuple[str, ...] = ()  # tokens after `with`: named configs and KEY=VALUE
    description: str = ""


NAMED_GRIDS = {
    "seed-study": Grid(
        models=("vgg16", "resnet50", "inception_v3"),
        datasets=("mnist", "cifar10", "tiny_imagenet"),
        seeds=(0,),
        config=("paper",),
        description="the seed study's 9 cells under its own protocol (`paper`)",
    ),
}


@dataclass
class Cell:
    index: int
    model: str
    dataset: str
    seed: int
    config: dict  # resolved, as `study run` records it
    action: str = "run"  # done | running | claimed | resume | run
    run_id: str | None = None  # the run that made it done / is running / will be resumed
    holder: str | None = None  # who holds its claim (claimed: another sweep runs it)
    said: str | None = None  # what was last printed about it
    status: str = "not run"  # after the sweep: COMPLETED, FAILED, INTERRUPTED, ...
    log: Path | None = None
    returncode: int | None = None
    dead: list = field(default_factory=list)  # its RUNNING runs whose process is gone

    @property
    def name(self) -> str:
        return f"{self.model}/{self.dataset}/seed {self.seed}"

    @property
    def slug(self) -> str:
        return f"{self.index:03d}-{self.model}-{self.dataset}-seed{self.seed}"


@dataclass
class Store:
    """Where the cells record: the chosen store (study.stores.choose_store), the `study run`
    options that name it, and the environment the cells' processes need."""

    store: object  # a study.stores.Store
    args: list[str]  # -F DIR / -m SPEC, or [] ($STUDY_MONGO_URL)
    printable_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # for the cells' processes

    noted: set[str] = field(default_factory=set)  # skipped runs already named

    @property
    def folder(self) -> Path | None:
        """The file store's folder (None for MongoDB)."""
        return getattr(self.store, "folder", None)

    @property
    def where(self) -> str:
        return self.store.describe()

    def claims(self):
        """Where cells are claimed: `<store>/.claims` for a file store, the `claims`
        collection of the MongoDB database."""
        return self.store.claims()

    def read(self):
        from study.stores import print_skipped

        if self.folder is not None and not self.folder.exists():
            return []
        notes: list[str] = []  # the store is read before every cell: each note once
        runs = self.store.read_runs(skipped=notes)
        print_skipped([n for n in notes if n not in self.noted])
        self.noted.update(notes)
        return runs


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str]) -> int:
    """`study sweep [GRID] [--models ...] [--datasets ...] [--seeds N] [with KEY=VALUE ...]`."""
    args, with_tokens = parse_args(argv)
    launcher = check_launcher(args.launcher)
    given = [o for o, v in (("--nodes", args.nodes != 1), ("--gpus-per-node", args.gpus_per_node),
                            ("--partition", args.partition), ("--time", args.time),
                            ("--slurm-option", args.slurm_option)) if v]  # fmt: skip
    if given and not args.executor:
        raise StudyError(f"{', '.join(given)}: job options, for --executor slurm or local only")
    grid = make_grid(args, with_tokens)
    store = make_store(args.file_storage, args.mongo_db)
    sweep_id = args.id or grid_id(args.grid or "grid", grid)
    cells = make_cells(grid)
    if args.cell is not None:
        if not 0 <= args.cell < len(cells):
            raise StudyError(f"--cell {args.cell} is out of range; the grid has cells 0-"
                             f"{len(cells) - 1}")  # fmt: skip
        cells = [cells[args.cell]]
    records = store.read()
    for cell in cells:
        plan(cell, records)

    if args.print_commands:
        options = split_with(argv)[0]
        for cell in cells:
            if cell.action in ("run", "resume"):
                print(cell_line(options, with_tokens, cell, sweep_id, store))
            else:
                print(f"# cell {cell.index} {cell.name}: {describe(cell)}", file=sys.stderr)
        if store.env:
            print("# the commands record to $STUDY_MONGO_URL (its password is not printed): "
                  "export it where they run", file=sys.stderr)  # fmt: skip
        return 0

    print(f"study sweep {sweep_id}: {len(cells)} cells, recording to {store.where}")
    if args.dry_run:
        for cell in cells:
            print(f"  [{cell.index}] {cell.name:<40} {describe(cell)}")
        pending = sum(c.action in ("run", "resume") for c in cells)
        print(f"{pending} of {len(cells)} cells would run (dry run: nothing started)")
        return 0

    logs = Path(args.logs) if args.logs else log_folder(store, sweep_id)
    if args.executor:
        return submit_cells(cells, sweep_id, store, logs, args, split_with(argv)[0], with_tokens)
    return run_cells(cells, grid, sweep_id, store, logs, launcher)


def submit_cells(cells, sweep_id: str, store: Store, logs: Path, args, options, with_tokens):
    """`--executor`: each cell still to run as one job (study.cluster), then, once every job
    has ended, the summary from the store."""
    from study import cluster

    ex = cluster.executor(args.executor, logs / "jobs", args)
    os.environ.update(store.env)  # a password reaches the jobs by their environment only
    jobs = [
        (
            c.name,
            cluster.cell_command(
                cell_args(options, with_tokens, c, sweep_id, store), args.gpus_per_node, args.nodes
            ),
        )  # fmt: skip
        for c in cells
        if c.action in ("run", "resume")
    ]
    print(f"submitting {len(jobs)} job(s) to {args.executor} (logs {logs / 'jobs'})", flush=True)
    problems = cluster.wait(cluster.submit(jobs, ex, args.gpus_per_node))
    records = store.read()
    for cell in cells:
        plan(cell, records)
        cell.log = logs / f"{cell.slug}.log" if (logs / f"{cell.slug}.log").exists() else None
        if cell.action != "done":
            cell.status = outcome_of(cell, store)
    print(write_summary(cells, sweep_id, store, logs), flush=True)
    for line in problems:
        print(f"study sweep: {line}", file=sys.stderr)
    return 0 if all(c.status == "COMPLETED" for c in cells) else 1


def check_launcher(launcher: str | None) -> list[str]:
    """What starts each cell's `-m study run ...`: this Python, or `--launcher` (e.g.
    `torchrun --nproc-per-node=4`), refused in one line when its program cannot be found."""
    if launcher is None:
        return [sys.executable]
    try:
        words = shlex.split(launcher)
    except ValueError as exc:
        raise StudyError(f"--launcher {launcher!r}: {exc}") from None
    if not words or shutil.which(words[0]) is None:
        raise StudyError(
            f"--launcher {launcher!r}: {words[0] if words else 'nothing'} is not a program on "
            "PATH; e.g. --launcher 'torchrun --nproc-per-node=4'"
        )
    return words


# The options of `--executor`: a cell's job runs the cell itself, never submits again.
EXECUTOR_OPTIONS = ("--executor", "--nodes", "--gpus-per-node", "--partition", "--time",
                    "--slurm-option")  # fmt: skip
# Options a printed cell line sets itself (and how many values each takes).
LINE_OPTIONS = {"--print-commands": 0, "--dry-run": 0, "--cell": 1, "--id": 1, "-F": 1,
                "--file_storage": 1, "--runs": 1, "-m": 1, "--mongo_db": 1,
                "--mongo": 1, **{o: 1 for o in EXECUTOR_OPTIONS}}  # fmt: skip


def cell_line(options: list[str], with_tokens: list[str], cell, sweep_id: str, store) -> str:
    """One cell as a shell line: `python -m study sweep ... --cell N --id ID`, so a printed line
    goes through the sweep's claims like any sweep process (run twice, or by two array tasks,
    the cell trains once) and its index is the sweep's own, from 0."""
    return shlex.join(["python", "-m", "study", *cell_args(options, with_tokens, cell, sweep_id,
                                                            store)])  # fmt: skip


def cell_args(options: list[str], with_tokens: list[str], cell, sweep_id: str, store) -> list:
    """The arguments (after `python -m study`) of cell_line."""
    kept, i = [], 0
    while i < len(options):
        name, has_value = options[i].split("=", 1)[0], "=" in options[i]
        if name in LINE_OPTIONS:
            i += 1 + (0 if has_value else LINE_OPTIONS[name])
            continue
        kept.append(options[i])
        i += 1
    args = ["sweep", *kept, "--cell", str(cell.index), "--id", sweep_id, *store.printable_args]
    return [*args, *(["with", *with_tokens] * bool(with_tokens))]


VALUE_OPTIONS = ("-F", "--file_storage", "--runs", "-m", "--mongo_db", "--mongo", "--models",
                 "--datasets", "--seeds", "--cell", "--id", "--logs", "--launcher",
                 *EXECUTOR_OPTIONS)  # fmt: skip


def split_with(argv: list[str]) -> tuple[list[str], list[str]]:
    """(options, config tokens): what follows `with` is config, except options (as for
    `study run`, `-F DIR` may come after the config)."""
    if "with" not in argv:
        return argv, []
    cut = argv.index("with")
    options, tokens, rest = argv[:cut], [], argv[cut + 1 :]
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-"):
            options.append(token)
            if token in VALUE_OPTIONS and i + 1 < len(rest):
                options.append(rest[i + 1])
                i += 1
        else:
            tokens.append(token)
        i += 1
    return options, tokens


def parse_args(argv: list[str]):
    argv, with_tokens = split_with(argv)
    grids = ", ".join(f"{k} ({g.description})" for k, g in NAMED_GRIDS.items())
    parser = argparse.ArgumentParser(
        prog="study sweep",
        description="Run a grid of models x data sets x seeds, each cell a recorded run. "
        "Config after `with` applies to every cell.",
        epilog=f"named grids: {grids}",
    )
    parser.add_argument("grid", nargs="?", choices=sorted(NAMED_GRIDS), help="a named grid")
    parser.add_argument("--models", help="comma list, e.g. vgg16,resnet50")
    parser.add_argument("--datasets", help="comma list, e.g. mnist,cifar10")
    parser.add_argument("--seeds", help="N (seeds 0..N-1) or a comma list of seeds (default 1)")
    parser.add_argument("--runs", "-F", "--file_storage", dest="file_storage", metavar="DIR",
                        help="file store (default ./runs)")  # fmt: skip
    parser.add_argument("--mongo", "-m", "--mongo_db", dest="mongo_db", metavar="URL",
                        help="MongoDB, as for `study run`")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the cells, run nothing")
    parser.add_argument(
        "--print-commands", action="store_true",
        help="print one `study sweep ... --cell N` line per cell still to run (for Slurm "
        "arrays, shell loops), run nothing",
    )  # fmt: skip
    parser.add_argument(
        "--launcher",
        help="what starts each cell's `-m study run` (default: this Python; e.g. "
        "'torchrun --nproc-per-node=4')",
    )  # fmt: skip
    parser.add_argument(
        "--executor", choices=("slurm", "local"),
        help="submit each cell still to run as a job through submitit: `slurm`, or `local` "
        "(every job at once on this machine); without it, cells run one after another here",
    )  # fmt: skip
    parser.add_argument("--nodes", type=int, default=1, help="--executor: nodes per cell (1)")
    parser.add_argument("--gpus-per-node", type=int, metavar="G",
                        help="--executor: GPUs per cell; with more than one, the cell's run is "
                        "started by torchrun, one process per GPU")  # fmt: skip
    parser.add_argument("--partition", help="--executor slurm: the SLURM partition")
    parser.add_argument("--time", type=int, metavar="MINUTES",
                        help="--executor: each job's time limit in minutes")  # fmt: skip
    parser.add_argument("--slurm-option", action="append", metavar="KEY=VALUE",
                        help="--executor slurm: any other sbatch option, e.g. qos=high "
                        "(repeatable)")  # fmt: skip
    parser.add_argument("--cell", type=int, help="run only this cell (0-based, as listed)")
    parser.add_argument("--id", help="the sweep's id (default: derived from the grid)")
    parser.add_argument("--logs", metavar="DIR", help="where cell logs go")
    return parser.parse_args(argv), with_tokens


def _names(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise StudyError("an empty list; give comma-separated names")
    return names


def parse_seeds(value: str | None) -> tuple[int, ...] | None:
    """`3` -> (0, 1, 2); `0,5,7` -> (0, 5, 7)."""
    if value is None:
        return None
    try:
        if "," in value:
            seeds = tuple(int(v) for v in value.split(",") if v.strip())
        else:
            seeds = tuple(range(int(value)))
    except ValueError:
        raise StudyError(f"--seeds {value!r} is invalid; expected N or a comma list") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds {value!r} is invalid; expected N >= 1 or distinct seeds >= 0")
    return seeds


def make_grid(args, with_tokens: list[str]) -> Grid:
    base = NAMED_GRIDS.get(args.grid) if args.grid else None
    models = _names(args.models) or (base.models if base else None)
    datasets = _names(args.datasets) or (base.datasets if base else None)
    seeds = parse_seeds(args.seeds) or (base.seeds if base else (0,))
    if not models or not datasets:
        raise StudyError(
            f"a sweep needs --models and --datasets (or a named grid: {', '.join(NAMED_GRIDS)})"
        )
    for token in with_tokens:
        key = token.split("=", 1)[0].strip()
        if "=" in token and key in (*GRID_KEYS, "resume"):
            raise StudyError(
                f"{key} is set by the grid (--models, --datasets, --seeds), not after `with`"
                if key != "resume"
                else "resume= is for one run; a sweep resumes its interrupted cells itself"
            )
    config = (*(base.config if base else ()), *with_tokens)
    return Grid(models, datasets, seeds, config)


def make_store(file_storage: str | None, mongo_spec: str | None) -> Store:
    from study.stores import FileRunStore, choose_store, mongo

    store = choose_store(file_storage, mongo_spec, options=("-F DIR", "-m URL"))
    if store.kind == "files":
        # The cells and other sweeps may run elsewhere: an absolute folder.
        store = FileRunStore(store.folder.expanduser().resolve())
        args = ["-F", str(store.folder)]
        return Store(store, args, args)
    if store.from_env:
        return Store(store, [], [])  # the cells inherit $STUDY_MONGO_URL
    if mongo.mask_url(store.target.url) != store.target.url:
        # A password stays off every command line (`ps` shows them to other users): the cells
        # get the URL through $STUDY_MONGO_URL, printed commands expect it there.
        return Store(store, [], [], {mongo.URL_ENV: mongo_spec})
    return Store(store, ["-m", mongo_spec], ["-m", mongo_spec])


def grid_id(name: str, grid: Grid) -> str:
    """`<name>-<8 hex>`: the same grid and config give the same id."""
    key = json.dumps([grid.models, grid.datasets, grid.seeds, grid.config])
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def log_folder(store: Store, sweep_id: str) -> Path:
    return (store.folder or Path("sweeps")) / f"sweep-{sweep_id}"


# ---------------------------------------------------------------------------------------------
# Cells


def resolve(updates_tokens: tuple[str, ...], model: str, dataset: str, seed: int) -> dict:
    """The config `study run with TOKENS model=.. dataset=.. seed=..` would record."""
    from sacred.arg_parser import get_config_updates

    from study import sacred_api
    from study.cli import parse_booleans
    from study.experiment import ex

    updates, named = get_config_updates(list(updates_tokens))
    # As `study run` reads them: `amp=false` is False, not the string 'false'.
    updates = {**parse_booleans(updates), "model": model, "dataset": dataset, "seed": seed}
    try:
        run = sacred_api.resolve_run(ex, updates, named)
    except StudyError:
        raise
    except Exception as exc:  # Sacred's: an unknown named config, a misspelt key, ...
        message = " ".join(str(exc).split())
        raise StudyError(f"the sweep's config is invalid: {message}") from None
    return dict(run.config)


def make_cells(grid: Grid) -> list[Cell]:
    """Every cell, data set-major (all models on one data set, then the next), seeds inner.
    Resolving each cell's config checks it: a bad value stops the sweep before any cell runs."""
    cells = []
    for dataset in grid.datasets:
        for model in grid.models:
            for seed in grid.seeds:
                config = resolve(grid.config, model, dataset, seed)
                cells.append(Cell(len(cells), model, dataset, seed, config))
    return cells


def identity(config: dict) -> str:
    """What a run trained, as comparable text: the config without identity.PLACE_KEYS,
    through JSON (as a store holds it)."""
    return json.dumps(json.loads(json.dumps(trained(config), default=str)), sort_keys=True)


def _run_order(record) -> tuple:
    return run_order(record.id)


def plan(cell: Cell, records) -> None:
    """Set what the cell needs: done, running (elsewhere), resume (run_id) or run."""
    mine = identity(cell.config)
    matching = sorted((r for r in records if identity(r.config) == mine), key=_run_order)
    done = [r for r in matching if r.status == "COMPLETED"]
    if done:
        cell.action, cell.run_id, cell.status = "done", done[0].id, "COMPLETED"
        return
    live = [r for r in matching if r.alive]
    if live:
        cell.action, cell.run_id, cell.status = "running", live[-1].id, "RUNNING elsewhere"
        return
    cell.dead = [r for r in matching if r.status == "RUNNING"]
    resumable = [r for r in matching if r.has_checkpoint()]
    if resumable:
        cell.action, cell.run_id = "resume", resumable[-1].id
        return
    cell.action, cell.run_id = "run", None


def describe(cell: Cell) -> str:
    return {
        "done": f"skip: COMPLETED as run {cell.run_id}",
        "running": f"skip: run {cell.run_id} is RUNNING (heartbeat within {STALE_S:.0f} s)",
        "claimed": f"skip: another sweep ({cell.holder or 'elsewhere'}) is running it",
        "resume": f"resume run {cell.run_id} from its checkpoint",
        "run": "run",
    }[cell.action]


def cell_key(cell: Cell) -> str:
    """The name of a cell's claim: what the cell trains, hashed."""
    return "cell-" + hashlib.sha256(identity(cell.config).encode()).hexdigest()[:40]


def cell_command(cell: Cell, grid: Grid, sweep_id: str, store: Store):
    """The `study run ...` arguments of a cell (after `python -m study`)."""
    store_args = store.args
    tag = ["-c", f"{TAG_PREFIX}{sweep_id}"]
    if cell.action == "resume":
        return ["run", "with", f"resume={cell.run_id}", *tag, *store_args]
    cell_keys = [f"model={cell.model}", f"dataset={cell.dataset}", f"seed={cell.seed}"]
    return ["run", "with", *grid.config, *cell_keys, *tag, *store_args]


# ---------------------------------------------------------------------------------------------
# Running


class _Stop:
    """SIGTERM / SIGINT: stop the running cell as `study run` stops, start no other."""

    def __init__(self):
        self.requested = False
        self.child: subprocess.Popen | None = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        self.requested = True
        # Ctrl-C reaches the child from the terminal itself; SIGTERM (kill, a scheduler) is
        # passed on, so the child records its run as INTERRUPTED.
        if signum == signal.SIGTERM and self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


def run_cells(
    cells: list[Cell], grid: Grid, sweep_id: str, store: Store, logs: Path, launcher: list[str]
) -> int:
    logs.mkdir(parents=True, exist_ok=True)
    claims = store.claims()
    with _Stop() as stop:
        pending = list(cells)
        while pending and not stop.requested:
            for cell in pending:
                if stop.requested:
                    break
                attempt(cell, grid, sweep_id, store, logs, stop, claims, launcher)
            # Cells other processes are running: wait for them, so the summary is the sweep's.
            pending = [c for c in pending if c.action in ("running", "claimed")]
            if pending and not stop.requested:
                time.sleep(POLL_S)
    summary = write_summary(cells, sweep_id, store, logs)
    print(summary, flush=True)
    if stop.requested:
        print("study sweep: stopped; run the same command again to finish the sweep",
              file=sys.stderr)  # fmt: skip
        return 130
    return 0 if all(c.status == "COMPLETED" for c in cells) else 1


def attempt(
    cell: Cell, grid, sweep_id: str, store: Store, logs: Path, stop, claims, launcher: list[str]
) -> None:
    """Run the cell unless it is done or someone else runs it. The cell is claimed first,
    and the store read again under the claim: of several sweeps of one grid started at once
    (or a cell done meanwhile), exactly one process runs it."""
    plan(cell, store.read())
    if cell.action in ("run", "resume"):
        claim = claims.acquire(cell_key(cell))
        if claim is None:
            holder = claims.holder(cell_key(cell))
            cell.action, cell.holder = "claimed", str(holder) if holder else None
        else:
            with claim:
                plan(cell, store.read())  # again: another process may have done it meanwhile
                if cell.action in ("run", "resume"):
                    mark_dead_runs(cell, store)
                    run_cell(cell, grid, sweep_id, store, logs, stop, claim, launcher)
                    return
    if cell.action in ("running", "claimed"):
        cell.status = "RUNNING elsewhere"
    _say(cell, describe(cell))
    earlier = logs / f"{cell.slug}.log"  # another sweep of this grid writes the same log
    cell.log = earlier if earlier.exists() else None


def mark_dead_runs(cell: Cell, store: Store) -> None:
    """A dead run of the cell that is not the one being resumed stays RUNNING in its record for
    ever unless someone says otherwise: the sweep that takes the cell over does, under its claim."""
    for run in cell.dead:
        if run.id == cell.run_id and cell.action == "resume":
            continue  # resumed as the same run: its record goes on
        takeover = f"resumed as run {cell.run_id}" if cell.action == "resume" else "run again"
        since = run.heartbeat or f"its start ({run.start_time})"
        why = (
            f"no heartbeat since {since}: its process died; a sweep took its cell over ({takeover})"
        )
        if store.store.mark_dead(run, why):
            print(f"[{cell.index}] {cell.name}: run {run.id} had died; recorded INTERRUPTED",
                  flush=True)  # fmt: skip


def _say(cell: Cell, what: str) -> None:
    if what != cell.said:  # a cell waited for is not announced again every poll
        cell.said = what
        print(f"[{cell.index}] {cell.name}: {what}", flush=True)


def run_cell(
    cell: Cell, grid, sweep_id: str, store: Store, logs: Path, stop, claim, launcher: list[str]
) -> None:
    command = [*launcher, "-m", "study", *cell_command(cell, grid, sweep_id, store)]
    cell.log = logs / f"{cell.slug}.log"
    what = describe(cell)
    _say(cell, f"{what} (log {cell.log})")
    started = time.monotonic()
    with open(cell.log, "a") as log:
        # A password never reaches a command line (store.env carries it): the line is safe to log.
        shown = shlex.join(command)
        log.write(f"=== {dt.datetime.now().isoformat(timespec='seconds')} {shown}\n")
        log.flush()
        env = {**os.environ, **store.env}
        if os.environ.get(COMMAND_FILE):  # a multi-node job's other nodes start the same
            write_atomic(Path(os.environ[COMMAND_FILE]), json.dumps(command))
        stop.child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                cell.returncode = stop.child.wait(timeout=CLAIM_TOUCH_S)
                break
            except subprocess.TimeoutExpired:
                claim.touch()  # alive: no other sweep takes the cell over
        stop.child = None
    outcome = outcome_of(cell, store)
    cell.status = outcome
    seconds = time.monotonic() - started
    _say(cell, f"{outcome} (exit {cell.returncode}, {seconds:.0f} s)")


def outcome_of(cell: Cell, store: Store) -> str:
    """The cell's status after its process ended, from the store (the exit code when the
    store holds no run of it: the command failed before recording)."""
    try:
        records = store.read()
    except StudyError:
        records = []
    mine = identity(cell.config)
    matching = sorted((r for r in records if identity(r.config) == mine), key=_run_order)
    if cell.action == "resume":
        matching = [r for r in matching if r.id == cell.run_id] or matching
    if matching:
        latest = matching[-1]
        if any(r.status == "COMPLETED" for r in matching):
            latest = next(r for r in matching if r.status == "COMPLETED")
        cell.run_id = latest.id
        if latest.status == "RUNNING" and cell.returncode != 0:
            return "FAILED" if cell.returncode != 130 else "INTERRUPTED"
        return latest.status
    return "INTERRUPTED" if cell.returncode == 130 else f"FAILED (exit {cell.returncode})"


def write_summary(cells: list[Cell], sweep_id: str, store: Store, logs: Path) -> str:
    """The summary table (returned) and `<logs>/summary.json`."""
    lines = [f"study sweep {sweep_id}: summary ({store.where})"]
    lines.append(f"{'cell':>4}  {'model':<16} {'dataset':<14} {'seed':>4}  {'status':<20} "
                 f"{'run':>5}  log")  # fmt: skip
    for c in cells:
        log = str(c.log) if c.log else "-"
        lines.append(f"{c.index:>4}  {c.model:<16} {c.dataset:<14} {c.seed:>4}  "
                     f"{c.status:<20} {c.run_id or '-':>5}  {log}")  # fmt: skip
    done = sum(c.status == "COMPLETED" for c in cells)
    lines.append(f"{done} of {len(cells)} cells COMPLETED")
    entries = [
        {"cell": c.index, "model": c.model, "dataset": c.dataset, "seed": c.seed,
         "status": c.status, "run": c.run_id, "action": c.action,
         "log": str(c.log) if c.log else None, "returncode": c.returncode}
        for c in cells
    ]  # fmt: skip
    payload = {"sweep": sweep_id, "store": store.where, "cells": entries,
               "written": dt.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    write_atomic(logs / "summary.json", json.dumps(payload, indent=2))
    return "\n".join(lines)
