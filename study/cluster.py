"""`study sweep --executor slurm|local`: each cell of a sweep as one job, through submitit.

A job runs the cell's own sweep line (`python -m study sweep ... --cell N --id ID`), so it takes
the cell's claim like any sweep process (study.claims): a sweep submitted twice, or a job that
runs twice, still trains each cell once, and a cell already done is not trained again.

Several nodes (`--nodes N`, SLURM only): one task per node, each starting a torchrun that
meets the others by c10d rendezvous on the first node (run_on_node).

Preemption: submitit sends the job SIGUSR2 before SLURM stops it. The job passes SIGTERM on to
its cell, whose run writes a checkpoint of the step it is on and stops INTERRUPTED
(study.engine.PREEMPT); the job is then requeued, and its sweep line resumes that run from the
checkpoint. A requeued job whose old process was killed before it could let go of the claim
waits for the claim to go stale (study.identity.STALE_S), then resumes: never refused, never
restarted from scratch.

`--executor local` runs the same jobs as processes on this machine (submitit's LocalExecutor),
every job at once: how the tests exercise the cluster path without a cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from study.errors import StudyError

EXECUTORS = ("slurm", "local")
# How long a preempted job's cell may take to checkpoint and stop before the job is requeued
# anyway (SLURM's grace between its signal and SIGKILL is typically 90-120 s).
STOP_WAIT_S = 90.0


class CellJob:
    """One sweep cell as a submitit job: a callable, checkpointable (requeued on preemption).
    Holds only the cell's command line: no password (the cells find $STUDY_MONGO_URL in the
    job's environment) and nothing of a run record. On several nodes (one task each), see
    run_on_node."""

    def __init__(self, command: list[str], cwd: str, gpus_per_node: int | None = None):
        self.command = list(command)
        self.cwd = cwd
        self.gpus_per_node = gpus_per_node
        self.process: subprocess.Popen | None = None

    def __call__(self) -> dict:
        nodes, rank, head, job_id, folder = 1, 0, "", "", Path(self.cwd)
        try:
            import submitit

            env = submitit.JobEnvironment()
            nodes, rank, head, job_id = env.num_nodes, env.global_rank, env.hostnames[0], env.job_id
            folder = Path(env.paths.folder)
        except Exception:  # not inside a submitit job (a test calling the job itself)
            pass
        if nodes == 1:
            return self._run(self.command)
        # One file per attempt: a requeued job (same id) must not read its last attempt's.
        attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
        handoff = folder / f"{job_id}_cell_command_{attempt}.json"
        return run_on_node(self, nodes, rank, head, f"{job_id}-{attempt}", handoff)

    def _run(self, command: list[str], env: dict | None = None) -> dict:
        self.process = subprocess.Popen(command, cwd=self.cwd, env=env)
        code = self.process.wait()
        self.process = None
        if code != 0:
            raise StudyError(f"cell exited {code}: {' '.join(command)}")
        return {"command": command, "returncode": code}

    def checkpoint(self):
        """Preempted (or about to time out): the cell checkpoints the step it is on and stops,
        then the job is submitted again, to resume it."""
        import submitit

        process = self.process
        if process is not None and not _exited(process.pid):
            process.send_signal(signal.SIGTERM)  # the sweep passes it on to its `study run`
            deadline = time.monotonic() + STOP_WAIT_S
            while not _exited(process.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(CellJob(self.command, self.cwd))

    def __getstate__(self):  # a running child is not part of what is resubmitted
        return {**self.__dict__, "process": None}


def _exited(pid: int) -> bool:
    """Whether child `pid` has ended, without reaping it. Not Popen.poll(): checkpoint() runs in
    a signal handler that interrupted Popen.wait(), which holds the lock poll() needs, so poll()
    would say "running" until STOP_WAIT_S had passed (a requeue 90 s late)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


# The c10d rendezvous port on a multi-node cell's first node (torchrun's default).
RDZV_PORT = 29500
# How long the other nodes wait for the first node's sweep to say what the cell runs.
HANDOFF_WAIT_S = 600.0


