"""Training throughput: study's device-resident pipeline against the seed's per-image pipeline.

For one model, data set, protocol and device, in one process and one run, this measures
  (a) study: the uint8 data set on the device, batches index-sliced from it and resized /
      normalised there, bf16 autocast and channels_last on CUDA;
  (b) the seed's pipeline: torchvision per-image transforms (PIL resize, ToTensor, Normalize)
      in a DataLoader with worker processes, fp32, NCHW;
on the same model, device and images, and prints both rates, their ratio, and the share of step
time spent outside the model's forward/backward/optimizer step (the data path). On CUDA it also
measures a large bf16 matrix product and reports the share of that arithmetic bound reached.

    python benchmarks/benchmark.py --model resnet50 --dataset cifar10 --protocol paper \
        --data-root ../shared/data --out benchmarks/results

Each run appends one JSON record per configuration to OUT/<date>-<machine>.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from study.engine import split_outputs
from study.experiment import make_optimizer
from study.loader import BatchTransform, DeviceSplit
from study.modelstats import count_macs
from study.registry import registry
from study.specs import ModelOptions


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def config_for(model: str, dataset: str, protocol: str, image_size: int | None) -> dict:
    """The resolved study config of `python -m study run with <protocol> model=... dataset=...`."""
    from study.experiment import ex

    run = ex._create_run(
        "print_config",
        {"model": model, "dataset": dataset, **({"image_size": image_size} if image_size else {})},
        [protocol],
        {},
        {},
        {"--loglevel": "ERROR"},
    )
    return dict(run.config)  # resolved by the experiment's config hook


def build(config: dict, num_classes: int, in_channels: int, device, channels_last: bool):
    spec = registry().model(config["model"])
    options = ModelOptions(
        num_classes=num_classes,
        image_size=config["image_size"],
        in_channels=in_channels,
        head=config["head"],
        aux_logits=config["aux_logits"],
        protocol=config["protocol"],
    )
    torch.manual_seed(0)
    model = spec.factory(options).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, spec


def timed_steps(model, optimizer, criterion, batches, device, steps, warmup, autocast_dtype):
    """Run warmup + steps training steps; return (images/s, data share) over the timed steps.

    Data time is from asking for a batch until it is on the device; compute time is the
    forward, backward and optimizer step, with the device synchronised around each phase.
    """
    model.train()
    data_s = compute_s = 0.0
    images = 0
    it = iter(batches)
    for step in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        inputs, labels = next(it)
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        sync(device)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, aux = split_outputs(model(inputs))
            loss = criterion(logits, labels)
            if aux is not None:
                loss = loss + 0.4 * criterion(aux, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
        if step >= warmup:
            data_s += t1 - t0
            compute_s += t2 - t1
            images += len(labels)
    total = data_s + compute_s
    return images / total, data_s / total


def endless(make_iter):
    while True:
        yield from make_iter()


def study_batches(images, labels, config, mean, std, in_channels, device, batch):
    split = DeviceSplit(images, labels, device)
    transform = BatchTransform(
        config["image_size"], mean, std, in_channels, augment=config["augment"],
        channels_last=device.type == "cuda",
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    return endless(lambda: split.batches(batch, transform, train=True, generator=generator))


class SeedStyleDataset(torch.utils.data.Dataset):
    """The seed's data path: one PIL image at a time through torchvision transforms."""

    def __init__(self, images, labels, size, mean, std, in_channels):
        from torchvision import transforms

        self.images, self.labels = images, labels
        steps = [transforms.Resize((size, size))]
        if images.shape[-1] == 1 and in_channels == 3:
            steps.append(transforms.Grayscale(num_output_channels=3))
            mean, std = mean * 3, std * 3
        steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
        self.transform = transforms.Compose(steps)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        array = self.images[i]
        image = Image.fromarray(array[:, :, 0] if array.shape[-1] == 1 else array)
        return self.transform(image), int(self.labels[i])


def seed_batches(images, labels, config, mean, std, in_channels, device, batch, workers):
    dataset = SeedStyleDataset(images, labels, config["image_size"], mean, std, in_channels)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
    )  # fmt: skip
    return endless(lambda: iter(loader))


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matrix-product rate: the arithmetic ceiling on this device."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def load_images(dataset: str, data: str, data_root: str | None, n: int, size_hint: int):
    """(uint8 NHWC images, labels, mean, std, native size) from real files or synthetic."""
    spec = registry().dataset(dataset)
    if data == "synthetic":
        rng = np.random.default_rng(0)
        shape = (n, spec.image_size, spec.image_size, spec.channels)
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = rng.integers(0, spec.num_classes, n)
        return images, labels, [0.5] * spec.channels, [0.25] * spec.channels, spec.num_classes
    from study.data import prepare, stratified_subset

    prepared = prepare(spec, Path(data_root or os.environ.get("STUDY_DATA_ROOT", ".")))
    idx = stratified_subset(prepared.train.labels, n, 0)
    images = np.ascontiguousarray(prepared.train.images[idx])
    return images, prepared.train.labels[idx], prepared.mean, prepared.std, prepared.num_classes


