"""What a run leaves behind, written through Sacred's run API so every observer stores it.

The record (read back by `study.stores` into a `RunRecord`):
- config: Sacred's config, with epochs / image_size / aux_logits resolved.
- metrics (`_run.log_scalar`, step = epoch): the names in EPOCH_METRICS.
- result (the run's return value): top1, top5, test_loss.
- info: `dataset`, `model`, `training`, `per_class_accuracy`, `misclassified`, `checkpoint`.
- artifacts: `evaluation.npz` (per-sample top-5 predictions and probabilities, labels, test
  indices, confusion matrix) and one PNG thumbnail per misclassified image in the gallery.
Large things go to artifacts, not to the run document, so a MongoDB record stays small.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from study.stores.records import EVALUATION_ARTIFACT

EPOCH_METRICS = (
    "train_loss",
    "train_loss_end",  # over the epoch's last quarter of steps: what the health rule judges
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top5",
    "epoch_seconds",
    "train_seconds",  # the epoch's training steps alone (epoch_seconds adds the evaluation)
    "train_images",  # fewer than the split where a time budget ended the epoch
    "images_per_s",
    "lr",  # the learning rate at the end of the epoch (schedules step per batch)
    "load_avg",  # the machine's 1-minute load average as the epoch's training ended
    "startup_seconds",  # the first steps a process trains (cuDNN's choices), not in images_per_s
)


def describe_run(
    run,
    *,
    config,
    model_spec,
    data_spec,
    data,
    train_count,
    test_count,
    stats,
    device,
    checkpoint,
    plugin,
    world_size=1,
    data_on_device=True,
    departures=None,
    data_plugin=None,
    autocast=None,
):
    """Record, before training, what is being trained on what and where."""
    import torch

    run.info["dataset"] = {
        "name": data_spec.name,
        "title": data_spec.title,  # the display name, for a report made where it is not installed
        "plugin": data_plugin,  # "distribution:entry-point"
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "image_size": data.image_size,
        "channels": data.channels,
        "train_count": train_count,
        "test_count": test_count,
        "train_available": len(data.train.labels),
        "test_available": len(data.test.labels),
        "mean": list(data.mean),
        "std": list(data.std),
        "fingerprint": data.fingerprint,
        "content": dict(data.content),  # what a rerun's data must equal (`study reproduce`)
        # As typed (relative to wherever the run started) and as it resolved there.
        "data_root": {
            "typed": str(config["data_root"]),
            "resolved": str(Path(config["data_root"]).expanduser().resolve()),
        },
        "sources": [str(s) for s in data.sources],
    }
    run.info["model"] = {
        "name": model_spec.name,
        "title": model_spec.title,
        "description": model_spec.description,
        "plugin": plugin,
        # What became of the output layer: `replace`d or `append`ed to the ImageNet head, or
        # `own` (the model has no ImageNet head: its plugin builds a layer per class itself).
        "head": config["head"] if model_spec.imagenet_head else "own",
        "image_size": config["image_size"],
        **stats,
    }
    run.info["training"] = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
        ),
        "torch_threads": torch.get_num_threads(),
        # The vector instructions torch's CPU kernels use (AVX512, AVX2, ...): two machines of
        # one CPU name can differ in them, and a CPU run's speed with them.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # Two machines of one CPU name and instructions can still train 2x apart (another
        # host, clock or share of it): the report compares speeds only where these agree.
        **({"cpu_gflops": cpu_matmul_gflops()} if device.type == "cpu" else {}),
        "cpus": usable_cpus(),
        "processes": world_size,  # torchrun ranks, each on its own device
        "batch_per_process": config["batch_size"] // world_size,
        "data_on_device": data_on_device,  # False: batches copied from pinned host memory
    }
    # Where this run differs from the protocol it names (config["protocol"]): the report's
    # departures paragraph reads it.
    run.info["departures"] = departures or {}
    run.info["checkpoint"] = str(Path(checkpoint).resolve()) if checkpoint else None
    run.info["provenance"] = provenance(
        plugins={plugin, data_plugin} - {None}, autocast=autocast, device=device
    )


# The fields of info.training that name the machine a run trains on.
MACHINE_FIELDS = (
    "device", "device_name", "cpu_capability", "cpu_gflops", "torch_threads", "cpus", "processes"
)  # fmt: skip


def machine_taking_over(training: dict, state) -> dict:
    """This machine as info.training names it, and where in the run it took over: the epochs
    completed (`from_epoch`) and, resuming a mid-epoch checkpoint, the steps of the next one
    done (`from_step`). A run's list of them (info.training.machines) tells a report whether its
    training seconds were all timed on one machine."""
    step = 0
    if state.partial:
        step = (state.partial.get("ranks") or [{}])[0].get("step") or 0
    return {
        **{k: training[k] for k in MACHINE_FIELDS if k in training},
        "from_epoch": state.epoch,
        "from_step": step,
    }


def provenance(*, plugins, autocast, device) -> dict:
    """What a rerun years later needs to know about the code and settings that ran: study's
    version and, from a git checkout, its commit; each plugin distribution that provided the
    model or data set, with its version and a digest of its source; library versions; the
    determinism settings in force; the command line."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import torch
    import torchvision

    import study
    from study.registry import plugin_code

    def dist_version(plugin: str) -> str | None:
        try:
            return version(plugin.split(":")[0])
        except PackageNotFoundError:
            return None

    cudnn = torch.backends.cudnn
    return {
        "study": study.__version__,
        "git": _git_state(Path(study.__file__).resolve().parent.parent),
        "plugins": {p: dist_version(p) for p in sorted(plugins)},
        # Each plugin's source, hashed: code changed without a version bump still shows.
        "plugin_code": {p: plugin_code(p) for p in sorted(plugins)},
        "versions": {
            "python": sys.version.split()[0],
            "torch": str(torch.__version__),
            "torchvision": torchvision.__version__,
            "numpy": numpy.__version__,
            "cuda": torch.version.cuda,
            "cudnn": cudnn.version() if torch.device(device).type == "cuda" else None,
        },
        "determinism": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": bool(cudnn.benchmark),
            "cudnn_deterministic": bool(cudnn.deterministic),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(cudnn.allow_tf32),
            "autocast": autocast,
        },
        "command": _masked(sys.argv),
    }