def run_on_node(job: CellJob, nodes: int, rank: int, head: str, job_id: str, handoff: Path):
    """One node's part of a cell that spans `nodes` nodes, one torchrun each, meeting by c10d
    rendezvous on the first node. The first node runs the cell's sweep line (its claim decides
    whether the cell runs afresh, resumes or is done) with torchrun as the launcher, and the
    sweep writes the exact command it starts to `handoff` (STUDY_CELL_COMMAND_FILE; "null"
    when the cell needs no run); every other node waits for that file and starts the same
    command, so all torchruns train one run (global rank 0 alone records it)."""
    import json

    launcher = (
        f"torchrun --nnodes={nodes} --nproc-per-node={job.gpus_per_node or 1} "
        f"--rdzv-id=study-{job_id} --rdzv-backend=c10d --rdzv-endpoint={head}:{RDZV_PORT}"
    )
    if rank == 0:
        at = job.command.index("with") if "with" in job.command else len(job.command)
        command = [*job.command[:at], "--launcher", launcher, *job.command[at:]]
        env = {**os.environ, "STUDY_CELL_COMMAND_FILE": str(handoff)}
        try:
            return job._run(command, env)
        finally:
            if not handoff.exists():  # nothing was started: the other nodes stop waiting
                handoff.write_text("null")
    deadline = time.monotonic() + HANDOFF_WAIT_S
    while not handoff.exists():
        if time.monotonic() > deadline:
            raise StudyError(f"node {rank}: the first node said nothing in {HANDOFF_WAIT_S:.0f} s")
        time.sleep(1.0)
    command = json.loads(handoff.read_text())
    if command is None:
        return {"command": None, "returncode": 0}
    return job._run(command)


def executor(kind: str, folder: Path, args):
    """A submitit executor for `kind` (slurm or local), with the cell's resources."""
    try:
        import submitit
    except ImportError:
        raise StudyError(
            "--executor needs submitit: pip install 'archstudy[cluster]' (or pip install submitit)"
        ) from None
    if kind not in EXECUTORS:
        raise StudyError(f"--executor {kind!r} is invalid; expected one of: {', '.join(EXECUTORS)}")
    if args.nodes < 1 or (kind == "local" and args.nodes != 1):
        raise StudyError(
            f"--nodes {args.nodes} is invalid for --executor {kind}; expected "
            + ("1 (one machine)" if kind == "local" else "1 or more")
        )
    gpus = {"gpus_per_node": args.gpus_per_node} if args.gpus_per_node else {}
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        # submitit's local default is 2 minutes; a local job is stopped only by its --time.
        ex.update_parameters(timeout_min=args.time or LOCAL_TIME_MIN, tasks_per_node=1, **gpus)
        return ex
    extra = dict(_slurm_option(o) for o in args.slurm_option or [])
    ex = submitit.SlurmExecutor(folder=str(folder))
    ex.update_parameters(
        nodes=args.nodes,
        ntasks_per_node=1,  # one task per node: each starts its node's torchrun
        **gpus,
        **({"time": args.time} if args.time else {}),
        **({"partition": args.partition} if args.partition else {}),
        additional_parameters=extra,
    )
    return ex


LOCAL_TIME_MIN = 7 * 24 * 60


def _slurm_option(text: str) -> tuple[str, str]:
    """`--slurm-option constraint=a100` -> ("constraint", "a100")."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    if not sep or not key:
        raise StudyError(
            f"--slurm-option {text!r} is invalid; expected KEY=VALUE, e.g. constraint=a100 "
            "or qos=high"
        )
    return key, value


def cell_command(line_args: list[str], gpus_per_node: int | None, nodes: int = 1) -> list[str]:
    """The job's command: this Python running the cell's sweep line; with several GPUs on one
    node, its run started by torchrun, one process per GPU (on several nodes the job adds its
    own torchrun, run_on_node)."""
    command = [sys.executable, "-m", "study", *line_args]
    if nodes == 1 and gpus_per_node and gpus_per_node > 1 and "--launcher" not in line_args:
        at = command.index("with") if "with" in command else len(command)
        launcher = f"torchrun --standalone --nproc-per-node={gpus_per_node}"
        command[at:at] = ["--launcher", launcher]
    return command


def submit(jobs: list[tuple[str, list[str]]], ex, gpus_per_node: int | None = None) -> list:
    """Submit each (cell name, command) as a job; returns the jobs, in order."""
    cwd = os.getcwd()
    submitted = []
    for name, command in jobs:
        job = ex.submit(CellJob(command, cwd, gpus_per_node))
        print(f"  {name}: job {job.job_id}", flush=True)
        submitted.append(job)
    return submitted


def wait(jobs: list) -> list[str]:
    """Wait for every job; returns a line per job that did not end well."""
    problems = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # the job's own error, or submitit's account of its end
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            problems.append(f"job {job.job_id}: {first}")
    return problems
