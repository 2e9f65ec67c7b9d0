"""The training and evaluation loop: plain functions, callable and testable without Sacred.

Metrics accumulate on the device and are read once per epoch, so the loop never waits for the
device inside an epoch.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm import tqdm

from study import distributed
from study.errors import StudyError
from study.loader import BatchTransform, DeviceSplit

CHECKPOINT_VERSION = 1


@dataclass
class Evaluation:
    loss: float
    top1: float
    top5: float
    labels: np.ndarray  # (N,) int64
    topk: np.ndarray  # (N, k) int64: the k most probable classes, best first
    topk_prob: np.ndarray  # (N, k) float32: their softmax probabilities
    confusion: np.ndarray  # (C, C) int64: rows are true classes, columns predicted

    @property
    def predicted(self) -> np.ndarray:
        return self.topk[:, 0]

    def per_class_accuracy(self) -> list[float | None]:
        totals = self.confusion.sum(axis=1)
        return [
            float(self.confusion[c, c] / totals[c]) if totals[c] else None
            for c in range(len(totals))
        ]

    def most_confident_errors(self, k: int) -> list[int]:
        """Positions (in evaluation order) of the k wrong predictions made most confidently."""
        wrong = np.flatnonzero(self.predicted != self.labels)
        order = np.argsort(-self.topk_prob[wrong, 0], kind="stable")
        return wrong[order[:k]].tolist()


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights: where training is and what it saw."""

    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    train_seconds: float = 0.0
    stopped_by_budget: bool = False  # training ended because the time budget was spent
    config: dict = field(default_factory=dict)  # what was trained; a resume must match it


