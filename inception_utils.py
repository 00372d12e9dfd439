"""The Inception networks, and the one pass of images through them that every metric reads.

Two networks map images in [-1, 1], (N, 3, H, W), to (pool (N, 2048), logits):

- ``torchvision``: torchvision's ImageNet Inception-v3 with the original BigGAN-PyTorch input
  handling. Its numbers are for monitoring only: they differ from the published TF ones.
- ``tf``: the TF Inception graph of 2015-12-05 that the reference IS and FID code runs, ported to
  PyTorch (weights ``pt_inception-2015-12-05-6726825d.pth``, as used by pytorch-fid). Its input
  resize reproduces TF1 ``resize_bilinear`` and its logits omit the fc bias, as the TF IS code
  computes them, so its IS/FID are comparable with published numbers.

``feature_pass`` runs generated or real images through a network once, on 1 or N processes
(the gather hook: ``OneProcess``, or distributed.FeatureGather), and feeds its sinks;
``InceptionOutputs`` is the sink that keeps what --test_metrics need. ``prepare_inception_metrics``
(with ``metrics_for_config``, the one place that turns missing inputs off) gives train.py,
sample.py and torchrun the one ``get_inception_metrics``. The statistics and every metric
(RunningMoments, InceptionScore, the exact Frechet distance, KID, ...) live in metrics.py; their
earlier names stay here as aliases.

Command line (IS, FID, KID, precision/recall, density/coverage, intra-class FID of samples
against a reference)::

    python inception_utils.py --samples samples.npz --reference data/I128_inception_moments_tf.npz \
        --network tf --metrics IS,FID,KID,PR,DC,iFID
"""
import argparse
import http.client
import itertools
import json
import os
import sys
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoints
import datasets
import layers
import metrics

# The statistics' and the Frechet distance's names here (DEVELOPERS.md's public interface).
from metrics import (  # noqa: F401
    InceptionScore,
    RunningMoments,
    calculate_inception_score,
    load_moments,
    numpy_calculate_frechet_distance,
    read_npz,
    torch_calculate_frechet_distance,
)

NETWORKS = ('torchvision', 'tf')
INCEPTION_SIZE = 299
POOL_DIM = 2048
# How each network resizes its input to 299 x 299 (recorded with every metric).
RESIZE = {'tf': 'tf1_resize_bilinear_299', 'torchvision': 'bilinear_align_corners_299'}

TF_WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'
TF_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                  + TF_WEIGHTS_FILE)
TORCHVISION_WEIGHTS_FILE = 'inception_v3_google-0cc3c7bd.pth'
TORCHVISION_WEIGHTS_URL = 'https://download.pytorch.org/models/' + TORCHVISION_WEIGHTS_FILE
_WEIGHTS = {'tf': (TF_WEIGHTS_FILE, TF_WEIGHTS_URL),
            'torchvision': (TORCHVISION_WEIGHTS_FILE, TORCHVISION_WEIGHTS_URL)}


class InceptionWeightsUnavailable(RuntimeError):
    """The Inception weights are missing (offline, no file) or unreadable; the message says
    which file is needed and where to put it."""


class InceptionMomentsMissing(FileNotFoundError):
    """The dataset's moments file for FID does not exist; the message names the file and the
    command that writes it."""


class InceptionMomentsInvalid(ValueError):
    """The dataset's moments file exists but cannot be used (unreadable, or not 2048-d pool
    moments); the message names the file and the command that rebuilds it."""


# Why IS/FID cannot run here (a file not made yet, offline): the one tuple every caller
# catches, to turn metrics off or to stop, with the message as the one reason.
METRICS_UNAVAILABLE = (InceptionMomentsMissing, InceptionWeightsUnavailable)


# ---------------------------------------------------------------------------
# TF1 resize
# ---------------------------------------------------------------------------
def _tf1_source_coords(in_size, out_size, device):
    # TF1 computes the scale and the source coordinate in float32, with no half-pixel offset:
    # src = dst * in / out, then lerps between floor(src) and the next pixel (clamped).
    scale = np.float32(in_size) / np.float32(out_size)
    src = torch.arange(out_size, dtype=torch.float32, device=device) * torch.tensor(
        scale, dtype=torch.float32, device=device)
    lo = torch.floor(src)
    frac = src - lo
    lo = lo.long()
    hi = torch.clamp(lo + 1, max=in_size - 1)
    return lo, hi, frac


def tf1_resize_bilinear(x, size=(INCEPTION_SIZE, INCEPTION_SIZE)):
    """TF1 ``tf.image.resize_bilinear(x, size, align_corners=False)``.

    x: (N, C, H, W) float -> (N, C, size[0], size[1]). Source coordinates are ``dst * in / out``
    (no half-pixel centres, unlike ``F.interpolate(align_corners=False)``), interpolated first
    along the width, then along the height, as TF does. The identity when the size matches.
    """
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return x
    y_lo, y_hi, y_frac = _tf1_source_coords(in_h, out_h, x.device)
    x_lo, x_hi, x_frac = _tf1_source_coords(in_w, out_w, x.device)
    x_frac = x_frac.to(x.dtype)
    y_frac = y_frac.to(x.dtype).view(-1, 1)

    def along_width(rows):
        left, right = rows.index_select(-1, x_lo), rows.index_select(-1, x_hi)
        return left + (right - left) * x_frac

    if in_h < out_h:
        # Upsampling: lerp each input row once, then pick rows; the same values TF computes.
        rows = along_width(x)
        top, bottom = rows.index_select(-2, y_lo), rows.index_select(-2, y_hi)
    else:
        top, bottom = along_width(x.index_select(-2, y_lo)), along_width(x.index_select(-2, y_hi))
    return top + (bottom - top) * y_frac


