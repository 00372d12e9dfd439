"""What every script shares: the flags, the config, names, latents, logs and sheets.

Sections, in order:
- Parser: `prepare_parser()` / `add_sample_parser()` accept every flag of the
  original BigGAN-PyTorch parser with the same names, types and defaults.
- Derived config: `prepare_config()`, the one place where the derived keys
  (resolution, n_classes, activations, roots, skip_init on resume) are computed and
  bad flag combinations refused (ConfigError) before any model is built;
  `parse_config()` knows which flags were typed.
- Flags from a saved run: sample.py and --resume take the untyped flags from the
  experiment's saved config (`with_saved_flags`).
- Experiment names: `name_from_config`, `hashname`.
- Seeding and RNG state: `seed_rng`, `get_rng_state` / `set_rng_state` (exact resume),
  `private_generator`, `sampling_seed`.
- Latent and class sampling: `Distribution`, `prepare_z_y`.
- Logs: `MetricsLogger` (IS/FID), `MyLogger` (per-metric training logs, buffered),
  `write_metadata`, `get_SVs`.
- Sampling and sample sheets: `sample`, `save_sheet`, `sample_sheet`, `interp_sheet`.
- Errors at the entry points: `USER_ERRORS` (the one tuple every main() catches),
  `errors_reported`, `fail`.

Names that live elsewhere keep their original (utils.*) spelling as the plain
aliases right below the imports: the checkpoint journal (checkpoints.py) and the
training helpers (train_helpers.py).
"""
import contextlib
import datetime
import hashlib
import importlib
import importlib.util
import json
import os
import random
import sys
import time
from argparse import ArgumentParser, Namespace

import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image

import augment
import datasets as dset
import inception_utils
import layers
import metrics

# The aliases: utils.<name> as the original (and earlier versions of this code) spell it.
from checkpoints import (  # noqa: F401
    WRITE_ERRNOS,
    CheckpointError,
    ExperimentBusy,
    ExperimentLock,
    OutputError,
    atomic_write,
    check_outputs,
    check_training_state,
    check_writable,
    checkpoint_exists,
    checkpoint_path,
    checkpoint_set_bytes,
    join_strings,
    load_checkpoint_set,
    load_weights,
    plain_config,
    recover_checkpoints,
    save_weights,
    torch_load,
)
from train_helpers import (  # noqa: F401
    accumulate_standing_stats,
    default_ortho,
    ema,
    initiate_standing_stats,
    ortho,
    toggle_grad,
)


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
        help='Stop after this many G iterations, or at the end of --num_epochs if that '
             'comes first; 0 means run --num_epochs (default: %(default)s)')
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
        help='Metric that ranks "best" checkpoints, one that --test_metrics computes: IS, '
             'precision, recall, density or coverage (higher is better), FID, KID or iFID '
             '(lower is better); FID not with --no_fid; a NaN result never ranks '
             '(default: %(default)s)')
    arg('--test_metrics', type=str, default='IS,FID',
        help='Metrics computed every --test_every iterations (and by sample.py), from one '
             'pass of Inception features: a comma-separated selection of IS, FID, KID, PR '
             '(precision and recall), DC (density and coverage) and iFID (intra-class FID); '
             'all but IS and FID need the real features in the moments file '
             '(calculate_inception_moments.py --save_features) (default: %(default)s)')
    arg('--kid_subsets', type=int, default=100,
        help='KID: number of random subsets averaged (default: %(default)s)')
    arg('--kid_subset_size', type=int, default=1000,
        help='KID: samples per subset, from each side (default: %(default)s)')
    arg('--metrics_chunk', type=int, default=2048,
        help='KID, PR, DC: pairwise distances and kernels are computed in tiles of this '
             'many rows and columns, bounding their memory at about 3 * chunk**2 * 8 bytes '
             '(default: %(default)s)')
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
    arg('--tensorboard', action='store_true', default=False,
        help='Also write TensorBoard events into logs/<exp>/tensorboard/: losses, singular '
             'values, test metrics, speed, learning rates, the sample sheets of every save '
             'and the config; watch with `tensorboard --logdir logs` (default: %(default)s)')
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
    try:
        dset.get_spec(config['dataset'])
    except dset.DataError as err:
        errors.append(str(err))
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
    if not layers.NORM_STYLE_RE.match(config['norm_style']):
        errors.append(f"--norm_style {config['norm_style']}: use bn, in, gn, gn_ch_<C>, "
                      "gn_grp_<G> or nonorm")
    for flag in ('G_attn', 'D_attn'):
        if not _attention_ok(config[flag]):
            errors.append(f"--{flag} {config[flag]}: give resolutions separated by '_', "
                          "e.g. 64 or 32_64, or 0 for none")
    errors += _check_metric_flags(config)
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
    if config.get('tensorboard') and importlib.util.find_spec('tensorboard') is None:
        errors.append('--tensorboard: the tensorboard package is not installed; '
                      'pip install tensorboard (it is in requirements.txt), or train without '
                      '--tensorboard')
    errors += _check_small_data_flags(config)
    if config['logstyle'] not in ('pickle', 'mat', 'npz'):
        try:
            config['logstyle'] % 1.0
        except (TypeError, ValueError):
            errors.append(f"--logstyle {config['logstyle']}: give a printf format such as %3.3e")
    return errors


