"""Configuration, naming and sampling helpers shared by every script.

`prepare_parser()` / `add_sample_parser()` accept every flag of the original
BigGAN-PyTorch parser with the same names, types and defaults.
`prepare_config()` is the one place where the derived keys (resolution,
n_classes, activations, roots, skip_init on resume) are computed and where bad
flag combinations are refused before any model is built. `parse_config()`
knows which flags were typed: sample.py and --resume take the others from
the experiment's saved config.
"""
import contextlib
import datetime
import errno
import fcntl
import hashlib
import importlib
import json
import os
import pickle
import shutil
import socket
import sys
import time
import warnings
from argparse import ArgumentParser, Namespace

import torch
import torch.nn as nn
import torchvision
from PIL import Image

import datasets as dset

# Training helpers moved to train_fns.py; these old names still resolve here.
_MOVED_TO_TRAIN_FNS = ('ema', 'ortho', 'default_ortho', 'toggle_grad',
                       'initiate_standing_stats', 'accumulate_standing_stats')


def __getattr__(name):
    # Lazy, so that train_fns may import utils without an import cycle.
    if name in _MOVED_TO_TRAIN_FNS:
        import train_fns
        return getattr(train_fns, name)
    raise AttributeError(f"module 'utils' has no attribute {name!r}")


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------
def prepare_parser():
    """The argument parser shared by train.py, sample.py and the tools."""
    parser = ArgumentParser(description='BigGAN training and sampling.')
    arg = parser.add_argument

    # Data and loader
    arg('--dataset', type=str, default='I128_hdf5',
        help=f'Dataset to train on, one of {", ".join(dset.DATASETS)}; folder is your own '
             'images in --data_root/<class>/<image> (default: %(default)s)')
    arg('--resolution', type=int, default=0,
        help='Image size for --dataset folder or folder_hdf5 (32, 64, 128, 256 or 512); '
             'registered datasets have their own (default: %(default)s)')
    arg('--augment', action='store_true', default=False,
        help='Random crops and horizontal flips (default: %(default)s)')
    arg('--num_workers', type=int, default=8,
        help='DataLoader worker processes; fewer suit HDF5 (default: %(default)s)')
    arg('--no_pin_memory', action='store_false', dest='pin_memory', default=True,
        help='Do not pin loaded batches in page-locked memory')
    arg('--shuffle', action='store_true', default=False,
        help='Shuffle the data each epoch; strongly recommended (default: %(default)s)')
    arg('--load_in_mem', action='store_true', default=False,
        help='Read the whole HDF5 file into RAM (default: %(default)s)')
    arg('--use_multiepoch_sampler', action='store_true', default=False,
        help='Draw all epochs from one resumable sampler (default: %(default)s)')

    # Model
    arg('--model', type=str, default='BigGAN',
        help='Model module: BigGAN or BigGANdeep (default: %(default)s)')
    arg('--G_param', type=str, default='SN',
        help="G's weight parameterisation: SN (spectral norm) or none (default: %(default)s)")
    arg('--D_param', type=str, default='SN',
        help="D's weight parameterisation: SN (spectral norm) or none (default: %(default)s)")
    arg('--G_ch', type=int, default=64, help="G's channel multiplier (default: %(default)s)")
    arg('--D_ch', type=int, default=64, help="D's channel multiplier (default: %(default)s)")
    arg('--G_depth', type=int, default=1,
        help='Residual blocks per stage in G (BigGANdeep) (default: %(default)s)')
    arg('--D_depth', type=int, default=1,
        help='Residual blocks per stage in D (BigGANdeep) (default: %(default)s)')
    arg('--D_thin', action='store_false', dest='D_wide', default=True,
        help="Use SN-GAN's thin D channel pattern instead of the wide one")
    arg('--G_shared', action='store_true', default=False,
        help='One class embedding shared by all of G\'s BNs (default: %(default)s)')
    arg('--shared_dim', type=int, default=0,
        help='Size of the shared embedding; 0 means dim_z (default: %(default)s)')
    arg('--dim_z', type=int, default=128, help='Latent size (default: %(default)s)')
    arg('--z_var', type=float, default=1.0,
        help="Standard deviation of z (despite its name, as the original's sample.py uses "
             'it), for training and every sample, sheet and metric (default: %(default)s)')
    arg('--hier', action='store_true', default=False,
        help='Hierarchical latent: feed a chunk of z to each G block (default: %(default)s)')
    arg('--cross_replica', action='store_true', default=False,
        help="Cross-replica (synchronised) batch norm in G (default: %(default)s)")
    arg('--mybn', action='store_true', default=False,
        help='Batch norm that supports standing statistics (default: %(default)s)')
    arg('--G_nl', type=str, default='relu',
        help='G activation: relu, inplace_relu or ir (default: %(default)s)')
    arg('--D_nl', type=str, default='relu',
        help='D activation: relu, inplace_relu or ir (default: %(default)s)')
    arg('--G_attn', type=str, default='64',
        help='Resolutions of self-attention in G, underscore separated, 0 for none '
             '(default: %(default)s)')
    arg('--D_attn', type=str, default='64',
        help='Resolutions of self-attention in D, underscore separated, 0 for none '
             '(default: %(default)s)')
    arg('--norm_style', type=str, default='bn',
        help='Normalisation in G: bn, in, gn, gn_ch_<C>, gn_grp_<G> or nonorm '
             '(default: %(default)s)')

    # Initialisation
    arg('--seed', type=int, default=0,
        help='Seed for initialisation, sampling and data order (default: %(default)s)')
    arg('--G_init', type=str, default='ortho',
        help='G init: ortho, N02, glorot or xavier (default: %(default)s)')
    arg('--D_init', type=str, default='ortho',
        help='D init: ortho, N02, glorot or xavier (default: %(default)s)')
    arg('--skip_init', action='store_true', default=False,
        help='Skip weight initialisation, e.g. when loading weights (default: %(default)s)')

    # Optimiser
    arg('--G_lr', type=float, default=5e-5, help="G's Adam learning rate (default: %(default)s)")
    arg('--D_lr', type=float, default=2e-4, help="D's Adam learning rate (default: %(default)s)")
    arg('--G_B1', type=float, default=0.0, help="G's Adam beta1 (default: %(default)s)")
    arg('--D_B1', type=float, default=0.0, help="D's Adam beta1 (default: %(default)s)")
    arg('--G_B2', type=float, default=0.999, help="G's Adam beta2 (default: %(default)s)")
    arg('--D_B2', type=float, default=0.999, help="D's Adam beta2 (default: %(default)s)")

    # Batch, accumulation, parallelism and precision
    arg('--batch_size', type=int, default=64,
        help='Micro-batch size of each accumulation step (default: %(default)s)')
    arg('--G_batch_size', type=int, default=0,
        help="G's batch size when sampling for metrics; 0 means batch_size "
             '(default: %(default)s)')
    arg('--num_G_accumulations', type=int, default=1,
        help="Micro-batches accumulated per G step (default: %(default)s)")
    arg('--num_D_steps', type=int, default=2, help='D steps per G step (default: %(default)s)')
    arg('--num_D_accumulations', type=int, default=1,
        help="Micro-batches accumulated per D step (default: %(default)s)")
    arg('--split_D', action='store_true', default=False,
        help='Run D on fake and real batches separately (default: %(default)s)')
    arg('--num_epochs', type=int, default=100,
        help='Epochs to train for (default: %(default)s)')
    arg('--num_iters', type=int, default=0,
        help='Stop after this many G iterations; 0 means run --num_epochs '
             '(default: %(default)s)')
    arg('--parallel', action='store_true', default=False,
        help='nn.DataParallel over the visible GPUs (default: %(default)s)')
    arg('--G_fp16', action='store_true', default=False,
        help='Half precision in G (mapped onto --amp fp16) (default: %(default)s)')
    arg('--D_fp16', action='store_true', default=False,
        help='Half precision in D (mapped onto --amp fp16) (default: %(default)s)')
    arg('--D_mixed_precision', action='store_true', default=False,
        help='fp16 activations, fp32 weights in D (mapped onto --amp fp16) '
             '(default: %(default)s)')
    arg('--G_mixed_precision', action='store_true', default=False,
        help='fp16 activations, fp32 weights in G (mapped onto --amp fp16) '
             '(default: %(default)s)')
    arg('--amp', type=str, default='none', choices=('none', 'bf16', 'fp16'),
        help='Mixed precision: autocast G and D to bf16 or fp16 with fp32 master weights '
             '(fp16 adds a GradScaler per optimizer); any of the four flags above means '
             'fp16 unless --amp bf16 is given (default: %(default)s)')
    arg('--compile', action='store_true', default=False,
        help='torch.compile G and D for training (default: %(default)s)')
    arg('--channels_last', action='store_true', default=False,
        help='Keep activations and weights in channels-last memory format '
             '(measured faster for conv-heavy CPU training) (default: %(default)s)')
    arg('--accumulate_stats', action='store_true', default=False,
        help='Recompute "standing" BN statistics before sampling (default: %(default)s)')
    arg('--num_standing_accumulations', type=int, default=16,
        help='Forward passes used for standing statistics (default: %(default)s)')

    # Bookkeeping
    arg('--G_eval_mode', action='store_true', default=False,
        help='Sample with G in eval mode (stored BN statistics) (default: %(default)s)')
    arg('--save_every', type=int, default=2000,
        help='Save a checkpoint every this many iterations (default: %(default)s)')
    arg('--num_save_copies', type=int, default=2,
        help='Rotating checkpoint copies to keep (default: %(default)s)')
    arg('--num_best_copies', type=int, default=2,
        help='Best-so-far checkpoints to keep (default: %(default)s)')
    arg('--which_best', type=str, default='IS',
        help='Metric that ranks "best" checkpoints: IS or FID (not with --no_fid); a NaN '
             'result never ranks (default: %(default)s)')
    arg('--no_fid', action='store_true', default=False,
        help='Compute IS only, not FID (FID is reported as NaN) (default: %(default)s)')
    arg('--test_every', type=int, default=5000,
        help='Compute IS/FID every this many iterations (default: %(default)s)')
    arg('--num_inception_images', type=int, default=50000,
        help='Samples used for IS/FID (default: %(default)s)')
    arg('--inception_network', type=str, default='torchvision', choices=('torchvision', 'tf'),
        help="Inception for IS/FID: torchvision (the original's monitoring numbers) or tf "
             '(the TF 2015-12-05 graph, comparable with published numbers) '
             '(default: %(default)s)')
    arg('--inception_weights', type=str, default=None,
        help='Inception weights file; by default the torch hub cache, else a download '
             '(default: %(default)s)')
    arg('--hashname', action='store_true', default=False,
        help='Name the experiment by a short hash of its config (default: %(default)s)')
    arg('--base_root', type=str, default='',
        help='If set, data, weights, logs and samples all live under it (default: %(default)s)')
    arg('--data_root', type=str, default='data',
        help='Where datasets are stored (default: %(default)s)')
    arg('--weights_root', type=str, default='weights',
        help='Where checkpoints are stored (default: %(default)s)')
    arg('--logs_root', type=str, default='logs',
        help='Where logs are stored (default: %(default)s)')
    arg('--samples_root', type=str, default='samples',
        help='Where sample sheets are stored (default: %(default)s)')
    arg('--pbar', type=str, default='mine',
        help='Progress bar style; accepted for compatibility, has no effect: always tqdm '
             '(default: %(default)s)')
    arg('--name_suffix', type=str, default='',
        help='Suffix appended to the experiment name (default: %(default)s)')
    arg('--experiment_name', type=str, default='',
        help='Use this experiment name instead of one built from the config '
             '(default: %(default)s)')
    arg('--config_from_name', action='store_true', default=False,
        help='Accepted for compatibility; has no effect (default: %(default)s)')

    # EMA
    arg('--ema', action='store_true', default=False,
        help="Keep an exponential moving average of G's weights (default: %(default)s)")
    arg('--ema_decay', type=float, default=0.9999, help='EMA decay (default: %(default)s)')
    arg('--use_ema', action='store_true', default=False,
        help='Sample and evaluate with the EMA weights (default: %(default)s)')
    arg('--ema_start', type=int, default=0,
        help='Iteration from which the EMA starts averaging; before it, it copies '
             '(default: %(default)s)')

    # Numerics and singular values
    arg('--adam_eps', type=float, default=1e-8, help="Adam's epsilon (default: %(default)s)")
    arg('--BN_eps', type=float, default=1e-5, help="Batch norm's epsilon (default: %(default)s)")
    arg('--SN_eps', type=float, default=1e-8,
        help="Spectral norm's epsilon (default: %(default)s)")
    arg('--num_G_SVs', type=int, default=1,
        help='Singular values tracked per SN layer in G (default: %(default)s)')
    arg('--num_D_SVs', type=int, default=1,
        help='Singular values tracked per SN layer in D (default: %(default)s)')
    arg('--num_G_SV_itrs', type=int, default=1,
        help='Power iterations per forward in G (default: %(default)s)')
    arg('--num_D_SV_itrs', type=int, default=1,
        help='Power iterations per forward in D (default: %(default)s)')

    # Orthogonal regularisation
    arg('--G_ortho', type=float, default=0.0,
        help="Strength of BigGAN's off-diagonal ortho reg in G; the paper uses 1e-4 "
             '(default: %(default)s)')
    arg('--D_ortho', type=float, default=0.0,
        help="Strength of BigGAN's off-diagonal ortho reg in D (default: %(default)s)")
    arg('--toggle_grads', action='store_true', default=True,
        help='Accepted for compatibility: the network not being trained always has '
             'requires_grad off, as in the original (default: %(default)s)')

    # Training function, resume and logs
    arg('--which_train_fn', type=str, default='GAN',
        help='Training function: GAN, or dummy to test the pipeline (default: %(default)s)')
    arg('--load_weights', type=str, default='',
        help='Suffix of the checkpoint to load, e.g. best0 or copy1 (default: %(default)s)')
    arg('--resume', action='store_true', default=False,
        help='Resume training from the latest checkpoint (default: %(default)s)')
    arg('--logstyle', type=str, default='%3.3e',
        help='printf-style format of the per-metric training logs; pickle, mat and npz are '
             'accepted for compatibility and write text with %%3.3e, as in the original '
             '(default: %(default)s)')
    arg('--log_G_spectra', action='store_true', default=False,
        help='Accepted for compatibility; has no effect, as in the original: the singular '
             'values of every SN layer of G and D are logged every --sv_log_interval '
             '(default: %(default)s)')
    arg('--log_D_spectra', action='store_true', default=False,
        help='Accepted for compatibility; has no effect, as in the original (see '
             '--log_G_spectra) (default: %(default)s)')
    arg('--sv_log_interval', type=int, default=10,
        help='Iterations between logs of the singular values (num_G_SVs/num_D_SVs per SN '
             'layer) of G and D; 0 for none (default: %(default)s)')
    _add_small_data_flags(arg)
    return parser