# ---------------------------------------------------------------------------
# The TF (FID) Inception-v3
# ---------------------------------------------------------------------------
class BasicConv2d(nn.Module):
    """Conv (no bias), batch norm (eps 1e-3, as TF's graph), ReLU."""

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x):
    # TF's SAME average pooling divides by the number of real (unpadded) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _tf_max_pool(x):
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class TFInceptionA(nn.Module):
    """Mixed_5b/5c/5d: 35x35 block. (N, in, 35, 35) -> (N, 224 + pool_features, 35, 35)."""

    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class TFInceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17. (N, in, 35, 35) -> (N, 480 + in, 17, 17)."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class TFInceptionC(nn.Module):
    """Mixed_6b..6e: 17x17 block with factorised 7x7 convs. (N, 768, 17, 17) -> same."""

    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], 1)


class TFInceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8. (N, 768, 17, 17) -> (N, 1280, 8, 8)."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class TFInceptionE(nn.Module):
    """Mixed_7b/7c: 8x8 block with split 3x3 convs. (N, in, 8, 8) -> (N, 2048, 8, 8).

    pool: 'avg' (Mixed_7b) or 'max' (Mixed_7c: the 2015-12-05 graph max-pools here).
    """

    def __init__(self, in_channels, pool='avg'):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)
        self.pool = {'avg': _tf_avg_pool, 'max': _tf_max_pool}[pool]

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(self.pool(x))], 1)


_MIXED_BLOCKS = ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b', 'Mixed_6c',
                 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c')


def _pool_features(net, x):
    """The Inception-v3 trunk shared by both networks (same layer names): normalised input
    (N, 3, 299, 299) -> pool_3 features (N, 2048)."""
    x = net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(net.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    for name in _MIXED_BLOCKS:
        x = getattr(net, name)(x)
    return x.mean(dim=(2, 3))


class TFInceptionV3(nn.Module):
    """The TF Inception graph of 2015-12-05 (the FID/IS reference network).

    Its state dict has torchvision's key names (no AuxLogits, fc 2048 -> 1008), so
    ``pt_inception-2015-12-05-6726825d.pth`` loads into it.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = TFInceptionA(192, pool_features=32)
        self.Mixed_5c = TFInceptionA(256, pool_features=64)
        self.Mixed_5d = TFInceptionA(288, pool_features=64)
        self.Mixed_6a = TFInceptionB(288)
        self.Mixed_6b = TFInceptionC(768, channels_7x7=128)
        self.Mixed_6c = TFInceptionC(768, channels_7x7=160)
        self.Mixed_6d = TFInceptionC(768, channels_7x7=160)
        self.Mixed_6e = TFInceptionC(768, channels_7x7=192)
        self.Mixed_7a = TFInceptionD(768)
        self.Mixed_7b = TFInceptionE(1280, pool='avg')
        self.Mixed_7c = TFInceptionE(2048, pool='max')
        self.fc = nn.Linear(POOL_DIM, 1008)

    def forward(self, x):
        """x: (N, 3, H, W) in [-1, 1] -> pool (N, 2048), logits (N, 1008) without the fc bias."""
        # The TF graph takes 0..255 pixels, resizes them, then maps them with (p - 128) / 128
        # (so 255 -> 0.9921875, not 1): reproduce exactly that order and scaling.
        x = (x.float() + 1.0) * 127.5
        x = tf1_resize_bilinear(x, (INCEPTION_SIZE, INCEPTION_SIZE))
        pool = _pool_features(self, (x - 128.0) / 128.0)
        # The TF IS code takes logits = pool_3 @ W (softmax/logits/MatMul), without the bias.
        return pool, F.linear(pool, self.fc.weight)


# ---------------------------------------------------------------------------
# torchvision's Inception-v3, wrapped as in the original
# ---------------------------------------------------------------------------
class WrapInception(nn.Module):
    """torchvision's Inception-v3 with the original BigGAN-PyTorch input handling.

    Maps [-1, 1] to ImageNet mean/std normalisation, then resizes to 299 with bilinear
    interpolation and align_corners=True (what the original's code does).
    """

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x):
        """x: (N, 3, H, W) in [-1, 1] -> pool (N, 2048), logits (N, 1000)."""
        x = ((x.float() + 1.0) / 2.0 - self.mean) / self.std
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode='bilinear',
                              align_corners=True)
        pool = _pool_features(self.net, x)
        return pool, self.net.fc(pool)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
def _check_network(network):
    if network not in NETWORKS:
        raise ValueError(f"--inception_network {network}: use one of {', '.join(NETWORKS)}")


def inception_architecture(network='torchvision'):
    """The bare, freshly initialised network that the weights file of `network` loads into:
    TFInceptionV3 for 'tf', torchvision's Inception3 (with AuxLogits) for 'torchvision'."""
    _check_network(network)
    if network == 'tf':
        return TFInceptionV3()
    from torchvision.models import inception_v3
    return inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)


def weights_help(network):
    """Where the weights of `network` come from, for error messages."""
    filename, url = _WEIGHTS[network]
    return (f'put {filename} (from {url}) in {os.path.join(torch.hub.get_dir(), "checkpoints")}'
            f' or pass its path with --inception_weights')


def _download_state_dict(url):
    # One place for the network access, so tests can replace it.
    return torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True,
                                              map_location='cpu', weights_only=True)


