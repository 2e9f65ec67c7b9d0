"""Real data: a small model learns real MNIST, and each of the seed's 9 cells trains one tiny
epoch at its `paper` input size (224 px, 299 for Inception-V3) on the real files."""

import pytest
from conftest import run_study

from study.stores import read_file_store

pytestmark = pytest.mark.realdata


def test_small_cnn_learns_real_mnist(real_data, tmp_path):
    run_study(
        "run", "with", "model=small_cnn", "dataset=mnist", f"data_root={real_data}",
        "epochs=1", "train_limit=5000", "test_limit=1000", "lr=0.002", "batch_size=50",
        "-F", tmp_path / "runs", cwd=tmp_path,
    )  # fmt: skip
    (rec,) = read_file_store(tmp_path / "runs")
    assert rec.status == "COMPLETED"
    assert rec.info["dataset"]["train_available"] == 60000
    assert rec.result["top1"] > 0.90, rec.result


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "tiny_imagenet"])
@pytest.mark.parametrize("model, size", [("vgg16", 224), ("resnet50", 224), ("inception_v3", 299)])
def test_seed_cell_trains_one_tiny_epoch_at_paper_size(real_data, tmp_path, model, size, dataset):
    run_study(
        "run", "with", "paper", f"model={model}", f"dataset={dataset}", f"data_root={real_data}",
        "epochs=1", "train_limit=4", "test_limit=4", "batch_size=4", "gallery=2",
        "-F", tmp_path / "runs", cwd=tmp_path,
    )  # fmt: skip
    (rec,) = read_file_store(tmp_path / "runs")
    assert rec.status == "COMPLETED"
    assert rec.config["image_size"] == size and rec.config["head"] == "append"
    assert rec.info["training"]["epochs_completed"] == 1
    assert len(rec.metric("train_loss")) == 1
