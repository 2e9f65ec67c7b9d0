"""The Sacred experiment: config, the named protocols, validation, and the run itself.

Sacred is the edge: this module turns a config into calls of the plain functions in
`study.data`, `study.loader`, `study.build` (model, optimizer, schedule), `study.engine` and
`study.record`. The settings are declared in `study.settings`, the protocols' rules in
`study.protocols`.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

from sacred import Experiment
from sacred.host_info import host_info_gatherer
from sacred.utils import apply_backspaces_and_linefeeds

import study
from study import protocols, sacred_api, settings
from study.build import (
    build_model,
    check_model,
    input_channels,
    make_optimizer,
    make_scheduler,
    schedule_warmup,
)
from study.errors import ConfigError
from study.identity import PLACE_KEYS

DEVICES = ("auto", "cpu", "cuda")
# Each setting's type and range: study.settings.VALID (checked in resolve_config).
OPTIMIZERS, SCHEDULES, HEADS = settings.OPTIMIZERS, settings.SCHEDULES, settings.HEADS
# A decaying schedule shorter than this many steps gets a warning before the run.
MIN_SCHEDULE_STEPS = 100
# Rank r of a torchrun run seeds its global generator (dropout) with seed + r * this, so ranks
# draw different masks and rank 0 draws what a single process draws.
RANK_SEED_STRIDE = 1_000_003

# Keys a resumed run may change: how long it trains, and where it runs (identity.PLACE_KEYS).
RESUMABLE_KEYS = ("epochs", "time_budget", "stop_after", *PLACE_KEYS)


@host_info_gatherer("study")
def _host_libraries():
    import torch
    import torchvision

    info = {
        "study": study.__version__,
        # str(): torch's version is a TorchVersion object, which Sacred would pickle.
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


ex = Experiment("study", save_git_info=False, additional_host_info=[_host_libraries])
for _package in ("torch", "torchvision", "numpy", "pluggy"):
    ex.add_package_dependency(_package, version(_package))
# Progress bars redraw with \r: keep only the final state of each line in captured output.
ex.captured_out_filter = apply_backspaces_and_linefeeds


# Every setting and its default: study.settings, the one table (help and the README come from it).
sacred_api.add_documented_config(ex, settings.defaults, {s.name: s.help for s in settings.SETTINGS})


# The named configs only name the protocol: study.protocols holds what each one sets, and the
# config hook fills every key a run leaves null from it.


@ex.named_config
def paper():
    # The seed study's protocol, which a run with no named config follows too (PAPER).
    protocol = "paper"


@ex.named_config
def fast():
    # A modern protocol for small images at their native size (FAST).
    protocol = "fast"


@ex.config_hook
def resolve_and_validate(config, command_name, logger):
    """Fill in protocol defaults and reject bad values before any work (or any record)."""
    return resolve_config(config)


def resolve_config(config: dict) -> dict:
    """Validate `config` and return the values that replace its nulls: the protocol's (see
    study.protocols) and the model's (image_size)."""
    from study.registry import registry

    reg = registry()
    for key, table in (("model", reg.models), ("dataset", reg.datasets)):
        if config[key] is None:
            raise ConfigError(
                f"{key} is required, e.g. `with {key}=...`; registered: {', '.join(table)}"
            )
    model_spec = reg.model(config["model"])
    data_spec = dataset_spec(config)

    settings.VALID["protocol"].check("protocol", config["protocol"])
    protocol = protocols.PROTOCOLS[config["protocol"]]
    if config["epochs"] is None and protocol is protocols.PAPER and not data_spec.paper_epochs:
        raise ConfigError(
            f"dataset {data_spec.name} declares no epochs for the paper protocol "
            "(DatasetSpec.paper_epochs); set epochs=N"
        )
    fills = protocols.resolve(protocol, model_spec, data_spec, config)
    config = {**config, **fills}  # validated below as one

    settings.check_values(config)  # each value against its declared type and range
    processes = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's
    if config["batch_size"] % processes:
        b = config["batch_size"]
        lower, upper = b // processes * processes, -(-b // processes) * processes
        raise ConfigError(
            f"batch_size={b} does not split evenly over {processes} processes; "
            f"use a multiple of {processes}" + (f", e.g. {lower} or {upper}" if lower else "")
        )
    from study.record import usable_cpus

    cpus = usable_cpus()
    if config["num_workers"] > (cpus or 1):
        raise ConfigError(
            f"num_workers={config['num_workers']} is invalid; this machine has {cpus} CPUs "
            f"for decoding, so use 0..{cpus}"
        )
    device = config["device"]
    if not (device in DEVICES or (isinstance(device, str) and device.startswith("cuda:"))):
        raise ConfigError(f"device={device!r} is invalid; expected auto, cpu, cuda or cuda:N")

    epochs, stop_after = config["epochs"], config["stop_after"]
    if stop_after is not None and stop_after > epochs:
        raise ConfigError(
            f"stop_after={stop_after} is invalid; expected 1..{epochs} (the run's epochs): it "
            "trains that many epochs of the schedule and stops"
        )
    if config["pretrained"] is True and not model_spec.pretrained_weights:
        raise ConfigError(
            f"pretrained=True is invalid: model {model_spec.name} declares no pretrained "
            "weights; use pretrained=False or a path to a weights file"
        )
    if config["head"] == "append" and not model_spec.imagenet_head:
        raise ConfigError(
            f"head='append' is invalid: model {model_spec.name} has no 1000-way ImageNet head "
            "to append to; use head=replace"
        )

    aux = config["aux_logits"]
    if aux and not model_spec.aux_logits:
        raise ConfigError(
            f"aux_logits=True is invalid: model {model_spec.name} has no auxiliary head"
        )

    size = config["image_size"]
    minimum = model_spec.minimum_size(aux, protocol.name)
    if size is None:  # the protocol's size, enlarged to the model's minimum where needed
        size = max(model_spec.default_input_size(protocol.name, data_spec.image_size), minimum)
    else:
        settings.integer(1).check("image_size", size)
    if size < minimum:
        which = f"{model_spec.name} with aux_logits" if aux else model_spec.name
        hint = (
            " (or set aux_logits=False for its "
            f"{model_spec.minimum_size(False, protocol.name)} px minimum)"
        )
        raise ConfigError(
            f"image_size={size} is too small for {which}; it needs at least {minimum} px"
            + (hint if aux else "")
        )
    return {**fills, "image_size": size}


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is unavailable: no CUDA device; use device=cpu")
    return torch.device(name)