def _read_state_dict(path, network):
    try:
        state_dict = checkpoints.torch_load(path)
    except checkpoints.CheckpointError as err:  # refused, truncated, not a torch file
        raise InceptionWeightsUnavailable(
            f'{network} Inception weights: {err}; {weights_help(network)}') from None
    if not isinstance(state_dict, dict):
        raise InceptionWeightsUnavailable(f'{path}: holds a {type(state_dict).__name__}, not a '
                                          f'state dict; {weights_help(network)}')
    return state_dict


def _local_weights(network, weights_path=None):
    """The weights file of `network` that would be read without a download, or None."""
    path = weights_path or os.path.join(torch.hub.get_dir(), 'checkpoints', _WEIGHTS[network][0])
    return path if os.path.isfile(path) else None


def _no_weights_file(network, weights_path):
    return f'--inception_weights {weights_path}: no such file; {weights_help(network)}'


def load_inception_state_dict(network='torchvision', weights_path=None):
    """The state dict of `network`'s weights: from `weights_path`, else the torch hub checkpoint
    dir, else downloaded (when online). Raises InceptionWeightsUnavailable otherwise."""
    _check_network(network)
    filename, url = _WEIGHTS[network]
    if weights_path and not os.path.isfile(weights_path):
        raise InceptionWeightsUnavailable(_no_weights_file(network, weights_path))
    local = _local_weights(network, weights_path)
    if local:
        return _read_state_dict(local, network)
    try:
        return _download_state_dict(url)
    except (urllib.error.URLError, OSError, http.client.HTTPException, RuntimeError) as err:
        reason = getattr(err, 'reason', err)
        raise InceptionWeightsUnavailable(
            f'the {network} Inception weights {filename} are not available here and could not '
            f'be downloaded ({reason}); {weights_help(network)}') from None


def _load_checked(module, state_dict, network, source):
    # Older files may lack BN's num_batches_tracked (unused in eval mode); anything else
    # missing, unexpected or mis-shaped means the file is not these weights.
    own = module.state_dict()
    missing, unexpected, shapes = checkpoints.state_dict_mismatch(
        own, state_dict, optional=('num_batches_tracked',))
    if missing or unexpected or shapes:
        details = '; '.join(f'{what}: {", ".join(keys[:3])}{" ..." if len(keys) > 3 else ""}'
                            for what, keys in (('missing', missing), ('unexpected', unexpected),
                                               ('wrong shape', shapes)) if keys)
        raise InceptionWeightsUnavailable(f'{source}: not the {network} Inception weights '
                                          f'({details}); {weights_help(network)}')
    state_dict = dict(state_dict)
    for key in own:
        state_dict.setdefault(key, torch.zeros((), dtype=torch.long))  # the BN counters
    # assign=True takes the loaded tensors as they are: the module was built on the meta device.
    module.load_state_dict(state_dict, strict=True, assign=True)


def load_inception_net(parallel=False, network='torchvision', weights_path=None, device=None):
    """The Inception network for IS/FID, in eval mode, on `device` (default: cuda if available).

    Returns a module mapping images (N, 3, H, W) in [-1, 1], any H, W (resized to 299 inside),
    to (pool (N, 2048), logits (N, 1000 for torchvision | 1008 for tf)).
    network: 'torchvision' (the original's monitoring numbers) or 'tf' (TF-comparable numbers).
    weights_path: a state-dict file; by default the torch hub cache, else a download.
    Raises InceptionWeightsUnavailable when the weights cannot be found or read.
    """
    state_dict = load_inception_state_dict(network, weights_path)
    source = weights_path or _WEIGHTS[network][0]
    with torch.device('meta'):  # no time spent initialising weights that are overwritten
        net = inception_architecture(network)
    if network == 'torchvision':
        if not any(k.startswith('AuxLogits.') for k in state_dict):
            net.AuxLogits = None
        _load_checked(net, state_dict, network, source)
        # The auxiliary classifier only matters in training; drop it.
        net.AuxLogits, net.aux_logits = None, False
        net = WrapInception(net)
    else:
        _load_checked(net, state_dict, network, source)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    net = net.to(device).eval().requires_grad_(False)
    if parallel:
        net = nn.DataParallel(net)
    return net


# ---------------------------------------------------------------------------
# Streaming evaluation
# ---------------------------------------------------------------------------
class OneProcess:
    """How one process gathers its metric features (the gather hook's interface; under
    torchrun, distributed.FeatureGather implements it for N processes).

    is_main: whether this process computes the metrics from everyone's features;
    device: where the Inception network runs (None: cuda if available);
    agree(flag): True only when `flag` holds on every process;
    gather(pool, logits, labels): every process's rows of one round, in process order,
    on the main process (None for each process elsewhere);
    share(results): the main process's results (anything JSON holds), on every process.
    """
    is_main = True
    device = None

    def agree(self, flag):
        return bool(flag)

    def gather(self, pool, logits, labels):
        return [(pool, logits, labels)]

    def share(self, results):
        return results