def _add_small_data_flags(arg):
    """Training on small datasets (augment.py; README, "Small datasets")."""
    arg('--data_subset', type=float, default=0,
        help='Train on a class-balanced subset of the training set: a number of images, or a '
             'fraction below 1; chosen by --seed, the same in every process and on resume; '
             '0 for all of it (default: %(default)s)')
    arg('--DiffAugment', type=str, default='',
        help='DiffAugment policy applied to every image D sees: a comma-separated subset of '
             "color,translation,cutout; '' for none (default: '%(default)s')")
    arg('--ADA_target', type=float, default=0.0,
        help="ADA: target of r_t = E[sign(D(x_real))] that adapts the augmentation "
             'probability p (stylegan2-ada: 0.6); 0 turns ADA off (default: %(default)s)')
    arg('--ADA_interval', type=int, default=4,
        help='ADA: D steps between adjustments of p (default: %(default)s)')
    arg('--ADA_kimg', type=float, default=500,
        help='ADA: thousands of real images in which p can go from 0 to 1 at the fastest '
             '(default: %(default)s)')
    arg('--ADA_policy', type=str, default='bgc',
        help="ADA's augmentations: groups b (blit), g (geometry), c (colour), e.g. bgc, or "
             'op names such as xflip,rotate90 (default: %(default)s)')
    arg('--LeCam_lambda', type=float, default=0.0,
        help="Weight of the LeCam regulariser on D's loss; 0 turns it off "
             '(default: %(default)s)')
    arg('--LeCam_decay', type=float, default=0.99,
        help="Decay of the EMA anchors of D's mean real and fake outputs (LeCam) "
             '(default: %(default)s)')
    arg('--bCR_real', type=float, default=0.0,
        help="Balanced consistency regularisation: weight of ||D(x) - D(T(x))||^2 on reals, "
             'T a random flip and translation (the paper: 10); 0 for off (default: %(default)s)')
    arg('--bCR_fake', type=float, default=0.0,
        help='Balanced consistency regularisation: the same on fakes (the paper: 10); 0 for '
             'off (default: %(default)s)')
    arg('--zCR_D', type=float, default=0.0,
        help="Latent consistency regularisation: weight of ||D(G(z)) - D(G(z + dz))||^2 on "
             "D's loss (the paper: 5); 0 for off (default: %(default)s)")
    arg('--zCR_G', type=float, default=0.0,
        help="Latent consistency regularisation: weight of -||G(z) - G(z + dz)||^2 on G's "
             'loss (the paper: 0.5); 0 for off (default: %(default)s)')
    arg('--zCR_sigma', type=float, default=0.03,
        help='Standard deviation of the latent perturbation dz of zCR (default: %(default)s)')


def add_sample_parser(parser):
    """Add sample.py's flags to `parser` and return it."""
    arg = parser.add_argument
    arg('--sample_npz', action='store_true', default=False,
        help='Write sample_num_npz samples to an npz file (default: %(default)s)')
    arg('--sample_num_npz', type=int, default=50000,
        help='Number of samples for --sample_npz (default: %(default)s)')
    arg('--sample_sheets', action='store_true', default=False,
        help='Write class-conditional sample sheets (default: %(default)s)')
    arg('--sample_interps', action='store_true', default=False,
        help='Write interpolation sheets (default: %(default)s)')
    arg('--sample_sheet_folder_num', type=int, default=-1,
        help='sample.py writes into samples/<exp>/sample_<N>/ with this N; -1 means the '
             "checkpoint's iteration (default: %(default)s)")
    arg('--sample_random', action='store_true', default=False,
        help='Write one sheet of random samples (default: %(default)s)')
    arg('--sample_trunc_curves', type=str, default='',
        help='IS/FID at each value of start_step_end, e.g. 0.05_0.05_1.0: by default each '
             "value is z's standard deviation, as in the original (see "
             '--sample_trunc_curves_mode) (default: %(default)s)')
    arg('--sample_trunc_curves_mode', type=str, default='std', choices=('std', 'truncate'),
        help="What --sample_trunc_curves varies: std (z's standard deviation, as the "
             'original) or truncate (a standard normal truncated to [-t, t]) '
             '(default: %(default)s)')
    arg('--sample_inception_metrics', action='store_true', default=False,
        help='Compute IS/FID of the loaded model (default: %(default)s)')
    arg('--truncation', type=float, default=0.0,
        help='Draw z, for every output, from a standard normal truncated to [-t, t] '
             '(resampling values outside), times --z_var; 0 means no truncation '
             '(default: %(default)s)')
    return parser


# ---------------------------------------------------------------------------
# Derived config
# ---------------------------------------------------------------------------
activation_dict = {'inplace_relu': nn.ReLU(inplace=True),
                   'relu': nn.ReLU(inplace=False),
                   'ir': nn.ReLU(inplace=True)}

INIT_STYLES = ('ortho', 'N02', 'glorot', 'xavier')
MODELS = ('BigGAN', 'BigGANdeep')

