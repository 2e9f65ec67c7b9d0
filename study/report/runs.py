"""Which stored runs a report covers: the command-line filters, and runs that read back whole."""

from __future__ import annotations

from study.errors import StudyError
from study.report.formatting import plural
from study.report.model import arm_names
from study.stores import RunRecord
from study.sweep import TAG_PREFIX  # a sweep tags its runs with this Sacred comment


def exclusion(
    r: RunRecord,
    *,
    experiment: str | None = None,
    ids: list[str] | None = None,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    sweep: str | None = None,
    status: list[str] | None = ("COMPLETED",),
) -> dict | None:
    """Why the filters leave a run out of a report, as a row of its left-out table, or None
    when it passes them all (it needs run.json and config.json only)."""
    wanted_status = None if not status or "any" in [s.lower() for s in status] else set(status)
    why = None
    if experiment is not None and r.experiment != experiment:
        why = "filter", f"experiment {r.experiment}, not the --experiment named"
    elif ids is not None and r.id not in ids:
        why = "filter", "not among the --ids named"
    elif models is not None and r.model not in models:
        why = "filter", f"model {r.model}, not among the --models named"
    elif datasets is not None and r.dataset not in datasets:
        why = "filter", f"data set {r.dataset}, not among the --datasets named"
    elif sweep is not None and r.comment != f"{TAG_PREFIX}{sweep}":
        why = "filter", "not a run of the --sweep named"
    elif wanted_status is not None and r.status not in wanted_status:
        shown = ", ".join(sorted(wanted_status))
        why = "status", f"status {r.status}: the report shows {shown} runs"
    if why is None:
        return None
    return left_out_row(r, *why)


def left_out_row(r: RunRecord, kind: str, why: str) -> dict:
    return {"id": r.id, "model": r.model, "dataset": r.dataset, "status": r.status,
            "kind": kind, "why": why}  # fmt: skip


def run_filter(**filters):
    """Whether a run passes every filter (see exclusion)."""
    return lambda r: exclusion(r, **filters) is None


def select_runs(
    records: list[RunRecord],
    *,
    where: str = "the store",
    holds: list[str] | None = None,
    experiment: str | None = None,
    ids: list[str] | None = None,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    sweep: str | None = None,
    status: list[str] | None = ("COMPLETED",),
) -> list[RunRecord]:
    """The runs that pass every filter; StudyError when none does. `holds`: the statuses of
    every run in the store, where `records` was already filtered while reading."""
    keep = run_filter(
        experiment=experiment, ids=ids, models=models, datasets=datasets, sweep=sweep,
        status=status,
    )  # fmt: skip
    chosen = [r for r in records if keep(r)]
    if not chosen:
        filters = [
            f"{name}={','.join(v) if isinstance(v, list | tuple) else v}"
            for name, v in (
                ("experiment", experiment),
                ("ids", ids),
                ("models", models),
                ("datasets", datasets),
                ("sweep", sweep),
                ("status", status),
            )
            if v
        ]
        holds = [r.status for r in records] if holds is None else holds
        statuses = sorted(set(holds))
        raise StudyError(
            f"no runs found in {where} matching {' '.join(filters) or 'any run'}; "
            f"the store holds {plural(len(holds), 'run')}"
            + (f" (statuses: {', '.join(statuses)})" if statuses else "")
            + "; record some with `study run` or relax the filters"
        )
    return chosen


def usable_runs(records: list[RunRecord], skipped: list[str]) -> list[RunRecord]:
    """The runs whose evaluation (if any) reads back whole; the others get a line in
    `skipped`. StudyError when none is left."""
    usable = []
    for r in records:
        try:
            r.evaluation()
            usable.append(r)
        except StudyError as exc:
            skipped.append(f"skipped a malformed run: {exc}")
    if not usable:
        raise StudyError(f"no runs to report on: {'; '.join(skipped)}")
    return usable


def split_reproductions(
    records: list[RunRecord], ids: list[str] | None = None
) -> tuple[list[RunRecord], list[dict]]:
    """(the runs to report, a left-out row per run left out): a `study reproduce` run re-ran
    another run's config, so pooling it would count one seed twice. Named with --ids, it is
    kept."""
    kept, left_out = [], []
    for r in records:
        original = r.meta.get("reproduces") if isinstance(r.meta, dict) else None
        if isinstance(original, dict) and not (ids and r.id in ids):
            left_out.append(left_out_row(
                r, "reproduction",
                f"reproduces run {original.get('id')} of {original.get('store')} "
                "(`study reproduce`): a check, not another repeat",
            ))  # fmt: skip
        else:
            kept.append(r)
    return kept, left_out


def name_replaced(
    left_out: list[dict], excluded: dict[str, RunRecord], shown: list[RunRecord]
) -> list[dict]:
    """The left-out rows, where a filter left out a run whose model, data set and seed a shown
    run trains otherwise (a re-run with another budget, say) made `replaced` rows that name the
    shown run and what sets the two apart: a reader sees what the shown cell stands in for.
    `excluded`: the runs the filters left out, by id."""
    rows = []
    for row in left_out:
        r = excluded.get(row["id"])
        twin = None
        if r is not None and row["kind"] == "filter":
            twin = next((s for s in shown if (s.model, s.dataset, s.config.get("seed"))
                         == (r.model, r.dataset, r.config.get("seed"))), None)  # fmt: skip
        # What sets the two apart, as the report names arms ('epochs 6'); nothing where they
        # trained alike (a plain duplicate is not a replacement: its filter row stands).
        this, that = (
            (n.partition(" [")[2].rstrip("]") for n in arm_names([r, twin])) if twin else ("", "")
        )
        if not this:
            rows.append(row)
            continue
        rows.append({**row, "kind": "replaced",
                     "why": f"{row['why']}; run {twin.id}, shown, has the same model, data set "
                            f"and seed and trains it with {that} (this run: {this})"})  # fmt: skip
    return rows