def dataset_spec(config: dict):
    """The run's data set spec: the registered one, or, for a data set that describes itself
    from its files (DatasetSpec.describe, e.g. image_folder), the one for this data_root."""
    from study.registry import registry

    spec = registry().dataset(config["dataset"])
    if spec.describe is not None:
        spec = spec.describe(Path(config["data_root"]).expanduser(), config)
    return spec


def prepare_data(config: dict):
    """Find (or download) the data set and build its cache. Safe to call twice: cached."""
    from study.data import prepare

    spec = dataset_spec(config)
    return spec, prepare(
        spec,
        Path(config["data_root"]).expanduser(),
        download=config["download"],
        workers=config["num_workers"],
    )


def preflight(config: dict) -> None:
    """Work that can fail on bad input, done before the run is recorded: data present and
    decoded, model buildable with these options (pretrained weights found)."""
    from study import distributed, loader
    from study.registry import registry

    spec, prepared = prepare_data(config)
    model_spec = registry().model(config["model"])
    world = distributed.from_environment()
    device = pick_device(config["device"])
    if device.type == "cuda" and world.distributed:
        device = pick_device(f"cuda:{world.local_rank}")
    check_model(config, model_spec, prepared, device)
    train_idx, _, _ = select_indices(config, prepared, world)
    for warning in (
        schedule_warning(config, len(train_idx) * world.size),
        amp_warning(config, device),
    ):
        if warning:
            print(warning, file=sys.stderr, flush=True)
    # The data fits where data_on_device says (or somewhere, for auto), or stop now.
    loader.data_on_device(config["data_on_device"], data_bytes(config, prepared, world), device)


# Keys that are no departure from a protocol, as the settings table declares them.
NOT_DEPARTURES = tuple(s.name for s in settings.SETTINGS if not s.departs)


