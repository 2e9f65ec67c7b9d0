"""`study reproduce ID`: run a stored run's config again and say whether it came out the same.

The reproduction is a new run in the same store (an export archive's runs are reproduced into
`--into DIR`), tagged in Sacred's meta as reproducing ID, never by a config key, so it trains
exactly what the original trained. Before any training, the data under the reproduction's
data_root must hold the same bytes as the original's (its recorded content fingerprints).
Then the two runs are compared:

- identical: every per-epoch metric (timings aside) and every per-image prediction are equal;
- equivalent: not identical, but each top-1 lies in the other's 95% Wilson interval and
  McNemar's test on the per-image correctness finds no significant difference;
- different: anything else, with the numbers.

Each verdict lists what differs between the two runs' environments and inputs, so a user sees
why. Exit status 0 for identical and equivalent, 1 for different, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from study import stats
from study.errors import StudyError
from study.identity import PLACE_KEYS, as_trained, trained
from study.stores import RunRecord

REPRODUCES_KEY = "reproduces"  # Sacred meta: {"id": ..., "store": ...} of the re-run run
# Metrics that measure the machine, not the training: never compared.
TIMING_METRICS = (
    "epoch_seconds",
    "train_seconds",
    "images_per_s",
    "load_avg",
    "startup_seconds",
)
# What a run recorded of the device it trained on (its info's `training`): a difference is
# printed, as fp32 results can differ in their last digits between vector instruction sets.
DEVICE_KEYS = ("device_name", "cpu_capability", "processes", "torch_threads")


@dataclass
class Verdict:
    kind: str  # identical, equivalent or different
    evidence: list[str]  # why this verdict: what was compared and the numbers
    differences: list[str] = field(default_factory=list)  # environments and inputs

    @property
    def exit_status(self) -> int:
        return 1 if self.kind == "different" else 0


def main(argv: list[str]) -> int:
    args, with_tokens = parse_args(argv)
    from study.stores import choose_store

    run_id = _check_id(args.id)
    store = choose_store(args.runs, args.mongo, args.db)
    where = store.describe()
    found = [r for r in store.read_runs(keep=lambda r: r.id == run_id) if r.id == run_id]
    if not found:
        raise StudyError(f"no run {run_id} in {where}; `study runs` lists the runs there")
    original = found[0]
    if original.status != "COMPLETED":
        raise StudyError(
            f"run {run_id} in {where} is {original.status}; only a COMPLETED run can be "
            "reproduced (resume it first: `study run with resume=ID`)"
        )
    check_plugins_installed(original)
    updates = parse_updates(with_tokens)
    tokens, prefix = plan(original, with_tokens, updates, args.epochs)
    data_note = check_data(
        original, {**reproducible_config(original.config), **updates}, args.allow_data_change
    )

    store_args, into = _where_to_record(args, store)
    print(
        f"study: reproducing run {run_id} of {where} ({original.model} on {original.dataset}"
        + (f", its first {prefix} epochs" if prefix else "")
        + ")",
        flush=True,
    )
    from study.cli import run_experiment

    started: dict = {}
    status = run_experiment(
        ["run", *store_args, *(["with", *tokens] if tokens else [])],
        base_config=reproducible_config(original.config),
        meta={REPRODUCES_KEY: {"id": run_id, "store": where}},
        started=started,
    )
    if status != 0:
        return status
    new_id = str(started.get("id"))
    again = [r for r in into.read_runs(keep=lambda r: r.id == new_id) if r.id == new_id]
    if not again:
        raise StudyError(f"the reproduction ran but run {new_id} is not in {into.describe()}")
    verdict = compare(original, again[0], prefix)
    verdict.differences = differences(original, again[0], updates, data_note)
    print(render(verdict, original, again[0]))
    return verdict.exit_status


def check_plugins_installed(original: RunRecord) -> None:
    """A run whose model or data set no installed plugin provides: one line naming the
    distribution (and version) that provided it when it ran, so a reader knows what to install."""
    from study.registry import current_plugin_name, registry

    reg = registry()
    prov = original.info.get("provenance") or {}
    versions = _current_names(prov.get("plugins"))
    for kind, name, table in (
        ("model", original.model, reg.models),
        ("dataset", original.dataset, reg.datasets),
    ):
        if name in table:
            continue
        part = original.info.get(kind) or {}
        plugin = part.get("plugin") if isinstance(part.get("plugin"), str) else None
        plugin = current_plugin_name(plugin) if plugin is not None else None
        if plugin is None:  # recorded before the data set named its plugin: the ones missing
            plugin = " or ".join(p for p in versions if reg.pm.get_plugin(p) is None) or None
        if plugin is None:
            raise StudyError(
                f"run {original.id}'s {kind} {name!r} is not registered here and its record "
                f"names no plugin; registered {kind}s: {', '.join(table)}"
            )
        dist = plugin.split(":")[0]
        version = versions.get(plugin)
        pin = f"{dist}=={version}" if version else dist
        raise StudyError(
            f"run {original.id}'s {kind} {name!r} came from plugin {plugin}"
            + (f" {version}" if version else "")
            + f", which is not installed here; install it (pip install '{pin}') to reproduce it"
        )


def _current_names(plugins) -> dict:
    """A provenance's {plugin: value} under today's distribution names (a run recorded before
    the distribution's rename names "study:study-models")."""
    from study.registry import current_plugin_name

    if not isinstance(plugins, dict):
        return {}
    return {current_plugin_name(str(k)): v for k, v in plugins.items()}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="study reproduce",
        description="Re-run a stored run's config as a new run and compare the two.",
        usage="study reproduce ID [--runs DIR|ARCHIVE | --mongo URL [--db NAME]] [--epochs N] "
        "[--into DIR] [--allow-data-change] [with KEY=VALUE ...]",
    )
    parser.add_argument("id", metavar="ID", help="the run to reproduce, as `study runs` lists it")
    parser.add_argument("--runs", metavar="DIR", help="a file store, or a `study export` archive")
    parser.add_argument("--mongo", metavar="URL", help="a MongoDB URL (default $STUDY_MONGO_URL)")
    parser.add_argument("--db", metavar="NAME", help="the MongoDB database (default: study)")
    parser.add_argument(
        "--epochs", type=int, metavar="N", help="re-run only the first N epochs; compare those"
    )
    parser.add_argument(
        "--into",
        metavar="DIR",
        help="record the reproduction in this file store (default: the original's store; "
        "./runs for an archive's run)",
    )
    parser.add_argument(
        "--allow-data-change",
        action="store_true",
        help="go on when the data differs from the original's (the verdict says so)",
    )
    own, with_tokens = _split_with(argv)
    return parser.parse_args(own), with_tokens


