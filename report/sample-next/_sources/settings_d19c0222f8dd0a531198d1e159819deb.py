"""Every setting of a run, declared once: its name, default, how the default reads, and what it
means. Sacred's config is built from this table (study.experiment), and so are `study help run`
(also `study run --help`), print_config's comments and the README's settings table (a test
fails when the README and this table disagree: `python -m study.settings` prints the table).

A default of None is resolved by the run's protocol (study.protocols holds those values; the
`default` column here says so in words). The checks of each value live in
study.experiment.resolve_config.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from study import protocols


def default_data_root() -> str:
    if os.environ.get("STUDY_DATA_ROOT"):
        return os.environ["STUDY_DATA_ROOT"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "study", "data")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any  # Sacred's default; None: the protocol's, or none
    shown_default: str  # the default as help and the README state it
    help: str  # one line: print_config's comment, `study help run`
    readme: str = ""  # the README's fuller meaning, where it says more than `help`
    # Whether a value other than the protocol's is a departure from it (recorded in the run's
    # info.departures and listed by the report): not for where a run ran (identity.PLACE_KEYS),
    # which repeat it is, or how the same model was executed (compiling).
    departs: bool = True
    # A setting added after runs were recorded without it: the value those runs trained with
    # (None: the setting is as old as the records). identity.as_trained fills it in, so an
    # older run is the same cell, and is reproduced, as what it really trained.
    before: Any = None

    @property
    def meaning(self) -> str:
        return self.readme or self.help

    @property
    def default_text(self) -> str:
        return protocol_default(self.name) if self.shown_default is PROTOCOL else self.shown_default


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "onecycle", "cosine")
HEADS = ("replace", "append")
AUGMENTATIONS = ("none", "flip", "crop", "crop-flip")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAD_COMPRESSION = ("none", "bf16")
MAX_SEED = 2**32 - 1  # what NumPy's and torch's seeding accept

DEFAULT_DATA_ROOT = object()  # resolved when the config is built: $STUDY_DATA_ROOT may change
PROTOCOL = "(the protocols' values)"  # shown_default: read from study.protocols, never copied


def protocol_default(name: str) -> str:
    """`null: paper `adam`, fast `adamw``, from the protocols themselves."""

    def shown(value) -> str:
        return f"`{value}`" if isinstance(value, bool | str) else f"{value:g}"

    values = {p.name: getattr(p, name) for p in protocols.PROTOCOLS.values()}
    if len(set(map(repr, values.values()))) == 1:
        return f"null: {shown(next(iter(values.values())))} under every protocol"
    return "null: " + ", ".join(f"{p} {shown(v)}" for p, v in values.items())


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "model",
        None,
        "required",
        "a registered model name (`study list`)",
        departs=False,
    ),
    Setting(
        "dataset",
        None,
        "required",
        "a registered data set name (`study list`)",
        departs=False,
    ),
    Setting(
        "data_root",
        DEFAULT_DATA_ROOT,
        "`$STUDY_DATA_ROOT`, else `~/.cache/study/data`",
        "where data sets live, as torchvision lays them out",
        readme="where data sets live, laid out as torchvision lays out its downloads",
        departs=False,
    ),
    Setting(
        "folder_image_size",
        None,
        "null: 64",
        "image_folder only: the side, in pixels, each image is resized and centre-cropped to",
        readme=(
            "`image_folder` only: the side, in pixels, each image is resized (its shorter side) "
            "and centre-cropped to, once, into the cache ([Data](#data))"
        ),
    ),
    Setting(
        "download",
        True,
        "`True`",
        "fetch missing data set files from their official location",
        readme="fetch missing files from the official location, verifying the checksum",
        departs=False,
    ),
    Setting(
        "protocol",
        "paper",
        "`paper`",
        "the recipe that fills every null below: paper (the seed's) or fast",
        readme=(
            "the recipe that resolves every null below (`paper`, `fast`; see below and "
            "`study/protocols.py`)"
        ),
    ),
    Setting(
        "epochs",
        None,
        "null: the protocol's (paper: the data set's own, MNIST 6, CIFAR-10 25, Tiny-ImageNet "
        f"30; fast: {protocols.FAST_EPOCHS})",
        "passes over the training split",
        readme=(
            "passes over the training split; a plugin data set that declares no paper epochs "
            "needs `epochs=N` under `paper` (refused before the run otherwise)"
        ),
    ),
    Setting(
        "time_budget",
        None,
        "null",
        "seconds of training steps; training ends after the first step past it",
        readme=(
            "seconds of training steps, summed over epochs and resumes: training ends after "
            "the first step past it (under torchrun the processes agree every 16 steps, one "
            "sync each; mid-epoch if need be; that partial epoch is evaluated and recorded "
            "with its image count). Evaluation and precise BatchNorm are outside it. "
            "Schedules still span `epochs`, so pick `epochs` that fit the budget"
        ),
    ),
    Setting(
        "stop_after",
        None,
        "null",
        "train only the first N epochs of the `epochs` schedule (a prefix)",
        readme="train only the first N epochs of the `epochs` schedule (a prefix: the learning "
        "rate follows the full schedule; `study reproduce --epochs N` uses it)",
    ),
    Setting(
        "batch_size",
        None,
        PROTOCOL,
        "images per training step (over all torchrun processes)",
    ),
    Setting(
        "lr",
        None,
        f"null: paper {protocols.PAPER.fixed_lr:g}; fast base × `batch_size` / "
        f"{protocols.LR_REFERENCE_BATCH}",
        "the peak learning rate",
        readme=(
            "the peak learning rate; `fast`'s base is the model spec's `base_lr`, else "
            f"{protocols.BASE_LR_NORMALISED:g} for a model that normalises its activations "
            f"(`normalises_activations`) and {protocols.BASE_LR_PLAIN:g} for one that does not "
            "(plain VGG-16)"
        ),
    ),
    Setting(
        "optimizer",
        None,
        PROTOCOL,
        "adam, adamw or sgd (Nesterov)",
        readme="`adam`, `adamw` (decoupled weight decay) or `sgd` (Nesterov when `momentum` > 0)",
    ),
    Setting(
        "momentum",
        None,
        PROTOCOL,
        "SGD's momentum (Nesterov when > 0); the other optimizers have none",
    ),
    Setting(
        "weight_decay",
        None,
        PROTOCOL,
        "weight decay (decoupled under adamw)",
    ),
    Setting(
        "decay_norm_bias",
        None,
        PROTOCOL,
        "weight decay on normalisation and bias parameters too",
        readme="weight decay on normalisation and bias parameters (every 1-d tensor) too",
    ),
    Setting(
        "seed",
        0,
        "0",
        "",
        readme="the same seed on the CPU gives the same metrics",
        departs=False,
    ),
    Setting(
        "image_size",
        None,
        "null: the model's size for the protocol (224; 299 for Inception-V3)",
        "null: the model's input size for the protocol",
        readme="below a model's minimum is an error",
    ),
    Setting(
        "pretrained",
        False,
        "`False`",
        "True: torchvision's ImageNet weights; or a path to a weights file",
        readme="`True`: torchvision's ImageNet weights; or a path to a local weights file",
    ),
    Setting(
        "head",
        None,
        (
            "null: the protocol's (paper: `append` where the model has an ImageNet head, else "
            "`replace`; fast: `replace`)"
        ),
        "replace the last layer, or append a Linear to it; null: the protocol's",
        readme=(
            "`replace` the last layer, or `append` one `Linear(1000, classes)` after the "
            "ImageNet head (the seed)"
        ),
    ),
    Setting(
        "aux_logits",
        None,
        "null: on where the model has one",
        "null: the auxiliary classifier under paper where the model has one",
        readme=(
            "Inception-V3's auxiliary classifier (loss = main + 0.4 · aux, needs 299 px; "
            "without it 75 px)"
        ),
    ),
    Setting(
        "augment",
        None,
        (
            "null: the protocol's (paper: `none`; fast: `crop`, plus `flip` where a mirrored image "
            "keeps its class)"
        ),
        "none, flip, crop, crop-flip; null: the protocol's (fast: crop, and flip)",
        readme="`none`, `flip`, `crop`, `crop-flip`, applied to whole batches on the device",
    ),
    Setting(
        "precise_bn",
        None,
        PROTOCOL,
        "training images that re-estimate BatchNorm statistics",
        readme=(
            "training images that re-estimate BatchNorm statistics before each evaluation; "
            "0 evaluates with the running averages as trained"
        ),
    ),
    Setting(
        "schedule",
        None,
        PROTOCOL,
        "learning rate per step: constant, onecycle (warm-up, cosine) or cosine",
        readme=(
            "stepped every batch: `constant`; `onecycle`, the linear warm-up then a cosine "
            "decay to 0; `cosine`, the same (torch's cosine annealing when there is no "
            "warm-up)"
        ),
    ),
    Setting(
        "warmup",
        None,
        PROTOCOL,
        "linear warm-up over this share of the schedule's steps...",
        readme=(
            "the linear warm-up lasts this share of the schedule's steps, at least "
            "`warmup_min_steps` steps, at most half of them (`info.training.warmup_steps` "
            "records it)"
        ),
    ),
    Setting(
        "warmup_min_steps",
        None,
        PROTOCOL,
        "...and at least this many steps (at most half of them)",
        readme="the warm-up's floor in steps (at most half of the schedule's steps)",
    ),
    Setting(
        "grad_clip",
        None,
        PROTOCOL,
        "clip the gradients' global norm to this; 0: never",
        readme="clip the gradients' global norm to this (0: never)",
    ),
    Setting(
        "zero_init_residual",
        None,
        PROTOCOL,
        "residual blocks start as identities (their last BN's scale 0)",
        readme=(
            "residual blocks start as identities (the scale of each block's last BatchNorm "
            "starts at 0) where the model has them (measured: it slows short schedules, see "
            "`study/protocols.py`)"
        ),
    ),
    Setting(
        "drop_last",
        None,
        PROTOCOL,
        "drop each epoch's last, smaller training batch (one batch shape)",
        readme=(
            "drop each epoch's last, smaller training batch (one batch shape: one cuDNN "
            "plan, one compiled graph); the run says how many images that leaves out"
        ),
    ),
    Setting(
        "label_smoothing",
        None,
        PROTOCOL,
        "label smoothing of the training loss",
    ),
    Setting(
        "dropout",
        None,
        PROTOCOL,
        "dropout rate before the classifier's layers (VGG-16's, Inception-V3's)",
        before=0.5,  # torchvision's, which every run trained with before the setting existed
    ),
    Setting(
        "amp",
        None,
        PROTOCOL,
        "bf16 autocast: auto (on CUDA), true or false",
        readme=(
            "bf16 autocast: `auto` is on for CUDA, off on the CPU; `true`/`false` to force "
            "(`paper` trains in fp32 as the seed did: `amp=true` under it is recorded as a "
            "departure)"
        ),
    ),
    Setting(
        "health_stop",
        False,
        "`False`",
        "end the run (COMPLETED) at the first evaluation the health rule flags",
        readme=(
            "end a run at the first evaluation after the warm-up that the health rule flags "
            "(see [Health](#health)): it ends COMPLETED, with the reason in "
            "`info.health.stopped`"
        ),
        departs=False,
    ),
    Setting(
        "compile",
        False,
        "`False`",
        "torch.compile the model",
        readme=(
            "`torch.compile` the model; compilation runs before training, outside "
            "`train_seconds` (recorded as `compile_seconds`), and evaluation and precise "
            "BatchNorm use the uncompiled module"
        ),
        departs=False,
    ),
    Setting(
        "compile_mode",
        "default",
        "`default`",
        "torch.compile's mode: default, reduce-overhead, max-autotune...",
        readme=(
            "torch.compile's mode: `default`, `reduce-overhead` (CUDA graphs), "
            "`max-autotune`, `max-autotune-no-cudagraphs`"
        ),
        departs=False,
    ),
    Setting(
        "data_on_device",
        "auto",
        "`auto`",
        "hold the data on the device: auto (if it fits), true, false",
        readme=(
            "hold the data set on the device (`true`), in pinned host memory with batches "
            "copied on a side stream one step ahead (`false`), or `auto`: on the device "
            "when it takes at most half the device's free memory. Data that fits neither is "
            "refused before any work, with what would fit"
        ),
        departs=False,
    ),
    Setting(
        "sync_bn",
        False,
        "`False`",
        "torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)",
        readme=(
            "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm) "
            "instead of each process's share"
        ),
    ),
    Setting(
        "grad_compression",
        "none",
        "`none`",
        "torchrun: none, or bf16 gradients in the all-reduce",
        readme=(
            "under torchrun: `bf16` sends gradients in bf16 in the all-reduce (half the "
            "traffic; VGG-16 all-reduces 554 MB of fp32 gradients a step)"
        ),
    ),
    Setting(
        "train_limit",
        None,
        "null",
        "a stratified, seeded subset of the training split",
    ),
    Setting(
        "test_limit",
        None,
        "null",
        "a stratified, seeded subset of the test split",
    ),
    Setting(
        "device",
        "auto",
        "`auto`",
        "auto, cpu, cuda or cuda:N",
        readme="`cpu`, `cuda`, `cuda:N`",
        departs=False,
    ),
    Setting(
        "num_workers",
        0,
        "0",
        "processes that decode a data set into its cache (first run only)",
        readme="processes that decode a data set into its cache (first use only)",
        departs=False,
    ),
    Setting(
        "gallery",
        16,
        "16",
        "how many confidently misclassified test images to keep",
        departs=False,
    ),
    Setting(
        "checkpoint_dir",
        None,
        "null: the run's folder",
        "where checkpoints go: null, the run's folder in a file store (./checkpoints/<id> with "
        "MongoDB alone)",
        departs=False,
    ),
    Setting(
        "checkpoint_every",
        None,
        "null: after each epoch only",
        "seconds between mid-epoch checkpoints (a place setting: not part of what a run trains)",
        readme=(
            "seconds between mid-epoch checkpoints, for long epochs on machines that may go "
            "away (a preempted cluster job); resuming one continues from its step, on the CPU "
            "to the same metrics. A place setting: it changes nothing a run trains, and a "
            "resume may change it. Without it a checkpoint is written after each epoch, and "
            "on a scheduler's preemption signal (SIGUSR1, SIGUSR2, SIGTERM) at the next step"
        ),
        departs=False,
    ),
    Setting(
        "resume",
        None,
        "null",
        "a run id to continue from its last checkpoint",
        readme="a run id: continue that interrupted run from its last checkpoint",
        departs=False,
    ),
)

BY_NAME = {s.name: s for s in SETTINGS}
# {key: value} that a run recorded before the key existed trained with.
BEFORE_RECORDED = {s.name: s.before for s in SETTINGS if s.before is not None}


# ---------------------------------------------------------------------------------------------
# What values each setting takes, checked (after the protocol fills its nulls) before any work;
# `study help run` shows the words. Checks that need the model, the data or the machine (image
# sizes, heads, aux_logits, num_workers, batch splits, devices) are study.experiment's.


@dataclass(frozen=True)
class Valid:
    words: str  # "an integer >= 1 or null", for help
    check: Callable[[str, Any], None]  # raises ConfigError naming the key and what is valid


def _bad(key: str, value, expected: str):
    from study.errors import ConfigError

    return ConfigError(f"{key}={value!r} is invalid; expected {expected}")


def integer(minimum: int, maximum: int | None = None, allow_none: bool = False) -> Valid:
    words = f"an integer >= {minimum}" + (" or null" if allow_none else "")

    def check(key, value):
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _bad(key, value, words)
        if maximum is not None and value > maximum:
            raise _bad(key, value, f"{minimum} <= {key} <= {maximum}")

    shown = f"an integer, {minimum}..{maximum}" if maximum is not None else words
    return Valid(shown, check)


def number(positive: bool = False, allow_none: bool = False, upper=None, words=None) -> Valid:
    """A finite number, > 0 or >= 0; `upper` (bound, inclusive) narrows it, said as `words`."""
    bound = "> 0" if positive else ">= 0"

    def check(key, value):
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(key, value, "a number")
        if not math.isfinite(value):  # 1e999, nan from a JSON config
            raise _bad(key, value, "a finite number")
        if (positive and value <= 0) or value < 0:  # a bounded range is said whole
            raise _bad(key, value, words if upper is not None else f"a number {bound}")
        if upper is not None and not (value <= upper[0] if upper[1] else value < upper[0]):
            raise _bad(key, value, words)

    return Valid(words or f"a number {bound}" + (" or null" if allow_none else ""), check)


def one_of(*choices) -> Valid:
    """One of `choices` (strings, or true/false), of the same type: 1 is not true."""
    if all(isinstance(c, str) for c in choices):
        words = f"one of: {', '.join(choices)}"
    else:
        shown = [str(c).lower() if isinstance(c, bool) else str(c) for c in choices]
        words = f"{', '.join(shown[:-1])} or {shown[-1]}"

    def check(key, value):
        if not any(type(value) is type(c) and value == c for c in choices):
            raise _bad(key, value, words)

    return Valid(words, check)


def _of_types(types, words: str) -> Valid:
    takes_bool = bool in getattr(types, "__args__", (types,))

    def check(key, value):
        # true is an int to isinstance: resume=true is not a run id
        if not isinstance(value, types) or (isinstance(value, bool) and not takes_bool):
            raise _bad(key, value, words)

    return Valid(words, check)


FLAG = one_of(True, False)

VALID: dict[str, Valid] = {
    "download": FLAG,
    "protocol": one_of(*protocols.PROTOCOLS),
    "epochs": integer(1),
    "time_budget": number(positive=True, allow_none=True),
    "checkpoint_every": number(positive=True, allow_none=True),
    "stop_after": integer(1, allow_none=True),
    "batch_size": integer(1),
    "lr": number(positive=True),
    "optimizer": one_of(*OPTIMIZERS),
    "momentum": number(),
    "weight_decay": number(),
    "decay_norm_bias": FLAG,
    "seed": integer(0, MAX_SEED),
    "pretrained": _of_types(bool | str, "true, false or a weights file path"),
    "head": one_of(*HEADS),
    "aux_logits": _of_types(bool, "true, false or null"),
    "augment": one_of(*AUGMENTATIONS),
    "precise_bn": integer(0),
    "schedule": one_of(*SCHEDULES),
    "warmup": number(upper=(0.5, True), words="a share of the schedule's steps, 0 <= x <= 0.5"),
    "warmup_min_steps": integer(0),
    "grad_clip": number(),
    "zero_init_residual": FLAG,
    "drop_last": FLAG,
    "label_smoothing": number(upper=(1, False), words="0 <= x < 1"),
    "dropout": number(upper=(1, False), words="0 <= x < 1"),
    "amp": one_of("auto", True, False),
    "health_stop": FLAG,
    "compile": FLAG,
    "compile_mode": one_of(*COMPILE_MODES),
    "data_on_device": one_of("auto", True, False),
    "sync_bn": FLAG,
    "grad_compression": one_of(*GRAD_COMPRESSION),
    "train_limit": integer(1, allow_none=True),
    "test_limit": integer(1, allow_none=True),
    "num_workers": integer(0),
    "gallery": integer(0),
    "folder_image_size": integer(8, 1024, allow_none=True),
    "checkpoint_dir": _of_types(str | type(None), "a folder path or null"),
    "resume": _of_types(int | str | type(None), "a run id"),
}


def _takes(valid: Valid, value) -> bool:
    from study.errors import ConfigError

    try:
        valid.check("", value)
    except ConfigError:
        return False
    return True


# Keys that take true and false (some also auto, null or a path): read from the checks above, so
# a new flag is parsed from the command line (`false` there is the string 'false' to Sacred).
BOOLEAN_KEYS = tuple(k for k, v in VALID.items() if _takes(v, True) and _takes(v, False))


def check_values(config: dict) -> None:
    """Every setting's value against VALID (one ConfigError line for the first bad one)."""
    for name, valid in VALID.items():
        if name in config:
            valid.check(name, config[name])


def defaults() -> dict:
    """Sacred's config: each setting's default."""
    return {
        s.name: default_data_root() if s.default is DEFAULT_DATA_ROOT else s.default
        for s in SETTINGS
    }


def help_text(width: int = 100) -> str:
    """`study help run`: every setting, its default and its meaning."""
    lines = [
        "usage: study run with model=NAME dataset=NAME [KEY=VALUE ...] [FILE.yaml ...] [-F DIR]",
        "",
        "settings (null: resolved by the protocol, paper or fast; see study/protocols.py):",
    ]
    for s in SETTINGS:
        valid = f"; {VALID[s.name].words}" if s.name in VALID else ""
        lines.append(f"  {s.name} (default: {_plain(s.default_text)}{valid})")
        lines += textwrap.wrap(
            _plain(s.meaning), width, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    return "\n".join(lines)


def _plain(text: str) -> str:
    """The README's markdown as plain text: no backticks, links to its sections named."""
    text = re.sub(r"\[([^\]]+)\]\(#[^)]+\)", r"README: \1", text)
    return text.replace("`", "").replace("\\|", "|")


def markdown_table() -> str:
    """The README's settings table."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.default_text} | {s.meaning} |" for s in SETTINGS]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