def _check_metric_flags(config):
    """--test_metrics, --which_best, --kid_subsets, --kid_subset_size, --metrics_chunk."""
    names, errors = metrics.check_metric_flags('--test_metrics', config['test_metrics'], config)
    if names == ['FID'] and config['no_fid']:
        errors.append('--test_metrics FID with --no_fid: nothing is left to compute; add IS '
                      '(or other metrics) to --test_metrics, or drop --no_fid')
    try:
        key, _ = metrics.ranking(config['which_best'])
    except ValueError as err:
        errors.append(str(err))
        key = None
    computes = {name for name in names if not (name == 'FID' and config['no_fid'])}
    if key == 'FID' and config['no_fid']:
        errors.append('--which_best FID with --no_fid: FID is not computed, so it cannot rank '
                      'the best copies; use --which_best IS, or drop --no_fid')
    elif key is not None and names and not any(key in metrics.METRICS[name].keys
                                               for name in computes):
        owner = next(name for name, metric in metrics.METRICS.items() if key in metric.keys)
        errors.append(f"--which_best {config['which_best']}: --test_metrics "
                      f"{config['test_metrics']} does not compute it; add {owner} to "
                      '--test_metrics, or rank by one it computes')
    return errors


def _check_small_data_flags(config):
    """Errors in the small-data flags (absent keys, as in older saved configs, are off)."""
    errors = []
    if config.get('data_subset', 0) and dset.subset_problem(config['data_subset']):
        errors.append(dset.subset_problem(config['data_subset']))
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
        # fp16 weights with a plain Adam collapse: these flags mean autocast with
        # fp32 master weights (README, Differences from the original).
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
               'load_in_mem', 'parallel', 'compile', 'tensorboard')
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

    SHA-1, not Python's hash() (which changes between processes), so that a resumed
    run finds its own folder.
    """
    h = int(hashlib.sha1(name.encode()).hexdigest(), 16)
    words = []
    for table in _HASH_WORDS:
        h, index = divmod(h, len(table))
        words.append(table[index])
    return ''.join(words)


# ---------------------------------------------------------------------------
# Seeding and RNG state
# ---------------------------------------------------------------------------
def seed_rng(seed):
    """Seed torch (all devices), numpy and python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def get_rng_state():
    """torch (CPU and CUDA), numpy and python RNG states, in weights_only-loadable types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {'torch': torch.get_rng_state(),
             'numpy': (kind, torch.from_numpy(keys.astype('int64')), pos, has_gauss, gauss),
             'python': random.getstate()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore the RNG states saved by get_rng_state."""
    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype('uint32'), pos, has_gauss, gauss))
    random.setstate(tuple(state['python'][:1]) + (tuple(state['python'][1]),)
                    + tuple(state['python'][2:]))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def private_generator(seed, device):
    """A torch.Generator on `device` seeded with `seed`, for sampling off the global RNG."""
    return torch.Generator(device=device).manual_seed(seed)


def sampling_seed(seed, itr, rank=0):
    """The seed of the sheets and metrics drawn at iteration `itr` (on process `rank`).

    A hash, so they depend only on (seed, itr, rank): the same iteration gives the
    same sheets however often the run saved or tested before it.
    """
    return dset.hashed_seed(f'biggan-samples:{seed}:{itr}:{rank}')


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


def sample_1hot(batch_size, num_classes, device='cuda'):
    """Random class indices (batch_size,) int64 (named as in the original)."""
    return torch.randint(0, num_classes, (batch_size,), device=device, dtype=torch.int64)


# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------
def _cut_log(path, keep):
    """Rewrite the log at `path` with only the lines for which keep(line) holds, atomically."""
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines):
        with atomic_write(path) as tmp, open(tmp, 'w') as f:
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
    Each record also goes to every sink(record) in `sinks`.
    """

    def __init__(self, fname, reinitialize=False, start_itr=None):
        self.fname = fname
        self.sinks = []
        if reinitialize and os.path.exists(fname):
            os.remove(fname)
        elif start_itr is not None and os.path.isfile(fname):
            _cut_log(fname, _itr_at_most(start_itr, lambda line: int(json.loads(line)['itr'])))

    def log(self, record=None, **kwargs):
        record = {**(record or {}), **kwargs, '_stamp': time.time()}
        with open(self.fname, 'a') as f:
            f.write(json.dumps(record, ensure_ascii=True) + '\n')
        for sink in self.sinks:
            sink(record)


class MyLogger:
    """Per-metric text logs: logs/<exp>/<metric>.log with lines 'itr: value'.

    log() writes at once. buffer() keeps one iteration's 0-d tensors on their device
    (no host sync) and flushes on the logger's own clock, every `flush_every` seconds,
    in one host sync; flush() writes whatever is buffered now. Every flush passes
    its rows to each of `sinks`: sink(itr, rows) with itr the latest buffered
    iteration and rows [(itr, {metric: value}), ...] oldest first (empty when nothing
    was buffered); append to `sinks` to send the losses elsewhere too.
    start_itr (on resume): lines after that iteration are cut from every log
    first, so a run resumed after a crash continues its logs without repeats.
    """

    def __init__(self, fname, reinitialize=False, logstyle='%3.3f', start_itr=None,
                 flush_every=2.0):
        self.root = fname
        os.makedirs(self.root, exist_ok=True)
        self.reinitialize = reinitialize
        self.metrics = set()
        self.logstyle = logstyle
        self.flush_every = flush_every
        self.sinks = []
        self.itr = start_itr or 0
        self._pending, self._last_flush = [], time.monotonic()
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

    def buffer(self, itr, metrics):
        """Keep iteration `itr`'s {metric: 0-d tensor} (may be empty); flush when due."""
        self.itr = itr
        if metrics:
            self._pending.append((itr, metrics))
        if time.monotonic() - self._last_flush > self.flush_every:
            self.flush()

    def flush(self):
        """Write the buffered iterations (one host sync) and pass them to the sinks."""
        rows = []
        if self._pending:
            itrs = [itr for itr, _ in self._pending]
            keys = list(self._pending[-1][1])
            values = torch.stack([torch.stack([m[k] for _, m in self._pending])
                                  for k in keys]).tolist()
            self.log_many(itrs, dict(zip(keys, values)))
            rows = [(itr, dict(zip(keys, row))) for itr, row in zip(itrs, zip(*values))]
        self._pending, self._last_flush = [], time.monotonic()
        for sink in self.sinks:
            sink(self.itr, rows)


def write_metadata(logs_root, experiment_name, config, state_dict):
    """logs/<exp>/metalog.txt: when, with which config, from which state."""
    path = os.path.join(logs_root, experiment_name)
    os.makedirs(path, exist_ok=True)
    state = {k: v for k, v in state_dict.items() if k not in ('config', 'rng')}
    with open(os.path.join(path, 'metalog.txt'), 'w') as f:
        f.write(f'datetime: {datetime.datetime.now()}\n')
        f.write(f'config: {plain_config(config)}\n')
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
    with atomic_write(path) as tmp:
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
    device = layers.module_device(G)
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
    device = device or layers.module_device(G)
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
# Errors at the entry points
# ---------------------------------------------------------------------------
# Bad input, a missing file, a full disk: what each entry point's main() (and train.run,
# sample.run) reports as one line through fail, never as a traceback.
USER_ERRORS = (ConfigError, dset.DataError, CheckpointError, OutputError,
               *inception_utils.METRICS_UNAVAILABLE, inception_utils.InceptionMomentsInvalid,
               inception_utils.MetricsUnavailable, metrics.ReferenceFileError)


@contextlib.contextmanager
def errors_reported(output='an output file', advice=''):
    """For main(): USER_ERRORS, and a full or read-only disk while writing `output`
    (WRITE_ERRNOS, followed by `advice`), exit with one line (fail) instead of a traceback."""
    try:
        yield
    except USER_ERRORS as err:
        fail(str(err))
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        fail(f'{err.filename or output}: {err.strerror}{advice}')


def fail(message, status=2):
    """Print `message` to stderr and exit: for bad input found after parsing."""
    print(f'error: {message}', file=sys.stderr)
    raise SystemExit(status)