# The original's per-dataset lookups, derived from the one dataset table.
imsize_dict = {k: v.image_size for k, v in dset.DATASETS.items()}
root_dict = {k: v.root for k, v in dset.DATASETS.items()}
nclass_dict = {k: v.n_classes for k, v in dset.DATASETS.items()}
classes_per_sheet_dict = {k: v.classes_per_sheet for k, v in dset.DATASETS.items()}


# The original's half-precision flags; each maps onto --amp fp16 (see prepare_config).
LEGACY_FP16_FLAGS = ('G_fp16', 'D_fp16', 'G_mixed_precision', 'D_mixed_precision')


ROOT_KEYS = ('data', 'weights', 'logs', 'samples')


class ConfigError(ValueError):
    """A flag value or combination that cannot work; the message names the flag."""


def load_model_module(name):
    """Import the model module named by --model (BigGAN or BigGANdeep)."""
    if name not in MODELS:
        raise ConfigError(f"--model {name}: unknown model; use one of {', '.join(MODELS)}")
    return importlib.import_module(name)


def update_config_roots(config):
    """With --base_root, put data, weights, logs and samples under it.

    A root given on the command line as well is replaced; one line on stderr says so.
    """
    if config['base_root']:
        # Each <key>_root flag defaults to '<key>', so another value was given explicitly.
        ignored = [f"--{key}_root {config[f'{key}_root']}" for key in ROOT_KEYS
                   if config[f'{key}_root'] != key]
        if ignored:
            print(f"note: --base_root {config['base_root']} puts data, weights, logs and samples "
                  f"under it; ignoring {', '.join(ignored)}", file=sys.stderr)
        for key in ROOT_KEYS:
            config[f'{key}_root'] = os.path.join(config['base_root'], key)
    return config


def prepare_root(config):
    """Create the weights, logs and samples roots if they do not exist."""
    for key in ('weights_root', 'logs_root', 'samples_root'):
        os.makedirs(config[key], exist_ok=True)


def _attention_ok(value):
    return all(item.isdigit() for item in str(value).split('_'))


def _check_flags(config):
    errors = []
    if config['dataset'] not in dset.DATASETS:
        errors.append(f"--dataset {config['dataset']}: unknown dataset; registered ones are "
                      f"{', '.join(dset.DATASETS)} (your own images: --dataset folder)")
    for flag in ('G_nl', 'D_nl'):
        if config[flag] not in activation_dict:
            errors.append(f"--{flag} {config[flag]}: unknown activation; use one of "
                          f"{', '.join(activation_dict)}")
    for flag in ('G_init', 'D_init'):
        if config[flag] not in INIT_STYLES:
            errors.append(f"--{flag} {config[flag]}: unknown init; use one of "
                          f"{', '.join(INIT_STYLES)}")
    for flag in ('G_param', 'D_param'):
        if config[flag] not in ('SN', 'none', 'None'):
            errors.append(f"--{flag} {config[flag]}: use SN or none")
    import layers
    if not layers.NORM_STYLE_RE.match(config['norm_style']):
        errors.append(f"--norm_style {config['norm_style']}: use bn, in, gn, gn_ch_<C>, "
                      "gn_grp_<G> or nonorm")
    for flag in ('G_attn', 'D_attn'):
        if not _attention_ok(config[flag]):
            errors.append(f"--{flag} {config[flag]}: give resolutions separated by '_', "
                          "e.g. 64 or 32_64, or 0 for none")
    if config['which_best'] not in ('IS', 'FID'):
        errors.append(f"--which_best {config['which_best']}: use IS or FID")
    elif config['which_best'] == 'FID' and config['no_fid']:
        errors.append('--which_best FID with --no_fid: FID is not computed, so it cannot rank '
                      'the best copies; use --which_best IS, or drop --no_fid')
    if config['which_train_fn'] not in ('GAN', 'dummy'):
        errors.append(f"--which_train_fn {config['which_train_fn']}: use GAN or dummy")
    for flag in ('batch_size', 'num_G_accumulations', 'num_D_accumulations', 'G_ch', 'D_ch',
                 'dim_z', 'num_G_SVs', 'num_D_SVs', 'num_G_SV_itrs', 'num_D_SV_itrs'):
        if config[flag] < 1:
            errors.append(f"--{flag} {config[flag]}: must be at least 1")
    if config['num_D_steps'] < 1 and config['which_train_fn'] == 'GAN':
        errors.append(f"--num_D_steps {config['num_D_steps']}: each G iteration needs at "
                      'least one D step')
    for flag in ('G_batch_size', 'num_iters', 'shared_dim', 'ema_start',
                 'num_save_copies', 'num_best_copies', 'num_workers', 'G_lr', 'D_lr'):
        if config[flag] < 0:
            errors.append(f"--{flag} {config[flag]}: must not be negative")
    if config['save_every'] < 1:
        errors.append(f"--save_every {config['save_every']}: must be at least 1")
    if config['num_epochs'] < 1:
        errors.append(f"--num_epochs {config['num_epochs']}: must be at least 1 (training stops "
                      'after --num_epochs epochs or --num_iters iterations, whichever is first)')
    if not 0 <= config['seed'] < 2 ** 32:
        errors.append(f"--seed {config['seed']}: must lie in [0, 2**32) (numpy's seed range)")
    if not 0.0 <= config['ema_decay'] <= 1.0:
        errors.append(f"--ema_decay {config['ema_decay']}: must lie in [0, 1]")
    errors += _check_small_data_flags(config)
    if config['logstyle'] not in ('pickle', 'mat', 'npz'):
        try:
            config['logstyle'] % 1.0
        except (TypeError, ValueError):
            errors.append(f"--logstyle {config['logstyle']}: give a printf format such as %3.3e")
    return errors


def _check_small_data_flags(config):
    """Errors in the small-data flags (absent keys, as in older saved configs, are off)."""
    import augment
    errors = []
    subset = config.get('data_subset', 0)
    if subset < 0 or (subset >= 1 and subset != int(subset)):
        errors.append(f'--data_subset {subset:g}: give a number of images (a whole number), a '
                      'fraction of the training set between 0 and 1, or 0 for all of it')
    for flag, check in (('DiffAugment', augment.diffaugment_policy),
                        ('ADA_policy', augment.ada_policy)):
        try:
            check(config.get(flag, ''))
        except ValueError as err:
            errors.append(str(err))
    target = config.get('ADA_target', 0.0)
    if not 0.0 <= target <= 1.0:
        errors.append(f'--ADA_target {target:g}: must lie in [0, 1] (r_t = E[sign(D(x_real))] '
                      'is at most 1; stylegan2-ada uses 0.6; 0 turns ADA off)')
    if config.get('ADA_interval', 4) < 1:
        errors.append(f"--ADA_interval {config['ADA_interval']}: must be at least 1")
    if not config.get('ADA_kimg', 500) > 0:
        errors.append(f"--ADA_kimg {config['ADA_kimg']:g}: must be positive")
    if not 0.0 <= config.get('LeCam_decay', 0.99) <= 1.0:
        errors.append(f"--LeCam_decay {config['LeCam_decay']:g}: must lie in [0, 1]")
    for flag in ('LeCam_lambda', 'bCR_real', 'bCR_fake', 'zCR_D', 'zCR_G'):
        if config.get(flag, 0.0) < 0:
            errors.append(f'--{flag} {config[flag]:g}: must not be negative (0 turns it off)')
    if not config.get('zCR_sigma', 0.03) > 0:
        errors.append(f"--zCR_sigma {config['zCR_sigma']:g}: must be positive")
    return errors


def _default_attention(config, given, model):
    """Turn off a --G_attn/--D_attn that was not typed and names a stage the architecture
    lacks (the parser's 64 at 32x32, where the original's scripts pass 0); returns the
    note saying so, or None."""
    if given is None:
        return None
    res, changed = config['resolution'], []
    for flag, arch in (('G_attn', model.G_arch), ('D_attn', model.D_arch)):
        table = arch(config[f'{flag[0]}_ch'], '0')
        if flag in given or res not in table:
            continue
        stages = set(table[res]['resolution'])
        if any(int(r) and int(r) not in stages for r in str(config[flag]).split('_')):
            changed.append(f'--{flag} {config[flag]}')
            config[flag] = '0'
    if not changed:
        return None
    return (f"{' and '.join(changed)} (the default) name no stage of the {res}x{res} "
            f"{config['model']}: it is built without self-attention (pass --G_attn/--D_attn "
            'to place it)')


def prepare_config(config, check_model=True, given=None, log=None):
    """Validate the parsed flags and add the derived keys; returns a new dict.

    Adds resolution, n_classes, classes_per_sheet (from datasets.resolve_spec: the
    dataset's own, or --resolution and the data's classes for --dataset folder),
    G_activation and D_activation; pegs the roots to --base_root; sets skip_init on
    --resume; maps the original's fp16 flags onto --amp fp16 when --amp is none.
    Raises ConfigError naming every bad flag, all at once, before anything is built.
    Tools that build no model (calculate_inception_moments) pass check_model=False,
    so the model flags' defaults never block them.
    given: the flags (dests) typed on the command line; None counts every value as
    typed. An attention flag that was not typed and names a resolution the
    architecture lacks becomes 0, said in one line through `log` (default: stderr).
    """
    config = update_config_roots(dict(config))
    errors = _check_flags(config)
    spec = None
    if config['dataset'] in dset.DATASETS:
        try:
            spec = dset.resolve_spec(config['dataset'], config['data_root'],
                                     config.get('resolution'), config.get('n_classes'))
        except dset.DataError as err:
            errors.append(str(err))
    if spec is not None:
        config['resolution'] = spec.image_size
        config['n_classes'] = spec.n_classes
        config['classes_per_sheet'] = spec.classes_per_sheet
    config['G_activation'] = activation_dict.get(config['G_nl'])
    config['D_activation'] = activation_dict.get(config['D_nl'])
    if config['G_param'] == 'None':
        config['G_param'] = 'none'
    if config['D_param'] == 'None':
        config['D_param'] = 'none'
    if config.get('resume'):
        config['skip_init'] = True
    if config.get('amp', 'none') == 'none' and any(config.get(f) for f in LEGACY_FP16_FLAGS):
        # The original's fp16 flags ran fp16 weights with a plain Adam, which
        # collapses; they now mean autocast with fp32 master weights.
        config['amp'] = 'fp16'
    note = None
    if check_model:
        try:
            model = load_model_module(config['model'])
        except ConfigError as err:
            errors.append(str(err))
            model = None
        # The model's own checks need a known size and well-formed attention flags.
        if model is not None and spec is not None and all(
                _attention_ok(config[flag]) for flag in ('G_attn', 'D_attn')):
            note = _default_attention(config, given, model)
            errors += model.check_config(config)
    if errors:
        raise ConfigError('\n'.join(errors))
    if note:
        (log or _stderr)(note)
    return config


