"""Compact subsets of CIFAR-10 and Tiny-ImageNet in their own distribution formats, small enough
to travel to a lent GPU machine beside MNIST (at most 64 MiB a call; issue 19's seed cells):

    python benchmarks/subset_data.py ../shared/data .gpu-data \\
        --cifar-train 300 --cifar-test 100 --tiny-train 20 --tiny-val 5

writes `.gpu-data/cifar-10-python.tar.gz` (one training batch and a test batch, the first N
images of each class, as CIFAR-10's pickled batches) and `.gpu-data/tiny-imagenet-200.zip` (the
first N training and M validation images of each class, the official folder layout, the JPEG
files copied byte for byte). study reads both exactly as it reads the full archives; the sizes
are in the archives, so a record of a run on them says what it trained on.
"""

from __future__ import annotations

import argparse
import io
import pickle
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

CIFAR = "cifar-10-python.tar.gz"
TINY = "tiny-imagenet-200.zip"


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` images of each class, in their original order."""
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:per_class]] = True
    return np.flatnonzero(keep)


def cifar_subset(source: Path, target: Path, train: int, test: int) -> None:
    from study.plugins.cifar import decode_cifar10

    decoded = decode_cifar10([source / CIFAR])
    members = {}
    for name, split, per_class in (
        ("data_batch_1", decoded.train, train),
        ("test_batch", decoded.test, test),
    ):
        index = first_per_class(split.labels, per_class)
        planar = split.images[index].transpose(0, 3, 1, 2).reshape(len(index), 3072)
        batch = {
            b"batch_label": f"{name}, the first {per_class} images of each class".encode(),
            b"labels": [int(v) for v in split.labels[index]],
            b"data": np.ascontiguousarray(planar, dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in index],
        }
        members[name] = pickle.dumps(batch, protocol=2)
    names = [n.encode() for n in decoded.class_names]
    members["batches.meta"] = pickle.dumps({b"label_names": names}, protocol=2)
    with tarfile.open(target / CIFAR, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def tiny_subset(source: Path, target: Path, train: int, val: int) -> None:
    with zipfile.ZipFile(source / TINY) as src, zipfile.ZipFile(target / TINY, "w") as dst:
        names = src.namelist()
        root = next(n for n in names if n.endswith("wnids.txt")).rsplit("wnids.txt", 1)[0]
        for index in ("wnids.txt", "words.txt"):
            dst.writestr(root + index, src.read(root + index))
        per_class = defaultdict(list)
        for name in sorted(names):
            parts = name[len(root) :].split("/")
            if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and parts[3]:
                per_class[parts[1]].append(name)
        for wnid, files in sorted(per_class.items()):
            for name in files[:train]:
                dst.writestr(name, src.read(name))
            boxes = f"{root}train/{wnid}/{wnid}_boxes.txt"
            if boxes in names:
                kept = {Path(f).name for f in files[:train]}
                lines = src.read(boxes).decode().splitlines()
                dst.writestr(boxes, "".join(f"{ln}\n" for ln in lines if ln.split("\t")[0] in kept))
        annotations = src.read(f"{root}val/val_annotations.txt").decode().splitlines()
        taken, rows = defaultdict(int), []
        for line in annotations:
            image, wnid = line.split("\t")[:2]
            if taken[wnid] < val:
                taken[wnid] += 1
                rows.append(line)
                dst.writestr(f"{root}val/images/{image}", src.read(f"{root}val/images/{image}"))
        dst.writestr(f"{root}val/val_annotations.txt", "".join(f"{r}\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a data root holding the full archives")
    parser.add_argument("target", type=Path, help="the data root to write the subsets into")
    parser.add_argument("--cifar-train", type=int, default=300, help="training images per class")
    parser.add_argument("--cifar-test", type=int, default=100, help="test images per class")
    parser.add_argument("--tiny-train", type=int, default=20, help="training images per class")
    parser.add_argument("--tiny-val", type=int, default=5, help="validation images per class")
    args = parser.parse_args()
    args.target.mkdir(parents=True, exist_ok=True)
    cifar_subset(args.source, args.target, args.cifar_train, args.cifar_test)
    tiny_subset(args.source, args.target, args.tiny_train, args.tiny_val)
    for name in (CIFAR, TINY):
        print(f"{args.target / name}: {(args.target / name).stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
