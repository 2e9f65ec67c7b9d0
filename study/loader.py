"""Batches for training and evaluation: the uint8 cache as one tensor, batched
resize/normalise/augment on the training device.

Where the split fits (`data_on_device`), it lives on the training device as uint8 (N, H, W, C)
(`DeviceSplit`): a batch is an index slice of it. Where it does not, it stays in pinned host
memory (`HostSplit`): each batch is gathered on the host and copied to the device on a side
stream, one batch ahead of the step that uses it. Either way conversion to float,
greyscale-to-RGB, augmentation, resizing and normalisation run on the whole batch at once on
the device, with no per-image Python, no PIL and no DataLoader worker on the hot path.

Nothing here waits for the device: constants are made once per device, and the shuffling and
augmentation are drawn on the device from the caller's generator (a generator of the
training device; on the CPU the same seed draws the same numbers every time).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from study.errors import DataError

# torchvision's ImageNet statistics: what pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


RESIDENCY = ("auto", True, False)  # data_on_device
# At most this share of the device's free memory holds data; the rest is the model's.
DEVICE_DATA_SHARE = 0.5
# At most this share of the host's available memory is pinned for data.
HOST_DATA_SHARE = 0.8


@functools.lru_cache(maxsize=32)
def _normalisation(mean: tuple, std: tuple, device: torch.device):
    """(mean, std) as (1, C, 1, 1) tensors on `device`, made once: a per-batch torch.tensor()
    would be a blocking host-to-device copy in every step."""
    as_tensor = functools.partial(torch.tensor, device=device, dtype=torch.float32)
    return as_tensor(mean).view(1, -1, 1, 1), as_tensor(std).view(1, -1, 1, 1)


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
        mean, std = _normalisation(tuple(self.mean), tuple(self.std), x.device)
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
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
        rows = (torch.arange(h, device=dev)[None, :] + dy[:, None])[:, :, None]
        cols = (torch.arange(w, device=dev)[None, :] + dx[:, None])[:, None, :]
        x = xp[torch.arange(n, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if kind not in ("flip", "crop-flip"):
        return x
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _order(n: int, train: bool, generator: torch.Generator | None, device) -> torch.Tensor:
    """Training order: a permutation drawn on `device` from `generator`; else 0..n-1."""
    if train:
        return torch.randperm(n, generator=generator, device=device)
    return torch.arange(n, device=device)


def _resumed(slices: list, generator: torch.Generator | None, resume) -> list:
    """The batches left after `resume`'s first ones, `generator` set to where it stood then."""
    if resume is None:
        return slices
    done, state = resume
    if generator is not None:
        generator.set_state(state)
    return slices[done:]


class _Split:
    """What both kinds of split share: their length and how they cut it into batches."""

    labels: torch.Tensor
    device: torch.device

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int, train: bool, drop_last: bool = False) -> int:
        return len(batch_slices(len(self), batch_size, train, drop_last))


class DeviceSplit(_Split):
    """One split (train or test) held on the device, served as transformed batches."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.device = torch.device(device)

    def batches(
        self,
        batch_size: int,
        transform: BatchTransform,
        *,
        train: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        resume: tuple[int, torch.Tensor] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (inputs, labels). Training order is a permutation drawn from `generator`.
        `resume` (batch, generator state): continue the epoch from that batch, the generator as
        it stood there (a mid-epoch checkpoint): the same batches, augmented the same way."""
        order = _order(len(self), train, generator, self.device)
        slices = _resumed(batch_slices(len(self), batch_size, train, drop_last), generator, resume)
        for start, stop in slices:
            idx = order[start:stop]
            yield transform(self.images[idx], train, generator), self.labels[idx]