def _split_with(argv: list[str]) -> tuple[list[str], list[str]]:
    if "with" in argv:
        at = argv.index("with")
        return argv[:at], argv[at + 1 :]
    return argv, []


def _check_id(value: str) -> str:
    from study.stores import check_run_id

    try:
        return check_run_id(value, "the store")
    except StudyError:
        raise StudyError(
            f"run id {value!r} is invalid; expected a number, as `study runs` lists it"
        ) from None


def parse_updates(tokens: list[str]) -> dict:
    """`with KEY=VALUE ...` as the values Sacred will give the run."""
    from sacred.arg_parser import get_config_updates

    from study.cli import parse_booleans

    updates, named = get_config_updates(tokens)
    if named:
        raise StudyError(
            f"reproduce takes KEY=VALUE updates only, not named configs ({', '.join(named)}): "
            "the original's config already holds its protocol"
        )
    return parse_booleans(updates)


def plan(
    original: RunRecord, tokens: list[str], updates: dict, epochs: int | None
) -> tuple[list[str], int | None]:
    """The `with` tokens of the reproduction and the prefix (epochs) it compares, if any.

    A prefix keeps the original's `epochs`, so its learning-rate schedule is the original's,
    and stops after N of them (`stop_after`): `--epochs N` and `with epochs=N` both mean that."""
    trained_epochs = original.config.get("epochs")
    wanted = epochs if epochs is not None else updates.get("epochs")
    if wanted is None or wanted == trained_epochs:
        return tokens, None
    done = _epochs_done(original)
    if isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= done:
        raise StudyError(
            f"epochs={wanted!r} is invalid; expected 1..{done} (run {original.id} "
            f"trained {done} epochs): a reproduction compares a prefix of the original"
        )
    kept = [t for t in tokens if t.split("=", 1)[0].strip() != "epochs"]
    return [*kept, f"stop_after={wanted}"], wanted


def _epochs_done(record: RunRecord) -> int:
    series = record.metric("test_top1")
    return max((step for step, _ in series), default=0)