def _stderr(message):
    print(message, file=sys.stderr)


def given_flags(parser, argv=None):
    """The dests of the flags typed in argv (sys.argv[1:] when None), defaults aside."""
    unset = object()
    namespace = Namespace(**{a.dest: unset for a in parser._actions})
    parsed = parser.parse_args(argv, namespace)
    return {dest for dest, value in vars(parsed).items() if value is not unset}


def parse_config(parser, argv=None, check_model=True, from_checkpoint=None, log=None):
    """Parse argv with `parser` and prepare the config; bad flags exit with the
    parser's usage line, the reason, and status 2.

    from_checkpoint: 'arch' (sample.py): when the experiment has a checkpoint, the
    flags that build the networks (ARCH_FLAGS) come from its saved config unless
    typed; 'resume' (train.py): with --resume, every flag but LOCAL_FLAGS does. A
    typed flag that changes the saved architecture is named in one line (`log`,
    default stderr).
    """
    config = vars(parser.parse_args(argv))
    given = given_flags(parser, argv)
    if from_checkpoint == 'arch' or (from_checkpoint == 'resume' and config.get('resume')):
        try:
            config, given = with_saved_flags(parser, config, given, from_checkpoint,
                                             log or _stderr)
        except CheckpointError as err:
            fail(str(err))
    try:
        return prepare_config(config, check_model=check_model, given=given, log=log)
    except ConfigError as err:
        parser.error(str(err))


# ---------------------------------------------------------------------------
# Flags from a saved run
# ---------------------------------------------------------------------------
# The flags that build G and D: sample.py takes them from the run it samples.
ARCH_FLAGS = ('dataset', 'resolution', 'model', 'G_param', 'D_param', 'G_ch', 'D_ch',
              'G_depth', 'D_depth', 'D_wide', 'G_shared', 'shared_dim', 'dim_z', 'hier',
              'cross_replica', 'mybn', 'G_nl', 'D_nl', 'G_attn', 'D_attn', 'norm_style',
              'BN_eps', 'SN_eps', 'num_G_SVs', 'num_D_SVs')
# Where things are on this machine and how this one invocation runs: never taken from a
# saved run (its paths were resolved elsewhere, perhaps on another machine).
LOCAL_FLAGS = ('experiment_name', 'name_suffix', 'hashname', 'resume',
               'load_weights', 'skip_init', 'base_root', 'data_root', 'weights_root',
               'logs_root', 'samples_root', 'inception_weights', 'num_workers', 'pin_memory',
               'load_in_mem', 'parallel', 'compile')
# The released checkpoints' config predates the parser; these values are mapped.
_LEGACY_VALUES = {'model': {'model': 'BigGAN'}}


def _saved_value(key, value, kind):
    value = _LEGACY_VALUES.get(key, {}).get(value, value) if isinstance(value, str) else value
    if kind in (int, float, str) and value is not None and not isinstance(value, kind):
        with contextlib.suppress(TypeError, ValueError):
            value = kind(value)
    return value


def _shown(action, value):
    """A flag's value as the command line says it: on/off for switches (a store_false
    switch such as --D_thin is on when its dest is False)."""
    if isinstance(value, bool):
        return 'on' if value != (action.const is False) else 'off'
    return str(value)


def with_saved_flags(parser, config, given, mode, log=_stderr):
    """(config, given) with the untyped flags taken from the experiment's saved config.

    The experiment is found from the typed flags (--experiment_name, or the name
    built from them) under --weights_root, with --load_weights' suffix; without a
    checkpoint nothing changes. mode 'arch' takes ARCH_FLAGS, 'resume' every flag but
    LOCAL_FLAGS; a typed --dataset brings its own size and classes. Keys that are not
    flags of `parser` (the released files' dataset_root, BN_sync, activation modules)
    are ignored. Raises CheckpointError for an unreadable state_dict.pth.
    """
    experiment_name = config['experiment_name'] or name_from_config(config)
    weights_root = update_config_roots(dict(config))['weights_root']
    suffix = config.get('load_weights') or None
    path = checkpoint_path(os.path.join(weights_root, experiment_name), 'state_dict', suffix)
    # Only read (the last committed set): every rank of a torchrun job parses its
    # flags at the same time, and a running trainer may be writing.
    loaded = load_checkpoint_set(weights_root, experiment_name, suffix, ('state_dict',))
    if loaded['state_dict'] is None:
        return config, given
    saved = check_training_state(loaded['state_dict'], path)['config']
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    keys = ARCH_FLAGS if mode == 'arch' else [k for k in config if k not in LOCAL_FLAGS]
    config, taken, overrides = dict(config), set(), []
    for key in keys:
        if key not in saved or key not in config or (key == 'resolution' and 'dataset' in given):
            continue
        value = _saved_value(key, saved[key], actions[key].type)
        if key not in given:
            config[key] = value
            taken.add(key)
        elif key in ARCH_FLAGS and value != config[key]:
            action = actions[key]
            overrides.append(f'{action.option_strings[0]} {_shown(action, config[key])} '
                             f'(saved: {_shown(action, value)})')
    if 'dataset' not in given and isinstance(saved.get('n_classes'), int):
        config['n_classes'] = saved['n_classes']
    config['experiment_name'] = experiment_name
    if overrides:
        log(f"{', '.join(overrides)}: typed flags change the architecture saved in {path}")
    return config, given | taken


# ---------------------------------------------------------------------------
# Experiment names
# ---------------------------------------------------------------------------
def name_from_config(config):
    """The experiment name the original builds from the flags (same string)."""
    c = config
    items = [
        f"Big{c['which_train_fn']}",
        c['dataset'],
        c['model'] if c['model'] != 'BigGAN' else None,
        f"seed{c['seed']}",
        f"Gch{c['G_ch']}",
        f"Dch{c['D_ch']}",
        f"Gd{c['G_depth']}" if c['G_depth'] > 1 else None,
        f"Dd{c['D_depth']}" if c['D_depth'] > 1 else None,
        f"bs{c['batch_size']}",
        'Gfp16' if c['G_fp16'] else None,
        'Dfp16' if c['D_fp16'] else None,
        f"nDs{c['num_D_steps']}" if c['num_D_steps'] > 1 else None,
        f"nDa{c['num_D_accumulations']}" if c['num_D_accumulations'] > 1 else None,
        f"nGa{c['num_G_accumulations']}" if c['num_G_accumulations'] > 1 else None,
        'Glr%2.1e' % c['G_lr'],
        'Dlr%2.1e' % c['D_lr'],
        'GB%3.3f' % c['G_B1'] if c['G_B1'] != 0.0 else None,
        'GBB%3.3f' % c['G_B2'] if c['G_B2'] != 0.999 else None,
        'DB%3.3f' % c['D_B1'] if c['D_B1'] != 0.0 else None,
        'DBB%3.3f' % c['D_B2'] if c['D_B2'] != 0.999 else None,
        f"Gnl{c['G_nl']}",
        f"Dnl{c['D_nl']}",
        f"Ginit{c['G_init']}",
        f"Dinit{c['D_init']}",
        f"G{c['G_param']}" if c['G_param'] != 'SN' else None,
        f"D{c['D_param']}" if c['D_param'] != 'SN' else None,
        f"Gattn{c['G_attn']}" if c['G_attn'] != '0' else None,
        f"Dattn{c['D_attn']}" if c['D_attn'] != '0' else None,
        'Gortho%2.1e' % c['G_ortho'] if c['G_ortho'] > 0.0 else None,
        'Dortho%2.1e' % c['D_ortho'] if c['D_ortho'] > 0.0 else None,
        c['norm_style'] if c['norm_style'] != 'bn' else None,
        'cr' if c['cross_replica'] else None,
        'Gshared' if c['G_shared'] else None,
        'hier' if c['hier'] else None,
        'ema' if c['ema'] else None,
        *_small_data_name_items(c),
        c['name_suffix'] if c['name_suffix'] else None,
    ]
    name = '_'.join(item for item in items if item is not None)
    return hashname(name) if c['hashname'] else name


def _small_data_name_items(c):
    """Name parts of the small-data flags that are on (none for the original's flags)."""
    items = []
    if c.get('data_subset'):
        items.append(f"sub{c['data_subset']:g}")
    if c.get('DiffAugment'):
        items.append('DiffAug-' + '-'.join(c['DiffAugment'].replace(' ', '').split(',')))
    if c.get('ADA_target'):
        items.append(f"ADA{c['ADA_target']:g}-{c['ADA_policy']}")
        if c['ADA_interval'] != 4:
            items.append(f"ADAi{c['ADA_interval']}")
        if c['ADA_kimg'] != 500:
            items.append(f"ADAk{c['ADA_kimg']:g}")
    if c.get('LeCam_lambda'):
        items.append(f"LeCam{c['LeCam_lambda']:g}")
        if c['LeCam_decay'] != 0.99:
            items.append(f"LeCamd{c['LeCam_decay']:g}")
    if c.get('bCR_real') or c.get('bCR_fake'):
        items.append(f"bCR{c['bCR_real']:g}-{c['bCR_fake']:g}")
    if c.get('zCR_D') or c.get('zCR_G'):
        items.append(f"zCR{c['zCR_D']:g}-{c['zCR_G']:g}")
        if c['zCR_sigma'] != 0.03:
            items.append(f"zCRs{c['zCR_sigma']:g}")
    return items


