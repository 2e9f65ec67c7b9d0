"""The runs as the report sees them: arms (model, plus what sets a protocol apart), cells of
runs per model x data set, their evaluations, flags (chance, collapse) and the derived numbers
(epochs trained, images/s totals, paired runs, reliability bins, confused pairs)."""

from __future__ import annotations

import contextlib
import csv
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from study import health, stats
from study.errors import StudyError
from study.identity import PLACE_KEYS, run_order
from study.report.formatting import epochs_label, epochs_text, plural, stat, value_text
from study.stores import RunRecord

CONFUSION_MAX_CLASSES = 20


# Per model, in the table that stands in for an unreadable confusion matrix: five each keep
# three models' lists under half a page, so the table is kept whole on one page.
CONFUSED_PAIRS = 5


# A run whose fastest full epoch trained this many times faster than its slowest was disturbed
# (other load on the machine): its images/s is not the model's speed alone.
TIMING_SPREAD = 1.5


# Per-epoch metrics the training-curve figure draws.
CURVE_METRICS = (
    "train_top1",
    "train_loss",
    "test_top1",
    "test_loss",
    "train_seconds",
    "images_per_s",
    "lr",
)


# The seed's models, in its order (also the order of their colours in every figure).
SEED_MODELS = ("vgg16", "inception_v3", "resnet50")


# The order of tables and figures: the seed's, a variant beside its original (VGG-16-BN after
# VGG-16); models and data sets the seed did not have follow, alphabetically.
MODEL_ORDER = ("vgg16", "vgg16_bn", "inception_v3", "resnet50")


DATASET_ORDER = ("mnist", "fashion_mnist", "cifar10", "tiny_imagenet")


@dataclass(frozen=True)
class SettingRow:
    """A training setting as the Method section lists it. `used(config, info)`: whether it
    changed what a run did. `switch`: a feature that is on or off; when it is off in every run
    the section says so in one line instead of a row."""

    key: str
    label: str
    used: Callable[[dict, dict], bool] = lambda config, info: True
    switch: bool = False
    unit: str = ""

    @property
    def heading(self) -> str:  # Table 1's row heading
        return f"{self.label} ({self.unit})" if self.unit else self.label


def _set(key: str):
    """Used when set to anything but nothing, zero, false or `none`."""
    return lambda config, info: config.get(key) not in (None, False, 0, "none")


def _bf16(config: dict, info: dict) -> bool:  # `auto` is bf16 on CUDA only
    device = str((info.get("training") or {}).get("device", ""))
    return config.get("amp") is True or (config.get("amp") == "auto" and device.startswith("cuda"))


def _dropped(config: dict, info: dict) -> bool:
    """Dropout set, in a model that has dropout layers (a record that does not say: has)."""
    layers = (info.get("model") or {}).get("dropout_layers", 1)
    counted = isinstance(layers, int) and not isinstance(layers, bool)
    return _set("dropout")(config, info) and (not counted or layers > 0)


def _distributed(config: dict, info: dict) -> bool:
    processes = (info.get("training") or {}).get("processes")
    return isinstance(processes, int) and not isinstance(processes, bool) and processes > 1