# Keys of the original's config that name where it wrote: a reproduction writes only where
# `--into` (or its store) says, so these are left to the reproduction's own defaults.
NOT_REPRODUCED = ("resume", "checkpoint_dir")


def reproducible_config(config: dict) -> dict:
    """The original's config as a base for the new run: what it trained and where it read,
    without the resume that continued it and the folder its checkpoints went to. It reads the
    data where the original did and never downloads there (the record names that folder: a
    hostile archive could name any), unless `with download=true` asks for it."""
    kept = {k: v for k, v in as_trained(config).items() if k not in NOT_REPRODUCED}
    return {**kept, "download": False}


def _where_to_record(args, store) -> tuple[list[str], object]:
    """(the run command's store options, the Store to read the new run back from): the
    original's store, or `--into DIR` (an archive is read-only: ./runs by default)."""
    from study.stores import FileRunStore

    if args.into or store.kind == "archive":
        into = FileRunStore(args.into or "runs")
        return ["-F", str(into.folder)], into
    if store.kind == "mongo":
        return ["-m", f"{store.target.url}:{store.target.db}"], store
    return ["-F", str(store.folder)], store


# ---------------------------------------------------------------------------------------------
# The data must be the same data


def check_data(original: RunRecord, config: dict, allow_change: bool) -> str | None:
    """Compare the data under the reproduction's data_root with the original's recorded
    content, before any training. None: the same bytes. A difference raises StudyError naming
    the file and both fingerprints, unless `allow_change` (then it is returned as a note)."""
    from study.experiment import prepare_data

    recorded = (original.info.get("dataset") or {}).get("content")
    if not isinstance(recorded, dict) or not recorded:
        return "data not checked: the original run recorded no content fingerprints"
    _, data = prepare_data({"num_workers": 0, **config})
    problem = _data_difference(recorded, data.content)
    if problem is None:
        return None
    if not allow_change:
        raise StudyError(
            f"the data differs from run {original.id}'s: {problem}; use the same files "
            "(with data_root=DIR), or pass --allow-data-change to go on"
        )
    return f"data: {problem}"


def _data_difference(recorded: dict, now: dict) -> str | None:
    for name in sorted(set(recorded) | set(now)):
        before, after = recorded.get(name), now.get(name)
        if before != after:
            return f"{name} is {after or 'absent'} here, {before or 'absent'} in the original"
    return None


# ---------------------------------------------------------------------------------------------
# Comparing two runs


def compare(original: RunRecord, again: RunRecord, prefix: int | None = None) -> Verdict:
    """The verdict on `again` as a reproduction of `original` (of its first `prefix` epochs)."""
    last = prefix or _epochs_done(original)
    # What the original recorded (an older run may lack a metric added since).
    names = sorted(n for n in original.metrics if n not in TIMING_METRICS)
    unequal = []
    for name in names:
        a = [v for step, v in original.metric(name) if step <= last]
        b = [v for step, v in again.metric(name) if step <= last]
        if a != b:
            unequal.append(name)
    compared = f"{len(names)} metrics over {last} epoch{'s' if last != 1 else ''}"

    top_a, top_b = _top1(original, last), _top1(again, last)
    n = _test_count(original)
    test = None
    predictions_equal = None
    if prefix is None:
        ea, eb = original.evaluation(), again.evaluation()
        if ea is not None and eb is not None and len(ea["labels"]) == len(eb["labels"]):
            predictions_equal = all(
                (ea[k] == eb[k]).all() for k in ("topk", "test_indices", "labels")
            )
            test = stats.mcnemar(stats.correctness(ea), stats.correctness(eb))
    if not unequal and predictions_equal is not False:
        what = f"every per-epoch metric ({compared})"
        if predictions_equal:
            what += f" and all {n:,} per-image predictions"
        elif prefix:
            what += f": the first {prefix} of run {original.id}'s {_epochs_done(original)} epochs"
        return Verdict("identical", [f"equal: {what}"])

    evidence = [
        f"not identical: {', '.join(unequal) or 'per-image predictions'} differ"
        + (f" within the first {last} epochs" if prefix else ""),
        f"top-1 after epoch {last}: {top_a:.4f} (run {original.id}) vs {top_b:.4f} "
        f"(run {again.id}), {n:,} test images",
    ]
    within = True
    if n:
        ia = stats.wilson_interval(round(top_a * n), n)
        ib = stats.wilson_interval(round(top_b * n), n)
        within = ia.low <= top_b <= ia.high and ib.low <= top_a <= ib.high
        evidence.append(
            f"95% Wilson intervals [{ia.low:.4f}, {ia.high:.4f}] and "
            f"[{ib.low:.4f}, {ib.high:.4f}]: "
            + ("each top-1 lies in the other's" if within else "a top-1 lies outside the other's")
        )
    if test is not None:
        evidence.append(
            f"McNemar on per-image correctness ({test.method}): b = {test.b}, c = {test.c}, "
            f"p = {test.p_value:.3g}, " + ("significant" if test.significant else "not significant")
        )
    elif prefix:
        evidence.append(
            "McNemar needs per-image predictions of the same epoch; the original kept its final "
            "epoch's only, so a prefix is judged by the intervals"
        )
    same = within and (test is None or not test.significant)
    return Verdict("equivalent" if same else "different", evidence)


