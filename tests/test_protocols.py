"""The protocols' rules (study.protocols) on the resolved config, and their costs."""

from __future__ import annotations

import math

import pytest

from study import protocols, sacred_api
from study.build import make_scheduler
from study.errors import ConfigError
from study.modelstats import count_macs
from study.registry import registry
from study.specs import ModelOptions


def config_for(model: str, dataset: str, protocol: str, **updates) -> dict:
    """The resolved config of `study run with <protocol> model=... dataset=... KEY=VALUE...`."""
    from study.experiment import ex

    updates = {"model": model, "dataset": dataset, **updates}
    return dict(
        sacred_api.create_run(
            ex, "print_config", updates, [protocol], {"--loglevel": "ERROR"}
        ).config
    )


def test_fast_lr_scales_with_the_batch_from_the_models_base():
    cfg = config_for("resnet50", "mnist", "fast")
    assert cfg["lr"] == pytest.approx(protocols.BASE_LR_NORMALISED * 128 / 256)
    cfg = config_for("resnet50", "mnist", "fast", batch_size=512)
    assert cfg["lr"] == pytest.approx(protocols.BASE_LR_NORMALISED * 512 / 256)
    # Plain VGG-16 normalises nothing: its base is the plain one.
    cfg = config_for("vgg16", "mnist", "fast", batch_size=256)
    assert cfg["lr"] == pytest.approx(protocols.BASE_LR_PLAIN)
    # A value given with `with` wins.
    assert config_for("vgg16", "mnist", "fast", lr=0.3)["lr"] == 0.3
    # The paper protocol's lr is the seed's whatever the batch.
    assert config_for("vgg16", "mnist", "paper", batch_size=512)["lr"] == 0.0002


def test_a_spec_base_lr_wins_over_its_normalisation():
    from dataclasses import replace

    spec = replace(registry().model("resnet18"), base_lr=0.005)
    assert protocols.lr_for(protocols.FAST, spec, 512) == pytest.approx(0.01)
    plain = replace(registry().model("resnet18"), normalises_activations=False)
    assert protocols.lr_for(protocols.FAST, plain, 256) == protocols.BASE_LR_PLAIN


def test_every_resolved_value_is_in_the_config():
    cfg = config_for("resnet50", "cifar10", "fast")
    fast = protocols.FAST
    for key in protocols.PROTOCOL_KEYS:
        assert cfg[key] == getattr(fast, key), key
    assert cfg["augment"] == "crop-flip" and cfg["head"] == "replace"
    assert cfg["aux_logits"] is False and cfg["epochs"] == protocols.FAST_EPOCHS
    paper = config_for("inception_v3", "mnist", "paper")
    assert paper["amp"] is False and paper["grad_clip"] == 0 and paper["drop_last"] is False
    assert paper["aux_logits"] is True and paper["head"] == "append" and paper["epochs"] == 6
    # Each one overridable.
    assert (
        config_for("resnet50", "cifar10", "fast", grad_clip=0.5, drop_last=False)["drop_last"]
        is False
    )


@pytest.mark.parametrize(
    ("total", "share", "floor", "expected"),
    [
        (1000, 0.1, 30, 100),
        (100, 0.1, 30, 30),
        (40, 0.1, 30, 20),
        (1000, 0.0, 0, 0),
        (1, 0.1, 30, 0),
    ],
)
def test_warmup_is_a_share_with_a_floor_and_at_most_half(total, share, floor, expected):
    assert protocols.warmup_steps(total, share, floor) == expected


