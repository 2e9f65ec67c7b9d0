"""Which stored runs a report covers: the command-line filters, and runs that read back whole."""

from __future__ import annotations

from study.errors import StudyError
from study.report.formatting import plural
from study.stores import RunRecord
from study.sweep import TAG_PREFIX  # a sweep tags its runs with this Sacred comment


def run_filter(
    *,
    experiment: str | None = None,
    ids: list[str] | None = None,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    sweep: str | None = None,
    status: list[str] | None = ("COMPLETED",),
):
    """Whether a run passes every filter (it needs run.json and config.json only)."""
    wanted_status = None if not status or "any" in [s.lower() for s in status] else set(status)

    def keep(r: RunRecord) -> bool:
        return (
            (experiment is None or r.experiment == experiment)
            and (ids is None or r.id in ids)
            and (models is None or r.model in models)
            and (datasets is None or r.dataset in datasets)
            and (sweep is None or r.comment == f"{TAG_PREFIX}{sweep}")
            and (wanted_status is None or r.status in wanted_status)
        )

    return keep


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
) -> tuple[list[RunRecord], list[str]]:
    """(the runs to report, a line per run left out): a `study reproduce` run re-ran another
    run's config, so pooling it would count one seed twice. Named with --ids, it is kept."""
    kept, left_out = [], []
    for r in records:
        original = r.meta.get("reproduces") if isinstance(r.meta, dict) else None
        if isinstance(original, dict) and not (ids and r.id in ids):
            left_out.append(
                f"run {r.id} reproduces run {original.get('id')} of {original.get('store')} "
                "(`study reproduce`): a check, not another repeat"
            )
        else:
            kept.append(r)
    return kept, left_out