def protocol_departures(config: dict) -> dict:
    """{key: {"value": this run's, "protocol": the named protocol's}} for every key in which
    this run departs from the protocol its record names (the `paper` or `fast` named config,
    resolved for the same model and data set). A batch-scaled learning rate is compared with
    the rule at the run's own batch size (the batch size departs, not the rule), and a data
    set that declares no paper epochs has none to depart from."""
    from study.registry import registry

    # A data set that describes itself from its files is the same files under the protocol.
    updates = {k: config[k] for k in ("model", "dataset", "data_root", "folder_image_size")}
    reg = registry()
    if config["protocol"] == "paper" and not reg.dataset(config["dataset"]).paper_epochs:
        updates["epochs"] = config["epochs"]
    reference = sacred_api.create_run(
        ex, "print_config", updates, [config["protocol"]], {"--loglevel": "ERROR"}
    ).config
    protocol = protocols.PROTOCOLS[config["protocol"]]
    reference["lr"] = protocols.lr_for(protocol, reg.model(config["model"]), config["batch_size"])
    return {
        key: {"value": config.get(key), "protocol": reference[key]}
        for key in sorted(reference)
        if key not in NOT_DEPARTURES and config.get(key) != reference[key]
    }


def schedule_warning(config: dict, train_count: int, world_size: int = 1) -> str | None:
    """One line about the schedule a run is about to train, or None: a decaying schedule too
    short to train (under MIN_SCHEDULE_STEPS steps), and the images drop_last leaves out."""
    from study.loader import batch_slices

    slices = batch_slices(train_count, config["batch_size"], True, config["drop_last"])
    per_epoch = len(slices)
    steps = config["epochs"] * max(1, per_epoch)
    notes = []
    dropped = train_count - sum(b - a for a, b in slices)
    if config["drop_last"] and dropped:
        notes.append(
            f"drop_last leaves out the last {dropped} of {train_count} training images in each "
            "epoch's order (one batch shape; drop_last=false keeps them)"
        )
    if config["schedule"] != "constant" and steps < MIN_SCHEDULE_STEPS:
        warmup = protocols.warmup_steps(steps, config["warmup"], config["warmup_min_steps"])
        notes.append(
            f"schedule={config['schedule']} over {steps} steps ({config['epochs']} epochs of "
            f"{per_epoch} batches, {warmup} of warm-up to lr {config['lr']:g}) is short: "
            "the health rule will say if the run learns nothing; give more epochs or images"
        )
    return ("warning: " + "; ".join(notes)) if notes else None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN sees it."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_warning(config: dict, device, has_bf16=cpu_has_bf16) -> str | None:
    """One line when amp=true asks a CPU without bf16 instructions for bf16 autocast: oneDNN
    then emulates it (measured on a 2-core AVX2 EPYC, VGG-16 at 32 px: over 60 s a step of 128
    against 1.9 s in fp32), a cost nobody asking for speed expects."""
    if config["amp"] is not True or device.type != "cpu" or has_bf16():
        return None
    return (
        "warning: amp=true on a CPU without bf16 instructions (no AVX512-BF16 or AMX): bf16 "
        "autocast is emulated here, many times slower than fp32; amp=auto trains in fp32 on "
        "the CPU"
    )


def checkpoint_path(run) -> Path | None:
    from sacred.observers import FileStorageObserver

    if run.config["checkpoint_dir"]:
        run_id = sacred_api.run_id(run)
        return Path(run.config["checkpoint_dir"]) / str(run_id or "unobserved") / "checkpoint.pt"
    for observer in run.observers:
        if isinstance(observer, FileStorageObserver) and observer.dir:
            return Path(observer.dir) / "checkpoint.pt"
    if sacred_api.run_id(run) is not None:
        return Path("checkpoints") / str(sacred_api.run_id(run)) / "checkpoint.pt"
    return None


@ex.main
def run(_run, _config):
    """Train and evaluate one model on one data set, recording everything in the run."""
    return train_and_evaluate(_run, dict(_config))


