"""The device-resident batch path: every image once per epoch, transforms done right."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from study.loader import BatchTransform, DeviceSplit


def _split(n=10, size=8, channels=1):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    return DeviceSplit(images, np.arange(n) % 3, torch.device("cpu")), images


def test_train_batches_visit_every_image_once_in_a_seeded_order():
    data, _ = _split(n=10)
    t = BatchTransform(8, mean=(0.5,), std=(0.5,), out_channels=1)
    seen = [
        torch.cat([y for _, y in data.batches(4, t, train=True, generator=g)])
        for g in (torch.Generator().manual_seed(1), torch.Generator().manual_seed(1))
    ]
    assert torch.equal(seen[0], seen[1])
    assert sorted(seen[0].tolist()) == sorted((np.arange(10) % 3).tolist())


def test_a_last_batch_of_one_is_dropped_in_training_only():
    data, _ = _split(n=9)
    t = BatchTransform(8, mean=(0.5,), std=(0.5,), out_channels=1)
    g = torch.Generator().manual_seed(0)
    assert [len(y) for _, y in data.batches(4, t, train=True, generator=g)] == [4, 4]
    assert [len(y) for _, y in data.batches(4, t, train=False)] == [4, 4, 1]
    assert data.num_batches(4, train=True) == 2


def test_greyscale_is_resized_normalised_and_shared_across_rgb():
    data, images = _split(n=4, size=8, channels=1)
    t = BatchTransform(16, mean=(0.25,), std=(0.5,), out_channels=3)
    x, _ = next(data.batches(4, t, train=False))
    assert x.shape == (4, 3, 16, 16)
    expected = F.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255,
        size=(16, 16),
        mode="bilinear",
        antialias=True,
    )
    torch.testing.assert_close(x[:, 0:1], (expected - 0.25) / 0.5)
    assert torch.equal(x[:, 0], x[:, 2])


def test_rgb_normalisation_per_channel_at_native_size():
    data, images = _split(n=2, size=8, channels=3)
    t = BatchTransform(8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 1.0))
    x, _ = next(data.batches(2, t, train=False))
    raw = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(x[:, 1], (raw[:, 1] - 0.2) / 0.25)


@pytest.mark.parametrize("augment", ["flip", "crop-flip"])
def test_augmentation_is_seeded_and_only_mirrors_and_shifts(augment):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    data = DeviceSplit(images, np.arange(6), torch.device("cpu"))
    t = BatchTransform(8, mean=(0, 0, 0), std=(1, 1, 1), augment=augment)
    x, y = next(data.batches(6, t, train=True, generator=torch.Generator().manual_seed(3)))
    x2, _ = next(data.batches(6, t, train=True, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(x, x2)
    raw = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    padded = F.pad(raw, (4, 4, 4, 4), mode="reflect")
    shifts = [(0, 0)] if augment == "flip" else [(dy, dx) for dy in range(9) for dx in range(9)]
    flipped = 0
    for out, label in zip(x, y.tolist(), strict=True):
        source = raw[label : label + 1] if augment == "flip" else padded[label : label + 1]
        candidates = {}
        for dy, dx in shifts:
            crop = source[0, :, dy : dy + 8, dx : dx + 8] if augment != "flip" else source[0]
            candidates[(dy, dx, False)] = crop
            candidates[(dy, dx, True)] = crop.flip(-1)
        matches = [k for k, c in candidates.items() if torch.equal(c, out)]
        assert matches, "an augmented image is not a mirrored/shifted copy of its source"
        flipped += all(k[2] for k in matches)
    assert 0 < flipped < 6  # seed 3 flips some images and not others