class HostSplit(_Split):
    """One split held in host memory (pinned where the device is a GPU), for data sets larger
    than the device's memory. Batches come in exactly DeviceSplit's order and augmentation.

    Each batch is gathered on the host into one of two pinned buffers and copied on a side
    stream while the device trains on the previous batch; the host waits only before reusing a
    buffer, for the copy issued two batches earlier, never for the computation.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        images = torch.from_numpy(np.ascontiguousarray(images))
        labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.images = images.pin_memory() if self._cuda else images
        self.labels = labels.pin_memory() if self._cuda else labels

    def batches(
        self,
        batch_size: int,
        transform: BatchTransform,
        *,
        train: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        resume: tuple[int, torch.Tensor] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = generator.device if generator is not None else self.device
        # The order is drawn where DeviceSplit draws it, then read once per epoch.
        order = _order(len(self), train, generator, device).cpu()
        slices = _resumed(batch_slices(len(self), batch_size, train, drop_last), generator, resume)
        if not self._cuda:
            for start, stop in slices:
                idx = order[start:stop]
                yield transform(self.images[idx], train, generator), self.labels[idx]
            return
        copy_stream = torch.cuda.Stream(self.device)
        width = max((stop - start for start, stop in slices), default=0)
        buffers = [
            (
                torch.empty((width, *self.images.shape[1:]), dtype=torch.uint8).pin_memory(),
                torch.empty((width,), dtype=torch.int64).pin_memory(),
                torch.cuda.Event(),
            )
            for _ in range(2)
        ]

        def fetch(i: int):
            start, stop = slices[i]
            host_images, host_labels, copied = buffers[i % 2]
            copied.synchronize()  # the copy out of this buffer two batches ago is done
            idx = order[start:stop]
            n = stop - start
            torch.index_select(self.images, 0, idx, out=host_images[:n])
            torch.index_select(self.labels, 0, idx, out=host_labels[:n])
            with torch.cuda.stream(copy_stream):
                images = host_images[:n].to(self.device, non_blocking=True)
                labels = host_labels[:n].to(self.device, non_blocking=True)
                copied.record(copy_stream)
            return images, labels

        pending = fetch(0) if slices else None
        for i in range(len(slices)):
            images, labels = pending
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(copy_stream)
            # The caching allocator must not hand these to the copy stream while in use here.
            images.record_stream(compute)
            labels.record_stream(compute)
            if i + 1 < len(slices):
                pending = fetch(i + 1)
            yield transform(images, train, generator), labels


Split = DeviceSplit | HostSplit


def available_host_memory() -> int:
    """Bytes of host memory available to new allocations (Linux's MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def data_on_device(setting, nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` of uint8 images are held on `device` (True) or in host memory (False),
    by `setting` (data_on_device: auto, true, false). Raises DataError, before any work, when
    neither fits."""
    gib = 2**30
    host = available_host_memory()
    if device.type != "cuda":
        # The CPU's device memory is host memory: both paths hold the data there.
        if nbytes > HOST_DATA_SHARE * host:
            raise DataError(
                f"the data needs {nbytes / gib:.1f} GiB of memory as uint8 but only "
                f"{host / gib:.1f} GiB is available; use train_limit / test_limit to fit"
            )
        return setting is not False
    free, _ = torch.cuda.mem_get_info(device)
    fits_device = nbytes <= DEVICE_DATA_SHARE * free
    if setting is True or (setting == "auto" and fits_device):
        if not fits_device:
            raise DataError(
                f"data_on_device=true: the data needs {nbytes / gib:.1f} GiB on {device} but at "
                f"most {DEVICE_DATA_SHARE * free / gib:.1f} GiB ({DEVICE_DATA_SHARE:.0%} of its "
                f"free memory) is for data; use data_on_device=auto or false, or train_limit"
            )
        return True
    if nbytes > HOST_DATA_SHARE * host:
        raise DataError(
            f"the data needs {nbytes / gib:.1f} GiB as uint8: more than "
            f"{DEVICE_DATA_SHARE:.0%} of {device}'s free memory "
            f"({free / gib:.1f} GiB) and than {HOST_DATA_SHARE:.0%} of the host's available "
            f"memory ({host / gib:.1f} GiB); use train_limit / test_limit to fit"
        )
    return False


def make_split(images: np.ndarray, labels: np.ndarray, device, on_device: bool) -> Split:
    return (DeviceSplit if on_device else HostSplit)(images, labels, device)


def batch_slices(
    n: int, batch_size: int, train: bool, drop_last: bool = False
) -> list[tuple[int, int]]:
    slices = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    # drop_last (training only): every batch one shape, so one cuDNN plan and one compiled graph.
    if train and drop_last and len(slices) > 1 and slices[-1][1] - slices[-1][0] < batch_size:
        slices.pop()
    # BatchNorm cannot train on a batch of one image: drop such a last batch in training only.
    if train and len(slices) > 1 and slices[-1][1] - slices[-1][0] == 1:
        slices.pop()
    return slices