_HASH_WORDS = (
    ('amber', 'brisk', 'calm', 'dusky', 'eager', 'fuzzy', 'gentle', 'hazy', 'icy', 'jolly',
     'keen', 'lucky', 'mellow', 'nimble', 'odd', 'plucky', 'quiet', 'rusty', 'sunny', 'tidy'),
    ('Azure', 'Bronze', 'Cobalt', 'Denim', 'Ember', 'Fern', 'Garnet', 'Honey', 'Indigo', 'Jade',
     'Khaki', 'Lilac', 'Moss', 'Navy', 'Olive', 'Pearl', 'Quartz', 'Ruby', 'Sage', 'Teal'),
    ('Badger', 'Crane', 'Dingo', 'Egret', 'Ferret', 'Gecko', 'Heron', 'Ibis', 'Jackal', 'Koala',
     'Lemur', 'Marten', 'Newt', 'Otter', 'Panda', 'Quokka', 'Raven', 'Stoat', 'Tapir', 'Vole'),
)


def hashname(name):
    """A short, stable name (adjective, colour, animal) derived from `name`.

    The original used Python's hash(), which changes between processes; this
    uses SHA-1 so that a resumed run finds its own folder.
    """
    h = int(hashlib.sha1(name.encode()).hexdigest(), 16)
    words = []
    for table in _HASH_WORDS:
        h, index = divmod(h, len(table))
        words.append(table[index])
    return ''.join(words)


# ---------------------------------------------------------------------------
# Latent and class sampling
# ---------------------------------------------------------------------------
class Distribution(torch.Tensor):
    """A tensor that can resample itself in place with `sample_()`.

    Operations on it return plain tensors (torch_function is disabled), so
    passing it through a model costs nothing extra.
    """
    __torch_function__ = torch._C._disabled_torch_function_impl

    def init_distribution(self, dist_type, generator=None, **kwargs):
        self.dist_type = dist_type
        self.dist_kwargs = kwargs
        # A private generator keeps sampling for sheets and metrics off the
        # global RNG, so how often a run samples never changes its trajectory.
        self.generator = generator
        if dist_type == 'normal':
            self.mean, self.var = kwargs['mean'], kwargs['var']
            self.truncation = kwargs.get('truncation', 0.0)
        elif dist_type == 'categorical':
            self.num_categories = kwargs['num_categories']
        return self

    def sample_(self):
        """Redraw every entry in place.

        normal: std = var (as in the original); with truncation t > 0 each entry
        is a standard normal conditioned on |z| <= t (the truncation trick, as
        the TF Hub generators expect), then scaled by var.
        """
        if self.dist_type == 'normal':
            self._fill_normal(self, self.generator)
        elif self.dist_type == 'categorical':
            self.random_(0, self.num_categories, generator=self.generator)
        return self

    def _fill_normal(self, out, generator):
        if self.truncation > 0:
            torch.nn.init.trunc_normal_(out, 0.0, 1.0, -self.truncation, self.truncation,
                                        generator=generator)
            if self.var != 1.0:
                out.mul_(self.var)
        else:
            out.normal_(self.mean, self.var, generator=generator)
        return out

    def draw(self, *shape, generator=None):
        """A new plain tensor of `shape` (default: this one's) from the same normal
        distribution (std var, truncation), drawn from `generator` or this one's."""
        if self.dist_type != 'normal':
            raise ValueError('draw() is for the latent (normal) distribution')
        out = torch.empty(shape or self.shape, device=self.device, dtype=self.dtype)
        return self._fill_normal(out, generator or self.generator)


def prepare_z_y(G_batch_size, dim_z, nclasses, device='cuda', fp16=False, z_var=1.0,
                generator=None, truncation=0.0):
    """Samplable latent and class tensors: z_ (G_batch_size, dim_z), y_ (G_batch_size,) int64.

    With `generator` (a torch.Generator on `device`) they draw from it instead
    of the global RNG; truncation > 0 draws z from the truncated normal.
    """
    z_ = torch.zeros(G_batch_size, dim_z, device=device,
                     dtype=torch.float16 if fp16 else torch.float32)
    z_ = z_.as_subclass(Distribution).init_distribution('normal', generator, mean=0, var=z_var,
                                                        truncation=truncation)
    y_ = torch.zeros(G_batch_size, device=device, dtype=torch.int64)
    y_ = y_.as_subclass(Distribution).init_distribution('categorical', generator,
                                                        num_categories=nclasses)
    return z_.sample_(), y_.sample_()


def private_generator(seed, device):
    """A torch.Generator on `device` seeded with `seed`, for sampling off the global RNG."""
    return torch.Generator(device=device).manual_seed(seed)


def sampling_seed(seed, itr, rank=0):
    """The seed of the sheets and metrics drawn at iteration `itr` (on process `rank`).

    A hash, so they depend only on (seed, itr, rank): the same iteration gives the
    same sheets however often the run saved or tested before it.
    """
    digest = hashlib.sha256(f'biggan-samples:{seed}:{itr}:{rank}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def sample_1hot(batch_size, num_classes, device='cuda'):
    """Random class indices (batch_size,) int64 (named as in the original)."""
    return torch.randint(0, num_classes, (batch_size,), device=device, dtype=torch.int64)


def seed_rng(seed):
    """Seed torch (all devices), numpy and python's random."""
    import random

    import numpy as np
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def fail(message, status=2):
    """Print `message` to stderr and exit: for bad input found after parsing."""
    print(f'error: {message}', file=sys.stderr)
    raise SystemExit(status)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------
# A checkpoint set is G, G_optim, D, D_optim, state_dict (+ G_ema), written in
# the original's flat layout: weights_root/<experiment>/G.pth, G_copy0.pth, ...
#
# One writer per experiment: a training run holds the experiment's lock
# (ExperimentLock: an flock on weights_root/<exp>/.lock, which the OS drops when the
# process dies) for its whole life; save_weights takes it for one save when its
# caller does not hold it.
#
# A set is written journal-style so a crash at any moment leaves either the
# previous complete set or the new complete set, never a mix:
#   1. every file goes to a temporary name and is fsynced;
#   2. once every temporary is on disk, a commit record (.commit_<suffix>.json)
#      naming the renames is written atomically;
#   3. the temporaries are renamed over the old files and the record removed.
# Only the lock holder repairs: `recover_checkpoints` rolls a committed set forward
# and deletes uncommitted temporaries. Readers (`load_checkpoint_set`, and through it
# load_weights, sample.py, checkpoint_exists) never rename or delete anything: while a
# record is there, a part's committed file is its temporary if that still exists,
# else its final name.
SET_PARTS = ('G', 'G_optim', 'D', 'D_optim', 'state_dict', 'G_ema')
_TMP_TAG = '.partial'
LOCK_NAME = '.lock'


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class ExperimentBusy(CheckpointError):
    """Another process holds the experiment's lock; the message names it."""


class OutputError(RuntimeError):
    """An output folder that cannot be written, or too little room for a checkpoint set."""


def join_strings(base_string, strings):
    """Join the non-empty strings with base_string (the original's helper)."""
    return base_string.join(item for item in strings if item)


def checkpoint_path(root, part, name_suffix=None):
    """weights_root/<exp>/<part>[_<suffix>].pth."""
    return os.path.join(root, f"{join_strings('_', [part, name_suffix])}.pth")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(paths):
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _atomic_write_bytes(path, data):
    tmp = f'{path}{_TMP_TAG}'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly([tmp])
        raise


def _makedirs(path):
    """os.makedirs(path, exist_ok=True); returns the folders it created, outermost first."""
    created, head = [], os.path.abspath(path)
    while not os.path.isdir(head):
        created.append(head)
        head = os.path.dirname(head)
    os.makedirs(path, exist_ok=True)
    return created[::-1]


_held_locks = {}


class ExperimentLock:
    """The one-writer lock of an experiment folder root = weights_root/<exp>.

    An flock on root/.lock, which holds the holder's pid and host. acquire() raises
    ExperimentBusy naming them when another process holds it, CheckpointError when the
    folder cannot be created. The OS releases an flock when its process exits or is
    killed, so a crashed run never leaves the experiment locked. release() removes the
    lock file and the folders acquire() created, so a refused run leaves nothing behind.
    Use as a context manager, or acquire()/release().
    """

    def __init__(self, root):
        self.root = root
        self.path = os.path.join(root, LOCK_NAME)
        self.fd = None
        self._created = []

    def acquire(self):
        """Take the lock (without waiting); returns self."""
        try:
            self._created = _makedirs(self.root)
            self.fd = self._lock_file()
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f'{os.getpid()} {socket.gethostname()}\n'.encode())
        except BaseException as err:
            self.release()
            if isinstance(err, OSError):
                raise CheckpointError(
                    f'{self.root}: cannot create the experiment lock ({err.strerror or err}); '
                    'check --weights_root') from None
            raise
        _held_locks[os.path.realpath(self.root)] = self
        return self

    def _lock_file(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors='replace').split()
                os.close(fd)
                pid = holder[0] if holder else 'unknown'
                host = f' on {holder[1]}' if len(holder) > 1 else ''
                raise ExperimentBusy(
                    f'{self.root} is in use by another training run (pid {pid}{host}): one run '
                    'writes an experiment at a time; wait for it to finish, or pass another '
                    '--experiment_name') from None
            # A holder that released in the meantime unlinked the file we opened: a
            # lock on it guards nothing, so start over on the current file.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self):
        """Drop the lock, remove the lock file and any empty folders acquire() created."""
        _held_locks.pop(os.path.realpath(self.root), None)
        if self.fd is not None:
            # Unlinked while still locked; see _lock_file for how a waiter copes.
            _remove_quietly([self.path])
            os.close(self.fd)
            self.fd = None
        for folder in reversed(self._created):
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._created = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def _writing(root):
    """Hold root's lock for one write, unless this process holds it already."""
    if os.path.realpath(root) in _held_locks:
        yield
    else:
        with ExperimentLock(root):
            yield