def benchmark(args, model_name: str, protocol: str, image_size: int | None) -> dict:
    device = torch.device(args.device)
    config = config_for(model_name, args.dataset, protocol, image_size)
    batch = args.batch_size or config["batch_size"]
    n = max(batch * (args.steps + args.warmup + 2), batch * 4)
    images, labels, mean, std, num_classes = load_images(
        args.dataset, args.data, args.data_root, n, config["image_size"]
    )
    spec = registry().model(model_name)
    in_channels = images.shape[-1] if spec.in_channels is None else spec.in_channels
    cuda = device.type == "cuda"
    criterion = torch.nn.CrossEntropyLoss()

    # (a) study's pipeline, as `study run` trains.
    model, _ = build(config, num_classes, in_channels, device, channels_last=cuda)
    optimizer = make_optimizer(config, model, fused=cuda)
    rate, share = timed_steps(
        model, optimizer, criterion,
        study_batches(images, labels, config, mean, std, in_channels, device, batch),
        device, args.steps, args.warmup, torch.bfloat16 if cuda else None,
    )  # fmt: skip
    del model, optimizer

    # (b) the seed's pipeline on the same model, device and images: fp32, NCHW.
    model, _ = build(config, num_classes, in_channels, device, channels_last=False)
    optimizer = make_optimizer(config, model)
    base_rate, base_share = timed_steps(
        model, optimizer, criterion,
        seed_batches(images, labels, config, mean, std, in_channels, device, batch, args.workers),
        device, args.steps, args.warmup, None,
    )  # fmt: skip

    record = {
        "model": model_name,
        "dataset": args.dataset,
        "protocol": protocol,
        "image_size": config["image_size"],
        "batch_size": batch,
        "data": args.data,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "images_per_s": round(rate, 2),
        "baseline_images_per_s": round(base_rate, 2),
        "ratio": round(rate / base_rate, 3),
        "data_share": round(share, 4),
        "baseline_data_share": round(base_share, 4),
        "steps": args.steps,
        "loader_workers": args.workers,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "date": dt.date.today().isoformat(),
        "machine": args.machine,
    }
    if cuda:
        macs = count_macs(model, config["image_size"], in_channels)
        tflops = args.ceiling_tflops
        bound = tflops * 1e12 / (3 * 2 * macs)  # training ~ 3 forward passes, 2 FLOPs per MAC
        record.update(
            matmul_tflops=round(tflops, 1),
            arithmetic_bound_images_per_s=round(bound, 1),
            bound_share=round(rate / bound, 4),
        )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50", help="one or more, comma separated")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--protocol", default="paper", help="paper, fast, or both: paper,fast")
    parser.add_argument("--image-size", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--data", choices=("real", "synthetic"), default="real")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--machine", default=platform.node(), help="a name for this machine")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON lines")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.ceiling_tflops = matmul_tflops(device) if device.type == "cuda" else None
    if device.type == "cuda":
        print(f"bf16 matmul ceiling: {args.ceiling_tflops:.0f} TFLOP/s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.date.today().isoformat()}-{args.machine}.jsonl"
    for model_name in args.model.split(","):
        for protocol in args.protocol.split(","):
            r = benchmark(args, model_name, protocol, args.image_size)
            line = (
                f"{r['model']:<13} {r['dataset']:<13} {r['protocol']:<5} {r['image_size']:>3}px "
                f"study {r['images_per_s']:>9.1f} img/s (data {100 * r['data_share']:4.1f}%)  "
                f"seed-style {r['baseline_images_per_s']:>8.1f} img/s "
                f"(data {100 * r['baseline_data_share']:4.1f}%)  ratio {r['ratio']:.2f}"
            )
            if "bound_share" in r:
                line += f"  {100 * r['bound_share']:.1f}% of the arithmetic bound"
            print(line, flush=True)
            with path.open("a") as f:
                f.write(json.dumps(r) + "\n")
    print(f"records appended to {path}")


if __name__ == "__main__":
    main()