def select_indices(config: dict, data, world):
    """(this rank's train indices, this rank's test indices, every test index in evaluation
    order): the seeded subsets of `train_limit` / `test_limit`, sharded over torchrun's ranks."""
    import numpy as np

    from study.data import stratified_subset

    seed = config["seed"]
    train_idx = stratified_subset(data.train.labels, config["train_limit"], seed)
    test_idx = stratified_subset(data.test.labels, config["test_limit"], seed)
    if not world.distributed:
        return train_idx, test_idx, test_idx
    # Each rank holds its own shard; equal train shards keep the ranks' steps in lockstep.
    train_idx = train_idx[: len(train_idx) // world.size * world.size]
    test_shards = [test_idx[r :: world.size] for r in range(world.size)]
    # Evaluation gathers the shards in rank order.
    return train_idx[world.rank :: world.size], test_shards[world.rank], np.concatenate(test_shards)


def data_bytes(config: dict, data, world) -> int:
    """Bytes of uint8 images one process holds for a run: its train shard and test shard."""
    train_idx, my_test, _ = select_indices(config, data, world)
    per_image = math.prod(data.train.images.shape[1:])
    return per_image * (len(train_idx) + len(my_test))


def build_setup(config: dict, data, device, world, model_spec) -> tuple:
    """The model, optimizer, schedule, data splits and transforms of a resolved config, on
    `device`, as `study run` trains them; `benchmarks/benchmark.py` builds through it too.
    Returns (TrainingSetup, the model's stats, every test index in evaluation order)."""
    import torch

    from study import engine, loader
    from study.modelstats import model_stats

    seed = config["seed"]
    train_idx, my_test, test_idx = select_indices(config, data, world)
    on_device = loader.data_on_device(
        config["data_on_device"], data_bytes(config, data, world), device
    )
    train = loader.make_split(
        data.train.images[train_idx], data.train.labels[train_idx], device, on_device
    )
    test = loader.make_split(
        data.test.images[my_test], data.test.labels[my_test], device, on_device
    )
    batch_size = config["batch_size"] // world.size  # resolve_config checked it divides

    # Class count, size and channels as the files hold them (a plugin's spec gives the official).
    num_classes = data.num_classes
    in_channels = input_channels(model_spec, data)
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = build_model(config, model_spec, data)
    stats = model_stats(model, config["image_size"], in_channels)
    # Dropout (and anything else drawn from the global generator) differs between ranks; rank 0
    # keeps `seed`, so one process trains exactly as before.
    torch.manual_seed(seed + RANK_SEED_STRIDE * world.rank)
    cuda = device.type == "cuda"
    if world.distributed and config["sync_bn"]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cuda:
        torch.backends.cudnn.benchmark = True
    # Channels-last on every device: cuDNN's and oneDNN's fast convolution layout (measured on a
    # 2-core EPYC, batch 128 at 32 px: ResNet-50 10.7 -> 15.2 images/s in fp32, 28 -> 36 in bf16).
    model = model.to(device, memory_format=torch.channels_last)

    # Pretrained weights expect ImageNet statistics; from scratch, the data set's own.
    imagenet = (loader.IMAGENET_MEAN, loader.IMAGENET_STD)
    mean, std = imagenet if config["pretrained"] else (data.mean, data.std)
    if len(mean) != data.channels and data.channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    size = config["image_size"]
    test_transform = loader.BatchTransform(size, mean, std, in_channels, channels_last=True)
    train_transform = loader.BatchTransform(
        size, mean, std, in_channels, augment=config["augment"], channels_last=True
    )
    optimizer = make_optimizer(config, model, fused=cuda)
    steps_per_epoch = train.num_batches(batch_size, train=True, drop_last=config["drop_last"])
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    warmup = schedule_warmup(config, steps_per_epoch)
    autocast_dtype = (
        torch.bfloat16 if config["amp"] is True or (config["amp"] == "auto" and cuda) else None
    )
    if world.distributed:
        # No buffer broadcast: BatchNorm statistics are averaged over the ranks before each
        # evaluation (distributed.average_buffers), which is what a broadcast would approximate.
        model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if cuda else None,
            broadcast_buffers=False,
            gradient_as_bucket_view=True,
        )
        if config["grad_compression"] == "bf16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    compiled = None
    if config["compile"]:
        compiled = config["compile_mode"]
        # Static shapes: the epoch's last, smaller batch is one more graph, not a dynamic one.
        model = torch.compile(model, mode=compiled, dynamic=False)
    setup = engine.TrainingSetup(
        model=model,
        optimizer=optimizer,
        criterion=torch.nn.CrossEntropyLoss(),
        train_criterion=torch.nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"]),
        scheduler=scheduler,
        train=train,
        test=test,
        train_transform=train_transform,
        test_transform=test_transform,
        epochs=config["epochs"],
        batch_size=batch_size,
        num_classes=num_classes,
        # Each rank shuffles and augments its own shard with its own stream.
        seed=seed * 1000 + world.rank if world.distributed else seed,
        aux_weight=model_spec.aux_weight,
        precise_bn=config["precise_bn"] // world.size,
        autocast_dtype=autocast_dtype,
        time_budget=config["time_budget"],
        stop_after=config.get("stop_after"),
        progress=world.is_main,
        compiled=compiled,
        grad_clip=config["grad_clip"],
        drop_last=config["drop_last"],
        warmup_steps=warmup,
        aux_logits=config["aux_logits"],
        health_stop=config["health_stop"],
        checkpoint_every=config.get("checkpoint_every"),
    )
    return setup, stats, test_idx