# Table 1's rows, in its order. A setting that changed nothing (SGD's momentum under Adam, a
# compile mode without compiling, torchrun's options on one process) is not listed.
SETTING_ROWS = (
    SettingRow("protocol", "protocol"),
    SettingRow("optimizer", "optimizer"),
    SettingRow("lr", "learning rate"),
    SettingRow("momentum", "momentum", lambda c, i: c.get("optimizer") == "sgd"),
    SettingRow("weight_decay", "weight decay"),
    SettingRow(
        "decay_norm_bias",
        "weight decay on normalisation and bias",
        lambda c, i: c.get("weight_decay") not in (None, 0),
    ),
    SettingRow("batch_size", "batch size"),
    SettingRow("epochs", "epochs"),
    SettingRow("time_budget", "training time budget", _set("time_budget"), switch=True, unit="s"),
    SettingRow(
        "stop_after", "epochs trained of a longer schedule", _set("stop_after"), switch=True
    ),
    SettingRow("image_size", "input size", unit="px"),
    SettingRow("augment", "augmentation"),
    SettingRow("pretrained", "pretrained weights"),
    SettingRow("head", "head"),
    SettingRow("aux_logits", "auxiliary classifier", _set("aux_logits")),
    SettingRow("schedule", "learning-rate schedule"),
    SettingRow("warmup", "warm-up (share of steps)", _set("warmup"), switch=True),
    SettingRow(
        "warmup_min_steps",
        "warm-up (at least, steps)",
        lambda c, i: (
            c.get("warmup") not in (None, 0) and c.get("warmup_min_steps") not in (None, 0)
        ),
    ),
    SettingRow("grad_clip", "gradient-norm clipping", _set("grad_clip"), switch=True),
    SettingRow("label_smoothing", "label smoothing", _set("label_smoothing"), switch=True),
    SettingRow("dropout", "classifier dropout", _dropped, switch=True),
    SettingRow("precise_bn", "precise BatchNorm", _set("precise_bn"), switch=True, unit="images"),
    SettingRow(
        "zero_init_residual",
        "zero-initialised residual branches",
        _set("zero_init_residual"),
        switch=True,
    ),
    SettingRow("drop_last", "last partial batch dropped", _set("drop_last"), switch=True),
    SettingRow("amp", "bf16 autocast", _bf16, switch=True),
    SettingRow("compile", "torch.compile", _set("compile"), switch=True),
    SettingRow("compile_mode", "torch.compile mode", lambda c, i: c.get("compile") is True),
    SettingRow("sync_bn", "SyncBatchNorm (torchrun)", lambda c, i: _distributed(c, i)),
    SettingRow(
        "grad_compression", "gradient compression (torchrun)", lambda c, i: _distributed(c, i)
    ),
    SettingRow("health_stop", "stop when the health rule flags", _set("health_stop")),
    SettingRow("train_limit", "training subset", _set("train_limit")),
    SettingRow("test_limit", "test subset", _set("test_limit")),
    SettingRow("folder_image_size", "stored image size", _set("folder_image_size"), unit="px"),
    SettingRow("seed", "seed"),
)
PROTOCOL_KEYS = tuple((row.key, row.heading) for row in SETTING_ROWS)
_ROWS = {row.key: row for row in SETTING_ROWS}


def setting_label(key: str) -> str:
    """A config key as prose names it, unit included (a key the table does not know: its
    words): prose never shows a raw config key."""
    row = _ROWS.get(key)
    return row.heading if row else key.replace("_", " ")


def setting_text(key: str, value) -> str:
    """`epochs 5`, `input size 224 px`: one setting's value in prose."""
    row = _ROWS.get(key)
    if row is None:
        return f"{key.replace('_', ' ')} {value_text(value)}"
    return f"{row.label} {value_text(value)}" + (f" {row.unit}" if row.unit else "")


# Keys in which runs of one arm may differ: repeats of the same training, pooled as mean ± std
# (PLACE_KEYS say where a run ran, not what it trained).
REPEAT_KEYS = ("seed", *PLACE_KEYS)


def ordered(names, order) -> list[str]:
    names = set(names)
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def arm_names(records: list[RunRecord]) -> list[str]:
    """Each run's arm of the comparison: its model, plus, where runs of the same model on the
    same data set were trained differently (not only with another seed), what sets it apart,
    e.g. `resnet18 [fast]` beside `resnet18 [paper]`. Pooling such runs as if they were seeds
    would average two protocols into one number."""
    names = [r.model or "?" for r in records]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[(r.dataset, r.model)].append(i)
    rank = {key: n for n, (key, _) in enumerate(PROTOCOL_KEYS)}
    for members in groups.values():
        # A key a run's config lacks (recorded before the key existed) counts as null.
        keys = {k for i in members for k in records[i].config} - set(REPEAT_KEYS)
        configs = [
            {k: json.dumps(records[i].config.get(k), sort_keys=True) for k in keys} for i in members
        ]
        differing = [k for k in keys if len({c[k] for c in configs}) > 1]
        # The protocol first, then in the Method table's order each further key that is still
        # needed to tell two arms apart.
        chosen: list[str] = []
        for key in sorted(differing, key=lambda k: (k != "protocol", rank.get(k, len(rank)), k)):
            values_by_label = defaultdict(set)
            for c in configs:
                values_by_label[tuple(c[k] for k in chosen)].add(c[key])
            if any(len(v) > 1 for v in values_by_label.values()):
                chosen.append(key)
        for pos, i in enumerate(members if chosen else []):
            config = records[i].config
            parts: list[str] = []
            for k in chosen:
                if k in ("epochs", "time_budget") and stopped_by_budget(records[i]):
                    # Named by what it trained, not by the epochs it planned; the runs of
                    # one arm share one name (their mean).
                    same = [records[j] for q, j in enumerate(members)
                            if all(configs[q][c] == configs[pos][c] for c in chosen)]  # fmt: skip
                    text = budget_text([r for r in same if stopped_by_budget(r)])
                elif k == "protocol":
                    text = value_text(config.get(k))
                else:
                    text = setting_text(k, config.get(k))
                if text not in parts:
                    parts.append(text)
            names[i] = f"{names[i]} [{', '.join(parts)}]"
    return names


