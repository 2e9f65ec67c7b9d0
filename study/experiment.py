"""The Sacred experiment: config, the `paper` named config, validation, and the run itself.

Sacred is the edge: this module turns a config into calls of the plain functions in
`study.data`, `study.loader`, `study.engine` and `study.record`.
"""

from __future__ import annotations

import os
import platform
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

# The seed study's epochs per data set; data sets it did not train on get DEFAULT_EPOCHS.
PAPER_EPOCHS = {"mnist": 6, "fashion_mnist": 6, "cifar10": 25, "tiny_imagenet": 30}
DEFAULT_EPOCHS = 10

# Keys a resumed run may change: how long it trains, and where it runs (identity.PLACE_KEYS).
RESUMABLE_KEYS = ("epochs", "time_budget", *PLACE_KEYS)


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
    batch_size = 100
    lr = 0.0002
    optimizer = "adam"  # adam or sgd
    momentum = 0.9  # sgd only
    weight_decay = 0.0
    seed = 0
    image_size = None  # None: the model's default input size for the protocol
    pretrained = False  # True: torchvision's ImageNet weights; or a path to a weights file
    head = "replace"  # replace: swap the last layer; append: keep it and add a Linear (the seed)
    aux_logits = None  # None: train the auxiliary classifier where the model has one
    augment = None  # none, flip, crop, crop-flip; None: the protocol's (fast: crop, and flip)
    precise_bn = 2000  # training images that re-estimate BatchNorm statistics before each test
    schedule = "constant"  # learning rate: constant, onecycle (peak lr) or cosine, per step
    label_smoothing = 0.0
    amp = "auto"  # bf16 autocast: auto (on CUDA), true or false
    compile = False  # torch.compile the model
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
    # The seed study's protocol: Adam, lr 0.0002, batch 100, no augmentation, 224 px (299 for
    # Inception-V3), 6 / 25 / 30 epochs, the ImageNet head kept plus one extra layer.
    protocol = "paper"
    optimizer = "adam"
    lr = 0.0002
    batch_size = 100
    weight_decay = 0.0
    head = "append"
    precise_bn = 0  # the seed evaluated with BatchNorm's running averages as trained
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
    _choice(config, "head", HEADS)
    from study.loader import AUGMENTATIONS

    augment = config["augment"]
    if augment is None and protocol == "fast":  # flip only where a mirror image keeps its class
        augment = "crop-flip" if data_spec.extra.get("mirror_invariant", True) else "crop"
    elif augment is None:
        augment = "none"
    _choice({"augment": augment}, "augment", AUGMENTATIONS)
    _float(config, "lr", positive=True)
    _float(config, "momentum", positive=False)
    _float(config, "weight_decay", positive=False)
    _int(config, "batch_size", 1)
    _int(config, "seed", 0)
    _int(config, "num_workers", 0)
    _int(config, "gallery", 0)
    _int(config, "precise_bn", 0)
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
    if epochs is None:
        epochs = (
            PAPER_EPOCHS.get(data_spec.name, DEFAULT_EPOCHS)
            if protocol == "paper"
            else DEFAULT_EPOCHS
        )
    else:
        epochs = _int(config, "epochs", 1)

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
    # An absolute data_root, so the record says where the data came from.
    data_root = str(Path(config["data_root"]).expanduser().resolve())
    return {
        "epochs": epochs,
        "image_size": size,
        "aux_logits": aux,
        "data_root": data_root,
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
    from study.registry import registry

    spec, prepared = prepare_data(config)
    model_spec = registry().model(config["model"])
    in_channels = input_channels(model_spec, prepared)
    model_spec.factory(model_options(config, prepared.num_classes, in_channels))


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


def train_and_evaluate(run, config: dict) -> dict:
    import numpy as np
    import torch

    from study import distributed, engine, record
    from study.data import stratified_subset
    from study.loader import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, DeviceSplit
    from study.modelstats import model_stats
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
    seed = config["seed"]
    torch.manual_seed(seed)  # the same initial weights on every rank

    train_idx = stratified_subset(data.train.labels, config["train_limit"], seed)
    test_idx = stratified_subset(data.test.labels, config["test_limit"], seed)
    if world.distributed:
        # Each rank holds its own shard; equal train shards keep the ranks' steps in lockstep.
        train_idx = train_idx[: len(train_idx) // world.size * world.size]
        train_idx, test_idx = train_idx[world.rank :: world.size], test_idx
        test_shards = [test_idx[r :: world.size] for r in range(world.size)]
        test_idx = np.concatenate(test_shards)  # evaluation gathers shards in rank order
        my_test = test_shards[world.rank]
    else:
        my_test = test_idx
    train = DeviceSplit(data.train.images[train_idx], data.train.labels[train_idx], device)
    test = DeviceSplit(data.test.images[my_test], data.test.labels[my_test], device)
    batch_size = config["batch_size"] // world.size if world.distributed else config["batch_size"]

    # Class count, size and channels as the files hold them (a plugin's spec gives the official).
    num_classes = data.num_classes
    in_channels = input_channels(model_spec, data)
    model = model_spec.factory(model_options(config, num_classes, in_channels))
    stats = model_stats(model, config["image_size"], in_channels)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        model = model.to(device, memory_format=torch.channels_last)
    else:
        model = model.to(device)

    # Pretrained weights expect ImageNet statistics; from scratch, the data set's own.
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if config["pretrained"] else (data.mean, data.std)
    if len(mean) != data.channels and data.channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    size = config["image_size"]
    test_transform = BatchTransform(size, mean, std, in_channels, channels_last=cuda)
    train_transform = BatchTransform(
        size, mean, std, in_channels, augment=config["augment"], channels_last=cuda
    )
    optimizer = make_optimizer(config, model, fused=cuda)
    scheduler = make_scheduler(config, optimizer, train.num_batches(batch_size, train=True))
    criterion = torch.nn.CrossEntropyLoss()
    train_criterion = torch.nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
    autocast_dtype = (
        torch.bfloat16 if config["amp"] is True or (config["amp"] == "auto" and cuda) else None
    )

    # Rank 0 knows where the run's checkpoint lives; the others follow it (to resume).
    ckpt = distributed.broadcast(checkpoint_path(run) if world.is_main else None)
    state = None
    if config["resume"] is not None and ckpt is not None and ckpt.exists():
        state = engine.load_checkpoint(ckpt, model, optimizer, scheduler)
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

    if world.distributed:
        ddp_devices = [device.index] if cuda else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_devices)
    if config["compile"]:
        model = torch.compile(model)
    record.describe_run(
        run,
        config=config,
        model_spec=model_spec,
        data_spec=data_spec,
        data=data,
        train_count=len(train) * world.size,
        test_count=len(test_idx),
        stats=stats,
        device=device,
        checkpoint=ckpt,
        plugin=reg.models[model_spec.name].plugin,
        world_size=world.size,
    )
    state, evaluation = engine.fit(
        model,
        criterion,
        optimizer,
        train,
        test,
        train_transform,
        test_transform,
        epochs=config["epochs"],
        batch_size=batch_size,
        num_classes=num_classes,
        seed=seed * 1000 + world.rank if world.distributed else seed,
        checkpoint=ckpt,
        state=state,
        aux_weight=model_spec.aux_weight,
        precise_bn=config["precise_bn"] // world.size,
        scheduler=scheduler,
        train_criterion=train_criterion,
        autocast_dtype=autocast_dtype,
        on_epoch=lambda epoch, metrics: record.log_epoch(run, epoch, metrics),
        progress=world.is_main,
        time_budget=config["time_budget"],
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
