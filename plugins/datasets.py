"""Built-in data sets: MNIST, Fashion-MNIST, CIFAR-10 and Tiny-ImageNet-200.

Each is read from its official distribution format, laid out under ``data_root`` as torchvision
lays out its downloads. A plugin only finds and decodes files; the core (``study.data``)
downloads, caches and computes statistics. The formats live in their own modules (``idx``,
``cifar``, ``tinyimagenet``), each reading untrusted files with caps fixed by the format
(``bounded``, ``safepickle``); this module holds the specs and the hook.
"""

from __future__ import annotations

from study import hookimpl
from study.plugins.cifar import CIFAR_ARCHIVE, decode_cifar10, find_cifar10
from study.plugins.idx import decode_idx, find_idx
from study.plugins.imagefolder import image_folder_spec
from study.plugins.tinyimagenet import TINY_ARCHIVE, TINY_SIZE, decode_tiny, find_tiny, tiny_classes
from study.specs import DatasetSpec, Download

# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: four IDX files, gzipped or not.

MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def idx_downloads(folder: str, mirrors: tuple[str, ...], md5s: dict[str, str]) -> list[Download]:
    # Downloads sharing a filename are mirrors of one another: the core tries them in order.
    return [
        Download(mirror + name, f"{folder}/raw/{name}", md5)
        for name, md5 in md5s.items()
        for mirror in mirrors
    ]


def mnist_spec() -> DatasetSpec:
    names = [str(d) for d in range(10)]
    return DatasetSpec(
        name="mnist",
        num_classes=10,
        class_names=names,
        image_size=28,
        channels=1,
        train_size=60000,
        test_size=10000,
        find=lambda root: find_idx("mnist", "MNIST", root),
        decode=lambda files, workers=0: decode_idx(files, names),
        downloads=idx_downloads("MNIST", MNIST_MIRRORS, MNIST_MD5),
        description="MNIST handwritten digits, 28x28 grey (LeCun et al. 1998)",
        display_name="MNIST",
        paper_epochs=6,  # a mirrored digit is no digit: mirror_invariant stays False
    )


def fashion_mnist_spec() -> DatasetSpec:
    return DatasetSpec(
        name="fashion_mnist",
        num_classes=10,
        class_names=FASHION_CLASSES,
        image_size=28,
        channels=1,
        train_size=60000,
        test_size=10000,
        find=lambda root: find_idx("fashion_mnist", "FashionMNIST", root),
        decode=lambda files, workers=0: decode_idx(files, list(FASHION_CLASSES)),
        downloads=idx_downloads("FashionMNIST", FASHION_MIRRORS, FASHION_MD5),
        description="Fashion-MNIST Zalando article images, 28x28 grey (Xiao et al. 2017)",
        display_name="Fashion-MNIST",
        paper_epochs=6,  # not in the seed study: MNIST's epochs
        mirror_invariant=True,
    )


# ---------------------------------------------------------------------------------------------
# CIFAR-10: pickled batches, read from the .tar.gz in place or from the extracted folder.


def cifar10_spec() -> DatasetSpec:
    return DatasetSpec(
        name="cifar10",
        num_classes=10,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        image_size=32,
        channels=3,
        train_size=50000,
        test_size=10000,
        find=find_cifar10,
        decode=decode_cifar10,
        downloads=[
            Download(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                CIFAR_ARCHIVE,
                "c58f30108f718f92721af3b95e74349a",
            )
        ],
        description="CIFAR-10 tiny natural images, 32x32 RGB (Krizhevsky 2009)",
        display_name="CIFAR-10",
        paper_epochs=25,
        mirror_invariant=True,
    )


# ---------------------------------------------------------------------------------------------
# Tiny-ImageNet-200: JPEG files, read from the .zip in place or from the extracted folder.


def tiny_imagenet_spec() -> DatasetSpec:
    classes = tiny_classes()
    return DatasetSpec(
        name="tiny_imagenet",
        num_classes=200,
        class_names=[name for _, name in classes],
        image_size=TINY_SIZE,
        channels=3,
        train_size=100000,
        test_size=10000,
        find=find_tiny,
        decode=decode_tiny,
        downloads=[
            Download(
                "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                TINY_ARCHIVE,
                "90528d7ca1a48142e341f4ef8d21d0de",
            )
        ],
        description="Tiny-ImageNet-200, 200 ImageNet classes at 64x64 RGB; test split = val",
        display_name="Tiny-ImageNet",
        paper_epochs=30,
        mirror_invariant=True,
        extra={"wnids": [wnid for wnid, _ in classes]},
    )


@hookimpl
def study_datasets():
    return [
        mnist_spec(),
        fashion_mnist_spec(),
        cifar10_spec(),
        tiny_imagenet_spec(),
        image_folder_spec(),
    ]