def test_the_schedule_warms_up_linearly_then_decays_by_a_cosine():
    import torch

    cfg = {"epochs": 2, "schedule": "onecycle", "warmup": 0.1, "warmup_min_steps": 30,
           "lr": 0.4}  # fmt: skip
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    sched = make_scheduler(cfg, opt, 100)  # 200 steps, a 30-step warm-up
    lrs = []
    for _ in range(200):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.4 / 30)
    assert lrs[29] == pytest.approx(0.4)  # the peak at the warm-up's last step
    assert lrs[30] == pytest.approx(0.4)  # the cosine's start
    mid = 30 + 85
    assert lrs[mid] == pytest.approx(0.2)  # half-way through the decay: half the peak
    assert lrs[-1] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 169 / 170)))
    # A constant schedule with a warm-up stays at the peak after it.
    cfg = {**cfg, "schedule": "constant"}
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    sched = make_scheduler(cfg, opt, 100)
    for _ in range(150):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4)
    # No warm-up and constant: no scheduler at all (the seed's).
    assert make_scheduler({**cfg, "warmup": 0, "warmup_min_steps": 0}, opt, 100) is None


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_no_weight_decay_on_norm_and_bias_under_fast(optimizer):
    import torch

    from study.build import make_optimizer

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    cfg = {"optimizer": optimizer, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
           "decay_norm_bias": False}  # fmt: skip
    built = make_optimizer(cfg, model)
    # fast's is AdamW: decay decoupled from the gradient's moments, not Adam's L2 term.
    assert type(built) is {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
    assert config_for("resnet18", "mnist", "fast")["optimizer"] == "adamw"
    groups = built.param_groups
    decayed = {p.ndim for g in groups if g["weight_decay"] for p in g["params"]}
    plain = [p.ndim for g in groups if not g["weight_decay"] for p in g["params"]]
    assert decayed == {4} and sorted(plain) == [1, 1, 1]
    groups = make_optimizer({**cfg, "decay_norm_bias": True}, model).param_groups
    assert len(groups) == 1 and groups[0]["weight_decay"] == 5e-4


def test_zero_init_residual_is_an_option():
    spec = registry().model("resnet18")
    fast = spec.factory(ModelOptions(num_classes=10, image_size=32, protocol="fast",
                                     zero_init_residual=True))  # fmt: skip
    plain = spec.factory(ModelOptions(num_classes=10, image_size=32, protocol="fast"))
    assert float(fast.layer1[0].bn2.weight.detach().abs().sum()) == 0
    assert float(plain.layer1[0].bn2.weight.detach().abs().sum()) > 0
    # Off under both protocols: measured, it slows a short schedule (study/protocols.py).
    assert config_for("resnet18", "mnist", "fast")["zero_init_residual"] is False
    assert config_for("resnet18", "mnist", "paper")["zero_init_residual"] is False
    assert config_for("resnet18", "mnist", "fast", zero_init_residual=True)["zero_init_residual"]


def test_dropout_is_the_protocols_and_reaches_the_classifier():
    """`paper` keeps torchvision's (the seed's) 0.5 before VGG-16's and Inception-V3's
    classifier layers; `fast` drops none (it slowed plain VGG-16's escape from chance:
    study/protocols.py); `with dropout=P` sets it, and the built model carries P."""
    from torch import nn

    assert config_for("vgg16", "mnist", "paper")["dropout"] == 0.5
    assert config_for("vgg16", "mnist", "fast")["dropout"] == protocols.FAST_DROPOUT == 0.0
    assert config_for("inception_v3", "cifar10", "fast", dropout=0.3)["dropout"] == 0.3
    for name, protocol, size, count in (("vgg16", "fast", 32, 2), ("inception_v3", "fast", 75, 1)):
        spec = registry().model(name)
        for p in (0.0, 0.3):
            options = ModelOptions(num_classes=10, image_size=size, protocol=protocol, dropout=p)
            rates = [m.p for m in spec.factory(options).modules() if isinstance(m, nn.Dropout)]
            assert rates == [p] * count, (name, p, rates)


@pytest.mark.parametrize("model", ["vgg16", "vgg16_bn", "resnet18", "resnet50", "inception_v3"])
@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "tiny_imagenet"])
def test_fast_costs_no_more_than_the_paper_size(model, dataset):
    """GMACs per image under `fast` (its size and stem for the data set) at most the model's
    at its paper size, on each seed data set."""
    spec, data = registry().model(model), registry().dataset(dataset)

    def gmacs(protocol: str) -> float:
        cfg = config_for(model, dataset, protocol)
        net = spec.factory(
            ModelOptions(num_classes=data.num_classes, image_size=cfg["image_size"],
                         aux_logits=False, protocol=protocol)
        )  # fmt: skip
        return count_macs(net, cfg["image_size"], 3) / 1e9

    assert gmacs("fast") <= gmacs("paper")


@pytest.mark.parametrize(
    ("size", "kept"), [(28, 0), (32, 0), (33, 1), (64, 1), (65, 2), (128, 2), (299, 4)]
)
def test_stem_downsamplings_keep_one_per_doubling_above_32(size, kept):
    assert protocols.stem_downsamplings(size, 4) == kept


def test_every_true_false_key_is_parsed_from_the_command_line():
    from study import cli, settings

    # read from the checks: a key that takes true and false, whatever else it takes
    flags = {"download", "health_stop", "amp", "data_on_device", "pretrained", "aux_logits"}
    assert flags <= set(settings.BOOLEAN_KEYS)
    assert not {"resume", "checkpoint_dir", "lr", "epochs"} & set(settings.BOOLEAN_KEYS)
    with pytest.raises(ConfigError, match=r"resume=True is invalid; expected a run id"):
        settings.VALID["resume"].check("resume", True)  # true is an int to isinstance
    assert cli.parse_booleans({"health_stop": "true", "drop_last": "False", "lr": "true"}) == {
        "health_stop": True,
        "drop_last": False,
        "lr": "true",
    }


def test_grad_clip_bounds_each_step_by_the_gradients_global_norm():
    """train_step clips the global gradient norm to grad_clip before the optimizer steps: with
    plain SGD at lr 1, no parameter vector moves further than grad_clip."""
    from types import SimpleNamespace

    import torch

    from study.engine import train_step

    def step(clip: float) -> float:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 3)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        setup = SimpleNamespace(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            criterion=torch.nn.CrossEntropyLoss(), train_criterion=None, autocast_dtype=None,
            aux_weight=0.4, grad_clip=clip, scheduler=None,
        )  # fmt: skip
        inputs = torch.randn(16, 8) * 100  # large inputs: a gradient norm far above 0.5
        train_step(setup, inputs, torch.randint(0, 3, (16,)))
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((after - before).norm())

    assert step(0.0) > 5  # unclipped: a long step
    assert step(0.5) == pytest.approx(0.5, rel=1e-4)  # clipped to exactly the bound
