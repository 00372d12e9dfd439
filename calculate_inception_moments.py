"""Inception moments of a dataset, for FID, and the Inception Score of the real data.

Streams the whole dataset once through the Inception network (memory does not grow with the
dataset) and writes ``<data_root>/<dataset>_inception_moments.npz`` (``..._tf.npz`` with
``--inception_network tf``) holding mu (2048,) and sigma (2048, 2048), which train.py and
sample.py read for FID::

    python calculate_inception_moments.py --dataset I128_hdf5 --data_root data
    python calculate_inception_moments.py --dataset C10 --inception_network tf
    python calculate_inception_moments.py --dataset folder_hdf5 --resolution 64 --data_root imgs

A trailing ``_hdf5`` is dropped from the file name: both forms of a dataset share moments.
Your own images' moments carry the resolution (``imgs/folder64_inception_moments.npz``).
"""
import os

import torch
from tqdm import tqdm

import datasets
import inception_utils
import utils


def prepare_parser():
    """The shared parser (its --inception_network and --inception_weights pick the network)."""
    parser = utils.prepare_parser()
    parser.description = 'Calculate and store Inception moments of a dataset for FID.'
    return parser


def parse_config(argv=None):
    """The prepared config from the shared flags (exit 2 with the reason on bad ones)."""
    return utils.parse_config(prepare_parser(), argv, check_model=False)


def compute_moments(loader, net, num_splits=10, seed=0, progress=True):
    """Stream `loader` through `net` and return the Inception statistics of its images.

    loader: yields (x (B, 3, H, W) in [-1, 1], y); len(loader.dataset) images in all.
    net: maps x to (pool (B, 2048), logits), e.g. inception_utils.load_inception_net().
    Returns dict(mu (2048,), sigma (2048, 2048), IS_mean, IS_std, num_images). Images go to IS
    splits by a `seed`-ed permutation, since datasets are often stored sorted by class.
    """
    num_images = len(loader.dataset)
    # A toy dataset of fewer images than splits still gets its moments (one image per split).
    num_splits = min(num_splits, num_images)
    batches = (x for x, _ in loader)
    with tqdm(total=num_images, unit='img', disable=not progress) as pbar:
        moments, scorer = inception_utils.accumulate_inception_statistics(
            batches, net, num_images, num_splits, split_seed=seed, pbar=pbar)
    IS_mean, IS_std = scorer.result()
    return {'mu': moments.mu, 'sigma': moments.sigma, 'IS_mean': IS_mean, 'IS_std': IS_std,
            'num_images': num_images}


def run(config):
    """Compute and save the moments of config['dataset'] with config['inception_network']."""
    network = config['inception_network']
    path = inception_utils.moments_filename(config['dataset'], config['data_root'], network,
                                            config['resolution'])
    # Where the moments go must be writable before the pass over the data, not after it.
    utils.check_writable(os.path.dirname(path) or '.', '--data_root')
    # Load the network first: missing weights fail before any data is read.
    net = inception_utils.load_inception_net(parallel=config['parallel'], network=network,
                                             weights_path=config['inception_weights'])
    loader = datasets.get_data_loaders(
        dataset=config['dataset'], data_root=config['data_root'], augment=config['augment'],
        batch_size=config['batch_size'], num_workers=config['num_workers'], shuffle=False,
        load_in_mem=config['load_in_mem'], pin_memory=config['pin_memory'], drop_last=False,
        seed=config['seed'], resolution=config['resolution'])[0]
    stats = compute_moments(loader, net, seed=config['seed'])
    print(f"Training data from dataset {config['dataset']} has IS of {stats['IS_mean']:5.5f} "
          f"+/- {stats['IS_std']:5.5f} ({network} Inception, {stats['num_images']} images)")
    inception_utils.save_moments(path, stats['mu'], stats['sigma'])
    print(f'Saved the Inception moments to {path}')
    return stats


def main(argv=None):
    """Parse the flags, run, and exit with status 2 and one line on missing Inception
    weights, bad data (naming the file) or an unwritable output."""
    config = parse_config(argv)
    torch.backends.cudnn.benchmark = True
    with utils.errors_reported('the moments file'):
        run(config)


if __name__ == '__main__':
    main()