def _record_path(root, name_suffix):
    return os.path.join(root, f".commit_{name_suffix or 'latest'}.json")


def _is_record(name):
    return name.startswith('.commit_') and name.endswith('.json')


def _valid_renames(renames):
    def valid(pair):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(n, str) and n and os.path.basename(n) == n for n in pair)):
            return False
        src, dst = pair
        return not dst.startswith('.') and src.startswith(dst + _TMP_TAG)
    return isinstance(renames, list) and all(valid(pair) for pair in renames)


def _read_record(path):
    """[(temporary, final), ...] of a commit record; None when there is none."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise CheckpointError(f'{path}: cannot read this commit record ({err.strerror})') from None
    try:
        renames = json.loads(raw)
    except ValueError:
        renames = None
    # Renames name plain files of this folder only: a crafted record moves nothing elsewhere.
    if not _valid_renames(renames):
        raise CheckpointError(
            f'{path}: not a commit record of this code (a JSON list of [<file>{_TMP_TAG}<id>, '
            '<file>] pairs); move it out of the folder and check the checkpoint set by hand')
    return [tuple(pair) for pair in renames]


def recover_checkpoints(root):
    """Finish committed set writes and drop uncommitted temporaries under `root`.

    Renames and deletes: only for the holder of the experiment's lock (train.py's
    rank 0, save_weights). Raises CheckpointError for a malformed commit record.
    """
    if not os.path.isdir(root):
        return
    for name in sorted(n for n in os.listdir(root) if _is_record(n)):
        record = os.path.join(root, name)
        for src, dst in _read_record(record):
            src_path = os.path.join(root, src)
            if os.path.exists(src_path):
                os.replace(src_path, os.path.join(root, dst))
        _fsync_dir(root)
        os.remove(record)
    _remove_quietly(os.path.join(root, name) for name in os.listdir(root) if _TMP_TAG in name)


def _signature(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _committed_view(root, name_suffix, parts):
    """(record, {part: (path of its committed file or None, its stat signature)})."""
    renames = _read_record(_record_path(root, name_suffix)) or []
    pending = {dst: src for src, dst in renames}
    view = {}
    for part in parts:
        final = os.path.basename(checkpoint_path(root, part, name_suffix))
        view[part] = (None, None)
        for name in ([pending[final]] if final in pending else []) + [final]:
            path = os.path.join(root, name)
            signature = _signature(path)
            if signature is not None:
                view[part] = (path, signature)
                break
    return tuple(renames), view


def _open_part(path):
    try:
        return open(path, 'rb')
    except (FileNotFoundError, IsADirectoryError) as err:
        if isinstance(err, IsADirectoryError):
            raise CheckpointError(f'{path}: a folder, not a checkpoint file') from None
        raise
    except OSError as err:
        raise CheckpointError(f'{path}: cannot read it ({err.strerror})') from None


def load_checkpoint_set(weights_root, experiment_name, name_suffix=None, parts=SET_PARTS):
    """Read the last committed checkpoint set without changing the folder.

    Returns {part: loaded object, or None when the set has no such file}. Safe while a
    writer saves: the files are opened from one view of the folder that did not change
    while they were opened (else it tries again), so they all come from one save.
    """
    root = os.path.join(weights_root, experiment_name)
    for attempt in range(200):
        view = _committed_view(root, name_suffix, parts)
        files = {}
        try:
            for part, (path, _) in view[1].items():
                files[part] = _open_part(path) if path else None
            if _committed_view(root, name_suffix, parts) == view:
                return {part: torch_load(f, name=view[1][part][0]) if f else None
                        for part, f in files.items()}
        except FileNotFoundError:
            pass  # renamed between the look and the open: look again
        finally:
            for f in files.values():
                if f is not None:
                    f.close()
        time.sleep(min(0.005 * (attempt + 1), 0.1))
    raise CheckpointError(f'{root}: the checkpoint set kept changing while it was read; '
                          'try again')


def _plain_config(config):
    """The config without the module objects derived from it (they are rebuilt on load)."""
    return {k: v for k, v in config.items()
            if isinstance(v, (str, int, float, bool, type(None), list, tuple))}


class _SaveSink:
    """A file wrapper that keeps the OSError of a failed write: torch.save reports a
    failed write (ENOSPC, EIO) as a bare RuntimeError."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.f.flush()


def _write_durably(path, obj):
    """torch.save `obj` (or write bytes) to the new file `path`, fsynced; OSError on failure."""
    with open(path, 'xb') as f:
        sink = _SaveSink(f)
        try:
            if isinstance(obj, bytes):
                sink.write(obj)
            else:
                torch.save(obj, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None
        f.flush()
        os.fsync(f.fileno())


def checkpoint_set_bytes(G, D, G_ema=None):
    """Bytes one checkpoint set takes: every tensor of the models' state dicts, plus
    Adam's two moments per parameter of G and D (file overhead aside)."""
    def size(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)
    total = sum(size(net.state_dict().values()) for net in (G, D, G_ema) if net is not None)
    return total + sum(2 * size(net.parameters()) for net in (G, D))


def save_weights(G, D, state_dict, weights_root, experiment_name, name_suffix=None,
                 G_ema=None, extra_files=None):
    """Write one checkpoint set, crash-safely (see the journal notes above).

    state_dict: the training state (itr, epoch, ..., config). extra_files:
    optional {file name: bytes} committed together with the set. On a failed
    write (a full disk, say) the temporaries are removed, the previous set stays,
    and CheckpointError says what happened.
    """
    root = os.path.join(weights_root, experiment_name)
    objects = {'G': G.state_dict(), 'G_optim': G.optim.state_dict(),
               'D': D.state_dict(), 'D_optim': D.optim.state_dict(),
               'state_dict': {**state_dict, 'config': _plain_config(state_dict['config'])}}
    if G_ema is not None:
        objects['G_ema'] = G_ema.state_dict()
    files = {os.path.basename(checkpoint_path(root, part, name_suffix)): obj
             for part, obj in objects.items()}
    files.update(extra_files or {})
    token = f'{os.getpid()}_{time.monotonic_ns()}'
    renames = [(f'{name}{_TMP_TAG}{token}', name) for name in files]
    with _writing(root):
        recover_checkpoints(root)
        temporaries = [os.path.join(root, tmp) for tmp, _ in renames]
        try:
            for path, obj in zip(temporaries, files.values()):
                _write_durably(path, obj)
            _fsync_dir(root)
            # Never commit a set partly: every temporary must still be there.
            missing = [path for path in temporaries if not os.path.isfile(path)]
            if missing:
                raise CheckpointError(f"{', '.join(missing)} vanished before the set was "
                                      f'committed; the previous set in {root} is intact')
            _atomic_write_bytes(_record_path(root, name_suffix), json.dumps(renames).encode())
        except BaseException as err:
            _remove_quietly(temporaries)
            if isinstance(err, OSError):
                raise CheckpointError(
                    f'{root}: could not write the checkpoint set ({err.strerror or err}); the '
                    'temporaries were removed and the previous set is intact') from None
            raise
        _fsync_dir(root)
        recover_checkpoints(root)


def _legacy_safe_globals():
    # The original's state_dict.pth pickles its config's activation modules
    # (torch.nn.ReLU); that one class is all a weights_only load needs to allow.
    return [torch.nn.ReLU]


def unpickling_refusal(err):
    """Why a weights-only load refused a file, without torch's advice to load it unsafely."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch's text around the reason suggests weights_only=False, which would run the file's code.
    reasons = [line for line in lines if 'weights_only' not in line.replace(' ', '_').lower()
               and not line.startswith(('Weights only load failed', 'Check the documentation'))]
    return reasons[0] if reasons else 'it needs objects outside the allow-list'


def torch_load(path, map_location='cpu', name=None):
    """torch.load with weights_only=True, allowing only what legacy files need.

    path: a file name or an open binary file (then `name` names it in messages).
    Anything else that needs unpickling is refused (CheckpointError), without
    running its code; so is a file torch cannot parse.
    """
    name = name or path
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()), warnings.catch_warnings():
            # Plain pickles make torch warn about their protocol before refusing them.
            warnings.filterwarnings('ignore', message='Detected pickle protocol')
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f'{name} does not exist') from None
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f'{name} holds objects that a weights-only load does not allow, so it was not '
            f'loaded ({unpickling_refusal(err)}); this code never unpickles other '
            'objects') from None
    except Exception as err:  # garbage makes torch's parser raise anything (KeyError, ...)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f'{name} is not a readable checkpoint ({reason})') from None


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value):
    if isinstance(value, torch.Tensor):  # the released files hold best_FID as a 0-d tensor
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_STATE_CHECKS = {
    'itr': (_is_count, 'a non-negative int'),
    'epoch': (_is_count, 'a non-negative int'),
    'save_num': (_is_count, 'a non-negative int'),
    'save_best_num': (_is_count, 'a non-negative int'),
    'best_IS': (_is_number, 'a number'),
    'best_FID': (_is_number, 'a number'),
    'config': (lambda v: isinstance(v, dict), 'a dict'),
}
# Written by this code only; optional, so the original's files load.
_OPTIONAL_STATE_CHECKS = {
    'rng': (lambda v: v is None or (isinstance(v, dict)
                                    and {'torch', 'numpy', 'python'} <= set(v)), 'RNG states'),
    'best_copies': (lambda v: isinstance(v, list) and all(
        isinstance(e, dict) and {'slot', 'itr', 'IS_mean', 'FID'} <= set(e) for e in v),
        'a list of best-copy records'),
    'grad_scalers': (lambda v: v is None or (isinstance(v, dict) and {'G', 'D'} <= set(v)),
                     'GradScaler states'),
    'ADA': (lambda v: v is None or (isinstance(v, dict)
                                    and {'p', 'rt', 'sign_sum', 'count', 'steps'} <= set(v)),
            "ADA's state"),
    'LeCam': (lambda v: v is None or (isinstance(v, dict) and {
        'anchor_real', 'anchor_fake', 'num_updates'} <= set(v)), "LeCam's anchors"),
}


def check_training_state(state, path):
    """Refuse (CheckpointError naming `path`) a state_dict.pth without the training state's
    keys and types: itr, epoch, save_num, save_best_num ints; best_IS, best_FID numbers;
    config a dict (plus, when present, this code's rng, best_copies, grad_scalers, ADA,
    LeCam)."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f'{path}: holds a {type(state).__name__}, not the training state (a dict with '
            f"{', '.join(_STATE_CHECKS)}); restore the experiment's own state_dict.pth")
    problems = [f'no {key}' for key in _STATE_CHECKS if key not in state]
    for checks in (_STATE_CHECKS, _OPTIONAL_STATE_CHECKS):
        problems += [f'{key} is not {what}' for key, (ok, what) in checks.items()
                     if key in state and not ok(state[key])]
    if problems:
        raise CheckpointError(f"{path}: not a training state ({'; '.join(problems[:4])}); "
                              "restore the experiment's own state_dict.pth")
    return state


