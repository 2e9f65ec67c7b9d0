"""The built-in model plugin and model statistics (CPU, small sizes, no downloads)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from study import modelstats
from study.errors import ConfigError
from study.modelstats import model_stats
from study.plugins import models as plugin
from study.registry import Registry, plugin_manager
from study.specs import ModelOptions

NAMES = ["vgg16", "resnet50", "inception_v3", "resnet18", "small_cnn"]
SPECS = {spec.name: spec for spec in plugin.study_models()}


def build(name: str, **kw) -> nn.Module:
    spec = SPECS[name]
    kw.setdefault("num_classes", 10)
    kw.setdefault("image_size", spec.minimum_size(kw.get("aux_logits", False)))
    return spec.factory(ModelOptions(**kw))


def forward(model: nn.Module, size: int, channels: int = 3, train: bool = False):
    model.train(train)
    with torch.set_grad_enabled(train):
        return model(torch.randn(2, channels, size, size))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def test_registry_finds_all_models_from_the_first_party_plugin():
    registry = Registry(plugin_manager())
    for name in NAMES:
        assert registry.models[name].plugin == "archstudy:study-models"
        assert registry.model(name).name == name


def test_specs():
    assert [SPECS[n].input_size["paper"] for n in NAMES] == [224, 224, 299, 224, None]
    assert all(SPECS[n].input_size["fast"] is None for n in NAMES)
    assert [SPECS[n].min_input_size for n in NAMES] == [32, 32, 75, 32, 8]
    inception = SPECS["inception_v3"]
    assert inception.aux_logits and inception.aux_min_input_size == 299
    assert inception.minimum_size(True) == 299 and inception.minimum_size(False) == 75
    assert SPECS["small_cnn"].in_channels is None and SPECS["vgg16"].in_channels == 3
    assert all("\n" not in SPECS[n].description for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_at_minimum_size(name):
    model = build(name)
    assert forward(model, SPECS[name].min_input_size).shape == (2, 10)


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "inception_v3"])
def test_head_append_keeps_imagenet_head_and_adds_a_linear(name):
    model = build(name, head="append")
    last = list(model.modules())[-1]
    assert isinstance(last, nn.Linear) and (last.in_features, last.out_features) == (1000, 10)
    assert forward(model, SPECS[name].min_input_size).shape == (2, 10)


def test_vgg16_bn_is_vgg16_with_batchnorm_after_each_convolution():
    plain, bn = build("vgg16"), build("vgg16_bn", head="append")
    convs = [m for m in bn.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in bn.features if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 13 and not any(
        isinstance(m, nn.BatchNorm2d) for m in plain.modules()
    )
    assert forward(bn, 32, train=True).shape == (2, 10)
    fast = build("vgg16_bn", protocol="fast")  # the small-image stem: 512 features into the head
    assert fast.classifier[0].in_features == 512 and forward(fast, 32).shape == (2, 10)
    assert SPECS["vgg16_bn"].display_name == "VGG-16-BN"


def test_head_replace_swaps_the_last_layer():
    assert build("vgg16").classifier[6].out_features == 10
    fc = build("resnet18").fc
    assert isinstance(fc, nn.Linear) and (fc.in_features, fc.out_features) == (512, 10)


def test_inception_with_aux_at_299():
    model = build("inception_v3", aux_logits=True)
    assert not model.transform_input
    out = forward(model, 299, train=True)
    assert isinstance(out, torchvision.models.InceptionOutputs)
    assert out.logits.shape == (2, 10) and out.aux_logits.shape == (2, 10)
    assert forward(model, 299).shape == (2, 10)  # eval mode: the main logits only


def test_inception_append_with_aux_appends_to_both_heads():
    model = build("inception_v3", aux_logits=True, head="append")
    for head, width in ((model.fc, 2048), (model.AuxLogits.fc, 768)):
        assert [(m.in_features, m.out_features) for m in head] == [(width, 1000), (1000, 10)]


def test_small_cnn_channels_and_sizes():
    model = build("small_cnn", in_channels=1, num_classes=3)
    assert forward(model, 8, channels=1).shape == (2, 3)
    assert forward(model, 28, channels=1).shape == (2, 3)


@pytest.mark.parametrize(
    "name, kw, words",
    [
        ("resnet18", {"head": "bogus"}, ["bogus", "replace, append"]),
        ("small_cnn", {"pretrained": True}, ["small_cnn", "pretrained"]),
        ("small_cnn", {"head": "append"}, ["append", "replace"]),
        ("resnet18", {"aux_logits": True}, ["aux_logits"]),
        ("resnet18", {"in_channels": 1}, ["in_channels=1"]),
    ],
)
def test_bad_options_give_one_line_config_errors(name, kw, words):
    with pytest.raises(ConfigError) as info:
        build(name, **kw)
    message = str(info.value)
    assert "\n" not in message and all(word in message for word in words)


# --- pretrained weights -----------------------------------------------------------------------


def test_pretrained_from_local_file(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build("resnet18", pretrained=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == 10


def test_pretrained_inception_without_aux_skips_the_aux_weights(tmp_path):
    source = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.pth"
    torch.save(source.state_dict(), path)
    model = build("inception_v3", pretrained=str(path), aux_logits=False)
    assert model.AuxLogits is None
    assert torch.equal(model.Conv2d_1a_3x3.conv.weight, source.Conv2d_1a_3x3.conv.weight)


def test_pretrained_missing_corrupt_or_mismatched_file_names_the_file(tmp_path):
    missing = tmp_path / "nowhere.pth"
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    mismatched = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=7).state_dict(), mismatched)
    for path in (missing, corrupt, mismatched):
        with pytest.raises(ConfigError) as info:
            build("resnet18", pretrained=str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_pretrained_download_offline_names_the_url(tmp_path, monkeypatch):
    # The real download path, failing: an empty hub cache and a proxy that refuses connections.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError) as info:
        build("resnet18", pretrained=True)
    message = str(info.value)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert url in message and "pretrained=/path/to/file.pth" in message and "\n" not in message


# --- model statistics -------------------------------------------------------------------------


def imagenet(name: str) -> nn.Module:
    return build(name, num_classes=1000)


def test_stats_resnet50_and_resnet18(monkeypatch):
    # The meta-device count must work on its own: fail loudly if it falls back to real compute.
    monkeypatch.setattr(modelstats, "_count_on_device", None)
    model = imagenet("resnet50").train()
    weight = model.conv1.weight
    stats = model_stats(model, 224)
    assert model.training and model.conv1.weight is weight and weight.device.type == "cpu"
    assert stats["params"] == sum(p.numel() for p in model.parameters()) == 25_557_032
    assert stats["trainable_params"] == stats["params"]
    assert stats["macs_per_image"] == pytest.approx(4.1e9, rel=0.05)
    assert stats["gmacs_per_image"] == pytest.approx(stats["macs_per_image"] / 1e9)
    assert stats["weight_mb"] == pytest.approx(97.7, rel=0.01)
    resnet18 = model_stats(imagenet("resnet18"), 224)
    assert resnet18["gmacs_per_image"] == pytest.approx(1.82, rel=0.02)


def test_stats_vgg16_inception_and_small_cnn(monkeypatch):
    monkeypatch.setattr(modelstats, "_count_on_device", None)
    with torch.device("meta"):  # shapes are all that counting needs; skips 138M random inits
        vgg = imagenet("vgg16")
        inception = build("inception_v3", num_classes=1000, aux_logits=True).train()
    stats = model_stats(vgg, 224)
    assert stats["params"] == pytest.approx(138.4e6, rel=0.01)
    assert stats["gmacs_per_image"] == pytest.approx(15.5, rel=0.02)
    assert model_stats(inception, 299)["gmacs_per_image"] == pytest.approx(5.7, rel=0.02)
    assert inception.training
    small = build("small_cnn", in_channels=1)
    stats = model_stats(small, 28, in_channels=1)
    assert stats["params"] == sum(p.numel() for p in small.parameters())
    assert 0 < stats["macs_per_image"] < 1e8


def test_stats_fall_back_to_a_real_forward(monkeypatch):
    def no_meta(*args):
        raise NotImplementedError("no meta kernel")

    monkeypatch.setattr(modelstats, "_count_on_meta", no_meta)
    model = build("resnet18", num_classes=1000).train()
    assert model_stats(model, 224)["gmacs_per_image"] == pytest.approx(1.82, rel=0.02)
    assert model.training