ONE_PROCESS = OneProcess()


def feature_pass(batches, net, num_images, sinks, gather=ONE_PROCESS, pbar=None):
    """The one pass of generated or real images through `net` that every metric reads.

    batches: iterable of (images (B, 3, H, W) in [-1, 1], labels (B,) or None), the same
    B on every process. Runs until `num_images` images (over all processes) were seen;
    each of `sinks` is called as sink(pool (b, 2048), logits (b, C), labels (b,) or None)
    for every round's rows, in order, on the main process only (the rows are valid
    during the call: copy what you keep); the last rows are cut to num_images (the whole
    batch goes through the network, on 1 process as on N, so the features are the same
    to the bit). Raises ValueError when the batches run out first.
    """
    device = layers.module_device(net)
    seen = 0
    with torch.no_grad():
        for images, labels in batches:
            pool, logits = net(images.to(device, torch.float32))
            for rows in gather.gather(pool, logits, labels):
                take = min(pool.shape[0], num_images - seen)
                if rows is not None and take > 0:
                    for sink in sinks:
                        sink(*(None if t is None else t[:take] for t in rows))
                seen += take
                if pbar is not None:
                    pbar.update(take)
            if seen >= num_images:
                break
    if seen < num_images:
        raise ValueError(f'only {seen} images were available, expected {num_images}')


class InceptionOutputs:
    """A feature_pass sink: what one pass of `num_images` images yields for the metrics.

    Always streamed: the RunningMoments of the pool features (`moments`, for FID) and the
    InceptionScore of the logits (`scorer`). With keep_features, also the pool features
    themselves, float32, and the labels (for KID, precision/recall, density/coverage,
    intra-class FID), on `keep_on` (default: where they were computed). With per_class, a
    RunningMoments per label (`class_moments`; C * D**2 * 8 bytes).
    """

    def __init__(self, num_images, num_splits=10, split_seed=None, keep_features=False,
                 per_class=False, keep_on=None):
        self.moments = RunningMoments()
        self.scorer = InceptionScore(num_images, num_splits, seed=split_seed)
        self.keep_features, self.per_class, self.keep_on = keep_features, per_class, keep_on
        self.class_moments = {}
        self._pool, self._labels = [], []
        self.count = 0

    def __call__(self, pool, logits, labels=None):
        """pool: (B, D), logits: (B, C), labels: (B,) integer classes or None."""
        self.moments.update(pool)
        self.scorer.update(logits)
        if self.keep_features:
            # Copies: the rows are valid during the call only, and a sampler may redraw its
            # label buffer in place for the next batch.
            self._pool.append(pool.detach().to(self.keep_on or pool.device, torch.float32,
                                               copy=True))
            self._labels.append(None if labels is None else torch.as_tensor(labels).detach().to(
                self._pool[-1].device, torch.long, copy=True))
        if self.per_class:
            if labels is None:
                raise ValueError('per-class moments need the labels of the images')
            labels = torch.as_tensor(labels).detach().long().to(pool.device)
            for c in labels.unique().tolist():
                self.class_moments.setdefault(c, RunningMoments()).update(pool[labels == c])
        self.count += pool.shape[0]

    @property
    def pool(self):
        """The kept pool features (N, D) float32, or None."""
        return torch.cat(self._pool) if self.keep_features and self._pool else None

    @property
    def labels(self):
        """The kept labels (N,) int64, or None (not kept, or a batch came without them)."""
        if not self.keep_features or not self._labels or any(y is None for y in self._labels):
            return None
        return torch.cat(self._labels)

    def fake(self):
        """{'moments', 'scorer', 'pool', 'labels'}: metrics.compute_metrics' generated side."""
        return {'moments': self.moments, 'scorer': self.scorer, 'pool': self.pool,
                'labels': self.labels}


def accumulate_inception_outputs(batches, net, num_images, num_splits=10, split_seed=None,
                                 gather=ONE_PROCESS, sinks=(), pbar=None, **keep):
    """feature_pass of (images, labels) batches into one InceptionOutputs (keep: its
    keep_features, per_class, keep_on), which it returns (empty on processes other than
    the main one); `sinks` see the same rows. Raises ValueError when the batches run out
    first."""
    outputs = InceptionOutputs(num_images, num_splits, split_seed, **keep)
    feature_pass(batches, net, num_images, [outputs, *sinks], gather, pbar)
    return outputs


def inception_statistics(batches, net, num_images, num_splits=10, split_seed=None,
                         gather=ONE_PROCESS, sinks=(), pbar=None):
    """accumulate_inception_outputs' (RunningMoments of the pool features, InceptionScore
    of the logits)."""
    outputs = accumulate_inception_outputs(batches, net, num_images, num_splits, split_seed,
                                           gather, sinks, pbar)
    return outputs.moments, outputs.scorer