def stopped_by_budget(r: RunRecord) -> bool:
    return bool((r.info.get("training") or {}).get("stopped_by_budget"))


def budget_text(rs: list[RunRecord]) -> str:
    """`1.2 epochs, budget 600 s`: what budget-stopped runs trained (their mean)."""
    trained = [e for r in rs if (e := trained_epochs(r)) is not None]
    budgets = sorted({r.config.get("time_budget") for r in rs}, key=str)
    epochs = epochs_text([statistics.fmean(trained)]) if trained else "?"
    return f"{epochs_label(epochs)}, budget {', '.join(f'{b:g}' for b in budgets)} s"


def training_totals(r: RunRecord) -> tuple[float | None, float | None]:
    """(training images seen, training seconds) over the whole run: images/s is their ratio,
    not a mean of per-epoch rates (an epoch slowed by other load would weigh as one epoch)."""
    images = [v for _, v in r.metric("train_images")]
    seconds = (r.info.get("training") or {}).get("train_seconds")
    if not isinstance(seconds, int | float):
        per_epoch = [v for _, v in r.metric("train_seconds")]
        seconds = sum(per_epoch) if per_epoch else None
    return (sum(images) if images else None), seconds


def machine_name(t: dict) -> str | None:
    """The kind of machine that info.training (or one of its `machines`) names, as the report
    names it: "AMD EPYC (cpu, AVX512, 2 threads)", "NVIDIA H100 (cuda, 8 processes)"; None where
    it names none. Speeds are compared only between runs timed on the same kind: one CPU name
    covers machines whose vector instructions, and so speed, differ."""
    if not t.get("device_name"):
        return None
    parts = [str(t.get("device", "?"))]
    if t.get("device") == "cpu":
        parts += [t["cpu_capability"]] if t.get("cpu_capability") else []
        parts += [plural(t["torch_threads"], "thread")] if t.get("torch_threads") else []
    if (t.get("processes") or 1) > 1:
        parts.append(f"{t['processes']} processes")
    return f"{t['device_name']} ({', '.join(parts)})"


def training_machines(r: RunRecord) -> list[dict]:
    """The machines that trained run r, in order, each with the epoch (`from_epoch`, epochs
    completed) and step where it took over; a run recorded before study kept this list, its
    one machine (info.training)."""
    t = r.info.get("training") or {}
    machines = t.get("machines")
    return machines if isinstance(machines, list) and machines else [t]


# Runs of one kind of machine whose measured CPU speeds (info.training.cpu_gflops) differ by
# more than this factor were timed on different machines: one CPU name and instruction set covers
# VMs that train 1.5-2x apart (seen between two 2-core "AMD EPYC" AVX-512 machines, 2026-12-07).
SPEED_TOLERANCE = 1.25
# Joins the machines of a run resumed on another machine, in its label (timing_machines).
MOVED = ", and from "