_SYNC_BN_NAMES = {'running_mean': 'stored_mean', 'running_var': 'stored_var'}


def _map_sync_bn_keys(own, state):
    """The original's --cross_replica batch-norm buffers under our names.

    With --cross_replica the original's BNs hold SyncBN buffers
    (<bn>.bn.running_mean, .running_var, .num_batches_tracked); ours hold
    stored_mean/stored_var (bn.stored_* with --mybn) whatever --cross_replica
    is, with the same statistics (momentum averages, unbiased variance).
    Returns (state, whether anything was renamed).
    """
    out, renamed = {}, False
    for key, value in state.items():
        head, _, leaf = key.rpartition('.')
        if key in own or not head.endswith('.bn') or leaf not in (*_SYNC_BN_NAMES,
                                                                 'num_batches_tracked'):
            out[key] = value
            continue
        renamed = True
        if leaf == 'num_batches_tracked':
            continue  # momentum BN never reads it
        base, name = head[:-len('.bn')], _SYNC_BN_NAMES[leaf]
        target = next((t for t in (f'{base}.{name}', f'{base}.bn.{name}') if t in own), key)
        out[target] = value
    if renamed:
        # myBN's standing-statistics counter has no SyncBN counterpart: it starts empty.
        for key, value in own.items():
            if key.endswith('.bn.accumulation_counter') and key not in out:
                out[key] = torch.zeros_like(value)
    return out, renamed


def _check_module_state(net, state, path, strict, what, notes):
    """The state dict `state` (read from `path`), mapped onto `net`'s layout and checked to fit.

    The original's layouts that differ from ours (its --cross_replica BN keys, its
    BigGAN-deep G) are mapped in memory, each appended to `notes`. Returns
    (state, convert): convert(name, tensor) maps per-parameter tensors such as the
    optimizer's moments the same way, or is None.
    """
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f'{path}: not a {what} state dict (a dict of tensors)')
    own = net.state_dict()
    state, renamed = _map_sync_bn_keys(own, state)
    if renamed:
        notes.append(f"{os.path.basename(path)} (the original's --cross_replica BN keys)")
    convert = None
    if hasattr(net, 'adapt_original_state'):
        state, convert = net.adapt_original_state(state)
        if convert is not None:
            notes.append(f"{os.path.basename(path)} (the original's BigGAN-deep G: [y, z] "
                         'latent, 3-channel output conv)')
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f'{k} {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    # Checked up front: load_state_dict copies the fitting tensors before it
    # complains, and a refused checkpoint must leave the model untouched.
    if wrong or (strict and (missing or unexpected)):
        detail = '; '.join(part for part in (
            f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})" if missing else '',
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})"
            if unexpected else '',
            f"{len(wrong)} shape mismatches (e.g. {', '.join(wrong[:2])})" if wrong else '')
            if part)
        raise CheckpointError(
            f'{path} does not fit the {what} built from these flags: {detail}. Use the flags '
            'the checkpoint was trained with (model, widths, attention, hier, shared_dim, '
            'dim_z, mybn, ...)')
    return state, convert


def _convert_optim_state(net, optim_state, convert):
    """Map the per-parameter tensors of an Adam state dict of `net` with convert(name, t)."""
    names = [name for name, _ in net.named_parameters()]
    if not (isinstance(optim_state, dict) and isinstance(optim_state.get('state'), dict)):
        return optim_state  # _check_optimizer_state refuses it
    state = {index: {k: convert(names[index], v) if torch.is_tensor(v) and v.ndim else v
                     for k, v in entry.items()}
             if isinstance(index, int) and 0 <= index < len(names) and isinstance(entry, dict)
             else entry
             for index, entry in optim_state['state'].items()}
    return {**optim_state, 'state': state}


def _check_optimizer_state(optim, state, path):
    """Refuse an optimizer state whose groups or moment shapes do not fit `optim`'s parameters."""
    if not (isinstance(state, dict) and isinstance(state.get('state'), dict)
            and isinstance(state.get('param_groups'), list)
            and all(isinstance(g, dict) and isinstance(g.get('params'), list)
                    for g in state['param_groups'])):
        raise CheckpointError(f'{path}: not an optimizer state (a dict with state and '
                              'param_groups)')
    own = [len(g['params']) for g in optim.param_groups]
    saved = [len(g['params']) for g in state['param_groups']]
    problems = [] if own == saved else [f'parameter groups of {saved} parameters, expected {own}']
    params = {pid: p for g, own_g in zip(state['param_groups'], optim.param_groups)
              for pid, p in zip(g['params'], own_g['params'])}
    for pid, entry in state['state'].items():
        if pid not in params or not isinstance(entry, dict):
            problems.append(f'state for an unknown parameter {pid!r}')
            continue
        for key, value in entry.items():
            shape = tuple(params[pid].shape)
            if isinstance(value, torch.Tensor) and value.ndim and tuple(value.shape) != shape:
                problems.append(f'{key} of parameter {pid} is {tuple(value.shape)}, not {shape}')
    if problems:
        raise CheckpointError(f"{path} does not fit the optimizer built from these flags "
                              f"({'; '.join(problems[:2])}); use the flags the checkpoint was "
                              'trained with')
    return state


def checkpoint_exists(weights_root, experiment_name, name_suffix=None):
    """Whether the last committed set has its G and state_dict files (reads only)."""
    root = os.path.join(weights_root, experiment_name)
    _, view = _committed_view(root, name_suffix, ('G', 'state_dict'))
    return all(path is not None for path, _ in view.values())


def load_weights(G, D, state_dict, weights_root, experiment_name, name_suffix=None,
                 G_ema=None, strict=True, load_optim=True, log=print):
    """Load a checkpoint set into G, D (and their optimizers), G_ema and state_dict.

    Keys of the saved state dict that `state_dict` also has are copied into it;
    itr, epoch and the like therefore resume. Any of G, D, G_ema may be None.
    Reads the last committed set and changes nothing on disk. Every file is
    checked before any model is touched; CheckpointError names the file that is
    missing or does not fit. Files in the original's layouts where ours differs
    (its --cross_replica BN keys, its BigGAN-deep G) are mapped in memory, said in
    one `log` line.
    """
    root = os.path.join(weights_root, experiment_name)
    nets = [(net, part) for net, part in ((G, 'G'), (D, 'D'), (G_ema, 'G_ema')) if net is not None]
    parts = ['state_dict'] + [part for _, part in nets]
    if load_optim:
        parts += [f'{part}_optim' for _, part in nets if part != 'G_ema']
    loaded = load_checkpoint_set(weights_root, experiment_name, name_suffix, parts)
    path = {part: checkpoint_path(root, part, name_suffix) for part in parts}
    first = parts[1] if len(parts) > 1 else 'G'
    if loaded['state_dict'] is None or loaded.get(first, True) is None:
        raise CheckpointError(
            f"no checkpoint {join_strings('_', [first, name_suffix])}.pth with its state_dict "
            f'in {root}: check --weights_root, --experiment_name and --load_weights')
    for part in parts:
        if loaded[part] is None:
            raise CheckpointError(f'{path[part]} does not exist: the checkpoint set in {root} '
                                  'is incomplete')
    saved = check_training_state(loaded['state_dict'], path['state_dict'])
    updates, notes = [], []
    for net, part in nets:
        state, convert = _check_module_state(net, loaded[part], path[part], strict, part, notes)
        updates.append((net, state))
        if load_optim and part != 'G_ema':
            optim_state = loaded[f'{part}_optim']
            if convert is not None:
                optim_state = _convert_optim_state(net, optim_state, convert)
            updates.append((net.optim, _check_optimizer_state(
                net.optim, optim_state, path[f'{part}_optim'])))
    if notes:
        log(f"{root}: mapped onto this model's layout in memory (the files are unchanged): "
            f"{', '.join(notes)}")
    for target, state in updates:
        if isinstance(target, nn.Module):
            target.load_state_dict(state, strict=strict)
        else:
            target.load_state_dict(state)
    for key in state_dict:
        if key in saved and key != 'config':
            state_dict[key] = saved[key]
    return saved


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_writable(path, flag):
    """Refuse (OutputError naming `flag`) a folder that cannot be created or written:
    `path` if it exists, else the nearest folder above it (where it would be made)."""
    folder = _nearest_existing(path)
    if not os.path.isdir(folder):
        raise OutputError(f'{flag} {path}: {folder} is a file, not a folder')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f'{flag} {path}: {folder} is not writable (permission denied or a '
                          f'read-only file system); fix its permissions or choose another {flag}')
    return folder


def check_outputs(config, experiment_name, set_bytes):
    """Refuse, before training, output folders that cannot be written and a weights folder
    whose file system has no room for one more checkpoint set of `set_bytes`."""
    weights = check_writable(os.path.join(config['weights_root'], experiment_name),
                             '--weights_root')
    check_writable(config['logs_root'], '--logs_root')
    check_writable(config['samples_root'], '--samples_root')
    # Room for the new set's temporaries beside the old set, with a margin for file overhead.
    need = int(set_bytes * 1.05) + (1 << 20)
    free = shutil.disk_usage(weights).free
    if free < need:
        raise OutputError(f"--weights_root {config['weights_root']}: {free / 2**20:.1f} MiB free "
                          f'on its file system, but one checkpoint set needs {need / 2**20:.1f} '
                          'MiB; free some space or choose another --weights_root')


