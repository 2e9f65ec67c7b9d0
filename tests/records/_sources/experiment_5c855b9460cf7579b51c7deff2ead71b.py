"""The Sacred experiment: config, the `paper` named config, validation, and the run itself.

Sacred is the edge: this module turns a config into calls of the plain functions in
`study.data`, `study.loader`, `study.engine` and `study.record`.
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
from study import sacred_api
from study.errors import ConfigError
from study.identity import PLACE_KEYS
from study.specs import PROTOCOLS, ModelOptions

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "onecycle", "cosine")
HEADS = ("replace", "append")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAD_COMPRESSION = ("none", "bf16")
FAST_PRECISE_BN = 2000  # images
MAX_SEED = 2**32 - 1
# A one-cycle schedule shorter than this many steps gets a warning before the run.
MIN_ONECYCLE_STEPS = 100  # what NumPy's and torch's seeding accept
# Rank r of a torchrun run seeds its global generator (dropout) with seed + r * this, so ranks
# draw different masks and rank 0 draws what a single process draws.
RANK_SEED_STRIDE = 1_000_003

# Epochs of the fast protocol where `epochs` is not given (paper: the data set's own).
DEFAULT_EPOCHS = 10

# Keys a resumed run may change: how long it trains, and where it runs (identity.PLACE_KEYS).
RESUMABLE_KEYS = ("epochs", "time_budget", "stop_after", *PLACE_KEYS)


def default_data_root() -> str:
    if os.environ.get("STUDY_DATA_ROOT"):
        return os.environ["STUDY_DATA_ROOT"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "study", "data")


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


@ex.config
def config():
    model = None  # a registered model name (`study list`)
    dataset = None  # a registered data set name (`study list`)
    data_root = default_data_root()  # where data sets live, as torchvision lays them out
    download = True  # fetch missing data set files from their official location
    protocol = "paper"  # which input size column of the model to use: paper or fast
    epochs = None  # None: the protocol's epochs for the data set (paper: 6 / 25 / 30)
    time_budget = None  # seconds of training steps; training ends after the first step past it
    stop_after = None  # train only the first N epochs of the `epochs` schedule (a prefix)
    batch_size = 100
    lr = 0.0002
    optimizer = "adam"  # adam or sgd
    momentum = 0.9  # sgd only
    weight_decay = 0.0
    seed = 0
    image_size = None  # None: the model's default input size for the protocol
    pretrained = False  # True: torchvision's ImageNet weights; or a path to a weights file
    head = None  # replace the last layer, or append a Linear to it; None: the protocol's
    aux_logits = None  # None: train the auxiliary classifier where the model has one
    augment = None  # none, flip, crop, crop-flip; None: the protocol's (fast: crop, and flip)
    precise_bn = None  # training images that re-estimate BatchNorm statistics; None: protocol's
    schedule = "constant"  # learning rate: constant, onecycle (peak lr) or cosine, per step
    label_smoothing = 0.0
    amp = "auto"  # bf16 autocast: auto (on CUDA), true or false
    compile = False  # torch.compile the model
    compile_mode = "default"  # torch.compile's mode: default, reduce-overhead, max-autotune...
    data_on_device = "auto"  # hold the data on the device: auto (if it fits), true, false
    sync_bn = False  # torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    grad_compression = "none"  # torchrun: none, or bf16 gradients in the all-reduce
    train_limit = None  # a stratified, seeded subset of the training split
    test_limit = None  # a stratified, seeded subset of the test split
    device = "auto"  # auto, cpu, cuda or cuda:N
    num_workers = 0  # processes that decode a data set into its cache (first run only)
    gallery = 16  # how many confidently misclassified test images to keep
    checkpoint_dir = None  # None: the run's folder in the file store, else ./checkpoints/<id>
    resume = None  # a run id to continue from its last checkpoint


# Named configs set concrete values only: a value they set overrides what the config hook
# resolves, so keys left null for the hook (epochs, image_size, augment) stay unset here.


@ex.named_config
def paper():
    # The seed study's protocol, which a run with no named config follows too: Adam, lr 0.0002,
    # batch 100, no augmentation, 224 px (299 for Inception-V3), 6 / 25 / 30 epochs, the
    # ImageNet head kept plus one extra layer (head and precise_bn are resolved per model and
    # protocol by the config hook: append where the model has an ImageNet head; 0 images).
    protocol = "paper"
    optimizer = "adam"
    lr = 0.0002
    batch_size = 100
    weight_decay = 0.0
    schedule = "constant"
    label_smoothing = 0.0


@ex.named_config
def fast():
    # A modern protocol for small images: native resolution with a small-image stem, random
    # crop (and flip where the data set allows it) on the device, SGD with Nesterov momentum,
    # a one-cycle schedule, label smoothing and precise BatchNorm.
    protocol = "fast"
    optimizer = "sgd"
    lr = 0.1
    momentum = 0.9
    weight_decay = 0.0005
    batch_size = 128
    head = "replace"
    schedule = "onecycle"
    label_smoothing = 0.1
    aux_logits = False  # Inception-V3's auxiliary head needs 299 px


@ex.config_hook
def resolve_and_validate(config, command_name, logger):
    """Fill in protocol defaults and reject bad values before any work (or any record)."""
    return resolve_config(config)


def _int(config, key, minimum, allow_none=False):
    value = config[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        valid = f"an integer >= {minimum}" + (" or null" if allow_none else "")
        raise ConfigError(f"{key}={value!r} is invalid; expected {valid}")
    return value


def _float(config, key, positive):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}={value!r} is invalid; expected a number")
    if not math.isfinite(value):  # 1e999, nan from a JSON config
        raise ConfigError(f"{key}={value!r} is invalid; expected a finite number")
    if (positive and value <= 0) or value < 0:
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{key}={value!r} is invalid; expected a number {bound}")
    return float(value)


def _choice(config, key, choices):
    value = config[key]
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is invalid; expected one of: {', '.join(choices)}")
    return value


def resolve_config(config: dict) -> dict:
    """Validate `config` and return the values that replace its nulls (epochs, image_size...)."""
    from study.registry import registry

    reg = registry()
    for key, table in (("model", reg.models), ("dataset", reg.datasets)):
        if config[key] is None:
            raise ConfigError(
                f"{key} is required, e.g. `with {key}=...`; registered: {', '.join(table)}"
            )
    model_spec = reg.model(config["model"])
    data_spec = reg.dataset(config["dataset"])

    protocol = _choice(config, "protocol", PROTOCOLS)
    _choice(config, "optimizer", OPTIMIZERS)
    _choice(config, "schedule", SCHEDULES)
    if not 0 <= _float(config, "label_smoothing", positive=False) < 1:
        raise ConfigError(
            f"label_smoothing={config['label_smoothing']!r} is invalid; expected 0 <= x < 1"
        )
    if config["amp"] not in ("auto", True, False):
        raise ConfigError(f"amp={config['amp']!r} is invalid; expected auto, true or false")
    if not isinstance(config["compile"], bool):
        raise ConfigError(f"compile={config['compile']!r} is invalid; expected true or false")
    head = config["head"]
    if head is None:  # the seed's extra layer where the model has an ImageNet head to extend
        head = "append" if protocol == "paper" and model_spec.imagenet_head else "replace"
    _choice({"head": head}, "head", HEADS)
    precise_bn = config["precise_bn"]
    if precise_bn is None:  # the seed evaluated with BatchNorm's running averages as trained
        precise_bn = 0 if protocol == "paper" else FAST_PRECISE_BN
    _int({"precise_bn": precise_bn}, "precise_bn", 0)
    _choice(config, "compile_mode", COMPILE_MODES)
    _choice(config, "grad_compression", GRAD_COMPRESSION)
    if not isinstance(config["sync_bn"], bool):
        raise ConfigError(f"sync_bn={config['sync_bn']!r} is invalid; expected true or false")
    if config["data_on_device"] not in ("auto", True, False):
        raise ConfigError(
            f"data_on_device={config['data_on_device']!r} is invalid; expected auto, true or false"
        )
    from study.loader import AUGMENTATIONS

    augment = config["augment"]
    if augment is None and protocol == "fast":  # flip only where a mirror image keeps its class
        augment = "crop-flip" if data_spec.mirror_invariant else "crop"
    elif augment is None:
        augment = "none"
    _choice({"augment": augment}, "augment", AUGMENTATIONS)
    _float(config, "lr", positive=True)
    _float(config, "momentum", positive=False)
    _float(config, "weight_decay", positive=False)
    _int(config, "batch_size", 1)
    processes = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's
    if config["batch_size"] % processes:
        b = config["batch_size"]
        lower, upper = b // processes * processes, -(-b // processes) * processes
        raise ConfigError(
            f"batch_size={b} does not split evenly over {processes} processes; "
            f"use a multiple of {processes}" + (f", e.g. {lower} or {upper}" if lower else "")
        )
    if _int(config, "seed", 0) > MAX_SEED:
        raise ConfigError(f"seed={config['seed']} is invalid; expected 0 <= seed <= {MAX_SEED}")
    from study.record import usable_cpus

    cpus = usable_cpus()
    if _int(config, "num_workers", 0) > (cpus or 1):
        raise ConfigError(
            f"num_workers={config['num_workers']} is invalid; this machine has {cpus} CPUs "
            f"for decoding, so use 0..{cpus}"
        )
    _int(config, "gallery", 0)
    _int(config, "train_limit", 1, allow_none=True)
    _int(config, "test_limit", 1, allow_none=True)
    if config["time_budget"] is not None:
        _float(config, "time_budget", positive=True)
    if not isinstance(config["download"], bool):
        raise ConfigError(f"download={config['download']!r} is invalid; expected true or false")
    device = config["device"]
    if not (device in DEVICES or (isinstance(device, str) and device.startswith("cuda:"))):
        raise ConfigError(f"device={device!r} is invalid; expected auto, cpu, cuda or cuda:N")
    pretrained = config["pretrained"]
    if not isinstance(pretrained, bool | str):
        raise ConfigError(
            f"pretrained={pretrained!r} is invalid; expected true, false or a weights file path"
        )

    epochs = config["epochs"]
    if epochs is None and protocol == "paper":
        epochs = data_spec.paper_epochs
        if epochs is None:
            raise ConfigError(
                f"dataset {data_spec.name} declares no epochs for the paper protocol "
                "(DatasetSpec.paper_epochs); set epochs=N"
            )
    elif epochs is None:
        epochs = DEFAULT_EPOCHS
    else:
        epochs = _int(config, "epochs", 1)
    stop_after = _int(config, "stop_after", 1, allow_none=True)
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
    if head == "append" and not model_spec.imagenet_head:
        raise ConfigError(
            f"head='append' is invalid: model {model_spec.name} has no 1000-way ImageNet head "
            "to append to; use head=replace"
        )

    aux = config["aux_logits"]
    if aux is None:
        aux = model_spec.aux_logits
    elif not isinstance(aux, bool):
        raise ConfigError(f"aux_logits={aux!r} is invalid; expected true, false or null")
    elif aux and not model_spec.aux_logits:
        raise ConfigError(
            f"aux_logits=True is invalid: model {model_spec.name} has no auxiliary head"
        )

    size = config["image_size"]
    minimum = model_spec.minimum_size(aux, protocol)
    if size is None:  # the protocol's size, enlarged to the model's minimum where needed
        size = max(model_spec.default_input_size(protocol, data_spec.image_size), minimum)
    else:
        size = _int(config, "image_size", 1)
    if size < minimum:
        which = f"{model_spec.name} with aux_logits" if aux else model_spec.name
        hint = (
            " (or set aux_logits=False for its "
            f"{model_spec.minimum_size(False, protocol)} px minimum)"
        )
        raise ConfigError(
            f"image_size={size} is too small for {which}; it needs at least {minimum} px"
            + (hint if aux else "")
        )
    resume = config["resume"]
    if resume is not None and not isinstance(resume, int | str):
        raise ConfigError(f"resume={resume!r} is invalid; expected a run id")
    return {
        "head": head,
        "precise_bn": precise_bn,
        "epochs": epochs,
        "image_size": size,
        "aux_logits": aux,
        "augment": augment,
    }


def model_options(config: dict, num_classes: int, in_channels: int) -> ModelOptions:
    return ModelOptions(
        num_classes=num_classes,
        image_size=config["image_size"],
        in_channels=in_channels,
        pretrained=config["pretrained"],
        head=config["head"],
        aux_logits=config["aux_logits"],
        protocol=config["protocol"],
    )


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is unavailable: no CUDA device; use device=cpu")
    return torch.device(name)


def prepare_data(config: dict):
    """Find (or download) the data set and build its cache. Safe to call twice: cached."""
    from study.data import prepare
    from study.registry import registry

    spec = registry().dataset(config["dataset"])
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
    warning = schedule_warning(config, len(train_idx) * world.size)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    # The data fits where data_on_device says (or somewhere, for auto), or stop now.
    loader.data_on_device(config["data_on_device"], data_bytes(config, prepared, world), device)


# Keys that are no departure from a protocol: where a run ran (PLACE_KEYS), which repeat it is,
# and whether the same model was compiled.
NOT_DEPARTURES = (*PLACE_KEYS, "seed", "compile", "compile_mode")


def protocol_departures(config: dict) -> dict:
    """{key: {"value": this run's, "protocol": the named protocol's}} for every key in which
    this run departs from the protocol its record names (the `paper` or `fast` named config,
    resolved for the same model and data set)."""
    reference = sacred_api.create_run(
        ex,
        "print_config",
        {"model": config["model"], "dataset": config["dataset"]},
        [config["protocol"]],
        {"--loglevel": "ERROR"},
    ).config
    return {
        key: {"value": config.get(key), "protocol": reference[key]}
        for key in sorted(reference)
        if key not in NOT_DEPARTURES and config.get(key) != reference[key]
    }


def schedule_warning(config: dict, train_count: int, world_size: int = 1) -> str | None:
    """One line when a one-cycle schedule is too short to warm up (it tends to end with every
    prediction one class), with the numbers; None otherwise."""
    if config["schedule"] != "onecycle":
        return None
    per_epoch = max(1, math.ceil(train_count / config["batch_size"]))
    steps = config["epochs"] * per_epoch
    warm_up = int(0.3 * steps)  # OneCycleLR's default pct_start
    if steps >= MIN_ONECYCLE_STEPS:
        return None
    return (
        f"warning: schedule=onecycle over {steps} steps ({config['epochs']} epochs of "
        f"{per_epoch} batches) warms up to lr {config['lr']} in {warm_up} steps; schedules under "
        f"{MIN_ONECYCLE_STEPS} steps often collapse to one class: give more epochs or images, "
        "or a lower lr"
    )


def build_model(config: dict, model_spec, data):
    """The plugin's model for this config; whatever the plugin raises becomes one line."""
    from torch import nn

    from study.errors import PluginError, StudyError
    from study.registry import registry

    plugin = registry().models[model_spec.name].plugin
    try:
        model = model_spec.factory(
            model_options(config, data.num_classes, input_channels(model_spec, data))
        )
    except StudyError:
        raise
    except Exception as exc:
        raise PluginError(
            f"model {model_spec.name} (plugin {plugin}) failed to build: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if not isinstance(model, nn.Module):
        raise PluginError(
            f"model {model_spec.name} (plugin {plugin}): its factory returned "
            f"{type(model).__name__}, not a torch.nn.Module"
        )
    return model


def check_model(config: dict, model_spec, data, device) -> None:
    """The plugin contract, checked on the meta device before any work: one logit per class
    (and an auxiliary output of the same shape where the model has one), and one image's
    activations within the device's memory."""
    import torch

    from study import loader
    from study.engine import split_outputs
    from study.errors import PluginError
    from study.modelstats import forward_on_meta

    model = build_model(config, model_spec, data)
    size, channels = config["image_size"], input_channels(model_spec, data)
    try:
        outputs, elements = forward_on_meta(model, 2, size, channels)
    except Exception:  # an op without a meta kernel: the run itself will tell
        return
    classes = data.num_classes
    for what, out in zip(("output", "auxiliary output"), split_outputs(outputs), strict=True):
        if out is not None and tuple(out.shape) != (2, classes):
            raise PluginError(
                f"model {model_spec.name}: its {what} for a batch of 2 images has shape "
                f"{tuple(out.shape)}, expected (2, {classes}): one logit per class of "
                f"{data.name} (ModelOptions.num_classes)"
            )
    # fp32 activations kept for backward, at batch 1; the weights, gradients and optimizer
    # state come on top. A rough bound, but it turns an allocation of terabytes into a line.
    need = elements * 4
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = loader.available_host_memory()
    if need > free:
        fits = int(size * (free / need) ** 0.5)
        raise ConfigError(
            f"image_size={size}: one image through {model_spec.name} needs an estimated "
            f"{need / 2**30:.1f} GiB of activations, more than the {free / 2**30:.1f} GiB free "
            f"on {device}; about {fits} px or less would fit"
        )


def input_channels(model_spec, data) -> int:
    """What the model is built for: its own channel count, or the data's when it takes any."""
    return data.channels if model_spec.in_channels is None else model_spec.in_channels


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
        model = model.to(device, memory_format=torch.channels_last)
    else:
        model = model.to(device)

    # Pretrained weights expect ImageNet statistics; from scratch, the data set's own.
    imagenet = (loader.IMAGENET_MEAN, loader.IMAGENET_STD)
    mean, std = imagenet if config["pretrained"] else (data.mean, data.std)
    if len(mean) != data.channels and data.channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    size = config["image_size"]
    test_transform = loader.BatchTransform(size, mean, std, in_channels, channels_last=cuda)
    train_transform = loader.BatchTransform(
        size, mean, std, in_channels, augment=config["augment"], channels_last=cuda
    )
    optimizer = make_optimizer(config, model, fused=cuda)
    scheduler = make_scheduler(config, optimizer, train.num_batches(batch_size, train=True))
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
            print(
                f"resuming run {sacred_api.run_id(run)} after epoch {state.epoch} from {ckpt}",
                flush=True,
            )
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
    state, evaluation = engine.fit(
        setup, state, on_epoch=lambda epoch, metrics: record.log_epoch(run, epoch, metrics)
    )
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


def make_optimizer(config: dict, model, fused: bool = False):
    """Adam or SGD (Nesterov when momentum > 0); torch's fused kernels on CUDA."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    fused = fused or None  # None: torch's default implementation
    if config["optimizer"] == "adam":
        return torch.optim.Adam(
            params, lr=config["lr"], weight_decay=config["weight_decay"], fused=fused
        )
    return torch.optim.SGD(
        params,
        lr=config["lr"],
        momentum=config["momentum"],
        weight_decay=config["weight_decay"],
        nesterov=config["momentum"] > 0,
        fused=fused,
    )


def make_scheduler(config: dict, optimizer, steps_per_epoch: int):
    """A per-step learning-rate schedule over the whole run (None: constant)."""
    import torch

    total = max(1, config["epochs"] * steps_per_epoch)
    if config["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config["lr"], total_steps=total
        )
    if config["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


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
