"""Convert a registered dataset into the HDF5 file that its '_hdf5' twin reads.

    python make_hdf5.py --dataset I128 --data_root data \
        [--batch_size 256 --num_workers 16 --chunk_size 500 --compression lzf]
    python make_hdf5.py --dataset folder --data_root my_images --resolution 64

The file goes to <data_root>/<root of the twin in datasets.DATASETS>, e.g.
data/ILSVRC128.hdf5 for I128, data/Digits32.hdf5 for Digits32 or
my_images/folder64.hdf5 for your own images. It holds `imgs` uint8 (N, 3, H, W),
chunked and optionally compressed, and `labels` int64 (N,), in dataset order,
and records the source's class count in the attribute n_classes. Images are the
non-augmented training transform's output stored as round((x + 1) * 127.5), so
the HDF5 dataset reads back exactly the source's tensors. The file is written
under a temporary name in the same folder and renamed when complete: an
interrupted run leaves no file that looks complete, and an existing file is only
replaced with --overwrite.
"""
import os
import time
from argparse import ArgumentParser

import h5py
import numpy as np
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import checkpoints
import datasets as dset
import utils

COMPRESSIONS = ('none', 'lzf', 'gzip')


def prepare_parser():
    """make_hdf5's own flags (the original's, plus --resolution, --base_root, --overwrite
    and --max_images), so that --help lists only what this script reads."""
    parser = ArgumentParser(description='Convert a registered dataset into an HDF5 file.')
    arg = parser.add_argument
    sources = [name for name, spec in dset.DATASETS.items() if spec.kind != 'hdf5']
    arg('--dataset', type=str, default='I128',
        help=f"Dataset to convert, one of {', '.join(sources)} (default: %(default)s)")
    arg('--data_root', type=str, default='data',
        help='Where the dataset is, and where the HDF5 file goes (default: %(default)s)')
    arg('--base_root', type=str, default='',
        help='If set, --data_root is <base_root>/data (default: %(default)s)')
    arg('--resolution', type=int, default=0,
        help='Image size for --dataset folder; registered datasets have their own '
             '(default: %(default)s)')
    arg('--batch_size', type=int, default=256,
        help='Images read per batch (default: %(default)s)')
    arg('--num_workers', type=int, default=16,
        help='DataLoader worker processes (default: %(default)s)')
    arg('--chunk_size', type=int, default=500,
        help='Images per HDF5 chunk (default: %(default)s)')
    arg('--compression', nargs='?', const='lzf', default='none', choices=COMPRESSIONS,
        help='Chunk compression; a bare --compression means lzf, as in the original. '
             'Compressed files are smaller but much slower to read without --load_in_mem '
             '(default: %(default)s)')
    arg('--overwrite', action='store_true', default=False,
        help='Replace an existing HDF5 file (default: %(default)s)')
    arg('--max_images', type=int, default=0,
        help='Convert only the first N images; 0 means all (default: %(default)s)')
    return parser


def parse_config(argv=None):
    """The config dict from the command line (--base_root applied to --data_root)."""
    config = vars(prepare_parser().parse_args(argv))
    if config['base_root']:
        config['data_root'] = os.path.join(config['base_root'], 'data')
    return config


def _check_args(batch_size, num_workers, chunk_size, compression, max_images):
    errors = []
    for flag, value, low in (('batch_size', batch_size, 1), ('chunk_size', chunk_size, 1),
                             ('num_workers', num_workers, 0), ('max_images', max_images, 0)):
        if value < low:
            errors.append(f'--{flag} {value}: must be at least {low}')
    if compression not in COMPRESSIONS:
        errors.append(f"--compression {compression}: use one of {', '.join(COMPRESSIONS)}")
    if errors:
        raise dset.DataError('\n'.join(errors))