def _top1(record: RunRecord, epoch: int) -> float:
    values = dict(record.metric("test_top1"))
    if epoch in values:
        return values[epoch]
    return float((record.result or {}).get("top1") or 0.0)


def _test_count(record: RunRecord) -> int:
    count = (record.info.get("dataset") or {}).get("test_count")
    return int(count) if isinstance(count, int) else 0


def differences(original: RunRecord, again: RunRecord, updates: dict, data_note) -> list[str]:
    """What differs between the two runs' environments and inputs, one line each."""
    lines = []
    if data_note:
        lines.append(data_note)
    a, b = trained(original.config), trained(again.config)
    for key in sorted(set(a) | set(b)):
        if key == "stop_after" and key not in updates:
            continue  # a prefix's own stop (the evidence says which epochs were compared)
        if a.get(key) != b.get(key):
            how = " (given with `with`)" if key in updates else ""
            before = repr(a[key]) if key in a else "not in the original (a key added since)"
            lines.append(f"config: {key} {before} -> {b.get(key)!r}{how}")
    for key in PLACE_KEYS:
        if key in updates and original.config.get(key) != again.config.get(key):
            lines.append(
                f"place: {key} {original.config.get(key)!r} -> {again.config.get(key)!r} "
                "(where it ran, not what it trained)"
            )
    pa = original.info.get("provenance") or {}
    pb = again.info.get("provenance") or {}
    if not pa:
        lines.append(
            "provenance: the original recorded none (made before study recorded it), so its "
            "code, versions, plugins and determinism settings cannot be compared"
        )
    else:
        lines += _dict_differences("version", _versions(pa), _versions(pb))
        lines += _dict_differences(
            "plugin", _current_names(pa.get("plugins")), _current_names(pb.get("plugins"))
        )
        lines += _dict_differences(
            "plugin code",
            _current_names(pa.get("plugin_code")),
            _current_names(pb.get("plugin_code")),
        )
        lines += _dict_differences("code", _code(pa), _code(pb))
        lines += _dict_differences(
            "determinism", pa.get("determinism") or {}, pb.get("determinism") or {}
        )
    ta, tb = original.info.get("training") or {}, again.info.get("training") or {}
    lines += _dict_differences(
        "device",
        {k: ta[k] for k in DEVICE_KEYS if k in ta},
        {k: tb[k] for k in DEVICE_KEYS if k in tb},
    )
    if ta.get("stopped_by_budget"):
        lines.append(
            "the original stopped on its time budget: where a run stops then depends on its "
            "machine's speed"
        )
    return lines


def _versions(prov: dict) -> dict:
    return {"study": prov.get("study"), **(prov.get("versions") or {})}


def _code(prov: dict) -> dict:
    git = prov.get("git") or {}
    return {k: git.get(k) for k in ("commit", "dirty", "diff_sha256")}


def _dict_differences(label: str, a: dict, b: dict) -> list[str]:
    # Keys the original recorded: an older record lacks some, which is no difference.
    return [
        f"{label}: {key} {a[key]!r} -> {b.get(key)!r}"
        for key in sorted(a, key=str)
        if a[key] != b.get(key)
    ]


def render(verdict: Verdict, original: RunRecord, again: RunRecord) -> str:
    lines = [f"verdict: {verdict.kind} (run {again.id} reproducing run {original.id})"]
    lines += [f"  {line}" for line in verdict.evidence]
    if verdict.differences:
        lines.append("differences between the two runs:")
        lines += [f"  {line}" for line in verdict.differences]
    else:
        lines.append(
            "differences between the two runs: none in config, data, code, versions, plugins, "
            "device or determinism settings"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
