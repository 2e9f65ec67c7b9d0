"""Device-resident batches: the uint8 cache as one tensor, batched resize/normalise/augment.

The whole split lives on the training device as uint8 (N, H, W, C). A batch is an index slice of
it; conversion to float, greyscale-to-RGB, augmentation, resizing and normalisation run on the
whole batch at once on that device. There is no per-image Python, no PIL and no DataLoader
worker on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# torchvision's ImageNet statistics: what pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENTATIONS = ("none", "flip", "crop", "crop-flip")


@dataclass(frozen=True)
class BatchTransform:
    """uint8 NHWC batch on the device -> normalised float NCHW batch at the model's size."""

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    out_channels: int = 3
    augment: str = "none"
    crop_padding: int = 4
    channels_last: bool = False

    def __call__(self, images: torch.Tensor, train: bool, generator: torch.Generator | None):
        x = images.permute(0, 3, 1, 2).float().div_(255)
        if train and self.augment != "none":
            x = _augment(x, self.augment, self.crop_padding, generator)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            # antialias matches PIL's resize when shrinking; it is a no-op when enlarging.
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        if x.shape[1] == 1 and self.out_channels == 3:
            # Greyscale: normalise the one channel, then share it across RGB (no copy).
            x = ((x - mean[:, :1]) / std[:, :1]).expand(-1, 3, -1, -1)
        else:
            x = (x - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = x.contiguous()
        return x


def _augment(x: torch.Tensor, kind: str, pad: int, generator: torch.Generator | None):
    n, _, h, w = x.shape
    dev = x.device
    if kind in ("crop", "crop-flip"):
        # Random crop of a reflect-padded batch, one offset per image, by gather indices.
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        rows = (torch.arange(h, device=dev)[None, :] + dy[:, None])[:, :, None]
        cols = (torch.arange(w, device=dev)[None, :] + dx[:, None])[:, None, :]
        x = xp[torch.arange(n, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if kind not in ("flip", "crop-flip"):
        return x
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class DeviceSplit:
    """One split (train or test) held on the device, served as transformed batches."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int, train: bool) -> int:
        return len(_batch_slices(len(self), batch_size, train))

    def batches(
        self,
        batch_size: int,
        transform: BatchTransform,
        *,
        train: bool,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (inputs, labels). Training order is a permutation drawn from `generator`."""
        if train:
            order = torch.randperm(len(self), generator=generator).to(self.device)
        else:
            order = torch.arange(len(self), device=self.device)
        for start, stop in _batch_slices(len(self), batch_size, train):
            idx = order[start:stop]
            yield transform(self.images[idx], train, generator), self.labels[idx]


def _batch_slices(n: int, batch_size: int, train: bool) -> list[tuple[int, int]]:
    slices = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    # BatchNorm cannot train on a batch of one image: drop such a last batch in training only.
    if train and len(slices) > 1 and slices[-1][1] - slices[-1][0] == 1:
        slices.pop()
    return slices
