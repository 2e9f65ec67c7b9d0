"""Training throughput of `study run`'s own step, beside the seed's pipeline and timm's step.

For each model, protocol, batch size and compile setting, in one process, this measures
  (a) study: the setup `study run` builds (`study.experiment.build_setup`: the uint8 split on
      the device, batches index-sliced and resized / normalised / augmented there, bf16
      autocast on CUDA (--amp auto, the default, as timm's step; `paper` itself trains in
      fp32: --amp protocol), channels_last and fused optimizers on CUDA, cuDNN autotuning,
      torch.compile when asked), stepped by `study.engine.train_step`, the function
      `study run` trains with;
  (b) the seed's pipeline on the same model and images: torchvision per-image transforms
      (PIL resize, ToTensor, Normalize) in a DataLoader with worker processes, NCHW, the
      default optimizer, once in fp32 (the seed) and once under bf16 autocast, so the table
      separates the data path's gain from the precision's;
  (c) timm's model of the same name in a plain bf16 channels_last step on a device-resident
      batch (where timm is installed and has the model; `paper` sizes only, timm's models
      have no small-image stems).
Steps are timed with CUDA events over N steps and one synchronisation at the end (the CPU
queues steps ahead of the GPU, as in a real run). It reports images/s, peak GPU memory, the
share of the measured bf16 matrix-product bound reached (training ~ 3 forward passes, 2 FLOPs
per multiply-add), and every host-device synchronisation that study's step made, with its
source line (`torch.cuda.set_sync_debug_mode("warn")` over a few extra steps).

    python benchmarks/benchmark.py --model resnet50 --dataset cifar10 --protocol paper \\
        --batch-size 100,256 --compile off,on --data synthetic --out benchmarks/results

Each configuration appends one JSON record to OUT/<date>-<machine>.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from study import engine, sacred_api
from study.build import make_optimizer
from study.data import Prepared, prepare
from study.distributed import World
from study.experiment import build_setup
from study.modelstats import count_macs
from study.registry import registry
from study.specs import Split

TIMM_NAMES = {"resnet50": "resnet50", "resnet18": "resnet18", "vgg16": "vgg16",
              "inception_v3": "inception_v3"}  # fmt: skip


class Timer:
    """Seconds between start() and stop(): CUDA events (one sync, at stop) or the host clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            return self.begin.elapsed_time(self.end) / 1000
        return time.perf_counter() - self.t0


def config_for(model: str, dataset: str, protocol: str, **updates) -> dict:
    """The resolved config of `python -m study run with <protocol> model=... dataset=...`."""
    from study.experiment import ex

    run = sacred_api.create_run(
        ex,
        "print_config",
        {"model": model, "dataset": dataset, **updates},
        [protocol],
        {"--loglevel": "ERROR"},
    )
    return dict(run.config)  # resolved by the experiment's config hook


def synthetic_data(dataset: str, n: int) -> Prepared:
    """Random uint8 images of the data set's native size and channels, as `prepare` returns."""
    spec = registry().dataset(dataset)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, spec.image_size, spec.image_size, spec.channels), np.uint8)
    labels = rng.integers(0, spec.num_classes, n)
    return Prepared(
        name=dataset, train=Split(images, labels), test=Split(images[:2], labels[:2]),
        class_names=list(spec.class_names), mean=[0.5] * spec.channels,
        std=[0.25] * spec.channels, sources=[], fingerprint="synthetic", cache_path=Path("."),
    )  # fmt: skip


def endless(make_iter):
    while True:
        yield from make_iter()


def study_rate(setup: engine.TrainingSetup, steps: int, warmup: int, sync_steps: int) -> dict:
    """Time `steps` of engine.train_step after `warmup`; then list the syncs of a few more."""
    device = setup.device
    g = torch.Generator(device=device).manual_seed(0)
    batches = endless(
        lambda: setup.train.batches(
            setup.batch_size, setup.train_transform, train=True, generator=g
        )
    )
    compile_s = engine.warm_up_compiled(setup) if setup.compiled else 0.0
    setup.model.train()
    for _ in range(warmup):
        engine.train_step(setup, *next(batches))
    timer = Timer(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timer.start()
    for _ in range(steps):
        engine.train_step(setup, *next(batches))
    seconds = timer.stop()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    # The data path alone: producing the same number of batches.
    timer.start()
    for _ in range(steps):
        next(batches)
    data_seconds = timer.stop()
    return {
        "images_per_s": steps * setup.batch_size / seconds,
        "step_ms": 1000 * seconds / steps,
        "data_share": data_seconds / seconds,
        "peak_memory_gib": peak,
        "compile_seconds": compile_s,
        "syncs": list_syncs(setup, batches, sync_steps),
    }


def list_syncs(setup, batches, steps: int) -> list[str]:
    """Every host-device synchronisation in `steps` training steps: 'file:line: message'."""
    if setup.device.type != "cuda" or steps <= 0:
        return []
    torch.cuda.synchronize(setup.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                engine.train_step(setup, *next(batches))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # torch warns once per process that the debug mode is a prototype: that notice is no sync.
    found = {
        f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0][:120]}"
        for w in caught
        if "synchroniz" in str(w.message) and "debug mode is a prototype" not in str(w.message)
    }
    return sorted(found)


