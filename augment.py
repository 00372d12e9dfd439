"""Augmentations and regularisers of D for training on small datasets.

- `DiffAugment`: Differentiable Augmentation (Zhao et al., 2020), policy
  'color,translation,cutout' or any subset of it.
- `AugmentPipe`: the stylegan2-ada augmentation pipeline (Karras et al., 2020),
  groups 'b' (pixel blitting), 'g' (general geometry) and 'c' (colour), each
  augmentation applied per image with probability p; `ADAController` adapts p.
- `LeCam`: the LeCam regulariser (Tseng et al., 2021) with its EMA anchors.
- `bcr_loss`, `zcr_D_loss`, `zcr_G_loss`, `perturb_latents`: balanced and
  latent consistency regularisation (Zhao et al., 2021).

Images are (N, 3, H, W) in [-1, 1] on any device. Every augmentation is
differentiable with respect to the images and runs in plain PyTorch on the
images' device. Random parameters are drawn per call (so every micro-batch
draws its own) from the `generator` given (best on the images' device: one
elsewhere costs a copy per draw) or from the global RNG of the images'
device. Each augmentation also takes explicit `params`, dicts of per-image
tensors whose rows can be sliced, so that every rank of a multi-process run
can draw the global batch's parameters and apply its rows.
"""
import math

import torch
import torch.nn.functional as F


def _device_of(generator, device):
    return generator.device if generator is not None else torch.device(device)


def _rand(shape, generator, device):
    """U[0, 1) float32 of `shape` on `device`, drawn on the generator's device."""
    return torch.rand(shape, generator=generator, device=_device_of(generator, device)).to(device)


def _randn(shape, generator, device):
    return torch.randn(shape, generator=generator, device=_device_of(generator, device)).to(device)


def _randint(low, high, shape, generator, device):
    return torch.randint(low, high, shape, generator=generator,
                         device=_device_of(generator, device)).to(device)


def _check_images(x):
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f'augment: images must be (N, 3, H, W), got {tuple(x.shape)}')


# ---------------------------------------------------------------------------
# DiffAugment
# ---------------------------------------------------------------------------
DIFFAUGMENT_OPS = ('color', 'translation', 'cutout')
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def diffaugment_policy(policy):
    """'color,translation,cutout' (any subset, any order, '' for none) -> the ops in paper order.

    Raises ValueError naming --DiffAugment for an unknown name.
    """
    names = [name.strip() for name in policy.split(',') if name.strip()]
    unknown = [name for name in names if name not in DIFFAUGMENT_OPS]
    if unknown:
        raise ValueError(f'--DiffAugment {policy}: unknown augmentation {unknown[0]!r}; give a '
                         f"comma-separated subset of {','.join(DIFFAUGMENT_OPS)}")
    return tuple(op for op in DIFFAUGMENT_OPS if op in names)


def _shift_and_cutout_sizes(height, width):
    # Rounded as in the paper's code: 4 pixels of shift and a 16-pixel square at 32x32.
    shift = (int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5))
    cut = (int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5))
    return shift, cut


def diffaugment_params(n, policy, height, width, generator=None, device='cpu'):
    """Draw DiffAugment's parameters for n images of height x width.

    Returns a dict with the keys the policy needs:
      brightness: (n,) in [-0.5, 0.5), added to every pixel;
      saturation: (n,) in [0, 2), factor on each pixel's deviation from its channel mean;
      contrast: (n,) in [0.5, 1.5), factor on the deviation from the image mean;
      translation: (n, 2) int64 (dy, dx) in [-H/8, H/8] x [-W/8, W/8] (rounded);
      cutout: (n, 2) int64 (cy, cx), centre of the zeroed square of half the image size.
    Draws happen in that order, from `generator` (or the global RNG of `device`).
    """
    ops = diffaugment_policy(policy)
    (sy, sx), (cut_h, cut_w) = _shift_and_cutout_sizes(height, width)
    params = {}
    if 'color' in ops:
        params['brightness'] = _rand((n,), generator, device) - 0.5
        params['saturation'] = _rand((n,), generator, device) * 2
        params['contrast'] = _rand((n,), generator, device) + 0.5
    if 'translation' in ops:
        params['translation'] = torch.stack(
            [_randint(-sy, sy + 1, (n,), generator, device),
             _randint(-sx, sx + 1, (n,), generator, device)], dim=1)
    if 'cutout' in ops:
        # As in the paper: an even-sized square's centre may sit one past the last pixel.
        params['cutout'] = torch.stack(
            [_randint(0, height + 1 - cut_h % 2, (n,), generator, device),
             _randint(0, width + 1 - cut_w % 2, (n,), generator, device)], dim=1)
    return params


