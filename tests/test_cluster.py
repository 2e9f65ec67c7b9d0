"""`study sweep --executor`: cells as submitit jobs. The local executor runs the same jobs as
SLURM would (without a cluster); a job runs its cell's sweep line, so the claims keep each cell
to one run however often the sweep or a job is launched; a preempted job checkpoints the step
its run is on, is submitted again, and resumes the run from that step."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from conftest import run_study
from test_experiment import _wait_for_first_checkpoint

from study.stores import read_file_store

submitit = pytest.importorskip("submitit")


def _sweep_args(runs, data, *more):
    return ["--models", "small_cnn", "--datasets", "mnist", "--seeds", "2", "--runs", str(runs),
            *more, "with", f"data_root={data}", "epochs=1", "batch_size=50",
            "test_limit=50"]  # fmt: skip


def test_a_sweep_through_the_local_executor_runs_each_cell_once_even_launched_twice(
    mnist_root, tmp_path
):
    runs = tmp_path / "runs"
    args = ["sweep", *_sweep_args(runs, mnist_root, "--executor", "local")]
    both = [
        subprocess.Popen([sys.executable, "-m", "study", *args], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    assert all("2 of 2 cells COMPLETED" in out for out in outputs), outputs
    records = read_file_store(runs)
    assert sorted(r.config["seed"] for r in records) == [0, 1]  # each cell once, not twice
    assert all(r.status == "COMPLETED" for r in records)
    assert all(r.meta.get("comment", "").startswith("sweep:") for r in records)
    jobs = list((runs / next(p.name for p in runs.iterdir() if p.name.startswith("sweep-")))
                .glob("jobs/*_log.out"))  # fmt: skip
    assert jobs  # the cells really ran as submitit jobs

    # Once more: nothing left to submit, nothing trained again.
    again = run_study(*args, cwd=tmp_path)
    assert "submitting 0 job(s) to local" in again.stdout
    assert len(read_file_store(runs)) == 2


def test_job_options_without_an_executor_are_refused_in_one_line(tmp_path):
    proc = run_study("sweep", "--models", "small_cnn", "--datasets", "mnist", "--partition", "gpu",
                     cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--partition: job options, for --executor slurm or local only" in proc.stderr
    proc = run_study("sweep", "--models", "small_cnn", "--datasets", "mnist", "--executor",
                     "local", "--nodes", "2", cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2 and "--nodes 2 is invalid for --executor local; expected 1" in (
        proc.stderr
    )


def test_a_preempted_job_checkpoints_its_run_and_the_requeued_job_resumes_it(mnist_root, tmp_path):
    """What submitit does on SLURM's preemption signal, step by step: the job's checkpoint()
    stops its cell (the run checkpoints the step it is on, INTERRUPTED) and returns the job to
    submit again; that job's sweep line resumes the same run from that step to the end."""
    from study import cluster

    runs = tmp_path / "runs"
    line = ["sweep", *_sweep_args(runs, mnist_root, "--cell", "0")]
    line[line.index("epochs=1")] = "epochs=3"
    line += ["image_size=64"]
    job = cluster.CellJob(cluster.cell_command(line, None), str(tmp_path))
    failed = []
    thread = threading.Thread(target=lambda: _call(job, failed))
    thread.start()
    deadline = time.time() + 120
    while job.process is None and time.time() < deadline:
        time.sleep(0.05)
    _wait_for_first_checkpoint(runs, job.process)

    requeued = job.checkpoint()  # SIGUSR2 reached the job: what submitit calls
    thread.join(timeout=120)
    assert failed and "exited 130" in str(failed[0])  # the first job's cell was stopped
    (stopped,) = read_file_store(runs)
    assert stopped.status == "INTERRUPTED" and stopped.has_checkpoint()

    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    result = requeued.function(*requeued.args, **requeued.kwargs)  # the requeued job runs
    assert result["returncode"] == 0
    (done,) = read_file_store(runs)
    assert done.id == stopped.id and done.status == "COMPLETED"
    log = next(runs.glob("sweep-*/000-*.log")).read_text()
    assert f"resuming run {done.id} in epoch" in log  # from the step, not from epoch 2's start


def test_a_cell_on_two_nodes_runs_one_torchrun_per_node_and_records_one_run(
    mnist_root, tmp_path, monkeypatch
):
    """--nodes 2: each node's task of the job (here two threads of one machine, as two SLURM
    nodes would run them) starts a torchrun; the first node's sweep line decides the command
    and hands it to the other; they meet by c10d rendezvous and train one run, recorded once.
    Launched again, the first node finds the cell done and the other node stops too."""
    from study import cluster

    monkeypatch.setattr(cluster, "RDZV_PORT", _free_port())
    runs = tmp_path / "runs"
    line = ["sweep", *_sweep_args(runs, mnist_root, "--cell", "0")]

    def both_nodes(tag):
        handoff = tmp_path / f"handoff-{tag}.json"
        results, errors = {}, []

        def node(rank):
            job = cluster.CellJob(cluster.cell_command(line, None, nodes=2), str(tmp_path))
            try:
                results[rank] = cluster.run_on_node(job, 2, rank, "127.0.0.1", tag, handoff)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        return results

    first = both_nodes("a")
    assert first[1]["command"][0] == "torchrun" and "--nnodes=2" in first[1]["command"]
    (rec,) = read_file_store(runs)
    assert rec.status == "COMPLETED" and rec.info["training"]["processes"] == 2

    again = both_nodes("b")  # the cell is done: nothing runs on either node
    assert again[1] == {"command": None, "returncode": 0}
    assert len(read_file_store(runs)) == 1