def accumulate_inception_statistics(batches, net, num_images, num_splits=10, split_seed=None,
                                    pbar=None):
    """inception_statistics of image batches (B, 3, H, W) in [-1, 1] without labels.

    Returns (RunningMoments of pool features, InceptionScore). Raises ValueError when the
    batches run out first.
    """
    return inception_statistics(((images, None) for images in batches), net, num_images,
                                num_splits, split_seed, pbar=pbar)


def moments_filename(dataset, data_root='data', network='torchvision', resolution=None):
    """`<data_root>/<dataset without _hdf5>_inception_moments[_tf].npz` (one file per network).

    A generic dataset's name carries its resolution (folder64_...): the moments of a
    folder depend on the size its images are resized to.
    """
    _check_network(network)
    label = (datasets.file_label(dataset, resolution) if dataset in datasets.DATASETS
             else dataset.removesuffix('_hdf5'))
    name = label + '_inception_moments'
    return os.path.join(data_root, name + ('_tf' if network == 'tf' else '') + '.npz')


def save_moments(path, mu, sigma, **extra):
    """Write mu, sigma (and the `extra` arrays, e.g. features, labels, class_mu, num_images;
    see metrics.load_reference) to `path` atomically (a half-written file never replaces a
    good one)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with checkpoints.atomic_write(path) as tmp, open(tmp, 'wb') as f:
        np.savez(f, mu=mu, sigma=sigma, **extra)


def load_dataset_moments(dataset, data_root='data', network='torchvision', resolution=None):
    """(mu (2048,), sigma (2048, 2048)) of `dataset`'s real images, for FID.

    Raises InceptionMomentsMissing naming the file and the command that makes
    it, or InceptionMomentsInvalid (a ValueError) for a file that is unreadable
    or does not hold 2048-d pool moments.
    resolution: the size of a generic dataset (--dataset folder).
    """
    path = moments_filename(dataset, data_root, network, resolution)
    command = _moments_command(dataset, data_root, network, resolution)
    if not os.path.isfile(path):
        raise InceptionMomentsMissing(
            f'{path}: no Inception moments for FID; make them with `{command}` '
            '(or pass --no_fid)')
    try:
        data_mu, data_sigma = load_moments(path)
    except ValueError as err:
        raise InceptionMomentsInvalid(f'{err}; rebuild it with `{command}`') from None
    if data_mu.shape != (POOL_DIM,):
        raise InceptionMomentsInvalid(
            f'{path}: holds {len(data_mu)}-d moments, not the {POOL_DIM}-d Inception pool '
            f'features; rebuild it with `{command}`')
    return data_mu, data_sigma


def dataset_evaluation(dataset, test_metrics='IS,FID', no_fid=False, data_root='data',
                       network='torchvision', resolution=None, options=None, sampling=None,
                       reference=True):
    """The metrics.Evaluation of --test_metrics against the dataset's moments file.

    no_fid drops FID. The file is read only when a metric needs it (not for IS alone), and
    only the parts the metrics need (its real features only for KID, PR, DC, iFID); with
    reference=False it is not read at all (ranks that only sample). Raises
    InceptionMomentsMissing or InceptionMomentsInvalid naming the file and the command that
    makes it, also when the file lacks what a metric needs (real features).
    options: compute_metrics' keywords (metrics.options_from_config); sampling:
    metrics.sampling_protocol.
    """
    names = [name for name in metrics.parse_metrics(test_metrics)
             if not (no_fid and name == 'FID')]
    ref = None
    if reference and any(metrics.METRICS[name].reference for name in names):
        data_mu, data_sigma = load_dataset_moments(dataset, data_root, network, resolution)
        path = moments_filename(dataset, data_root, network, resolution)
        extra = metrics.needs_reference_data(names)
        try:
            ref = metrics.load_reference(path, extra=extra)
            metrics.check_reference(names, ref, 'make one that has them with `' +
                                    _moments_command(dataset, data_root, network, resolution) +
                                    ' --save_features`')
        except metrics.ReferenceFileError as err:
            raise InceptionMomentsInvalid(str(err)) from None
        ref.mu, ref.sigma = data_mu, data_sigma
    # Not strict: a metric that cannot be computed from one pass (a class drawn once, for
    # iFID) is NaN with a warning, not the end of a training run.
    return metrics.Evaluation(names, ref, options or {}, network, sampling, strict=False,
                              resize=RESIZE[network])


def _moments_command(dataset, data_root, network, resolution):
    generic = dataset in datasets.DATASETS and datasets.is_generic(dataset)
    size = f' --resolution {resolution}' if generic else ''
    return (f'python calculate_inception_moments.py --dataset {dataset}{size} --data_root '
            f'{data_root} --inception_network {network}')


def metric_inputs(dataset, no_fid=False, data_root='data', network='torchvision',
                  weights_path=None, parallel=False, device=None, moments=True,
                  resolution=None, test_metrics='IS,FID', options=None, sampling=None):
    """What the metrics need, found before a single image is sampled: (net, evaluation), the
    evaluation a metrics.Evaluation of `test_metrics` (see dataset_evaluation).

    The one place that decides whether metrics can run (train.py, torchrun's
    ranks and sample.py all ask it). moments=False (or no_fid with IS alone) skips
    the dataset's moments. Raises one of METRICS_UNAVAILABLE when the moments file
    or the Inception weights are missing, the message naming each missing file
    and how to get it (both at once when both are missing); a weights file that
    is not the network's weights is InceptionWeightsUnavailable too. Raises
    InceptionMomentsInvalid for a moments file that exists but is unusable, or lacks
    the real features a metric needs.
    resolution: the size of a generic dataset (--dataset folder), for its moments' name.
    """
    try:
        evaluation = dataset_evaluation(dataset, test_metrics, no_fid, data_root, network,
                                        resolution, options, sampling, reference=moments)
    except InceptionMomentsMissing as err:
        if _local_weights(network, weights_path) is None:
            # Say both at once; nothing is downloaded for metrics that cannot run.
            weights = (_no_weights_file(network, weights_path) if weights_path else
                       f'the {network} Inception weights are not here either: '
                       f'{weights_help(network)}')
            raise InceptionMomentsMissing(f'{err}. And {weights}') from None
        raise
    return load_inception_net(parallel, network, weights_path, device), evaluation


def prepare_inception_metrics(dataset, parallel, no_fid=False, data_root='data',
                              network='torchvision', weights_path=None, resolution=None,
                              gather=ONE_PROCESS, log=print, test_metrics='IS,FID',
                              options=None, sampling=None):
    """Load the network (and, when a metric needs it, the dataset's moments file) and return
    ``get_inception_metrics(sample, num_inception_images, num_splits=10, prints=True,
    sinks=(), as_dict=False) -> (IS_mean, IS_std, FID)``, or with as_dict=True {every key
    of `test_metrics`, 'protocol': {...}} (metrics.Evaluation), the same on every process.

    `sample()` returns (images (B, 3, H, W) in [-1, 1], labels (B,)); every process's
    samples count (`gather`: OneProcess, or distributed.FeatureGather under torchrun).
    `sinks` see every image's features (feature_pass). With no_fid, FID is NaN (it never
    counts as a best FID). Raises what metric_inputs raises, before any sampling, on
    every process alike: the main process decides first (it alone reads the moments, and
    the weights it finds, or downloads into the hub cache, are then there for the others).
    resolution: the size of a generic dataset (--dataset folder), for its moments' name.
    options, sampling: see dataset_evaluation.
    """
    def inputs(moments=True):
        return metric_inputs(dataset, no_fid, data_root, network, weights_path, parallel,
                             device=gather.device, moments=moments, resolution=resolution,
                             test_metrics=test_metrics, options=options, sampling=sampling)
    net = evaluation = error = None
    if gather.is_main:
        try:
            net, evaluation = inputs()
        except (InceptionMomentsInvalid, *METRICS_UNAVAILABLE) as err:
            error = err
    if not gather.agree(not isinstance(error, InceptionMomentsInvalid)):
        raise error or InceptionMomentsInvalid('the moments file is unusable (the main '
                                               'process says why)')
    if gather.agree(error is None) and not gather.is_main:
        try:
            net, evaluation = inputs(moments=False)
        except METRICS_UNAVAILABLE as err:
            error = err
    if not gather.agree(error is None):
        raise error or InceptionWeightsUnavailable('Inception could not be loaded on another '
                                                   'process')

    def get_inception_metrics(sample, num_inception_images, num_splits=10, prints=True,
                              sinks=(), as_dict=False):
        """The metrics of num_inception_images samples from `sample()` (see above)."""
        if prints:
            log('Gathering activations...')
        batches = (sample() for _ in itertools.count())
        outputs = accumulate_inception_outputs(batches, net, num_inception_images, num_splits,
                                               gather=gather, sinks=sinks,
                                               keep_features=evaluation.keeps_features)
        results = None
        if gather.is_main:
            if prints:
                log(f'Calculating {",".join(evaluation.names)}...')
            results = evaluation(outputs)
        results = gather.share(results)
        return results if as_dict else legacy_results(results)

    return get_inception_metrics


def legacy_results(results):
    """(IS_mean, IS_std, FID) of a results dict, NaN for those not computed: what the
    original's get_inception_metrics returns."""
    return tuple(float(results.get(key, float('nan'))) for key in ('IS_mean', 'IS_std', 'FID'))


