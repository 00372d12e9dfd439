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

Beside mu and sigma the file notes num_images, split ('train') and network. On request it
also holds what the other metrics (--test_metrics) need from the real data, from the same
pass: ``--save_features`` the pool features (N, 2048) float32 and labels (N,) (for KID,
precision/recall, density/coverage and intra-class FID; 8 KB per image), and
``--save_class_moments`` per-class moments class_mu (C, 2048), class_sigma (C, 2048, 2048),
classes (C,) (for intra-class FID; 32 MB per class). mu and sigma stay where the TF TTUR,
pytorch-fid and clean-fid code read them.
"""
import os
import warnings

import numpy as np
import torch
from tqdm import tqdm

import datasets
import inception_utils
import utils

# The data the moments come from: the training split, whole (the loaders read no other).
SPLIT = 'train'
# Per-class moments beyond this many bytes are refused (use the features instead).
CLASS_MOMENTS_LIMIT = 8 * 2 ** 30


def prepare_parser():
    """The shared parser (its --inception_network and --inception_weights pick the network)."""
    parser = utils.prepare_parser()
    parser.description = 'Calculate and store Inception moments of a dataset for FID.'
    parser.add_argument('--save_features', action='store_true', default=False,
                        help='Also store the real pool features and labels, for KID, '
                             'precision/recall, density/coverage and intra-class FID '
                             '(default: %(default)s)')
    parser.add_argument('--save_class_moments', action='store_true', default=False,
                        help='Also store per-class moments, for intra-class FID (32 MB per '
                             'class; for many classes use --save_features) '
                             '(default: %(default)s)')
    return parser


def parse_config(argv=None):
    """The prepared config from the shared flags (exit 2 with the reason on bad ones)."""
    return utils.parse_config(prepare_parser(), argv, check_model=False)


def compute_moments(loader, net, num_splits=10, seed=0, progress=True, features=False,
                    class_moments=False):
    """Stream `loader` through `net` and return the Inception statistics of its images.

    loader: yields (x (B, 3, H, W) in [-1, 1], y); len(loader.dataset) images in all.
    net: maps x to (pool (B, 2048), logits), e.g. inception_utils.load_inception_net().
    Returns dict(mu (2048,), sigma (2048, 2048), IS_mean, IS_std, num_images); with
    features, also features (N, 2048) float32 and labels (N,) int64 (kept on the CPU); with
    class_moments, also classes (C,), class_mu (C, 2048), class_sigma (C, 2048, 2048). Images
    go to IS splits by a `seed`-ed permutation, since datasets are often stored sorted by class.
    """
    num_images = len(loader.dataset)
    # A toy dataset of fewer images than splits still gets its moments (one image per split).
    num_splits = min(num_splits, num_images)
    with tqdm(total=num_images, unit='img', disable=not progress) as pbar:
        outputs = inception_utils.accumulate_inception_outputs(
            iter(loader), net, num_images, num_splits, split_seed=seed, pbar=pbar,
            keep_features=features, per_class=class_moments, keep_on='cpu')
    IS_mean, IS_std = outputs.scorer.result()
    stats = {'mu': outputs.moments.mu, 'sigma': outputs.moments.sigma, 'IS_mean': IS_mean,
             'IS_std': IS_std, 'num_images': num_images}
    if features:
        stats.update(features=outputs.pool.numpy(), labels=outputs.labels.numpy())
    if class_moments:
        classes = sorted(outputs.class_moments)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # a class of fewer images than dimensions
            stats.update(classes=np.array(classes, dtype=np.int64),
                         class_mu=np.stack([outputs.class_moments[c].mu for c in classes]),
                         class_sigma=np.stack([outputs.class_moments[c].sigma
                                               for c in classes]))
    return stats


def run(config):
    """Compute and save the moments of config['dataset'] with config['inception_network']."""
    network = config['inception_network']
    path = inception_utils.moments_filename(config['dataset'], config['data_root'], network,
                                            config['resolution'])
    if config.get('save_class_moments'):
        size = config['n_classes'] * inception_utils.POOL_DIM ** 2 * 8
        if size > CLASS_MOMENTS_LIMIT:
            raise utils.ConfigError(
                f"--save_class_moments: {config['n_classes']} classes' moments take "
                f'{size / 2 ** 30:.0f} GiB (in memory and on disk); use --save_features '
                'instead: intra-class FID is computed from labelled real features too')
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
    stats = compute_moments(loader, net, seed=config['seed'],
                            features=config.get('save_features', False),
                            class_moments=config.get('save_class_moments', False))
    print(f"Training data from dataset {config['dataset']} has IS of {stats['IS_mean']:5.5f} "
          f"+/- {stats['IS_std']:5.5f} ({network} Inception, {stats['num_images']} images)")
    extra = {key: stats[key] for key in ('features', 'labels', 'classes', 'class_mu',
                                         'class_sigma') if key in stats}
    # Notes for the protocol of every metric computed against this file (metrics.Reference).
    inception_utils.save_moments(path, stats['mu'], stats['sigma'],
                                 num_images=np.int64(stats['num_images']),
                                 split=np.str_(SPLIT), network=np.str_(network), **extra)
    saved = ', '.join(['moments'] + [{'features': 'real features and labels',
                                       'class_mu': 'per-class moments'}[key]
                                      for key in ('features', 'class_mu') if key in extra])
    print(f'Saved the Inception {saved} to {path}')
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