def train_and_evaluate(run, config: dict) -> dict:
    from study import distributed, engine, loader, record
    from study.registry import registry

    reg = registry()
    model_spec = reg.model(config["model"])
    world = distributed.from_environment()
    device = distributed.start(world, pick_device(config["device"]))
    if world.is_main:  # rank 0 builds the data cache; the others then read it
        data_spec, data = prepare_data(config)
    distributed.barrier()
    if not world.is_main:
        data_spec, data = prepare_data(config)
    setup, stats, test_idx = build_setup(config, data, device, world, model_spec)

    # Rank 0 knows where the run's checkpoint lives; the others follow it (to resume).
    ckpt = distributed.broadcast(checkpoint_path(run) if world.is_main else None)
    setup.checkpoint = ckpt
    state = None
    if config["resume"] is not None and ckpt is not None and ckpt.exists():
        state = engine.load_checkpoint(ckpt, setup.model, setup.optimizer, setup.scheduler)
        check_resumable(state, config)
        if world.is_main:
            where = f"after epoch {state.epoch}"
            if state.partial:  # a mid-epoch checkpoint
                step = (state.partial.get("ranks") or [{}])[0].get("step")
                where = f"in epoch {state.partial.get('epoch')} after step {step}"
            print(f"resuming run {sacred_api.run_id(run)} {where} from {ckpt}", flush=True)
        # Metrics reach the store at Sacred's heartbeat, so a killed run may lack its last
        # epochs there; the checkpoint has them all. Readers keep one value per epoch.
        for metrics in state.history:
            record.log_epoch(run, metrics["epoch"], metrics)
    state = state or engine.TrainState()
    state.config = training_config(config)

    record.describe_run(
        run,
        config=config,
        model_spec=model_spec,
        data_spec=data_spec,
        data=data,
        train_count=len(setup.train) * world.size,
        test_count=len(test_idx),
        stats=stats,
        device=setup.device,
        checkpoint=ckpt,
        plugin=reg.models[model_spec.name].plugin,
        world_size=world.size,
        data_on_device=isinstance(setup.train, loader.DeviceSplit),
        departures=protocol_departures(config) if world.is_main else {},
        data_plugin=reg.datasets[data_spec.name].plugin,
        autocast=str(setup.autocast_dtype).removeprefix("torch.") if setup.autocast_dtype else None,
    )
    state.machines.append(record.machine_taking_over(run.info["training"], state))
    run.info["training"].update(
        machines=state.machines,
        steps_per_epoch=setup.train.num_batches(
            setup.batch_size, train=True, drop_last=setup.drop_last
        ),
        warmup_steps=setup.warmup_steps,
    )
    if world.is_main:
        sacred_api.save_now(run)  # the record names its checkpoint before the first epoch ends

    def on_epoch(epoch: int, metrics: dict) -> None:
        record.log_epoch(run, epoch, metrics)
        if "cpu_gflops" in run.info["training"]:  # outside the epoch's timing
            here = state.machines[-1]  # also in the checkpoints written from now on
            here["cpu_gflops"] = max(here["cpu_gflops"], record.cpu_matmul_gflops())
            run.info["training"]["cpu_gflops"] = here["cpu_gflops"]

    state, evaluation = engine.fit(setup, state, on_epoch=on_epoch)
    distributed.barrier()
    distributed.stop()
    return record.write_results(
        run,
        evaluation,
        state=state,
        test_images=data.test.images,
        test_indices=test_idx,
        class_names=data.class_names,
        gallery=config["gallery"] if world.is_main else 0,
    )


def training_config(config: dict) -> dict:
    """The part of the config that decides what is trained (kept in each checkpoint)."""
    return {k: v for k, v in config.items() if k not in RESUMABLE_KEYS}


def check_resumable(state, config: dict) -> None:
    saved = getattr(state, "config", None) or {}
    now = training_config(config)
    # A checkpoint written before a key became resumable still holds it: not compared.
    changed = sorted(k for k in saved if k not in RESUMABLE_KEYS and saved[k] != now.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(
            f"cannot resume: the config differs from the checkpoint's ({diffs}); "
            f"only {', '.join(RESUMABLE_KEYS)} may change"
        )