class MetricsUnavailable(RuntimeError):
    """--test_metrics were asked for (the message names the flag) but cannot be computed
    here."""


def metrics_for_config(config, gather=ONE_PROCESS, log=print, needed_by=None, sampling=None):
    """prepare_inception_metrics with the run's flags (--test_metrics and its options;
    `sampling`: metrics.sampling_protocol(config) unless given); the one place that catches
    METRICS_UNAVAILABLE. Then the metrics are off: None, said in one `log` line; or, when
    `needed_by` names the flag that asked for them, MetricsUnavailable naming it (for an
    unusable moments file too). InceptionMomentsInvalid propagates otherwise."""
    test_metrics = config.get('test_metrics', 'IS,FID')
    try:
        return prepare_inception_metrics(
            config['dataset'], config.get('parallel', False), config['no_fid'],
            data_root=config['data_root'], network=config['inception_network'],
            weights_path=config['inception_weights'], resolution=config.get('resolution'),
            gather=gather, log=log, test_metrics=test_metrics,
            options=metrics.options_from_config(config),
            sampling=sampling or metrics.sampling_protocol(config))
    except (*METRICS_UNAVAILABLE, InceptionMomentsInvalid) as err:
        if needed_by is not None:
            names = test_metrics.replace(',', '/')
            raise MetricsUnavailable(f'{needed_by}: {names} cannot be computed: {err}') \
                from None
        if isinstance(err, InceptionMomentsInvalid):
            raise
        log(f'IS/FID are off: {err}')
        return None


