"""One run read back from any store, as a `RunRecord`: the only view of a run that code outside
`study.stores` gets, so no caller knows a store's layout (run.json, MongoDB documents)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from study.errors import ConfigError, StoreError
from study.identity import run_alive

# The key that names a run in every store it reaches: meta.study_uid.
UID_KEY = "study_uid"

_RUN_ID = re.compile(r"^[0-9]{1,18}$")


def check_run_id(value, where: str) -> str:
    """A run id given on the command line (`resume=`), as the id of a run in `where`: digits
    only (what Sacred names runs in both stores), so it never names a path out of the store."""
    text = (
        str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    )
    if not _RUN_ID.match(text):
        raise ConfigError(
            f"resume={value!r} is invalid; expected the id of a run in {where} "
            f"(a number, as `study runs` lists it)"
        )
    return text


class RunBeingCreated(StoreError):
    """A run folder Sacred is still filling (run.json written, config.json not yet)."""


# One line per run a reader could not read; `study runs` and `study report` print them.
Skipped = list[str]


@dataclass
class RunRecord:
    """One run, as any store holds it."""

    id: str
    store: str  # where it was read from: a folder or a MongoDB URL (without password)
    status: str
    experiment: str
    command: str
    config: dict
    info: dict
    result: dict | None
    metrics: dict[str, list[tuple[int, float]]]  # name -> [(epoch, value)], one per epoch
    host: dict
    start_time: str | None
    stop_time: str | None
    artifacts: list[str] = field(default_factory=list)
    heartbeat: str | None = None  # Sacred's last heartbeat (ISO, UTC): see identity.run_alive
    meta: dict = field(default_factory=dict)  # Sacred's meta: comment (`-c`), study_uid, ...
    resumed: list[str] = field(default_factory=list)  # when it was resumed (ISO, UTC)
    location: Path | None = None  # the run's folder, for a file store
    # Reads an artifact by name, for stores without a folder (MongoDB: GridFS).
    fetch: Callable[[str], bytes] | None = field(default=None, repr=False, compare=False)
    _evaluation: dict | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model(self) -> str | None:
        return self.config.get("model")

    @property
    def dataset(self) -> str | None:
        return self.config.get("dataset")

    @property
    def comment(self) -> str | None:
        """Sacred's comment (`-c`; a sweep's tag `sweep:<id>`)."""
        comment = self.meta.get("comment")
        return comment if isinstance(comment, str) else None

    @property
    def uid(self) -> str | None:
        """The name of the run in every store it reaches (meta.study_uid; `study sync`)."""
        uid = self.meta.get(UID_KEY)
        return uid if isinstance(uid, str) and uid else None

    @property
    def top1(self) -> float | None:
        """The final test top-1 accuracy (0..1) from the run's result, when it has one."""
        top1 = self.result.get("top1") if isinstance(self.result, dict) else None
        return float(top1) if isinstance(top1, int | float) and not isinstance(top1, bool) else None

    @property
    def alive(self) -> bool:
        """Whether a RUNNING run is still at work (identity.run_alive: a recent heartbeat)."""
        return run_alive(self.status, self.heartbeat, self.start_time)

    def has_checkpoint(self) -> bool:
        """Whether the run left a checkpoint to resume from: the path in its info, or
        checkpoint.pt in its run folder."""
        path = self.info.get("checkpoint") if isinstance(self.info, dict) else None
        if isinstance(path, str) and path and Path(path).exists():
            return True
        return self.location is not None and (Path(self.location) / "checkpoint.pt").exists()

    def metric(self, name: str) -> list[tuple[int, float]]:
        return self.metrics.get(name, [])

    def artifact_bytes(self, name: str) -> bytes:
        if name in self.artifacts and self.fetch is not None:
            return self.fetch(name)
        if name not in self.artifacts or self.location is None:
            raise StoreError(f"run {self.id} in {self.store} has no artifact {name!r}")
        return (self.location / name).read_bytes()

    def evaluation(self) -> dict[str, np.ndarray] | None:
        """The per-sample evaluation (labels, topk, topk_prob, test_indices, confusion);
        StoreError naming the run when the file is unreadable or its arrays disagree."""
        from study.record import EVALUATION_ARTIFACT

        if EVALUATION_ARTIFACT not in self.artifacts:
            return None
        if self._evaluation is None:
            import io

            where = f"run {self.id} in {self.store}: {EVALUATION_ARTIFACT}"
            try:
                with np.load(io.BytesIO(self.artifact_bytes(EVALUATION_ARTIFACT))) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            except (OSError, ValueError, EOFError) as exc:  # np.load's errors on a bad file
                raise StoreError(f"{where} is unreadable ({exc})") from None
            problem = _evaluation_problem(arrays)
            if problem:
                raise StoreError(f"{where} is inconsistent: {problem}")
            self._evaluation = arrays
        return self._evaluation


EVALUATION_ARRAYS = ("labels", "topk", "topk_prob", "test_indices", "confusion")


def _evaluation_problem(a: dict[str, np.ndarray]) -> str | None:
    """What is wrong with an evaluation's arrays (None: they fit together as
    study.record.write_results writes them)."""
    missing = [k for k in EVALUATION_ARRAYS if k not in a]
    if missing:
        return f"no {', '.join(missing)} (expected {', '.join(EVALUATION_ARRAYS)})"
    labels, topk, prob, idx, conf = (a[k] for k in EVALUATION_ARRAYS)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return f"labels are {labels.dtype} {labels.shape}; expected integers (N,)"
    n = len(labels)
    if topk.ndim != 2 or topk.shape[0] != n or not np.issubdtype(topk.dtype, np.integer):
        return f"topk is {topk.dtype} {topk.shape}; expected integers ({n}, K)"
    if prob.shape != topk.shape:
        return f"topk_prob is {prob.shape}; expected {topk.shape} like topk"
    if idx.shape != (n,):
        return f"test_indices is {idx.shape}; expected ({n},)"
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.sum() != n:
        return f"confusion is {conf.shape} summing to {conf.sum()}; expected (C, C) summing to {n}"
    classes = conf.shape[0]
    if n and (
        labels.min() < 0 or labels.max() >= classes or topk.min() < 0 or topk.max() >= classes
    ):
        return f"labels or topk outside 0..{classes - 1}"
    return None


def dedupe_metrics(raw: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Sacred's {name: {steps, values}} -> {name: [(step, value)]} sorted by step.

    A resumed run may log an epoch twice (killed after logging it, before its checkpoint);
    the later value is the one the final model descends from, so it wins. ValueError names a
    malformed series.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"metrics are a {type(raw).__name__}; expected an object of series")
    out = {}
    for name, series in raw.items():
        try:
            steps, values = series["steps"], series["values"]
            if not isinstance(steps, list) or not isinstance(values, list):
                raise TypeError("steps and values are not lists")
            by_step = dict(zip(steps, values, strict=False))
            out[name] = sorted((_step(s), _number(v)) for s, v in by_step.items())
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"metric {name!r} is malformed ({exc}); expected steps: [int], values: [number]"
            ) from None
    return out


def _step(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise TypeError(f"step {value!r} is not an integer")
    return int(value)


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"value {value!r} is not a number")
    return float(value)


def print_skipped(notes: Skipped) -> None:
    for note in notes:
        print(f"study: {note}", file=sys.stderr)
