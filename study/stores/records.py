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
from study.stores import schema

# The key that names a run in every store it reaches: meta.study_uid.
UID_KEY = "study_uid"
# The process that records a run: meta.process = {host, pid} (a killed run is not alive).
PROCESS_KEY = "process"
# The artifact holding a run's per-image predictions (written by study.record, read here): the
# stores own the record's layout, so the writer imports this name, never the other way round.
EVALUATION_ARTIFACT = "evaluation.npz"

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
    # One line per name the record gave that was left out (an artifact named by a path...).
    notes: list[str] = field(default_factory=list, repr=False, compare=False)
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
        """Whether a RUNNING run is still at work (identity.run_alive: a recent heartbeat, and
        its process, where the record names one of this host, exists)."""
        process = self.meta.get(PROCESS_KEY)
        process = process if isinstance(process, dict) else {}
        return run_alive(
            self.status, self.heartbeat, self.start_time, process.get("host"), process.get("pid")
        )

    def has_checkpoint(self) -> bool:
        """Whether the run left a checkpoint to resume from (see `checkpoint_file`)."""
        return self.checkpoint_file() is not None

    def checkpoint_file(self) -> Path | None:
        """The run's checkpoint: the path in its info (it may live elsewhere: checkpoint_dir,
        ./checkpoints/<id>) or checkpoint.pt in its run folder, only when it is one: its digest
        file lists its SHA-256 and it loads as a checkpoint without unpickling objects. A path
        a record names is otherwise any file of the reader's: never read, copied or uploaded.
        The one check of export, sync, sweep and runs."""
        path = self.info.get("checkpoint") if isinstance(self.info, dict) else None
        candidates = [Path(path)] if isinstance(path, str) and path else []
        if self.location is not None:
            candidates.append(Path(self.location) / "checkpoint.pt")
        return next((p for p in candidates if is_checkpoint(p)), None)

    def metric(self, name: str) -> list[tuple[int, float]]:
        return self.metrics.get(name, [])

    def artifact_bytes(self, name: str) -> bytes:
        """An artifact the record lists (every listed name was checked when read: a plain
        name inside the run's folder or GridFS entry)."""
        if name in self.artifacts and self.fetch is not None:
            return self.fetch(name)
        if name not in self.artifacts or self.location is None:
            raise StoreError(f"run {self.id} in {self.store} has no artifact {name!r}")
        path = inside(self.location, name)
        if path is None:  # replaced by a link since it was read
            raise StoreError(f"run {self.id} in {self.store}: artifact {name!r} leads outside")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StoreError(f"run {self.id} in {self.store}: artifact {name!r}: {exc}") from None

    def evaluation(self) -> dict[str, np.ndarray] | None:
        """The per-sample evaluation (labels, topk, topk_prob, test_indices, confusion);
        StoreError naming the run when the file is unreadable or its arrays disagree."""
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
    if (
        topk.ndim != 2
        or topk.shape[0] != n
        or topk.shape[1] < 1
        or not np.issubdtype(topk.dtype, np.integer)
    ):
        return f"topk is {topk.dtype} {topk.shape}; expected integers ({n}, K), K >= 1"
    if prob.shape != topk.shape:
        return f"topk_prob is {prob.shape}; expected {topk.shape} like topk"
    # Calibration reads them as the confidence of each prediction: a hostile 5.0 or NaN would
    # print as an ECE no model can have.
    if not np.issubdtype(prob.dtype, np.floating):
        return f"topk_prob is {prob.dtype}; expected floats in 0..1"
    if prob.size and not (np.isfinite(prob).all() and prob.min() >= 0.0 and prob.max() <= 1.0):
        return "topk_prob holds values outside 0..1; expected probabilities"
    if idx.shape != (n,):
        return f"test_indices is {idx.shape}; expected ({n},)"
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.sum() != n:
        return f"confusion is {conf.shape} summing to {conf.sum()}; expected (C, C) summing to {n}"
    classes = conf.shape[0]
    if n and (
        labels.min() < 0 or labels.max() >= classes or topk.min() < 0 or topk.max() >= classes
    ):
        return f"labels or topk outside 0..{classes - 1}"
    # The health rule and the report read the matrix: it must be the one the labels and the
    # top-1 predictions give (a hostile one could hold negative counts that sum right).
    counted = np.bincount(labels * classes + topk[:, 0], minlength=classes * classes)
    if not np.array_equal(conf, counted.reshape(classes, classes)):
        return "confusion disagrees with labels and topk's first column"
    return None


def inside(folder: Path, name: str) -> Path | None:
    """`folder/name` when `name` is a plain relative name that resolves (links followed)
    inside `folder`; None otherwise."""
    if schema.name_syntax(name) is not None:
        return None
    root = Path(folder).resolve()
    path = (root / name).resolve()
    return path if path != root and path.is_relative_to(root) else None


def keep_names(record: RunRecord, exists=None) -> RunRecord:
    """Leave out, one line each in `record.notes`, the artifacts whose names are not plain
    names inside the run's own folder (file store) or GridFS entry, and the gallery entries
    naming no artifact the run keeps. The run itself stays."""
    where = f"run {record.id} in {record.store}"
    kept = []
    for name in record.artifacts:
        problem = schema.name_syntax(name)
        if (
            problem is None
            and record.location is not None
            and inside(record.location, name) is None
        ):
            problem = "leads outside the run's folder"
        if problem is None and name not in kept:
            kept.append(name)
        elif problem is not None:
            record.notes.append(f"left out an artifact of {where}: {str(name)[:80]!r} {problem}")
    record.artifacts = kept
    gallery = record.info.get("misclassified") if isinstance(record.info, dict) else None
    if isinstance(gallery, list):
        good = [g for g in gallery if isinstance(g, dict) and g.get("artifact") in kept]
        for g in gallery:
            if g not in good:
                name = g.get("artifact") if isinstance(g, dict) else g
                record.notes.append(
                    f"left out a gallery image of {where}: {str(name)[:80]!r} is not one of "
                    f"its artifacts"
                )
        record.info = {**record.info, "misclassified": good}
    return record


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is a study checkpoint: a regular file whose digest file
    (`<name>.sha256`, written with it) lists its SHA-256, and that torch loads with
    weights_only=True as a dict with a known version and weights."""
    import hashlib

    path = Path(path)
    try:
        if not path.is_file():
            return False
        listed = path.with_name(path.name + ".sha256").read_text(errors="replace")[:1000].split()
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() not in listed:
            return False
        import torch

        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable, no digest, not a checkpoint: not one
        return False
    return isinstance(payload, dict) and payload.get("version") in (1, 2) and "model" in payload


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
            by_step = dict(zip(steps, values, strict=True))  # unequal: malformed
            out[name] = sorted((_step(s), _number(v)) for s, v in by_step.items())
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"metric {name!r} is malformed ({exc}); expected steps: [int], values: [number]"
            ) from None
    return out


MAX_STEP = 10**7  # an epoch number


def _step(value) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_STEP
        or value != int(value)
    ):
        raise TypeError(f"step {str(value)[:40]!r} is not an integer in 0..{MAX_STEP:,}")
    return int(value)


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"value {str(value)[:40]!r} is not a number")
    return float(value)  # OverflowError for a huge integer: the caller's ValueError


def print_skipped(notes: Skipped) -> None:
    for note in notes:
        print(f"study: {note}", file=sys.stderr)