def timing_machines(records: list[RunRecord]) -> dict[tuple[str, str], str]:
    """Each run's kind of machine (machine_name), by (store, id), told apart further by the
    CPU speed the runs measured where any run of that kind measured one: runs within
    SPEED_TOLERANCE of the slowest of their group share "AMD EPYC (cpu, AVX512, 2 threads,
    195–205 GFLOP/s)"; one beside them that measured none is "..., speed not measured)", which
    matches nothing. Runs of a kind none of which measured a speed keep its plain name. A run
    resumed on another machine is "run 13 on A, and from epoch 3 on B": its seconds were timed
    on both, so it matches nothing either. Runs that recorded no machine are left out."""
    parts = {  # (store, id, i): the i-th machine that trained the run
        (r.store, r.id, i): m for r in records for i, m in enumerate(training_machines(r))
    }
    by_name = defaultdict(list)
    for key, m in parts.items():
        if (name := machine_name(m)) is not None:
            by_name[name].append(key)
    labels = {}
    for name, keys in by_name.items():
        speeds = {}
        for key in keys:
            g = parts[key].get("cpu_gflops")
            if isinstance(g, int | float) and not isinstance(g, bool) and g > 0:
                speeds[key] = g
        groups: list[list[tuple]] = []
        for key, g in sorted(speeds.items(), key=lambda kv: kv[1]):
            if groups and g <= groups[-1][0][1] * SPEED_TOLERANCE:
                groups[-1].append((key, g))
            else:
                groups.append([(key, g)])
        for group in groups:
            low, high = f"{group[0][1]:,.0f}", f"{group[-1][1]:,.0f}"
            speed = low if low == high else f"{low}–{high}"
            labels.update({key: f"{name[:-1]}, {speed} GFLOP/s)" for key, _ in group})
        for key in keys:
            if key not in speeds:
                labels[key] = f"{name[:-1]}, speed not measured)" if speeds else name
    out = {}
    for r in records:
        own = [(labels.get((r.store, r.id, i)), m)
                      for i, m in enumerate(training_machines(r))]  # fmt: skip
        shifts = [p for n, p in enumerate(own) if n == 0 or p[0] != own[n - 1][0]]
        if len(shifts) == 1:
            if shifts[0][0] is not None:
                out[(r.store, r.id)] = shifts[0][0]
            continue
        text = [f"run {r.id} on {shifts[0][0] or 'a machine not recorded'}"]
        for label, m in shifts[1:]:
            epoch, step = m.get("from_epoch") or 0, m.get("from_step") or 0
            where = f"step {step:,} of epoch {epoch + 1}" if step else f"epoch {epoch + 1}"
            text.append(f"{where} on {label or 'a machine not recorded'}")
        out[(r.store, r.id)] = MOVED.join(text)
    return out


def base_model(arm: str) -> str:
    return arm.split(" [", 1)[0]


def ordered_models(arms) -> list[str]:
    """The seed's model order, then other models alphabetically; arms of a model together."""
    order = {m: n for n, m in enumerate(MODEL_ORDER)}

    def natural(text: str) -> tuple:  # epochs=5 before epochs=30
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))

    return sorted(
        set(arms), key=lambda a: (order.get(base_model(a), len(order)), base_model(a), natural(a))
    )


def model_title(name: str) -> str:
    """`resnet50` -> `ResNet-50` (the plugin's display name); an arm `resnet18 [fast]` ->
    `ResNet-18 (fast)`."""
    base, _, label = name.partition(" [")
    title = plugin_title("models", base)
    return f"{title} ({label[:-1]})" if label else title


def dataset_title(name: str) -> str:
    return plugin_title("datasets", name)


# Display names the runs being reported recorded ({"models": {name: title}, ...}): used where
# no installed plugin provides the name (runs read back years later, or on another machine).
_recorded_titles: dict[str, dict[str, str]] = {"models": {}, "datasets": {}}


@contextlib.contextmanager
def titles_recorded_in(records):
    """While a report is built: the display names its runs recorded, as plugin_title's fallback."""
    saved = {k: dict(v) for k, v in _recorded_titles.items()}
    for r in records:
        for kind, key in (("models", "model"), ("datasets", "dataset")):
            part = r.info.get(key)
            if isinstance(part, dict) and isinstance(part.get("name"), str):
                if isinstance(part.get("title"), str) and part["title"]:
                    _recorded_titles[kind][part["name"]] = part["title"]
    try:
        yield
    finally:
        _recorded_titles.clear()
        _recorded_titles.update(saved)


def plugin_title(kind: str, name: str) -> str:
    """A plugin's display name: the installed plugin's, else the one its runs recorded, else
    the raw name."""
    from study.errors import StudyError
    from study.registry import registry

    try:
        provided = getattr(registry(), kind).get(name)
    except StudyError:
        provided = None
    if provided is not None:
        return provided.spec.title
    return _recorded_titles[kind].get(name, name)


def seed_table() -> dict[tuple[str, str], dict[str, float]]:
    """The seed report's Table 1: {(dataset, model): {top1, top5}}."""
    text = resources.files("study.templates").joinpath("seed_table1.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {
        (row["dataset"], row["model"]): {"top1": float(row["top1"]), "top5": float(row["top5"])}
        for row in rows
    }