def make_hdf5(dataset, data_root='data', batch_size=256, num_workers=16, chunk_size=500,
              compression='none', overwrite=False, max_images=0, resolution=0):
    """Write `dataset` (a registered non-HDF5 dataset) to its twin's HDF5 file; returns its path.

    imgs: uint8 (N, 3, S, S) with S the dataset's image size (`resolution` for
    `folder`); labels: int64 (N,). A source whose class count differs from the
    dataset's (a 3-class folder as I32) is refused. Raises DataError before touching
    anything if the file exists and not `overwrite`.
    """
    _check_args(batch_size, num_workers, chunk_size, compression, max_images)
    twin = dset.hdf5_twin(dataset)
    size = dset.image_size(dataset, resolution)
    if dset.DATASETS[twin].image_size not in (None, size):
        raise dset.DataError(f"datasets.DATASETS: '{dataset}' and '{twin}' have different "
                             'image sizes; make them agree')
    path = dset.data_path(twin, data_root, size)
    if os.path.exists(path) and not overwrite:
        raise dset.DataError(f'{path} already exists; pass --overwrite to replace it')
    # Before reading (and checking) every image, not after.
    utils.check_writable(os.path.dirname(path) or '.', '--data_root')
    source = dset.get_dataset(dataset, data_root, augment=False, resolution=size,
                              n_classes=dset.DATASETS[dataset].n_classes)
    n_classes = getattr(source, 'n_classes', None) or dset.DATASETS[dataset].n_classes
    n = min(max_images, len(source)) if max_images else len(source)
    if n < len(source):
        source = Subset(source, range(n))
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, drop_last=False,
                        num_workers=num_workers, pin_memory=False)
    chunk = min(chunk_size, n)
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        # Written under a temporary name and renamed when complete; temporaries that a
        # killed run left behind are removed first. atomic_write's flock marks the
        # temporary as live, so HDF5's own file lock (which would conflict) is off.
        with checkpoints.atomic_write(path) as tmp, h5py.File(tmp, 'w', locking=False) as f:
            _fill(f, loader, dataset, path, n, size, chunk, compression, n_classes)
    except OSError as err:
        raise dset.DataError(f'{path}: cannot write the HDF5 file ({err}); check --data_root '
                             'and the free space there') from None
    return path


def _fill(f, loader, dataset, path, n, size, chunk, compression, n_classes):
    """Write loader's n images and labels into the open HDF5 file f, chunk by chunk."""
    comp = None if compression == 'none' else compression
    imgs = f.create_dataset('imgs', (n, 3, size, size), dtype='uint8',
                            chunks=(chunk, 3, size, size), compression=comp)
    labels = np.empty(n, dtype=np.int64)
    # Whole chunks are written at once: a partial write to a compressed
    # chunk would read, decompress and recompress it every batch.
    buf = np.empty((chunk, 3, size, size), dtype=np.uint8)
    filled, written = 0, 0
    for x, y in tqdm(loader, desc=f'{dataset} -> {path}', unit='batch'):
        if tuple(x.shape[1:]) != (3, size, size):
            raise dset.DataError(f'{dataset}: items are {tuple(x.shape[1:])}, expected '
                                 f'(3, {size}, {size})')
        u8 = dset.to_uint8_image(x).numpy()
        labels[written + filled:written + filled + len(u8)] = y.numpy()
        start = 0
        while start < len(u8):
            take = min(chunk - filled, len(u8) - start)
            buf[filled:filled + take] = u8[start:start + take]
            filled, start = filled + take, start + take
            if filled == chunk or written + filled == n:
                imgs[written:written + filled] = buf[:filled]
                written, filled = written + filled, 0
    if written != n:
        raise dset.DataError(f'{dataset}: read {written} images, expected {n}')
    f.create_dataset('labels', data=labels, chunks=(chunk,), compression=comp)
    f.attrs['source'] = dataset
    f.attrs['n_classes'] = n_classes


def run(config):
    """make_hdf5 from a prepared config (the original's entry point); returns the path."""
    return make_hdf5(config['dataset'], config['data_root'], config['batch_size'],
                     config['num_workers'], config['chunk_size'], config['compression'],
                     config['overwrite'], config['max_images'], config.get('resolution', 0))


def main(argv=None):
    """Parse the command line and build the HDF5 file."""
    config = parse_config(argv)
    start = time.perf_counter()
    try:
        path = run(config)
    except utils.USER_ERRORS as err:
        utils.fail(str(err))
    except KeyboardInterrupt:
        utils.fail('interrupted; no HDF5 file was written', status=130)
    print(f'wrote {path} in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
