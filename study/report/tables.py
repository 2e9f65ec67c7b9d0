"""The data of each table: method, data sets, Table 1 (results), Table 2 (paired tests),
calibration, efficiency and the appendix."""

from __future__ import annotations

import json

from study import stats
from study.identity import PLACE_KEYS
from study.report.formatting import (
    count_text,
    epochs_label,
    epochs_text,
    fmt_num,
    interval_text,
    ratio,
    signed,
    stat,
    value_text,
    version_text,
)
from study.report.model import (
    FLAG_MARKS,
    SETTING_ROWS,
    TIMING_SPREAD,
    base_model,
    budget_text,
    dataset_title,
    flag_reasons,
    model_title,
    run_ece,
    run_evaluation,
    setting_label,
    stopped_by_budget,
    test_count,
    timing_machines,
    trained_epochs,
    training_totals,
)
from study.stores import RunRecord

RUNS_PER_BLOCK = 8  # run columns per block of the differing-settings table


def method_section(records, cells) -> dict:
    """The protocol: the values every run shares that changed what some run did, the switches
    that were off in every run, and per run the values that differ."""
    common, off, differing = [], [], []
    for row in SETTING_ROWS:
        if not any(row.key in r.config for r in records):
            continue  # recorded before the setting existed: nothing to say
        values = {json.dumps(r.config.get(row.key), sort_keys=True) for r in records}
        if len(values) > 1:
            differing.append((row.key, row.heading))
        elif any(row.used(r.config, r.info) for r in records):
            value = value_text(records[0].config.get(row.key))
            common.append({"label": row.heading, "value": value})
        elif row.switch and all(row.key in r.config for r in records):  # absent: unknown
            off.append(row.label)
    listed = {row.key for row in SETTING_ROWS}
    other = sorted(
        {
            k
            for r in records
            for k in r.config
            if k not in listed
            and k not in PLACE_KEYS
            and k not in ("model", "dataset")
            and len({json.dumps(x.config.get(k), sort_keys=True) for x in records}) > 1
        }
    )
    differing += [(k, setting_label(k)) for k in other]
    per_block = -(-len(records) // -(-len(records) // RUNS_PER_BLOCK))  # blocks of equal size
    # One column per run and a row per setting: settings outnumber runs, and a column per
    # setting broke names mid-word. Wide studies continue in blocks of RUNS_PER_BLOCK runs.
    blocks = [
        {
            "runs": [
                {
                    "id": r.id,
                    "model": model_title(r.model or "?"),
                    "dataset": dataset_title(r.dataset or "?"),
                }  # fmt: skip
                for r in chunk
            ],
            "rows": [
                {"label": label, "values": [value_text(r.config.get(k)) for r in chunk]}
                for k, label in differing
            ],
        }
        for chunk in (records[i : i + per_block] for i in range(0, len(records), per_block))
    ]
    multi = [
        {
            "dataset": dataset_title(d),
            "model": model_title(m),
            "n": len(rs),
            "ids": ", ".join(r.id for r in rs),
            "seeds": ", ".join(value_text(r.config.get("seed")) for r in rs),
        }
        for (d, m), rs in cells.items()
        if len(rs) > 1
    ]
    # What each model's output layer became, as its runs recorded it (older runs: the config).
    head_of = {}
    for r in records:
        head = (r.info.get("model") or {}).get("head") or r.config.get("head")
        head_of.setdefault(model_title(r.model), set()).add(value_text(head))
    heads = sorted(set().union(*head_of.values())) if head_of else []
    mixed = (
        [{"model": m, "head": ", ".join(sorted(h))} for m, h in sorted(head_of.items())]
        if len(heads) > 1
        else []
    )
    arms = sorted({model_title(m) for _, m in cells if m != base_model(m)})
    return {
        "arms": arms,
        "common": common,
        "off": off,
        "blocks": blocks if differing else [],
        "multi": multi,
        "heads": heads,
        "head_by_model": mixed,
    }


def dataset_rows(cells, datasets) -> list[dict]:
    rows = []
    for d in datasets:
        rs = [r for (dd, _), runs in cells.items() if dd == d for r in runs]
        infos = [r.info.get("dataset") or {} for r in rs]

        def values(key, infos=infos):
            seen = []
            for i in infos:
                v = i.get(key)
                if v is not None and v not in seen:
                    seen.append(v)
            return ", ".join(count_text(v) for v in seen) if seen else "–"

        sizes = sorted({r.config.get("image_size") for r in rs if r.config.get("image_size")})
        rows.append(
            {
                "title": dataset_title(d),
                "classes": values("num_classes"),
                "native": values("image_size"),
                "channels": values("channels"),
                "input": ", ".join(str(s) for s in sizes) or "–",
                "train": values("train_count"),
                "train_available": values("train_available"),
                "test": values("test_count"),
                "test_available": values("test_available"),
                # What the data held (content), else the older cache key of its files.
                "fingerprint": ", ".join(
                    dict.fromkeys(content_digest(i) or i.get("fingerprint") or "–" for i in infos)
                ),
            }
        )
    return rows


def results_table(cells, datasets, models, seed, flags=None, ranked=None) -> dict:
    """Table 1. `ranked`: per data set, the model that ranks first (study.report.ranking):
    the only cell marked ▲, on its top-1 row (no test backs a top-5 mark)."""
    rows = []
    for d in datasets:
        for metric, label in (("top1", "Top-1 accuracy"), ("top5", "Top-5 accuracy")):
            values = []
            for m in models:
                rs = cells.get((d, m), [])
                s = stat(rs, lambda r, metric=metric: r.result[metric])
                published = seed.get((d, base_model(m)), {}).get(metric)
                interval = stats.accuracy_interval(s.values, test_count(rs))
                values.append(
                    {
                        "model": m,
                        "stat": s,
                        "text": s.text() if rs else "",
                        "ci": interval_text(interval),
                        "n": s.n,
                        "ran": bool(rs),
                        "seed": fmt_num(published) if published is not None and rs else None,
                        # Ours minus the seed's published value (the protocols differ).
                        "diff": signed(s.mean - published, 4)
                        if published is not None and s.mean is not None
                        else None,
                        "best": False,
                        "marks": "".join(
                            mark
                            for key, mark in FLAG_MARKS.items()
                            if metric == "top1" and (flags or {}).get((d, m), {}).get(key)
                        ),
                    }
                )
            # The highest observed mean among cells not flagged (study.health's rule): what
            # the prose names; ▲ only where the ranking rule holds.
            eligible = [
                v for v in values if not (flags or {}).get((d, v["model"]), {}).get("flagged")
            ]
            means = [v["stat"].mean for v in eligible if v["stat"].mean is not None]
            top = max(means) if means else None
            best = None
            for v in eligible:
                if top is not None and v["stat"].mean == top:
                    best = best or {"model": v["model"], "stat": v["stat"]}
                if metric == "top1" and (ranked or {}).get(d) == v["model"]:
                    v["best"] = True
            rows.append(
                {"dataset": d, "title": dataset_title(d), "metric": metric, "label": label,
                 "cells": values, "best": best}
            )  # fmt: skip
    any_seed = any(c["seed"] for row in rows for c in row["cells"])
    aggregated = any(c["n"] > 1 for row in rows for c in row["cells"])
    single = any(c["n"] == 1 and c["ci"] for row in rows for c in row["cells"])
    marks = {k for row in rows for c in row["cells"] for k in c["marks"]}
    ranks = any(c["best"] for row in rows for c in row["cells"])
    return {"rows": rows, "any_seed": any_seed, "aggregated": aggregated, "single": single,
            "marks": marks, "ranks": ranks}  # fmt: skip


def summary_rows(d, models, table, efficiency) -> list[dict]:
    """A data set's results at a glance, in the style of timm's tables: per model top-1 with
    its interval and seeds, the seed's value, size, compute, speed, epochs and input size."""
    top1 = next((row for row in table["rows"] if row["dataset"] == d
                 and row["metric"] == "top1"), None)  # fmt: skip
    costs = {e["key"]: e for e in efficiency}
    rows = []
    for c in top1["cells"] if top1 else []:
        e = costs.get(f"{d}/{c['model']}")
        if not c["ran"] or e is None:
            continue
        rows.append({
            "model": model_title(c["model"]), "top1": c["text"], "ci": c["ci"], "n": c["n"],
            "marks": c["marks"], "seed": c["seed"] or "–",
            "params": fmt_num(e["params"].mean / 1e6, 1) if e["params"].mean else "–",
            "gmacs": fmt_num(e["gmacs"].mean, 3) if e["gmacs"].mean else "–",
            "rate": fmt_num(e["rate"].mean, 1) if e["rate"].mean else "–",
            "trained": e["trained"], "input": e["input"],
        })  # fmt: skip
    return rows


def calibration_rows(cells, datasets, models, evaluate, flags=None) -> list[dict]:
    rows = []
    for d in datasets:
        for m in models:
            rs = cells.get((d, m))
            if rs:
                s = stat(rs, lambda r: run_ece(r, evaluate))
                f = (flags or {}).get((d, m), {})
                rows.append({"dataset": dataset_title(d), "model": model_title(m),
                             "ece": s, "n": s.n, "flagged": f.get("flagged", False),
                             "why": flag_reasons(f)})  # fmt: skip
    return rows


def efficiency_rows(cells, datasets, models) -> list[dict]:
    rows = []
    machines = timing_machines([r for rs in cells.values() for r in rs])
    for d in datasets:
        for m in models:
            rs = cells.get((d, m))
            if not rs:
                continue
            hardware = sorted({machines.get((r.store, r.id), "not recorded") for r in rs})
            stopped = [r for r in rs if stopped_by_budget(r)]
            trained = [e for r in rs if (e := trained_epochs(r)) is not None]
            rows.append(
                {
                    "key": f"{d}/{m}",
                    "model": model_title(m),
                    "dataset": dataset_title(d),
                    "n": len(rs),
                    "trained": budget_text(stopped)
                    if stopped
                    else (epochs_label(epochs_text(trained)) if trained else "–"),
                    "images": stat(rs, lambda r: training_totals(r)[0]),
                    "params": stat(rs, lambda r: r.info["model"]["params"]),
                    "weight_mb": stat(rs, lambda r: r.info["model"]["weight_mb"]),
                    "gmacs": stat(rs, lambda r: r.info["model"]["gmacs_per_image"]),
                    "rate": stat(rs, lambda r: ratio(*training_totals(r))),
                    "seconds": stat(rs, lambda r: training_totals(r)[1]),
                    "input": ", ".join(sorted({str(r.config.get("image_size")) for r in rs})),
                    "hardware": "; ".join(hardware),
                    "machines": hardware,
                }
            )
    return rows


def timing_noise(records: list[RunRecord]) -> list[str]:
    """A sentence per run whose full epochs' training rates disagree beyond TIMING_SPREAD."""
    out = []
    for r in records:
        rates = [v for _, v in r.metric("images_per_s") if v > 0]
        if stopped_by_budget(r):
            rates = rates[:-1]  # the last epoch was cut short
        if len(rates) > 1 and max(rates) > TIMING_SPREAD * min(rates):
            load = [v for _, v in r.metric("load_avg")]
            cpus = (r.info.get("training") or {}).get("cpus")
            on = f" on {cpus} CPUs" if cpus else ""
            out.append(
                f"run {r.id} ({model_title(r.model or '?')} on {dataset_title(r.dataset or '?')})"
                f" trained at {min(rates):.1f} to {max(rates):.1f} images/s across its epochs"
                + (f" (load average {min(load):.1f} to {max(load):.1f}{on})" if load else "")
            )
    return out


def code_text(prov) -> str:
    """The code that ran, from a run's provenance: the commit (and whether the tree was dirty)
    or the installed version, and each plugin distribution with its version."""
    if not isinstance(prov, dict):
        return "not recorded (the run predates provenance records)"
    git = prov.get("git")
    if isinstance(git, dict) and git.get("commit"):
        dirty = f", with uncommitted changes (diff sha256 {str(git.get('diff_sha256'))[:12]})"
        commit, branch = str(git["commit"])[:12], git.get("branch")
        code = f"study {prov.get('study')} at commit {commit} on {branch}"
        code += dirty if git.get("dirty") else ""
    else:
        code = f"study {prov.get('study')} (installed)"
    plugins = prov.get("plugins") if isinstance(prov.get("plugins"), dict) else {}
    if plugins:
        code += "; plugins: " + ", ".join(f"{p} {v or '?'}" for p, v in sorted(plugins.items()))
    return code


def data_root_text(dataset) -> str | None:
    """Where the run read its data: data_root as typed and as it resolved, and the digest of
    its content fingerprints (what `study reproduce` checks)."""
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data_root"), dict):
        return None
    root = dataset["data_root"]
    text = f"data_root {root.get('typed')} (resolved {root.get('resolved')})"
    digest = content_digest(dataset)
    return text + (f"; content fingerprint {digest}" if digest else "")


def content_digest(dataset: dict) -> str | None:
    """One short digest of a run's data content fingerprints (None: not recorded)."""
    import hashlib

    content = dataset.get("content")
    if not isinstance(content, dict) or not content:
        return None
    text = "\n".join(f"{k}\t{v}" for k, v in sorted(content.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def appendix_entry(r: RunRecord, evaluate=None, flags=None) -> dict:
    host = r.host or {}
    libs = host.get("study") if isinstance(host.get("study"), dict) else {}
    versions = [("python", version_text(host.get("python_version")))]
    versions += [(k, version_text(libs.get(k))) for k in ("study", "torch", "torchvision", "cuda")]
    if libs.get("cudnn"):
        versions.append(("cudnn", str(libs["cudnn"])))
    missing = []
    if not r.metrics:
        missing.append("training curves")
    if "evaluation.npz" not in r.artifacts:
        missing.append("evaluation artifact")
    if not r.result:
        missing.append("result")
    return {
        "id": r.id,
        "store": r.store,
        "experiment": r.experiment,
        "comment": r.comment,
        "status": r.status,
        "model": r.model,
        "dataset": r.dataset,
        "start": r.start_time or "–",
        "stop": r.stop_time or "–",
        "host": host.get("hostname", "–"),
        "cpu": host.get("cpu", "–"),
        "gpus": ", ".join(map(str, libs.get("gpus") or [])) or "none",
        "os": " ".join(map(str, host.get("os") or [])) or "–",
        "versions": versions,
        "code": code_text(r.info.get("provenance") if isinstance(r.info, dict) else None),
        "data_root": data_root_text(r.info.get("dataset") if isinstance(r.info, dict) else None),
        "config": [(k, json.dumps(v)) for k, v in sorted(r.config.items())],
        "result": r.result,
        "ece": run_ece(r, evaluate or run_evaluation),
        "flagged": flag_reasons(flags or {}),
        "missing": missing,
    }


def compute_points(cells, datasets, models, colours) -> list[dict]:
    """Per cell, mean test top-1 beside its mean training seconds, GMACs per image and
    parameters: the accuracy-versus-compute figure's points."""
    points = []
    for d in datasets:
        for m in models:
            rs = cells.get((d, m))
            if not rs:
                continue
            top1 = stat(rs, lambda r: r.result["top1"]).mean
            if top1 is None:
                continue
            points.append(
                {
                    "model": model_title(m),
                    "colour": colours[m],
                    "dataset": dataset_title(d),
                    "top1": top1,
                    "seconds": stat(rs, lambda r: training_totals(r)[1]).mean,
                    "gmacs": stat(rs, lambda r: r.info["model"]["gmacs_per_image"]).mean,
                    "params": stat(rs, lambda r: r.info["model"]["params"]).mean,
                }
            )
    return points