def cell_flags(rs: list[RunRecord], evaluate) -> dict:
    """Whether a cell's pooled test predictions are at chance or collapsed, or a run's
    training loss stuck at chance's (study.health's rule), with the numbers that say so; {}
    where no run has an evaluation."""
    import numpy as np

    evs = [ev for ev in (evaluate(r) for r in rs) if ev is not None and "topk" in ev]
    if not evs:
        return {}
    num_classes = next(
        (c for r in rs if isinstance(c := (r.info.get("dataset") or {}).get("num_classes"), int)),
        None,
    )
    labels = np.concatenate([ev["labels"] for ev in evs])
    predicted = np.concatenate([ev["topk"][:, 0] for ev in evs])
    n = int(predicted.size)
    num_classes = num_classes or int(max(labels.max(), predicted.max())) + 1
    counts = np.bincount(predicted, minlength=num_classes)
    true_counts = np.bincount(labels, minlength=num_classes)
    present = len(np.unique(labels))  # a test subset may hold fewer classes than the data set
    correct = int((predicted == labels).sum())
    chance = 1.0 / num_classes
    ci = stats.wilson_interval(correct, n)
    top = int(counts.argmax())
    # The run's own health rule (study.health) on the pooled predictions and each run's loss.
    collapsed = health.collapse(num_classes, counts.tolist(), true_counts.tolist())
    stuck = [r.id for r in rs if run_stuck(r, num_classes)]
    out = {
        "chance": ci.low <= chance,  # not significantly better than guessing
        "collapse": collapsed is not None,
        "collapse_why": collapsed,
        "stuck": bool(stuck),
        "stuck_runs": stuck,
        "top1": correct / n,
        "chance_level": chance,
        "ci_low": ci.low,
        "top_class": top,
        "top_share": counts[top] / n,
        "predicted_classes": int((counts > 0).sum()),
        "classes": present,
        "n": n,
    }
    names = next(
        (names for r in rs if (names := (r.info.get("dataset") or {}).get("class_names"))), []
    )
    out["top_name"] = str(names[top]) if top < len(names) else str(top)
    out["flagged"] = out["chance"] or out["collapse"] or out["stuck"]
    return out


def run_stuck(r: RunRecord, num_classes: int) -> bool:
    """The health rule's `stuck` on a run's last epoch: its training loss still at chance's
    (over the epoch's last steps, as the run judged it; a run from before that was recorded: over
    the epoch)."""
    losses = [v for _, v in r.metric("train_loss_end") or r.metric("train_loss")]
    if not losses:
        return False
    aux = r.config.get("aux_logits") is True
    spec = plugin_spec("models", r.model) if aux else None
    weight = (spec.aux_weight if spec is not None else 0.4) if aux else 0.0
    verdict = health.assess(num_classes=num_classes, train_loss=losses[-1], aux_weight=weight)
    return "stuck" in verdict.flags


def run_flags(r: RunRecord, evaluate) -> dict:
    return cell_flags([r], evaluate)


FLAG_MARKS = {"chance": "†", "collapse": "‡", "stuck": "§"}


def flag_reasons(f: dict) -> str:
    """`at chance; collapsed` for a flagged cell."""
    words = {"chance": "at chance", "collapse": "predictions collapsed", "stuck": "stuck"}
    return "; ".join(words[k] for k in ("chance", "collapse", "stuck") if f.get(k))


def plugin_spec(kind: str, name: str | None):
    """The installed plugin's spec, or None (runs read back where the plugin is missing)."""
    from study.registry import registry

    try:
        provided = getattr(registry(), kind).get(name)
    except StudyError:
        provided = None
    return provided.spec if provided is not None else None


def trained_epochs(r: RunRecord) -> float | None:
    """Epochs a run trained: the images it saw over the training split's size (a run stopped
    by its time budget trained a fraction of its last epoch); else the epochs recorded."""
    images = [v for _, v in r.metric("train_images")]
    count = (r.info.get("dataset") or {}).get("train_count")
    if images and isinstance(count, int) and count > 0:
        return sum(images) / count
    done = (r.info.get("training") or {}).get("epochs_completed", r.config.get("epochs"))
    return float(done) if isinstance(done, int | float) else None


def test_count(rs: list[RunRecord]) -> int | None:
    """The test-set size of a cell's runs (for a Wilson interval), when recorded."""
    for r in rs:
        count = (r.info.get("dataset") or {}).get("test_count")
        if isinstance(count, int) and count > 0:
            return count
    return None


def mean_std(rs, metric) -> list[float | None]:
    s = stat(rs, lambda r: r.result[metric])
    return [s.mean, s.std or 0.0]


def run_evaluation(r: RunRecord):
    try:
        return r.evaluation()
    except (StudyError, OSError, ValueError):
        return None