def split_outputs(outputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main logits, auxiliary logits or None) from a model's forward output."""
    if isinstance(outputs, torch.Tensor):
        return outputs, None
    main, aux = outputs[0], (outputs[1] if len(outputs) > 1 else None)
    return main, aux


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DeviceSplit,
    transform: BatchTransform,
    *,
    batch_size: int,
    generator: torch.Generator,
    aux_weight: float = 0.4,
    scheduler=None,
    autocast_dtype: torch.dtype | None = None,
    progress: str | None = None,
    time_limit: float | None = None,
) -> dict:
    """One pass over `data` (or less: with `time_limit`, it stops after the first step that ends
    that many seconds after the epoch began; `stopped_early` then says so)."""
    model.train()
    device = data.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    batches = data.batches(batch_size, transform, train=True, generator=generator)
    total = data.num_batches(batch_size, train=True)
    stopped_early = False
    start = time.perf_counter()
    for step, (inputs, labels) in enumerate(
        tqdm(batches, total=total, desc=progress, disable=progress is None), start=1
    ):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, aux = split_outputs(model(inputs))
            loss = criterion(logits, labels)
            if aux is not None:
                loss = loss + aux_weight * criterion(aux, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:  # per-step schedules (one-cycle, cosine)
            scheduler.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if time_limit is not None and step < total and _past(start, time_limit, device):
            stopped_early = True
            break
    # One read of the device per epoch (and, under torchrun, one sum over the ranks).
    totals = distributed.sum_(
        torch.stack(
            [loss_sum, correct.to(loss_sum.dtype), torch.tensor(float(seen), device=device)]
        )
    ).tolist()
    # Rank 0's time on every rank: a time budget then ends training at the same epoch on all.
    seconds = distributed.broadcast(time.perf_counter() - start)
    loss_total, correct_total, seen_total = totals
    return {
        "train_loss": loss_total / seen_total,
        "train_top1": correct_total / seen_total,
        "train_seconds": seconds,
        "images_per_s": seen_total / seconds,
        "train_images": int(seen_total),
        "stopped_early": stopped_early,
    }


def _past(start: float, limit: float, device: torch.device) -> bool:
    """Whether `limit` seconds have passed since `start`, agreed by all ranks (under torchrun
    they must stop at the same step; this is one small all-reduce per step, only with a budget).
    On CUDA the host clock may run a few queued steps ahead of the device; the epoch's recorded
    time is measured after the device finished, so the record stays exact."""
    past = time.perf_counter() - start >= limit
    if distributed.active():
        past = bool(distributed.sum_(torch.tensor([float(past)], device=device)).item() > 0)
    return past


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    data: DeviceSplit,
    transform: BatchTransform,
    *,
    batch_size: int,
    num_classes: int,
    autocast_dtype: torch.dtype | None = None,
) -> Evaluation:
    model.eval()
    device = data.device
    k = min(5, num_classes)
    loss_sum = torch.zeros((), device=device)
    topk, topk_prob, labels_all = [], [], []
    for inputs, labels in data.batches(batch_size, transform, train=False):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, _ = split_outputs(model(inputs))
        logits = logits.float()
        loss_sum += criterion(logits, labels) * len(labels)
        prob, idx = logits.softmax(1).topk(k, dim=1)
        topk.append(idx)
        topk_prob.append(prob)
        labels_all.append(labels)
    # Under torchrun each rank evaluated its shard: every rank gets all of them, in rank order.
    shards = distributed.gather(
        (
            loss_sum.item(),
            torch.cat(labels_all).cpu().numpy(),
            torch.cat(topk).cpu().numpy(),
            torch.cat(topk_prob).float().cpu().numpy(),
        )
    )
    labels = np.concatenate([s[1] for s in shards])
    top = np.concatenate([s[2] for s in shards])
    n = len(labels)
    hits = top == labels[:, None]
    confusion = np.bincount(
        labels * num_classes + top[:, 0], minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    return Evaluation(
        loss=float(sum(s[0] for s in shards) / n),
        top1=float(hits[:, 0].sum() / n),
        top5=float(hits.any(1).sum() / n),
        labels=labels,
        topk=top,
        topk_prob=np.concatenate([s[3] for s in shards]),
        confusion=confusion,
    )


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    data: DeviceSplit,
    transform: BatchTransform,
    *,
    batch_size: int,
    images: int,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
) -> None:
    """Precise BatchNorm: re-estimate every BatchNorm layer's statistics from `images` training
    images (a seeded random sample, test-time transform) with the current weights.

    The running averages kept during training lag behind weights that change fast, which makes
    a short run's evaluation much worse than its weights (Wu & Johnson 2021, "Rethinking Batch
    in BatchNorm"). torch's own update_bn does the averaging.
    """
    if images <= 0:
        return
    n_batches = math.ceil(min(images, len(data)) / batch_size)
    batches = data.batches(batch_size, transform, train=True, generator=generator)
    with torch.autocast(data.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        update_bn(itertools.islice(batches, n_batches), model)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling/augmentation randomness of one epoch depends on (seed, epoch) alone,
    so a resumed run draws exactly what the uninterrupted run drew."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def fit(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: DeviceSplit,
    test: DeviceSplit,
    train_transform: BatchTransform,
    test_transform: BatchTransform,
    *,
    epochs: int,
    batch_size: int,
    num_classes: int,
    seed: int,
    checkpoint: Path | None = None,
    state: TrainState | None = None,
    aux_weight: float = 0.4,
    precise_bn: int = 0,
    scheduler=None,
    train_criterion: nn.Module | None = None,
    autocast_dtype: torch.dtype | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    time_budget: float | None = None,
) -> tuple[TrainState, Evaluation | None]:
    """Train from `state` (a fresh or resumed one) to `epochs`, evaluating after each epoch.

    `time_budget` (seconds) caps the time spent in training steps, summed over epochs and
    resumes: training ends after the first step past it, mid-epoch if need be, and that partial
    epoch is evaluated and recorded like the others (its `train_images` says how far it got).
    Evaluation and precise BatchNorm are outside the budget.

    After each epoch: BatchNorm statistics are re-estimated from `precise_bn` training images
    (0: the running averages as trained), the test split is evaluated, `on_epoch(epoch,
    metrics)` is called, then the checkpoint is written.
    `criterion` measures the test loss; `train_criterion` (default: the same) is what training
    minimises, e.g. with label smoothing. Returns the final state and the evaluation of the final
    weights (evaluated here when a resumed run had no epoch left to train).
    """
    state = state or TrainState()
    evaluation = None
    for epoch in range(state.epoch + 1, epochs + 1):
        if time_budget is not None and state.train_seconds >= time_budget:
            state.stopped_by_budget = True
            break
        tick = time.perf_counter()
        metrics = train_one_epoch(
            model,
            train_criterion or criterion,
            optimizer,
            train,
            train_transform,
            batch_size=batch_size,
            generator=epoch_generator(seed, epoch),
            aux_weight=aux_weight,
            scheduler=scheduler,
            autocast_dtype=autocast_dtype,
            progress=f"epoch {epoch}/{epochs}" if progress else None,
            time_limit=None if time_budget is None else time_budget - state.train_seconds,
        )
        recompute_batchnorm(
            model,
            train,
            test_transform,
            batch_size=batch_size,
            images=precise_bn,
            generator=torch.Generator().manual_seed(seed * 1_000_003 - epoch),
            autocast_dtype=autocast_dtype,
        )
        distributed.average_buffers(model)
        evaluation = evaluate(
            model,
            criterion,
            test,
            test_transform,
            batch_size=batch_size,
            num_classes=num_classes,
            autocast_dtype=autocast_dtype,
        )
        metrics.update(
            test_loss=evaluation.loss,
            test_top1=evaluation.top1,
            test_top5=evaluation.top5,
            epoch_seconds=time.perf_counter() - tick,
        )
        state.epoch = epoch
        state.history.append({"epoch": epoch, **metrics})
        state.train_seconds += metrics["train_seconds"]
        state.stopped_by_budget = metrics["stopped_early"]
        if progress:
            print(
                f"epoch {epoch}/{epochs}: {metrics['epoch_seconds']:.1f} s, "
                f"train loss {metrics['train_loss']:.4f}, train top-1 {metrics['train_top1']:.4f}, "
                f"test top-1 {metrics['test_top1']:.4f}, test top-5 {metrics['test_top5']:.4f}"
                + (" (time budget spent)" if metrics["stopped_early"] else ""),
                flush=True,
            )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if checkpoint is not None and distributed.from_environment().is_main:
            save_checkpoint(checkpoint, model, optimizer, state, scheduler)
    if evaluation is None:
        evaluation = evaluate(
            model,
            criterion,
            test,
            test_transform,
            batch_size=batch_size,
            num_classes=num_classes,
            autocast_dtype=autocast_dtype,
        )
    return state, evaluation


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile's and DistributedDataParallel's wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _rng_states() -> dict:
    # Plain types and tensors only, so the checkpoint loads with weights_only=True.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    path: Path, model: nn.Module, optimizer, state: TrainState, scheduler=None
) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": CHECKPOINT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": state.epoch,
        "history": state.history,
        "train_seconds": state.train_seconds,
        "stopped_by_budget": state.stopped_by_budget,
        "config": state.config,
        "rng": _rng_states(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler=None) -> TrainState:
    """Restore weights, optimizer and RNG states in place; return where training stood."""
    try:
        # weights_only: a checkpoint is a file like any other and must not run code.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StudyError(f"{path}: not a readable study checkpoint ({exc})") from None
    if payload.get("version") != CHECKPOINT_VERSION:
        raise StudyError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    _set_rng_states(payload["rng"])
    return TrainState(
        epoch=payload["epoch"],
        history=list(payload["history"]),
        train_seconds=payload["train_seconds"],
        stopped_by_budget=payload.get("stopped_by_budget", False),
        config=dict(payload["config"]),
    )