# ---------------------------------------------------------------------------
# Command line: IS / FID of samples against a reference
# ---------------------------------------------------------------------------
# The image files datasets.ImageFolder reads.
IMAGE_SUFFIXES = datasets.IMG_EXTENSIONS


def _uint8_to_unit(x):
    return datasets.to_float_image(torch.from_numpy(np.ascontiguousarray(x)))


def npz_image_batches(path, batch_size):
    """(count, iterator of (B, 3, H, W) float batches in [-1, 1]) from an npz with uint8 images
    under 'x', NHWC (N, H, W, 3) or NCHW (N, 3, H, W) (the original sample.py writes NCHW)."""
    x = read_npz(path, ('x',), 'samples (x)')['x']
    if x.dtype != np.uint8 or x.ndim != 4 or 3 not in (x.shape[1], x.shape[3]):
        raise ValueError(f'{path}: x has dtype {x.dtype} and shape {x.shape}; expected uint8 '
                         'images (N, H, W, 3) or (N, 3, H, W)')
    channels_last = x.shape[3] == 3 and x.shape[1] != 3

    def batches():
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            yield _uint8_to_unit(chunk.transpose(0, 3, 1, 2) if channels_last else chunk)
    return len(x), batches()


def folder_image_batches(path, batch_size):
    """(count, iterator of float batches in [-1, 1]) from the image files under a folder
    (recursively, sorted); consecutive images of one size share a batch."""
    from PIL import Image

    def unlistable(err):
        raise ValueError(f'{err.filename}: cannot list this folder ({err.strerror})')
    # os.walk with onerror: an unreadable subfolder is an error, never silently skipped.
    files = sorted(Path(folder, name) for folder, _, names in os.walk(path, onerror=unlistable)
                   for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f'{path}: no image files ({", ".join(IMAGE_SUFFIXES)}) found')

    def batches():
        pending = []
        for file in files:
            try:
                with Image.open(file) as image:
                    array = np.asarray(image.convert('RGB'))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
                reason = 'permission denied' if isinstance(err, PermissionError) else err
                raise ValueError(f'{file}: cannot read this image ({reason})') from None
            if pending and (len(pending) == batch_size or array.shape != pending[0].shape):
                yield _uint8_to_unit(np.stack(pending).transpose(0, 3, 1, 2))
                pending = []
            pending.append(array)
        yield _uint8_to_unit(np.stack(pending).transpose(0, 3, 1, 2))
    return len(files), batches()


def image_batches(path, batch_size):
    """Batches from an npz of samples or from an image folder (see the two readers)."""
    if os.path.isdir(path):
        return folder_image_batches(path, batch_size)
    if os.path.isfile(path):
        return npz_image_batches(path, batch_size)
    raise ValueError(f'{path}: no such file or folder')


def sample_labels(path, count):
    """The class labels (count,) int64 under 'y' of a samples npz (sample.py writes them), or
    None (a folder, or an npz without them); ValueError naming the file if they do not fit."""
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as data:
        if 'y' not in data.files:
            return None
    y = read_npz(path, ('y',), 'samples (x, y)')['y']
    if y.shape != (count,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f'{path}: y has dtype {y.dtype} and shape {y.shape}; expected '
                         f'integer class labels ({count},)')
    return torch.from_numpy(y.astype(np.int64))


def _with_labels(images, labels):
    """(images, labels) pairs: each batch of `images` with its slice of `labels` (or None)."""
    count, batches = images
    start = 0
    for batch in batches:
        yield batch, None if labels is None else labels[start:start + len(batch)]
        start += len(batch)


def _cli_parser():
    parser = argparse.ArgumentParser(
        description='Metrics of generated samples against a reference: IS, FID, KID, '
                    'precision/recall (PR), density/coverage (DC), intra-class FID (iFID).')
    parser.add_argument('--samples', required=True,
                        help="npz with uint8 images under 'x' and optional labels under 'y' "
                             '(as sample.py writes), or a folder of images')
    parser.add_argument('--reference', '--moments', dest='reference', default='',
                        help='npz of reference statistics (moments mu, sigma as ours, TF TTUR, '
                             'pytorch-fid or clean-fid write them; real features; per-class '
                             'moments: see metrics.load_reference) or a folder of reference '
                             'images; omit for IS only')
    parser.add_argument('--metrics', default=None,
                        help='comma-separated selection of IS, FID, KID, PR, DC, iFID '
                             '(default: IS,FID with --reference, else IS)')
    parser.add_argument('--network', choices=NETWORKS, default='torchvision',
                        help='tf for numbers comparable with published IS/FID '
                             '(default: %(default)s)')
    parser.add_argument('--weights_path', '--inception_weights', dest='weights_path',
                        default=None, help='Inception weights file (default: torch hub cache, '
                                           'else download)')
    parser.add_argument('--batch_size', type=int, default=50, help='(default: %(default)s)')
    parser.add_argument('--num_splits', type=int, default=10, help='(default: %(default)s)')
    parser.add_argument('--kid_subsets', type=int, default=100, help='(default: %(default)s)')
    parser.add_argument('--kid_subset_size', type=int, default=1000,
                        help='(default: %(default)s)')
    parser.add_argument('--metrics_chunk', type=int, default=2048,
                        help='tile size of the pairwise distances of KID, PR, DC '
                             '(default: %(default)s)')
    parser.add_argument('--device', default=None, help='(default: cuda if available)')
    return parser