# Errors of a full or read-only disk, met while writing outputs during training.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------
def _cut_log(path, keep):
    """Rewrite the log at `path` with only the lines for which keep(line) holds, atomically."""
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines):
        with dset.partial_output(path) as tmp, open(tmp, 'w') as f:
            f.writelines(kept)


def _itr_at_most(itr, parse):
    def keep(line):
        try:
            return parse(line) <= itr
        except (ValueError, TypeError, KeyError, AttributeError):
            return True  # not a line this code wrote: leave it
    return keep


class MetricsLogger:
    """Appends one JSON record per call to `fname` (logs/<exp>_log.jsonl), with _stamp.

    start_itr (on resume): rows after that iteration, written by a run that died
    before its next checkpoint, are dropped, so the resumed run does not repeat them.
    """

    def __init__(self, fname, reinitialize=False, start_itr=None):
        self.fname = fname
        if reinitialize and os.path.exists(fname):
            os.remove(fname)
        elif start_itr is not None and os.path.isfile(fname):
            _cut_log(fname, _itr_at_most(start_itr, lambda line: int(json.loads(line)['itr'])))

    def log(self, record=None, **kwargs):
        record = {**(record or {}), **kwargs, '_stamp': time.time()}
        with open(self.fname, 'a') as f:
            f.write(json.dumps(record, ensure_ascii=True) + '\n')


class MyLogger:
    """Per-metric text logs: logs/<exp>/<metric>.log with lines 'itr: value'.

    start_itr (on resume): lines after that iteration are cut from every log
    first, so a run resumed after a crash continues its logs without repeats.
    """

    def __init__(self, fname, reinitialize=False, logstyle='%3.3f', start_itr=None):
        self.root = fname
        os.makedirs(self.root, exist_ok=True)
        self.reinitialize = reinitialize
        self.metrics = set()
        self.logstyle = logstyle
        if start_itr is not None and not reinitialize:
            for name in sorted(os.listdir(self.root)):
                if name.endswith('.log'):
                    _cut_log(os.path.join(self.root, name),
                             _itr_at_most(start_itr, lambda line: int(line.split(':', 1)[0])))

    def log(self, itr, **kwargs):
        self.log_many([itr], {k: [v] for k, v in kwargs.items()})

    def log_many(self, itrs, columns):
        """Append one line per iteration for each metric: columns = {metric: [values]}."""
        style = self.logstyle if self.logstyle.startswith('%') else '%3.3e'
        for metric, values in columns.items():
            path = os.path.join(self.root, f'{metric}.log')
            if metric not in self.metrics:
                if self.reinitialize and os.path.exists(path):
                    os.remove(path)
                self.metrics.add(metric)
            with open(path, 'a') as f:
                f.writelines(f'{itr}: {style % value}\n' for itr, value in zip(itrs, values))


def write_metadata(logs_root, experiment_name, config, state_dict):
    """logs/<exp>/metalog.txt: when, with which config, from which state."""
    path = os.path.join(logs_root, experiment_name)
    os.makedirs(path, exist_ok=True)
    state = {k: v for k, v in state_dict.items() if k not in ('config', 'rng')}
    with open(os.path.join(path, 'metalog.txt'), 'w') as f:
        f.write(f'datetime: {datetime.datetime.now()}\n')
        f.write(f'config: {_plain_config(config)}\n')
        f.write(f'state: {state}\n')


def get_SVs(net, prefix):
    """{'<prefix>_<state-dict key with _ for .>': value} for every logged singular value.

    One host sync for all of them.
    """
    svs = {k: v for k, v in net.state_dict().items() if 'sv' in k.rsplit('.', 1)[-1]}
    if not svs:
        return {}
    values = torch.cat([v.reshape(-1)[:1].float() for v in svs.values()]).tolist()
    return {f'{prefix}_{k}'.replace('.', '_'): v for k, v in zip(svs, values)}


# ---------------------------------------------------------------------------
# Sampling and sample sheets
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def preserved_buffers(*nets):
    """Restore every buffer (SN vectors, BN statistics) of `nets` on exit.

    Sampling in training mode advances SN power iterations and BN running
    statistics; wrapping it here keeps sampling from changing the training run.
    """
    saved = [(b, b.detach().clone()) for net in nets for b in net.buffers()]
    flags = [(m, m.accumulate_standing) for net in nets for m in net.modules()
             if hasattr(m, 'accumulate_standing')]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
        for module, flag in flags:
            module.accumulate_standing = flag


def _device_of(G):
    return next(G.parameters()).device


def sample(G, z_, y_, config):
    """Draw one batch from G: returns (images (N, 3, H, W) in [-1, 1], classes (N,))."""
    with torch.no_grad():
        z_.sample_()
        y_.sample_()
        if config.get('parallel') and torch.cuda.device_count() > 1:
            G_z = nn.parallel.data_parallel(G, (z_, G.shared(y_)))
        else:
            G_z = G(z_, G.shared(y_))
        return G_z, y_


def save_sheet(images, path, nrow):
    """Write images (N, 3, H, W) in [-1, 1] as one grid image at `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image_format = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
    # Atomic: a run killed mid-write leaves the previous sheet (or none), not a torn one.
    with dset.partial_output(path) as tmp:
        torchvision.utils.save_image(images.float().cpu(), tmp, nrow=nrow, normalize=True,
                                     value_range=(-1, 1), format=image_format)


def _latent(z_, G, device):
    """The z distribution of sheets: z_'s (std z_var, --truncation), else N(0, 1)."""
    if z_ is None:
        z_ = torch.zeros(1, G.dim_z, device=device).as_subclass(Distribution)
        z_.init_distribution('normal', mean=0, var=1.0)
    return z_


def sample_sheet(G, classes_per_sheet, num_classes, samples_per_class, parallel,
                 samples_root, experiment_name, folder_number, z_=None, generator=None):
    """Class-conditional sheets samples/<exp>/<folder>/samples<i>.jpg: a row per class.

    Each row shows `samples_per_class` samples of one class, with z drawn from
    z_'s distribution (prepare_z_y's z: std z_var, truncation), from `generator`
    when given.
    """
    device = _device_of(G)
    z_ = _latent(z_, G, device)
    for i in range(max(num_classes // classes_per_sheet, 1)):
        count = min(classes_per_sheet, num_classes)
        y = torch.arange(i * count, (i + 1) * count, device=device)
        rows = []
        for _ in range(samples_per_class):
            z = z_.draw(count, G.dim_z, generator=generator)
            with torch.no_grad():
                rows.append(G(z, G.shared(y)).cpu())
        ims = torch.stack(rows, 1).flatten(0, 1)
        save_sheet(ims, os.path.join(samples_root, experiment_name, str(folder_number),
                                     f'samples{i}.jpg'), nrow=samples_per_class)


def interp(x0, x1, num_midpoints):
    """Linear interpolation: x0, x1 (N, 1, D) -> (N, num_midpoints + 2, D)."""
    lerp = torch.linspace(0, 1.0, num_midpoints + 2, device=x0.device, dtype=x0.dtype)
    return x0 * (1 - lerp.view(1, -1, 1)) + x1 * lerp.view(1, -1, 1)


def interp_sheet(G, num_per_sheet, num_midpoints, num_classes, parallel, samples_root,
                 experiment_name, folder_number, sheet_number=0, fix_z=False, fix_y=False,
                 device=None, generator=None, z_=None):
    """Interpolation sheet samples/<exp>/<folder>/interp{Z}{Y}<n>.jpg.

    Each row interpolates between two draws; fix_z keeps z fixed along a row
    (class interpolation), fix_y keeps the class fixed (latent interpolation).
    The end points' z come from z_'s distribution, as in sample_sheet.
    """
    device = device or _device_of(G)
    z_ = _latent(z_, G, device)
    steps = num_midpoints + 2

    def draw_z():
        return z_.draw(num_per_sheet, 1, G.dim_z, generator=generator)

    def draw_y():
        classes = torch.randint(0, num_classes, (num_per_sheet,), device=device,
                                generator=generator)
        if not getattr(G, 'G_shared', True):
            # Per-class BN embeddings interpolate through soft one-hot class weights.
            return torch.nn.functional.one_hot(classes, num_classes).float().unsqueeze(1)
        return G.shared(classes).view(num_per_sheet, 1, -1)

    with torch.no_grad():
        zs = draw_z().repeat(1, steps, 1) if fix_z else interp(draw_z(), draw_z(), num_midpoints)
        ys = draw_y().repeat(1, steps, 1) if fix_y else interp(draw_y(), draw_y(), num_midpoints)
        out = G(zs.view(-1, G.dim_z), ys.view(num_per_sheet * steps, -1)).cpu()
    style = ('Z' if not fix_z else '') + ('Y' if not fix_y else '')
    save_sheet(out, os.path.join(samples_root, experiment_name, str(folder_number),
                                 f'interp{style}{sheet_number}.jpg'), nrow=steps)


# ---------------------------------------------------------------------------
# RNG state (for exact resume)
# ---------------------------------------------------------------------------
def get_rng_state():
    """torch (CPU and CUDA), numpy and python RNG states, in weights_only-loadable types."""
    import random

    import numpy as np
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {'torch': torch.get_rng_state(),
             'numpy': (kind, torch.from_numpy(keys.astype('int64')), pos, has_gauss, gauss),
             'python': random.getstate()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore the RNG states saved by get_rng_state."""
    import random

    import numpy as np
    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype('uint32'), pos, has_gauss, gauss))
    random.setstate(tuple(state['python'][:1]) + (tuple(state['python'][1]),)
                    + tuple(state['python'][2:]))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