def _masked(argv: list[str]) -> list[str]:
    """The command line with any URL's password masked (`-m mongodb://user:***@host`)."""
    from study.stores.mongo import mask_url

    out = []
    for arg in argv:
        key, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        out.append(f"{key}{eq}{mask_url(value)}" if "://" in value else arg)
    return out


def _git_state(folder: Path) -> dict | None:
    """{commit, branch, dirty, diff_sha256} of the git checkout study runs from; None when it
    runs from an installed copy (or git is missing)."""
    import hashlib
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
            check=True,
        ).stdout  # fmt: skip

    try:
        if git("rev-parse", "--show-toplevel").strip() != str(folder):
            return None  # inside some other repository (e.g. a virtual environment in one)
        diff = git("diff", "HEAD")
        return {
            "commit": git("rev-parse", "HEAD").strip(),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD").strip(),
            "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        }
    except (OSError, subprocess.SubprocessError):
        return None


def usable_cpus() -> int | None:
    """The CPUs this process may run on (its affinity, where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_matmul_gflops(seconds: float = 0.3, n: int = 512, warm_up: float = 0.1) -> float:
    """This CPU's fp32 matrix-multiply speed at torch's thread count, in GFLOP/s: the best of
    short timed repeats over `seconds` (the best, so a moment's other load does not count),
    after `warm_up` seconds of the same work. One probe can still land on a slow moment
    (100-175 against 200 GFLOP/s on a quiet 2-core EPYC VM, 2026-12-07): a run keeps the best
    of one before training and one after each epoch (study.experiment)."""
    import math
    import time

    import torch

    a, b = torch.ones(n, n), torch.ones(n, n)
    a @ b  # the first call sets up the kernels
    end = time.perf_counter() + warm_up
    while time.perf_counter() < end:
        a @ b
    best, end = math.inf, time.perf_counter() + seconds
    while best == math.inf or time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    return round(2 * n**3 / max(best, 1e-9) / 1e9, 1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def log_epoch(run, epoch: int, metrics: dict) -> None:
    for name in EPOCH_METRICS:
        if name in metrics:  # a checkpoint from an older study lacks the newer metrics
            run.log_scalar(name, float(metrics[name]), epoch)
    if "health" in metrics:  # study.health's verdict on this epoch's evaluation
        epochs = run.info.setdefault("health", {"epochs": []})["epochs"]
        epochs[:] = [e for e in epochs if e["epoch"] != epoch]  # a resume replays its history
        epochs.append({"epoch": epoch, **metrics["health"]})


def write_results(
    run, evaluation, *, state, test_images, test_indices, class_names, gallery
) -> dict:
    """Store the final evaluation; return the run's result (what Sacred records as `result`)."""
    run.info["training"].update(
        epochs_completed=state.epoch,
        train_seconds=state.train_seconds,
        compile_seconds=state.compile_seconds,
        stopped_by_budget=state.stopped_by_budget,
        images_per_s=_mean_rate(state.history),
    )
    verdict = run.info.setdefault("health", {"epochs": []})
    last = verdict["epochs"][-1] if verdict["epochs"] else {"flags": [], "reasons": []}
    verdict.update(flags=list(last["flags"]), stopped=state.stopped_by_health)
    run.info["per_class_accuracy"] = evaluation.per_class_accuracy()
    errors = evaluation.most_confident_errors(gallery)
    misclassified = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / EVALUATION_ARTIFACT
        np.savez_compressed(
            npz,
            labels=evaluation.labels.astype(np.int32),
            topk=evaluation.topk.astype(np.int32),
            topk_prob=evaluation.topk_prob.astype(np.float16),
            test_indices=np.asarray(test_indices, dtype=np.int64),
            confusion=evaluation.confusion.astype(np.int64),
        )
        run.add_artifact(str(npz), EVALUATION_ARTIFACT, content_type="application/x-npz")
        for rank, pos in enumerate(errors):
            index = int(test_indices[pos])
            true, pred = int(evaluation.labels[pos]), int(evaluation.predicted[pos])
            name = f"misclassified_{rank:02d}.png"
            png = Path(tmp) / name
            png.write_bytes(thumbnail_png(test_images[index]))
            run.add_artifact(str(png), name, content_type="image/png")
            misclassified.append(
                {
                    "index": index,
                    "true": true,
                    "predicted": pred,
                    "true_name": class_names[true],
                    "predicted_name": class_names[pred],
                    "confidence": float(evaluation.topk_prob[pos, 0]),
                    "artifact": name,
                }
            )
    run.info["misclassified"] = misclassified
    return {"top1": evaluation.top1, "top5": evaluation.top5, "test_loss": evaluation.loss}


def _mean_rate(history: list[dict]) -> float | None:
    rates = [h["images_per_s"] for h in history]
    return float(np.mean(rates)) if rates else None


def thumbnail_png(image: np.ndarray) -> bytes:
    """A uint8 (H, W, C) image as PNG bytes, at its native size."""
    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