def _translate(x, shift):
    """out[n, :, i, j] = x[n, :, i - dy, j - dx], zero outside. shift: (N, 2) int64 (dy, dx)."""
    N, _, H, W = x.shape
    padded = F.pad(x, [1, 1, 1, 1])
    # Every source index outside the image lands on the zero border of `padded`.
    rows = (torch.arange(H, device=x.device) - shift[:, :1] + 1).clamp(0, H + 1)   # (N, H)
    cols = (torch.arange(W, device=x.device) - shift[:, 1:] + 1).clamp(0, W + 1)   # (N, W)
    batch = torch.arange(N, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _cutout_mask(centre, height, width, dtype):
    """(N, 1, H, W) mask: 0 in the half-size square around each centre, 1 elsewhere."""
    _, (cut_h, cut_w) = _shift_and_cutout_sizes(height, width)
    top = centre[:, :1] - cut_h // 2
    left = centre[:, 1:] - cut_w // 2
    rows = torch.arange(height, device=centre.device)
    cols = torch.arange(width, device=centre.device)
    in_rows = (rows >= top) & (rows < top + cut_h)          # (N, H)
    in_cols = (cols >= left) & (cols < left + cut_w)        # (N, W)
    inside = in_rows[:, :, None] & in_cols[:, None, :]
    return (~inside).to(dtype)[:, None]


def DiffAugment(x, policy='color,translation,cutout', generator=None, params=None):
    """Differentiable Augmentation (Zhao et al., 2020) of x: (N, 3, H, W) -> (N, 3, H, W).

    policy: any subset of 'color,translation,cutout', always applied in that
    order: brightness, saturation, contrast (the paper's colour ops), then an
    integer translation with zero fill, then cutout (zeroed square). As in the
    paper's code, nothing is clipped: translation and cutout keep [-1, 1]
    (they move pixels or write zeros), the colour ops can leave it.
    params: diffaugment_params' dict (drawn here from `generator` if None).
    """
    _check_images(x)
    ops = diffaugment_policy(policy)
    if not ops:
        return x
    N, _, H, W = x.shape
    if params is None:
        params = diffaugment_params(N, policy, H, W, generator, x.device)
    params = {k: v.to(x.device) for k, v in params.items()}
    if 'color' in ops:
        def per_image(key):
            return params[key].to(x.dtype).view(N, 1, 1, 1)
        x = x + per_image('brightness')
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * per_image('saturation') + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * per_image('contrast') + mean
    if 'translation' in ops:
        x = _translate(x, params['translation'])
    if 'cutout' in ops:
        x = x * _cutout_mask(params['cutout'], H, W, x.dtype)
    return x.contiguous()


# ---------------------------------------------------------------------------
# ADA: the stylegan2-ada augmentation pipeline
# ---------------------------------------------------------------------------
ADA_GROUPS = {
    'b': ('xflip', 'rotate90', 'xint'),
    'g': ('scale', 'rotate', 'aniso', 'xfrac'),
    'c': ('brightness', 'contrast', 'lumaflip', 'hue', 'saturation'),
}
ADA_OPS = tuple(op for ops in ADA_GROUPS.values() for op in ops)
# stylegan2-ada's defaults. Translations are relative to the image size,
# rotations to a full circle; *_std of scale/aniso/contrast/saturation are log2.
ADA_STRENGTHS = {'xint_max': 0.125, 'scale_std': 0.2, 'rotate_max': 1.0, 'aniso_std': 0.2,
                 'xfrac_std': 0.125, 'brightness_std': 0.2, 'contrast_std': 0.5,
                 'hue_max': 1.0, 'saturation_std': 1.0}


def ada_policy(policy):
    """'bgc', 'bg', 'c', ... or op names ('xflip,hue'), comma-separated -> ops in pipeline order.

    Raises ValueError naming --ADA_policy for an unknown name.
    """
    chosen = set()
    for token in (t.strip() for t in policy.split(',')):
        if token in ADA_OPS:
            chosen.add(token)
        elif token and set(token) <= set(ADA_GROUPS):
            chosen.update(op for group in token for op in ADA_GROUPS[group])
        elif token:
            raise ValueError(f'--ADA_policy {policy}: unknown {token!r}; give groups of '
                             f"'b' (blit), 'g' (geometry), 'c' (colour), e.g. bgc, or op names "
                             f"from {','.join(ADA_OPS)}")
    return tuple(op for op in ADA_OPS if op in chosen)


def _matrix(rows):
    """Rows of (N,) tensors -> (N, R, C) matrices."""
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def _translate2d(tx, ty):
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return _matrix([[one, zero, tx], [zero, one, ty], [zero, zero, one]])


def _scale2d(sx, sy):
    zero, one = torch.zeros_like(sx), torch.ones_like(sx)
    return _matrix([[sx, zero, zero], [zero, sy, zero], [zero, zero, one]])


def _rotate2d(theta):
    c, s = torch.cos(theta), torch.sin(theta)
    zero, one = torch.zeros_like(theta), torch.ones_like(theta)
    return _matrix([[c, -s, zero], [s, c, zero], [zero, zero, one]])


def _translate3d(t):
    eye = torch.eye(4, device=t.device).repeat(t.shape[0], 1, 1)
    eye[:, :3, 3] = t[:, None]
    return eye


def _rotate3d(v, theta):
    """Rotation by theta: (N,) around the unit axis v: (3,), as (N, 4, 4) (Rodrigues)."""
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    eye3 = torch.eye(3, device=theta.device)
    # cross[:, j] = v x e_j, so cross @ w = v x w; built on the device (no host copies).
    cross = torch.linalg.cross(v.expand(3, 3), eye3, dim=1).t()
    out = torch.eye(4, device=theta.device).repeat(theta.shape[0], 1, 1)
    out[:, :3, :3] = c * eye3 + s * cross + (1 - c) * torch.outer(v, v)
    return out


class AugmentPipe:
    """The stylegan2-ada augmentation pipeline, every augmentation applied with probability p.

    policy: see ada_policy ('bgc' is stylegan2-ada's default for ADA).
    strengths: overrides of ADA_STRENGTHS. Geometric ops compose one inverse
    affine matrix per image (output pixel -> input pixel, pixel units, origin
    at the image centre), executed by one bilinear grid_sample with reflection
    padding; colour ops compose one 4x4 matrix per image acting on (r, g, b, 1).
    An image none of whose drawn transforms differs from the identity is
    returned bit-exactly, so p = 0 is the identity.
    """

    def __init__(self, policy='bgc', **strengths):
        unknown = set(strengths) - set(ADA_STRENGTHS)
        if unknown:
            raise ValueError(f'AugmentPipe: unknown strengths {sorted(unknown)}; '
                             f'known: {sorted(ADA_STRENGTHS)}')
        self.ops = ada_policy(policy)
        self.strengths = {**ADA_STRENGTHS, **strengths}

    def params(self, n, p, height, width, generator=None, device='cpu'):
        """Draw per-image transforms for n images of height x width at probability p.

        p: float or 0-d tensor (ADAController.p; stays on the device, no sync).
        Returns {'geom': (n, 3, 3) inverse pixel transform, 'color': (n, 4, 4)}.
        Every op draws its values and its coin flips whatever p is, so the
        random stream consumed does not depend on p.
        """
        st = self.strengths
        # A float becomes a device fill, not a host-to-device copy (which would sync).
        p = (p.to(device, torch.float32) if torch.is_tensor(p)
             else torch.full((), float(p), device=device))
        ops = set(self.ops)

        def chosen(value, neutral, shape=(n,)):
            return torch.where(_rand(shape, generator, device) < p, value,
                               torch.full_like(value, neutral))

        G_inv = torch.eye(3, device=device).repeat(n, 1, 1)
        if 'xflip' in ops:
            i = chosen(torch.floor(_rand((n,), generator, device) * 2), 0.0)
            G_inv = G_inv @ _scale2d(1 - 2 * i, torch.ones_like(i))
        if 'rotate90' in ops:
            i = chosen(torch.floor(_rand((n,), generator, device) * 4), 0.0)
            G_inv = G_inv @ _rotate2d(math.pi / 2 * i)
        if 'xint' in ops:
            t = chosen((_rand((n, 2), generator, device) * 2 - 1) * st['xint_max'], 0.0,
                       shape=(n, 1))
            G_inv = G_inv @ _translate2d(-torch.round(t[:, 0] * width),
                                         -torch.round(t[:, 1] * height))
        if 'scale' in ops:
            s = chosen(torch.exp2(_randn((n,), generator, device) * st['scale_std']), 1.0)
            G_inv = G_inv @ _scale2d(1 / s, 1 / s)
        # Pre- and post-rotation each with p_rot, so that P(any rotation) = p.
        p_rot = 1 - torch.sqrt((1 - p).clamp(0, 1))

        def rotation():
            theta = (_rand((n,), generator, device) * 2 - 1) * math.pi * st['rotate_max']
            return torch.where(_rand((n,), generator, device) < p_rot, theta,
                               torch.zeros_like(theta))
        if 'rotate' in ops:
            G_inv = G_inv @ _rotate2d(rotation())
        if 'aniso' in ops:
            s = chosen(torch.exp2(_randn((n,), generator, device) * st['aniso_std']), 1.0)
            G_inv = G_inv @ _scale2d(1 / s, s)
        if 'rotate' in ops:
            G_inv = G_inv @ _rotate2d(rotation())
        if 'xfrac' in ops:
            t = chosen(_randn((n, 2), generator, device) * st['xfrac_std'], 0.0, shape=(n, 1))
            G_inv = G_inv @ _translate2d(-t[:, 0] * width, -t[:, 1] * height)

        C = torch.eye(4, device=device).repeat(n, 1, 1)
        luma = torch.full((3,), 1 / math.sqrt(3), device=device)
        luma4 = F.pad(luma, [0, 1])
        luma_outer = torch.outer(luma4, luma4)
        if 'brightness' in ops:
            b = chosen(_randn((n,), generator, device) * st['brightness_std'], 0.0)
            C = _translate3d(b) @ C
        if 'contrast' in ops:
            c = chosen(torch.exp2(_randn((n,), generator, device) * st['contrast_std']), 1.0)
            C = torch.diag_embed(torch.stack([c, c, c, torch.ones_like(c)], dim=1)) @ C
        if 'lumaflip' in ops:
            i = chosen(torch.floor(_rand((n,), generator, device) * 2), 0.0)
            # Householder reflection of the luma axis: negates the grey component.
            C = (torch.eye(4, device=device) - 2 * luma_outer * i[:, None, None]) @ C
        if 'hue' in ops:
            theta = chosen((_rand((n,), generator, device) * 2 - 1) * math.pi * st['hue_max'],
                           0.0)
            C = _rotate3d(luma, theta) @ C
        if 'saturation' in ops:
            s = chosen(torch.exp2(_randn((n,), generator, device) * st['saturation_std']), 1.0)
            # Scales the chroma (the part orthogonal to the luma axis) by s; written as
            # I + (s - 1) * chroma so that s = 1 is exactly the identity.
            chroma = F.pad(torch.eye(3, device=device), [0, 1, 0, 1]) - luma_outer
            C = (torch.eye(4, device=device) + (s - 1)[:, None, None] * chroma) @ C
        return {'geom': G_inv, 'color': C}

    def apply(self, x, params):
        """Apply drawn transforms to x: (N, 3, H, W) -> (N, 3, H, W); params rows match x's."""
        _check_images(x)
        N, _, H, W = x.shape
        # fp16/bf16 images are transformed in fp32 (float64 ones in float64).
        dtype = torch.promote_types(x.dtype, torch.float32)
        G_inv = params['geom'].to(x.device, dtype)
        C = params['color'].to(x.device, dtype)
        eye3 = torch.eye(3, device=x.device, dtype=dtype)
        eye4 = torch.eye(4, device=x.device, dtype=dtype)
        geom_on = (G_inv != eye3).flatten(1).any(1)
        color_on = (C != eye4).flatten(1).any(1)
        if any(op in self.ops for op in ADA_GROUPS['b'] + ADA_GROUPS['g']):
            # diag(2/W, 2/H, 1) @ G_inv @ diag(W/2, H/2, 1): pixel units centred on the
            # image -> affine_grid's [-1, 1] units (scalar products: no host copies).
            g = G_inv
            theta = torch.stack([g[:, 0, 0], g[:, 0, 1] * (H / W), g[:, 0, 2] * (2 / W),
                                 g[:, 1, 0] * (W / H), g[:, 1, 1], g[:, 1, 2] * (2 / H)],
                                dim=1).view(N, 2, 3)
            grid = F.affine_grid(theta, [N, 3, H, W], align_corners=False)
            warped = F.grid_sample(x.to(dtype), grid, mode='bilinear', padding_mode='reflection',
                                   align_corners=False).to(x.dtype)
            x = torch.where(geom_on[:, None, None, None], warped, x)
        if any(op in self.ops for op in ADA_GROUPS['c']):
            flat = x.to(dtype).reshape(N, 3, H * W)
            colored = (C[:, :3, :3] @ flat + C[:, :3, 3:]).reshape(N, 3, H, W).to(x.dtype)
            x = torch.where(color_on[:, None, None, None], colored, x)
        return x

    def __call__(self, x, p, generator=None, params=None):
        """Augment x: (N, 3, H, W) with probability p per op; params drawn here if None."""
        _check_images(x)
        if params is None:
            params = self.params(x.shape[0], p, x.shape[2], x.shape[3], generator, x.device)
        return self.apply(x, params)


class ADAController:
    """ADA's augmentation probability p, adapted from the sign of D on real images.

    Call accumulate(D_real) on every real micro-batch D sees and step() once
    per D step. Every `interval` D steps, with r_t = mean(sign(D_real)) over
    the images accumulated since the last update,
        p <- clamp(p + sign(r_t - target) * batch_size * interval / (kimg * 1000), 0, 1)
    so p can go from 0 to 1 in kimg thousand real images at the fastest.
    batch_size: real images per D step (all ranks, all accumulations).
    all_reduce: None, or a callable summing a tensor in place over the ranks
    (torch.distributed.all_reduce), called once per update on (sign sum,
    count), so every rank computes the same p.
    Everything stays on `device`: no host synchronisation.
    """

    def __init__(self, target=0.6, interval=4, kimg=500, batch_size=64, p=0.0, device='cpu',
                 all_reduce=None):
        if interval < 1 or kimg <= 0 or batch_size < 1:
            raise ValueError(f'ADAController: interval {interval}, kimg {kimg} and batch_size '
                             f'{batch_size} must be positive')
        self.target, self.interval, self.kimg = float(target), int(interval), float(kimg)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.all_reduce = all_reduce
        self.p = torch.tensor(float(p), device=self.device)
        self.rt = torch.tensor(float('nan'), device=self.device)
        self.sign_sum = torch.zeros((), device=self.device)
        self.count = torch.zeros((), device=self.device)
        self.steps = 0

    def accumulate(self, D_real):
        """Add sign(D_real) to the statistics; D_real: (N, 1), this rank's logits on reals."""
        D_real = D_real.detach()
        self.sign_sum = self.sign_sum + torch.sign(D_real.float()).sum()
        self.count = self.count + D_real.numel()

    def step(self):
        """Count one D step; every `interval` steps update p and reset the statistics."""
        self.steps += 1
        if self.steps % self.interval:
            return
        stats = torch.stack([self.sign_sum, self.count])
        if self.all_reduce is not None:
            self.all_reduce(stats)
        self.rt = stats[0] / stats[1].clamp(min=1)
        adjust = (torch.sign(self.rt - self.target) * (self.batch_size * self.interval)
                  / (self.kimg * 1000))
        adjust = torch.where(stats[1] > 0, adjust, torch.zeros_like(adjust))
        self.p = (self.p + adjust).clamp(0, 1)
        self.sign_sum = torch.zeros_like(self.sign_sum)
        self.count = torch.zeros_like(self.count)

    def state_dict(self):
        """{'p', 'rt', 'sign_sum', 'count': 0-d CPU float32 tensors, 'steps': int}."""
        state = {k: getattr(self, k).detach().cpu().clone()
                 for k in ('p', 'rt', 'sign_sum', 'count')}
        return {**state, 'steps': self.steps}

    def load_state_dict(self, state):
        """Restore state_dict()'s values (onto this controller's device)."""
        for k in ('p', 'rt', 'sign_sum', 'count'):
            setattr(self, k, torch.as_tensor(state[k], dtype=torch.float32).to(self.device))
        self.steps = int(state['steps'])


# ---------------------------------------------------------------------------
# LeCam regularisation
# ---------------------------------------------------------------------------
def lecam_reg(D_real, D_fake, anchor_real, anchor_fake):
    """LeCam regulariser as in the official code (google/lecam-gan), a 0-d tensor.

    R = mean(relu(D_real - anchor_fake)^2) + mean(relu(anchor_real - D_fake)^2)
    D_real, D_fake: (N, 1) logits; anchors: 0-d (EMAs of their means, treated
    as constants). The paper writes the two-sided E||D(x) - a_F||^2 +
    E||D(G(z)) - a_R||^2; the official code, and this, penalise only real
    logits above the fake anchor and fake logits below the real anchor.
    """
    return (F.relu(D_real.float() - anchor_fake).pow(2).mean()
            + F.relu(anchor_real - D_fake.float()).pow(2).mean())


class LeCam:
    """LeCam regularisation (Tseng et al., 2021): EMA anchors of D's outputs and the loss.

    Per D micro-batch: update(D_real, D_fake, itr), then loss(D_real, D_fake, itr)
    (the official code's order). The anchors are EMAs, with `decay`, of the
    mean real and fake logits; the first update sets them, and before
    `start_itr` they follow the current means and the loss is 0 (the official
    BigGAN code uses start_itr=1000). weight: lambda on R (lecam_reg).
    all_reduce: None, or a callable summing a tensor in place over the ranks,
    so the anchors are the means over the global micro-batch on every rank.
    """

    def __init__(self, weight, decay=0.99, start_itr=0, device='cpu', all_reduce=None):
        self.weight, self.decay, self.start_itr = float(weight), float(decay), int(start_itr)
        self.device = torch.device(device)
        self.all_reduce = all_reduce
        self.anchor_real = torch.zeros((), device=self.device)
        self.anchor_fake = torch.zeros((), device=self.device)
        self.num_updates = 0

    def update(self, D_real, D_fake, itr=None):
        """Move the anchors toward the means of D_real, D_fake: (N, 1) (detached)."""
        D_real, D_fake = D_real.detach().float(), D_fake.detach().float()
        def count(t):
            return torch.full((), float(t.numel()), device=t.device)
        stats = torch.stack([D_real.sum(), count(D_real), D_fake.sum(), count(D_fake)])
        if self.all_reduce is not None:
            self.all_reduce(stats)
        mean_real, mean_fake = stats[0] / stats[1], stats[2] / stats[3]
        if self.num_updates == 0 or (itr is not None and itr < self.start_itr):
            self.anchor_real, self.anchor_fake = mean_real, mean_fake
        else:
            self.anchor_real = self.anchor_real * self.decay + mean_real * (1 - self.decay)
            self.anchor_fake = self.anchor_fake * self.decay + mean_fake * (1 - self.decay)
        self.num_updates += 1

    def loss(self, D_real, D_fake, itr=None):
        """weight * lecam_reg with the current anchors, a 0-d tensor; 0 until itr > start_itr."""
        if itr is not None and itr <= self.start_itr:
            return D_real.new_zeros((), dtype=torch.float32)
        return self.weight * lecam_reg(D_real, D_fake, self.anchor_real, self.anchor_fake)

    def state_dict(self):
        """{'anchor_real', 'anchor_fake': 0-d CPU float32 tensors, 'num_updates': int}."""
        return {'anchor_real': self.anchor_real.detach().cpu().clone(),
                'anchor_fake': self.anchor_fake.detach().cpu().clone(),
                'num_updates': self.num_updates}

    def load_state_dict(self, state):
        """Restore state_dict()'s values (onto this object's device)."""
        self.anchor_real = torch.as_tensor(state['anchor_real']).float().to(self.device)
        self.anchor_fake = torch.as_tensor(state['anchor_fake']).float().to(self.device)
        self.num_updates = int(state['num_updates'])


# ---------------------------------------------------------------------------
# Consistency regularisation
# ---------------------------------------------------------------------------
def _sq_dist(a, b):
    """Mean over all elements of (a - b)^2, in fp32: ||a - b||^2 per sample / its size, averaged."""
    return (a.float() - b.float()).pow(2).mean()


def bcr_loss(D_real, D_real_aug, D_fake, D_fake_aug, lambda_real=10.0, lambda_fake=10.0):
    """Balanced consistency regularisation (Zhao et al., 2021), added to D's loss; 0-d.

    lambda_real * ||D(x) - D(T(x))||^2 + lambda_fake * ||D(G(z)) - D(T(G(z)))||^2
    with every D output (N, 1) (the squared norm averaged over the batch).
    The paper's CIFAR setting: lambda_real = lambda_fake = 10.
    """
    return (lambda_real * _sq_dist(D_real, D_real_aug)
            + lambda_fake * _sq_dist(D_fake, D_fake_aug))


def zcr_D_loss(D_fake, D_fake_perturbed, lambda_dis=5.0):
    """Latent consistency for D: lambda_dis * ||D(G(z)) - D(G(z + dz))||^2; D outputs (N, 1)."""
    return lambda_dis * _sq_dist(D_fake, D_fake_perturbed)


def zcr_G_loss(G_z, G_z_perturbed, lambda_gen=0.5):
    """Latent consistency for G: -lambda_gen * ||G(z) - G(z + dz)||^2, images (N, 3, H, W).

    The squared distance is the mean over pixels and images (as StudioGAN and
    common implementations take it), so lambda_gen does not scale with H * W.
    Negative: G is rewarded for images that change with z.
    """
    return -lambda_gen * _sq_dist(G_z, G_z_perturbed)


def perturb_latents(z, sigma=0.03, generator=None):
    """z + dz with dz ~ N(0, sigma^2 I); z: (N, dim_z). The paper's CIFAR sigma is 0.03."""
    return z + sigma * _randn(z.shape, generator, z.device).to(z.dtype)