def _call(job, failed):
    try:
        job()
    except Exception as exc:  # the stopped cell's exit, as the first job reports it
        failed.append(exc)


# --- a real one-node SLURM cluster, where this machine can start one -------------------------

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "sinfo")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """slurmctld and slurmd on this machine (Debian's slurm-wlm and munge, started as root, as
    `.ci/run` installs them), one partition of this node; yields the environment that points
    sbatch at it. Skipped where the programs are missing or this is not root."""
    import os
    import shutil
    import socket

    if any(shutil.which(p) is None for p in SLURM_PROGRAMS) or os.geteuid() != 0:
        pytest.skip("no slurm-wlm and munge here, or not root: no SLURM cluster to start")
    root = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    for d in ("state", "spool", "log"):
        (root / d).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=studytest
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
        os.makedirs("/run/munge", exist_ok=True)
        subprocess.run(["munged", "--force"], check=True, capture_output=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    daemons = [subprocess.Popen([d, "-D"], env=env, **quiet) for d in ("slurmctld", "slurmd")]
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            up = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                text=True)  # fmt: skip
            if up.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the test SLURM cluster did not come up: {up.stdout} {up.stderr}")
        yield env
    finally:
        for d in daemons:
            d.terminate()
            d.wait(timeout=30)


def test_a_sweep_through_slurm_runs_each_cell_once_as_a_job(slurm, mnist_root, tmp_path):
    runs = tmp_path / "runs"
    args = ["sweep", *_sweep_args(runs, mnist_root, "--executor", "slurm", "--time", "30")]
    first = run_study(*args, cwd=tmp_path, env=slurm)
    assert "submitting 2 job(s) to slurm" in first.stdout
    assert "2 of 2 cells COMPLETED" in first.stdout
    records = read_file_store(runs)
    assert sorted(r.config["seed"] for r in records) == [0, 1]
    # The runs ran inside SLURM jobs.
    logs = "".join(p.read_text() for p in runs.glob("sweep-*/jobs/*_log.out"))
    assert "study sweep" in logs
    again = run_study(*args, cwd=tmp_path, env=slurm)
    assert "submitting 0 job(s) to slurm" in again.stdout and len(read_file_store(runs)) == 2


def test_a_slurm_job_preempted_by_its_signal_requeues_and_resumes_its_run(
    slurm, mnist_root, tmp_path
):
    """SLURM's preemption warning (USR2, as `--signal` sends it) reaches the job: the run
    checkpoints the step it is on, the job requeues itself (scontrol requeue), and the requeued
    job resumes the same run to COMPLETED."""
    import re

    runs = tmp_path / "runs"
    args = _sweep_args(runs, mnist_root, "--executor", "slurm", "--time", "30", "--cell", "0")
    args[args.index("epochs=1")] = "epochs=3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "sweep", *args, "image_size=64"], cwd=tmp_path, env=slurm,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (runs / "1" / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.1)
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True,
                          text=True).stdout.split()  # fmt: skip
    assert len(jobs) == 1
    subprocess.run(["scancel", "--signal=USR2", jobs[0]], env=slurm, check=True)
    signalled, requeued_after = time.monotonic(), None
    # SLURM holds a requeued job for a while before it may start again (minutes): start it
    # sooner, so the test does not wait for the scheduler's delay. The requeue itself is
    # SLURM's. Not within the second its old allocation was revoked: slurmd refuses a job
    # credential made in that second ("Job credential revoked") and the job ends, never run.
    while proc.poll() is None and time.time() < deadline + 300:
        state = subprocess.run(["squeue", "-h", "-j", jobs[0], "-o", "%T"], env=slurm,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        if state == "PENDING":
            requeued_after = requeued_after or time.monotonic() - signalled
        if state == "PENDING" and time.monotonic() - signalled > requeued_after + 3:
            subprocess.run(["scontrol", "update", f"JobId={jobs[0]}", "StartTime=now"],
                           env=slurm, capture_output=True)  # fmt: skip
        time.sleep(1.0)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate()[0]
    # The job is requeued as soon as its cell has checkpointed and stopped, not when
    # cluster.STOP_WAIT_S runs out (the job's wait for its cell must see the cell end).
    assert requeued_after is not None and requeued_after < 45, (requeued_after, out)
    assert proc.returncode == 0, out
    (done,) = read_file_store(runs)
    assert done.id == "1" and done.status == "COMPLETED"
    log = next(runs.glob("sweep-*/000-*.log")).read_text()
    assert re.search(r"resuming run 1 in epoch \d after step \d+", log), log