def evaluation_cache():
    """run_evaluation, reading each run's evaluation.npz once per report."""
    cache: dict[int, Any] = {}

    def evaluate(r: RunRecord):
        if id(r) not in cache:
            cache[id(r)] = run_evaluation(r)
        return cache[id(r)]

    return evaluate


def _id_key(r: RunRecord):
    return run_order(r.id)


def run_ece(r: RunRecord, evaluate) -> float | None:
    ev = evaluate(r)
    if ev is None or "topk_prob" not in ev:
        return None
    return stats.expected_calibration_error(stats.top1_confidence(ev), stats.correctness(ev))


def chance_level(runs) -> float | None:
    """1 / classes of the data set the (model, run) pairs trained on, where recorded."""
    for _, r in runs:
        k = (r.info.get("dataset") or {}).get("num_classes")
        if isinstance(k, int) and k > 0:
            return 1.0 / k
    return None


def reliability_data(models, runs_per_model, evaluate, flagged=None, colours=None) -> dict | None:
    """Per model: the reliability bins of its runs' test predictions, pooled."""
    import numpy as np

    panels = []
    flagged = flagged or [False] * len(models)
    colours = colours or ["#4c72b0"] * len(models)
    for m, rs, flag, colour in zip(models, runs_per_model, flagged, colours, strict=True):
        evs = [ev for ev in (evaluate(r) for r in rs) if ev is not None and "topk_prob" in ev]
        if not evs:
            continue
        conf = np.concatenate([stats.top1_confidence(ev) for ev in evs])
        right = np.concatenate([stats.correctness(ev) for ev in evs])
        rel = stats.reliability_bins(conf, right)

        def listed(a):
            return [None if not np.isfinite(x) else round(float(x), 6) for x in a]

        panels.append(
            {
                "model": model_title(m),
                "label": model_title(m) + (f" ({len(evs)} runs)" if len(evs) > 1 else ""),
                "edges": listed(rel.edges),
                "count": [int(c) for c in rel.count],
                "accuracy": listed(rel.accuracy),
                "confidence": listed(rel.confidence),
                "ece": round(stats.expected_calibration_error(conf, right), 6),
                "flagged": flag,
                "colour": colour,
            }
        )
    return {"models": panels} if panels else None


def confused_pairs(matrix, class_names, k) -> list[dict]:
    """The k most frequent (true, predicted) confusions, off the diagonal."""
    pairs = []
    for t, row in enumerate(matrix):
        total = sum(row)
        for p, count in enumerate(row):
            if t != p and count:
                pairs.append((count, t, p, total))
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))

    def name(i):
        return class_names[i] if i < len(class_names) else str(i)

    return [
        {
            "true": name(t),
            "predicted": name(p),
            "count": c,
            "share": c / total if total else 0,
            "of": total,
        }  # fmt: skip
        for c, t, p, total in pairs[:k]
    ]


# Per-class precision, recall and F1: every class where a data set has at most this many, else
# the PER_CLASS_EXTREMES best and worst by F1 (Tiny-ImageNet's 200 would fill pages).
PER_CLASS_ALL_UP_TO = 10
PER_CLASS_EXTREMES = 5


def per_class_scores(matrix, class_names) -> list[dict]:
    """Precision, recall and F1 of each class from a confusion matrix (rows: true class,
    columns: predicted). A class never predicted has no precision (None), and so no F1."""
    k = len(matrix)
    predicted = [sum(matrix[t][p] for t in range(k)) for p in range(k)]
    rows = []
    for c in range(k):
        support, hit = sum(matrix[c]), matrix[c][c]
        precision = hit / predicted[c] if predicted[c] else None
        recall = hit / support if support else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else (0.0 if precision is not None and recall is not None else None)
        )
        name = str(class_names[c]) if c < len(class_names) else str(c)
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1,
                     "support": support})  # fmt: skip
    return rows


def best_and_worst(scores: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """The n classes with the highest and the n with the lowest F1 (classes with test images
    only; a class without F1 ranks lowest), ties by name."""
    ranked = sorted(
        (s for s in scores if s["support"]),
        key=lambda s: (-(s["f1"] if s["f1"] is not None else -1), s["class"]),
    )
    return ranked[:n], ranked[::-1][:n][::-1] if len(ranked) > n else []


def last_epoch_gap(r: RunRecord) -> tuple[float, float] | None:
    """(training top-1, test top-1) at a run's last epoch with both recorded."""
    train, test = dict(r.metric("train_top1")), dict(r.metric("test_top1"))
    shared = sorted(set(train) & set(test))
    return (train[shared[-1]], test[shared[-1]]) if shared else None
