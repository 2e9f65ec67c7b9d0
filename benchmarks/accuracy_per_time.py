"""Accuracy per unit of training time: the same model and data under several protocols, each
given the same budget of training time, as real recorded `study run`s.

Each protocol runs as `python -m study run with <protocol> model=... dataset=...
time_budget=SECONDS` (training ends after the first step past the budget, mid-epoch if need
be, and that partial epoch is evaluated too). The test split is evaluated after every epoch;
evaluation and precise BatchNorm are outside the budget and reported beside it. The curve of
each protocol is test top-1 against cumulative training time.

    python benchmarks/accuracy_per_time.py --model resnet18 --dataset cifar10 \
        --data-root ../shared/data --budget 600 --epochs paper=25,fast=5 --target 0.8081

Each protocol appends one JSON record to OUT/<date>-<machine>-accuracy-per-time.jsonl; the
runs themselves stay in STORE (a study file store: `study report STORE` draws their curves).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
from itertools import accumulate
from pathlib import Path

from study.stores import read_file_store


def run_protocol(args, protocol: str, epochs: int | None, store: Path) -> dict:
    before = {r.id for r in read_file_store(store)} if store.exists() else set()
    cmd = [
        sys.executable, "-m", "study", "run", "with", protocol, f"model={args.model}",
        f"dataset={args.dataset}", f"data_root={args.data_root}", f"time_budget={args.budget}",
        f"device={args.device}", f"seed={args.seed}", *args.extra,
        *([f"epochs={epochs}"] if epochs else []), "-F", str(store),
    ]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code:  # study printed why; records already written stay, nothing half-written is added
        sys.exit(f"accuracy_per_time: the {protocol} run failed (exit {code}); see above")
    (rec,) = [r for r in read_file_store(store) if r.id not in before]
    return curve_record(rec, args, protocol)


def curve_record(rec, args, protocol: str) -> dict:
    """The run's test top-1 after each epoch against its cumulative training time."""

    def values(name):
        return [v for _, v in rec.metric(name)]

    train_seconds = list(accumulate(values("train_seconds")))
    images = list(accumulate(values("train_images")))
    outside = [e - t for e, t in zip(values("epoch_seconds"), values("train_seconds"), strict=True)]
    points = [
        {"epoch": epoch, "train_seconds": round(s, 2), "train_images": int(n),
         "test_top1": top1, "test_top5": top5}
        for epoch, s, n, top1, top5 in zip(
            [e for e, _ in rec.metric("test_top1")], train_seconds, images,
            values("test_top1"), values("test_top5"), strict=True,
        )
    ]  # fmt: skip
    # The first point at or above the target, and its time (None: not reached in the budget).
    reached = next((p for p in points if p["test_top1"] >= args.target), None)
    config = rec.config
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "protocol": protocol,
        "image_size": config["image_size"],
        "batch_size": config["batch_size"],
        "epochs_planned": config["epochs"],
        "train_count": rec.info["dataset"]["train_count"],
        "test_count": rec.info["dataset"]["test_count"],
        "device": rec.info["training"]["device"],
        "device_name": rec.info["training"]["device_name"],
        "budget_s": args.budget,
        "stopped_by_budget": rec.info["training"]["stopped_by_budget"],
        "train_seconds": points[-1]["train_seconds"],
        "outside_budget_seconds": round(sum(outside), 2),  # evaluation and precise BN
        "test_top1": points[-1]["test_top1"],
        "test_top5": points[-1]["test_top5"],
        "target_top1": args.target,
        "seconds_to_target": reached and reached["train_seconds"],
        "curve": points,
        "run_id": rec.id,
        "date": dt.date.today().isoformat(),
        "machine": args.machine,
    }


def parse_epochs(text: str) -> dict[str, int]:
    """'paper=25,fast=5' -> {'paper': 25, 'fast': 5}."""
    epochs = {}
    for item in filter(None, text.split(",")):
        protocol, _, n = item.partition("=")
        if not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r} is invalid; expected PROTOCOL=EPOCHS with EPOCHS >= 1, e.g. fast=5"
            )
        epochs[protocol] = int(n)
    return epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--protocol", default="paper,fast", help="comma-separated")
    parser.add_argument(
        "--epochs", type=parse_epochs, default={}, help="per protocol, e.g. paper=25,fast=5"
    )
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training")
    parser.add_argument("--target", type=float, default=0.8081, help="test top-1 to time")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default="benchmarks/runs", help="file store for the runs")
    parser.add_argument("--machine", default=platform.node(), help="a name for this machine")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON lines")
    parser.add_argument("extra", nargs="*", help="more config updates, e.g. test_limit=1000")
    args = parser.parse_args()
    epochs = args.epochs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.date.today().isoformat()}-{args.machine}-accuracy-per-time.jsonl"
    records = []
    for protocol in args.protocol.split(","):
        record = run_protocol(args, protocol, epochs.get(protocol), Path(args.store))
        records.append(record)
        with path.open("a") as f:  # each protocol's record lands as soon as it is measured
            f.write(json.dumps(record) + "\n")

    print(f"\n{args.model} on {args.dataset}, {args.budget:g} s of training each ({path})")
    for r in records:
        print(f"\n{r['protocol']} ({r['image_size']} px, batch {r['batch_size']}):")
        print(f"  {'epoch':>5} {'train s':>8} {'images':>8} {'top-1':>7} {'top-5':>7}")
        for p in r["curve"]:
            print(
                f"  {p['epoch']:>5} {p['train_seconds']:>8.1f} {p['train_images']:>8} "
                f"{p['test_top1']:>7.4f} {p['test_top5']:>7.4f}"
            )
        reached = r["seconds_to_target"]
        print(
            f"  top-1 {r['test_top1']:.4f} after {r['train_seconds']:.1f} s of training "
            f"(+{r['outside_budget_seconds']:.1f} s evaluating); target {r['target_top1']}: "
            + (f"reached after {reached:.1f} s" if reached is not None else "not reached")
        )


if __name__ == "__main__":
    main()