def _outputs_of(images, labels, net, args, label, keep_features, report_IS):
    from tqdm import tqdm
    with tqdm(total=images[0], desc=label, unit='img') as pbar:
        # An IS that is not reported (the reference's, or not asked): any split count that fits.
        splits = args.num_splits if report_IS else min(args.num_splits, images[0])
        return accumulate_inception_outputs(_with_labels(images, labels), net, images[0],
                                            splits, pbar=pbar, keep_features=keep_features)


def _print_results(results, args):
    net = args.network
    if 'IS_mean' in results:
        print(f"Inception Score ({net}, {results['protocol']['num_generated']} samples, "
              f"{args.num_splits} splits): {results['IS_mean']:.4f} +/- {results['IS_std']:.4f}")
    if 'FID' in results:
        print(f"FID ({net}): {results['FID']:.4f}")
    if 'KID_mean' in results:
        print(f"KID ({net}, {results['KID_subsets']} subsets of {results['KID_subset_size']}): "
              f"{results['KID_mean']:.6f} +/- {results['KID_std']:.6f}")
    for key in ('precision', 'recall', 'density', 'coverage'):
        if key in results:
            k = 3 if key in ('precision', 'recall') else 5
            print(f'{key} ({net}, k={k}): {results[key]:.4f}')
    if 'iFID' in results:
        print(f"iFID ({net}, {len(results['iFID_per_class'])} classes): {results['iFID']:.4f}")
    print(f"protocol: {json.dumps(results['protocol'])}")


def main(argv=None):
    """`python inception_utils.py --samples X --reference Y --metrics IS,FID,KID --network tf`:
    prints each metric on its own line, then the protocol (JSON) they were computed with."""
    parser = _cli_parser()
    args = parser.parse_args(argv)
    names, problems = metrics.check_metric_flags(
        '--metrics', args.metrics or ('IS,FID' if args.reference else 'IS'), vars(args))
    problems += [f'--{flag} {getattr(args, flag)}: must be at least 1'
                 for flag in ('batch_size', 'num_splits') if getattr(args, flag) < 1]
    if problems:
        parser.error('; '.join(problems))
    if not args.reference and any(metrics.METRICS[name].reference for name in names):
        parser.error(f'--metrics {",".join(names)}: all but IS need --reference')
    for flag, path in (('--samples', args.samples), ('--reference', args.reference)):
        if path and not os.path.exists(path):
            problem = datasets.path_problem(path) or 'not found'
            parser.error(f'{flag} {path}: ' + ('permission denied' if problem ==
                                               'permission denied' else 'no such file or folder'))
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError:
            parser.error(f'--device {args.device}: not a device; use e.g. cpu, cuda or cuda:1')
    reference_is_file = args.reference and os.path.isfile(args.reference)
    if reference_is_file and (args.network == 'tf') != ('_tf' in Path(args.reference).stem):
        warnings.warn(f'{args.reference}: moments files are named per network '
                      f"('_tf' for tf); check it was computed with --network {args.network}",
                      stacklevel=1)
    options = {'kid_subsets': args.kid_subsets, 'kid_subset_size': args.kid_subset_size,
               'chunk_size': args.metrics_chunk}
    try:
        # The inputs are read (npz) or listed (folders) before the network loads.
        reference = None
        if reference_is_file:
            reference = metrics.load_reference(args.reference,
                                               extra=metrics.needs_reference_data(names))
            metrics.check_reference(names, reference,
                                    'compute the real features with `python '
                                    'calculate_inception_moments.py ... --save_features`, or '
                                    'give a folder of real images')
        samples = image_batches(args.samples, args.batch_size)
        labels = sample_labels(args.samples, samples[0])
        reference_images = (image_batches(args.reference, args.batch_size)
                            if args.reference and reference is None else None)
        if 'iFID' in names and labels is None:
            raise ValueError(f"{args.samples}: iFID needs the class of each sample, as "
                             "labels under 'y' of an npz (sample.py writes them)")
        if 'iFID' in names and reference_images is not None:
            raise ValueError(f'{args.reference}: a folder of images has no class labels; '
                             'iFID needs a reference npz with features and labels (or '
                             'class_mu and class_sigma)')
        net = load_inception_net(network=args.network, weights_path=args.weights_path,
                                 device=args.device)
        outputs = _outputs_of(samples, labels, net, args, 'samples',
                              metrics.keeps_features(names), 'IS' in names)
        if reference_images is not None:
            extra = metrics.needs_reference_data(names)
            real = _outputs_of(reference_images, None, net, args, 'reference', extra, False)
            reference = metrics.Reference(args.reference, real.moments.mu, real.moments.sigma,
                                          features=real.pool, num_images=real.count)
        results = metrics.Evaluation(names, reference, options, args.network,
                                     resize=RESIZE[args.network])(outputs)
    except (InceptionWeightsUnavailable, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    _print_results(results, args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