class SeedStyleDataset(torch.utils.data.Dataset):
    """The seed's data path: one PIL image at a time through torchvision transforms."""

    def __init__(self, images, labels, size, mean, std, in_channels):
        from torchvision import transforms

        self.images, self.labels = images, labels
        steps = [transforms.Resize((size, size))]
        if images.shape[-1] == 1 and in_channels == 3:
            steps.append(transforms.Grayscale(num_output_channels=3))
            mean, std = list(mean) * 3, list(std) * 3
        steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
        self.transform = transforms.Compose(steps)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        array = self.images[i]
        image = Image.fromarray(array[:, :, 0] if array.shape[-1] == 1 else array)
        return self.transform(image), int(self.labels[i])


def seed_style_rate(config, data, model_spec, device, batch, steps, warmup, workers, bf16):
    """The seed's pipeline: DataLoader workers, NCHW, the default (unfused) optimizer."""
    from study.build import input_channels, model_options

    in_channels = input_channels(model_spec, data)
    dataset = SeedStyleDataset(
        data.train.images, data.train.labels, config["image_size"], data.mean, data.std,
        in_channels,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = model_spec.factory(model_options(config, data.num_classes, in_channels)).to(device)
    optimizer = make_optimizer(config, model)
    criterion = torch.nn.CrossEntropyLoss()
    dtype = torch.bfloat16 if bf16 else None

    def step(inputs, labels):
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, aux = engine.split_outputs(model(inputs))
            loss = criterion(logits, labels)
            if aux is not None:
                loss = loss + model_spec.aux_weight * criterion(aux, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    batches = endless(lambda: iter(loader))
    model.train()
    for _ in range(warmup):
        step(*next(batches))
    timer = Timer(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()  # wall clock: the data loader is part of what is measured
    for _ in range(steps):
        step(*next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del timer
    return steps * batch / (time.perf_counter() - start)


def timm_rate(model_name, image_size, num_classes, config, device, batch, steps, warmup):
    """timm's model of the same name, in a plain bf16 channels_last step (None: no timm)."""
    try:
        import timm
    except ImportError:
        return None
    name = TIMM_NAMES.get(model_name)
    if name is None or name not in timm.list_models():
        return None
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=num_classes, pretrained=False).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model, fused=cuda)
    criterion = torch.nn.CrossEntropyLoss()
    inputs = torch.randn(batch, 3, image_size, image_size, device=device)
    if cuda:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    dtype = torch.bfloat16 if cuda else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = criterion(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for _ in range(warmup):
        step()
    timer = Timer(device)
    timer.start()
    for _ in range(steps):
        step()
    return steps * batch / timer.stop()


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matrix-product rate: the arithmetic ceiling on this device."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    timer = Timer(device)
    timer.start()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / timer.stop() / 1e12


def load_data(args, n: int) -> Prepared:
    if args.data == "synthetic":
        return synthetic_data(args.dataset, n)
    spec = registry().dataset(args.dataset)
    root = Path(args.data_root or os.environ.get("STUDY_DATA_ROOT", "."))
    return prepare(spec, root, download=False)


def subset(data: Prepared, n: int, seed: int = 0) -> Prepared:
    """The first n images of a stratified, seeded subset (what train_limit would select)."""
    from study.data import stratified_subset

    idx = stratified_subset(data.train.labels, n, seed)
    train = Split(np.ascontiguousarray(data.train.images[idx]), data.train.labels[idx])
    return Prepared(**{**data.__dict__, "train": train})


def benchmark(args, model_name: str, protocol: str, batch: int, compiled: bool) -> dict:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    updates = {"batch_size": batch, "compile": compiled, "device": str(device),
               "test_limit": 2, "precise_bn": 0}  # fmt: skip
    if compiled:
        updates["compile_mode"] = args.compile_mode
    if args.image_size:
        updates["image_size"] = args.image_size
    if args.amp != "protocol":  # paper trains in fp32 (the seed's); bf16 compares with timm's
        updates["amp"] = {"auto": "auto", "bf16": True, "fp32": False}[args.amp]
    config = config_for(model_name, args.dataset, protocol, **updates)
    n = batch * max(args.steps + 2, 4)
    data = subset(load_data(args, n), n)
    model_spec = registry().model(model_name)
    setup, stats, _ = build_setup(config, data, device, World(), model_spec)
    setup.progress = False
    study = study_rate(setup, args.steps, args.warmup, args.sync_steps if cuda else 0)
    macs = count_macs(setup.plain_model, config["image_size"], setup.train_transform.out_channels)
    del setup
    if cuda:
        torch.cuda.empty_cache()

    record = {
        "model": model_name,
        "dataset": args.dataset,
        "protocol": protocol,
        "image_size": config["image_size"],
        "batch_size": batch,
        "compile": config["compile_mode"] if compiled else False,
        "data": args.data,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in study.items()},
        "gmacs_per_image": round(macs / 1e9, 3),
    }
    default_batch = config_for(model_name, args.dataset, protocol)["batch_size"]
    seed_style = batch == (args.baseline_batch or default_batch) and not compiled
    for precision in args.baseline.split(","):
        if (
            not seed_style
            or precision not in ("fp32", "bf16")
            or (precision == "bf16" and not cuda)
        ):
            continue
        rate = seed_style_rate(
            config, data, model_spec, device, batch, args.baseline_steps, args.baseline_warmup,
            args.workers, bf16=precision == "bf16",
        )  # fmt: skip
        suffix = "" if precision == "fp32" else "_bf16"
        record[f"baseline{suffix}_images_per_s"] = round(rate, 2)
        record[f"ratio{suffix}"] = round(study["images_per_s"] / rate, 3)
    if args.timm and protocol == "paper" and not compiled:
        rate = timm_rate(model_name, config["image_size"], data.num_classes, config, device,
                         batch, args.steps, args.warmup)  # fmt: skip
        if rate is not None:
            record.update(timm_images_per_s=round(rate, 2))
    if cuda:
        bound = args.ceiling_tflops * 1e12 / (3 * 2 * macs)
        record.update(
            matmul_tflops=round(args.ceiling_tflops, 1),
            arithmetic_bound_images_per_s=round(bound, 1),
            bound_share=round(study["images_per_s"] / bound, 4),
        )
    record.update(
        steps=args.steps,
        loader_workers=args.workers,
        torch=torch.__version__,
        cpu_threads=torch.get_num_threads(),
        date=dt.date.today().isoformat(),
        machine=args.machine,
    )
    return record


def describe(r: dict) -> str:
    line = (
        f"{r['model']:<12} {r['protocol']:<5} {r['image_size']:>3}px b{r['batch_size']:<4}"
        f"{' compiled' if r['compile'] else '':<9} study {r['images_per_s']:>9.1f} img/s"
    )
    if r.get("peak_memory_gib") is not None:
        line += f" ({r['peak_memory_gib']:.1f} GiB)"
    if "baseline_images_per_s" in r:
        line += f" | seed fp32 {r['baseline_images_per_s']:.1f} (x{r['ratio']:.2f})"
    if "baseline_bf16_images_per_s" in r:
        line += f" | seed bf16 {r['baseline_bf16_images_per_s']:.1f} (x{r['ratio_bf16']:.2f})"
    if "timm_images_per_s" in r:
        line += f" | timm {r['timm_images_per_s']:.1f}"
    if "bound_share" in r:
        line += f" | {100 * r['bound_share']:.1f}% of bound"
    if r.get("compile_seconds"):
        line += f" | compile {r['compile_seconds']:.0f} s"
    line += f" | syncs/step: {len(r['syncs'])}"
    for sync in r["syncs"]:
        line += f"\n    sync: {sync}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50", help="one or more, comma separated")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--protocol", default="paper", help="paper, fast, or both: paper,fast")
    parser.add_argument("--image-size", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--data", choices=("real", "synthetic"), default="real")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", default=None,
                        help="comma separated; default: the protocol's")  # fmt: skip
    parser.add_argument("--compile", default="off", help="off, on, or both: off,on")
    parser.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp32", "protocol"),
        default="auto",
        help="study's step in bf16 autocast on CUDA and fp32 on the CPU (auto, as timm's step "
        "on CUDA), bf16, fp32, or as the protocol says (paper: fp32)",
    )
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--baseline", default="fp32,bf16",
                        help="seed-style pipelines to run: fp32, bf16, both, or none")  # fmt: skip
    parser.add_argument("--baseline-batch", type=int, default=None,
                        help="their batch size (default: the protocol's)")  # fmt: skip
    parser.add_argument("--baseline-steps", type=int, default=None, help="default: --steps")
    parser.add_argument("--baseline-warmup", type=int, default=None, help="default: --warmup")
    parser.add_argument("--timm", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sync-steps", type=int, default=3, help="steps checked for syncs")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--machine", default=platform.node(), help="a name for this machine")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON lines")
    args = parser.parse_args()
    args.baseline_steps = args.baseline_steps or args.steps
    args.baseline_warmup = args.baseline_warmup if args.baseline_warmup is not None else args.warmup
    device = torch.device(args.device)
    args.ceiling_tflops = matmul_tflops(device) if device.type == "cuda" else None
    if device.type == "cuda":
        print(f"bf16 matmul ceiling: {args.ceiling_tflops:.0f} TFLOP/s", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.date.today().isoformat()}-{args.machine}.jsonl"
    compile_settings = [{"off": False, "on": True}[c] for c in args.compile.split(",")]
    for model_name in args.model.split(","):
        for protocol in args.protocol.split(","):
            default_batch = config_for(model_name, args.dataset, protocol)["batch_size"]
            batches = (
                [int(b) for b in args.batch_size.split(",")] if args.batch_size else [default_batch]
            )
            for batch in batches:
                for compiled in compile_settings:
                    r = benchmark(args, model_name, protocol, batch, compiled)
                    print(describe(r), flush=True)
                    with path.open("a") as f:
                        f.write(json.dumps(r) + "\n")
    print(f"records appended to {path}")


if __name__ == "__main__":
    main()
