"""Layers shared by BigGAN and BigGAN-deep.

Spectral norm (SNConv2d, SNLinear, SNEmbedding), the SA-GAN self-attention
block, the normalisation layers (ccbn, bn, myBN) and the residual blocks.
State-dict names and registration order follow the original BigGAN-PyTorch
layers exactly, so its released checkpoints load with strict=True.
"""
import functools
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import Parameter as P

import sync_batchnorm


# ---------------------------------------------------------------------------
# Spectral norm
# ---------------------------------------------------------------------------
def _gram_schmidt(x, ys):
    """Remove from x: (1, n) its components along each row vector in ys."""
    for y in ys:
        x = x - (x @ y.t()) * y / (y @ y.t())
    return x


def power_iteration(W, us, update=True, eps=1e-12, grad=True):
    """One step of the power method for the top len(us) singular values of W.

    W: (out, in). us: list of (1, out) left singular vector estimates, kept
    orthogonal by Gram-Schmidt. When `update`, the new estimates are written
    into `us` in place. Returns (svs, new_us, vs): svs are 0-d tensors, and
    svs[0] is differentiable with respect to W when `grad`; the others are
    detached, since they are only logged.
    """
    new_us, vs, svs = [], [], []
    for i, u in enumerate(us):
        with torch.no_grad():
            v = F.normalize(_gram_schmidt(u.to(W.dtype) @ W, vs), eps=eps)
        vs.append(v)
        # W v serves both the new u and sigma = u^T W v; computing it once, with
        # grad, saves the extra matvec the original spends on sigma.
        with torch.set_grad_enabled(grad and i == 0 and torch.is_grad_enabled()):
            Wv = v @ W.t()
        with torch.no_grad():
            u_new = F.normalize(_gram_schmidt(Wv.detach(), new_us), eps=eps)
            if update:
                u.copy_(u_new)
        new_us.append(u_new)
        svs.append((Wv * u_new).sum())
    return svs, new_us, vs


class SN:
    """Spectral-norm mixin: divides `self.weight` by its top singular value.

    Registers buffers u0..u{k-1} of shape (1, num_outputs) and sv0..sv{k-1}
    of shape (1,), where k = num_svs. The u vectors (and the logged sv values)
    are only updated in training mode, as in the original.
    """

    def __init__(self, num_svs, num_itrs, num_outputs, transpose=False, eps=1e-12):
        self.num_itrs = num_itrs
        self.num_svs = num_svs
        self.transpose = transpose
        self.eps = eps
        for i in range(num_svs):
            self.register_buffer(f'u{i}', torch.randn(1, num_outputs))
            self.register_buffer(f'sv{i}', torch.ones(1))

    @property
    def u(self):
        return [getattr(self, f'u{i}') for i in range(self.num_svs)]

    @property
    def sv(self):
        return [getattr(self, f'sv{i}') for i in range(self.num_svs)]

    def W_(self):
        """The spectrally normalised weight, same shape and dtype as self.weight."""
        if torch.is_autocast_enabled(self.weight.device.type):
            # sigma stays fp32 under autocast: a bf16 estimate makes the
            # Lipschitz bound itself noisy.
            with torch.autocast(self.weight.device.type, enabled=False):
                return self._normalized_weight()
        return self._normalized_weight()

    def _normalized_weight(self):
        # At least fp32 (fp16/bf16 weights are estimated in fp32), fp64 for fp64 weights;
        # the u buffers follow whatever dtype the module was cast to.
        W_mat = self.weight.to(torch.promote_types(self.weight.dtype, torch.float32)).flatten(1)
        if self.transpose:
            W_mat = W_mat.t()
        us = self.u
        # In eval mode u is not written back, so the original's further
        # iterations restart from the same u: one step gives its result.
        steps = self.num_itrs if self.training else 1
        for step in range(steps):
            svs, _, _ = power_iteration(W_mat, us, update=self.training, eps=self.eps,
                                        grad=step == steps - 1)
        if self.training:
            with torch.no_grad():
                for sv_buf, sv in zip(self.sv, svs):
                    sv_buf.copy_(sv)
        return self.weight / svs[0].to(self.weight.dtype)


class SNConv2d(nn.Conv2d, SN):
    """Conv2d whose weight is divided by its top singular value. x: (N, C, H, W)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=0, dilation=1, groups=1, bias=True,
                 num_svs=1, num_itrs=1, eps=1e-12):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride,
                           padding, dilation, groups, bias)
        SN.__init__(self, num_svs, num_itrs, out_channels, eps=eps)

    def forward(self, x):
        return self._conv_forward(x, self.W_(), self.bias)


class SNLinear(nn.Linear, SN):
    """Linear layer with spectral norm. x: (N, in_features)."""

    def __init__(self, in_features, out_features, bias=True,
                 num_svs=1, num_itrs=1, eps=1e-12):
        nn.Linear.__init__(self, in_features, out_features, bias)
        SN.__init__(self, num_svs, num_itrs, out_features, eps=eps)

    def forward(self, x):
        return F.linear(x, self.W_(), self.bias)


class SNEmbedding(nn.Embedding, SN):
    """Embedding with spectral norm. The weight (num_embeddings, dim) is
    normalised as an (num_embeddings, dim) matrix, as in the original."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None,
                 max_norm=None, norm_type=2, scale_grad_by_freq=False,
                 sparse=False, _weight=None,
                 num_svs=1, num_itrs=1, eps=1e-12):
        nn.Embedding.__init__(self, num_embeddings, embedding_dim, padding_idx,
                              max_norm, norm_type, scale_grad_by_freq, sparse, _weight)
        SN.__init__(self, num_svs, num_itrs, num_embeddings, eps=eps)

    def forward(self, x):
        return F.embedding(x, self.W_())


# The default conv factory of the blocks: 3x3, padding 1 (1x1s override both).
sn_conv3x3 = functools.partial(SNConv2d, kernel_size=3, padding=1)


class identity(nn.Module):
    """Pass-through; G.shared when class embeddings are not shared."""

    def forward(self, input):
        return input


# ---------------------------------------------------------------------------
# Self-attention
# ---------------------------------------------------------------------------
class Attention(nn.Module):
    """SA-GAN non-local block. x: (N, ch, H, W) -> (N, ch, H, W), H and W even.

    theta, phi, g are 1x1 convs to ch/8, ch/8, ch/2 channels; phi and g are
    2x2 max-pooled. gamma starts at 0, so the block starts as the identity.
    """

    def __init__(self, ch, which_conv=sn_conv3x3, name='attention'):
        super().__init__()
        self.ch = ch
        self.which_conv = which_conv
        self.theta = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.phi = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.g = which_conv(ch, ch // 2, kernel_size=1, padding=0, bias=False)
        self.o = which_conv(ch // 2, ch, kernel_size=1, padding=0, bias=False)
        self.gamma = P(torch.tensor(0.), requires_grad=True)

    def forward(self, x, y=None):
        N, _, H, W = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)              # (N, HW, ch/8)
        phi = F.max_pool2d(self.phi(x), [2, 2]).flatten(2).transpose(1, 2)  # (N, HW/4, ch/8)
        g = F.max_pool2d(self.g(x), [2, 2]).flatten(2).transpose(1, 2)      # (N, HW/4, ch/2)
        # softmax(theta phi^T) g, with no 1/sqrt(d) scaling as in SA-GAN. On GPU,
        # SDPA's fused kernels never materialise the (HW x HW/4) map; on CPU its
        # kernel is slower than two bmms at these head sizes (measured), so use those.
        if x.is_cuda:
            o = F.scaled_dot_product_attention(theta, phi, g, scale=1.0)  # (N, HW, ch/2)
        else:
            o = torch.bmm(F.softmax(torch.bmm(theta, phi.transpose(1, 2)), -1), g)
        o = self.o(o.transpose(1, 2).reshape(N, self.ch // 2, H, W))
        return self.gamma * o + x


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------
NORM_STYLE_RE = re.compile(r'^(bn|in|nonorm|gn(_ch_\d+|_grp_\d+)?)$')


def batch_stats(x, cross_replica=False):
    """Per-channel batch mean and biased variance of x: (N, C, H, W), in fp32 (fp64 for fp64 x).

    With cross_replica the statistics are reduced over every rank of the
    default process group (the hook used by sync_batchnorm).
    Returns (mean, var, count), mean and var of shape (C,).
    """
    if cross_replica:
        if sync_batchnorm.is_distributed():
            return sync_batchnorm.global_batch_stats(x)
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    var, mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
    return mean, var, x.numel() // x.shape[1]


def fused_bn(x, mean, var, gain=None, bias=None, eps=1e-5):
    """Normalise x: (N, C, H, W) with mean, var: (C,) and apply gain/bias in one pass.

    gain, bias: (N or 1, C, 1, 1) or None. out = x * scale + shift with
    scale = gain / sqrt(var + eps) and shift = bias - mean * scale.
    """
    scale = torch.rsqrt(var + eps).view(1, -1, 1, 1)
    if gain is not None:
        scale = scale * gain
    shift = -mean.view(1, -1, 1, 1) * scale
    if bias is not None:
        shift = shift + bias
    return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


class myBN(nn.Module):
    """Batch norm with running or "standing" statistics (the original's myBN).

    Buffers: stored_mean, stored_var (C,), accumulation_counter (1,). When
    `accumulate_standing` is set, training-mode passes sum the batch
    statistics instead of averaging them with momentum, and eval mode divides
    by the number of accumulated passes.
    """

    def __init__(self, num_channels, eps=1e-5, momentum=0.1, cross_replica=False):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.cross_replica = cross_replica
        self.register_buffer('stored_mean', torch.zeros(num_channels))
        self.register_buffer('stored_var', torch.ones(num_channels))
        self.register_buffer('accumulation_counter', torch.zeros(1))
        self.accumulate_standing = False

    def reset_stats(self):
        self.stored_mean.zero_()
        self.stored_var.zero_()
        self.accumulation_counter.zero_()

    def forward(self, x, gain=None, bias=None):
        if self.training:
            mean, var, _ = batch_stats(x, self.cross_replica)
            with torch.no_grad():
                if self.accumulate_standing:
                    self.stored_mean.add_(mean)
                    self.stored_var.add_(var)
                    self.accumulation_counter.add_(1.0)
                else:
                    self.stored_mean.lerp_(mean, self.momentum)
                    self.stored_var.lerp_(var, self.momentum)
            return fused_bn(x, mean, var, gain, bias, self.eps)
        mean, var = self.stored_mean, self.stored_var
        if self.accumulate_standing:
            mean = mean / self.accumulation_counter
            var = var / self.accumulation_counter
        return fused_bn(x, mean, var, gain, bias, self.eps)


class _NormBase(nn.Module):
    """Shared statistics handling of ccbn and bn.

    Without mybn, batch norm keeps `stored_mean`/`stored_var` buffers updated
    like F.batch_norm (momentum, unbiased running variance); `in`, `gn` and
    `nonorm` follow the original. The layout depends only on mybn and
    norm_style, never on cross_replica, so checkpoints move freely between
    single-device and cross-replica runs.
    """

    def _setup_stats(self, output_size, eps, momentum, cross_replica, mybn, norm_style):
        if not NORM_STYLE_RE.match(norm_style):
            raise ValueError(f"unknown norm_style {norm_style!r}: use bn, in, gn, "
                             "gn_ch_<channels>, gn_grp_<groups> or nonorm")
        self.eps, self.momentum = eps, momentum
        self.cross_replica, self.mybn, self.norm_style = cross_replica, mybn, norm_style
        if mybn:
            self.bn = myBN(output_size, eps, momentum, cross_replica)
        elif norm_style in ('bn', 'in'):
            self.register_buffer('stored_mean', torch.zeros(output_size))
            self.register_buffer('stored_var', torch.ones(output_size))

    def _normalize(self, x, gain, bias):
        """x: (N, C, H, W); gain, bias: (N or 1, C, 1, 1)."""
        if self.mybn:
            return self.bn(x, gain=gain, bias=bias)
        if self.norm_style == 'bn':
            return self._batch_norm(x, gain, bias)
        if self.norm_style == 'in':
            out = F.instance_norm(x, self.stored_mean, self.stored_var, None, None,
                                  self.training, self.momentum, self.eps)
        elif self.norm_style.startswith('gn'):
            out = F.group_norm(x, self._num_groups(x.shape[1]), eps=self.eps)
        else:
            out = x
        return out * gain + bias

    def _batch_norm(self, x, gain, bias):
        if not self.training:
            # Stored statistics fold into one scale and shift: a single pass over x.
            return fused_bn(x, self.stored_mean, self.stored_var, gain, bias, self.eps)
        if self.cross_replica:
            mean, var, n = batch_stats(x, cross_replica=True)
            with torch.no_grad():
                self.stored_mean.lerp_(mean, self.momentum)
                self.stored_var.lerp_(var * (n / max(n - 1, 1)), self.momentum)
            return fused_bn(x, mean, var, gain, bias, self.eps)
        if gain.shape[0] == 1:
            # One gain for the whole batch: BN's own native affine.
            return F.batch_norm(x, self.stored_mean, self.stored_var, gain.flatten(),
                                bias.flatten(), True, self.momentum, self.eps)
        # Native batch norm (its fused backward beats a hand-written one), then the
        # per-sample gain and bias in one addcmul rather than a mul and an add.
        out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, True,
                           self.momentum, self.eps)
        return torch.addcmul(bias.to(out.dtype), out, gain.to(out.dtype))

    def _num_groups(self, channels):
        if self.norm_style.startswith('gn_ch_'):
            return max(channels // int(self.norm_style.split('_')[-1]), 1)
        if self.norm_style.startswith('gn_grp_'):
            return int(self.norm_style.split('_')[-1])
        return 16


class ccbn(_NormBase):
    """Class-conditional batch norm: gain = 1 + which_linear(y), bias = which_linear(y).

    x: (N, output_size, H, W); y: (N, input_size). When which_linear is an
    embedding, y is (N,) class indices or (N, n_classes) class weights (a soft
    mix of classes, used for class interpolation).
    """

    def __init__(self, output_size, input_size, which_linear, eps=1e-5, momentum=0.1,
                 cross_replica=False, mybn=False, norm_style='bn'):
        super().__init__()
        self.output_size, self.input_size = output_size, input_size
        self.gain = which_linear(input_size, output_size)
        self.bias = which_linear(input_size, output_size)
        self._setup_stats(output_size, eps, momentum, cross_replica, mybn, norm_style)

    def forward(self, x, y):
        gain = (1 + self._project(self.gain, y)).view(y.size(0), -1, 1, 1)
        bias = self._project(self.bias, y).view(y.size(0), -1, 1, 1)
        return self._normalize(x, gain, bias)

    @staticmethod
    def _project(layer, y):
        if isinstance(layer, nn.Embedding) and y.is_floating_point():
            # The embedding of a mix of one-hots is the same mix of embeddings.
            return y @ layer.weight
        return layer(y)

    def extra_repr(self):
        return (f'out: {self.output_size}, in: {self.input_size}, '
                f'cross_replica={self.cross_replica}')


class bn(_NormBase):
    """Unconditional batch norm with learnable gain and bias. x: (N, C, H, W)."""

    def __init__(self, output_size, eps=1e-5, momentum=0.1, cross_replica=False,
                 mybn=False, norm_style='bn'):
        super().__init__()
        self.output_size = output_size
        self.gain = P(torch.ones(output_size), requires_grad=True)
        self.bias = P(torch.zeros(output_size), requires_grad=True)
        # The output BN is always a batch norm in the original, whatever G's norm_style.
        self._setup_stats(output_size, eps, momentum, cross_replica, mybn, 'bn')

    def forward(self, x, y=None):
        return self._normalize(x, self.gain.view(1, -1, 1, 1), self.bias.view(1, -1, 1, 1))


# ---------------------------------------------------------------------------
# Residual blocks
# ---------------------------------------------------------------------------
class GBlock(nn.Module):
    """BigGAN generator block: BN-act-up-conv-BN-act-conv plus a shortcut.

    x: (N, in_channels, H, W), y: conditioning for which_bn ->
    (N, out_channels, 2H, 2W) when upsampling. which_conv and which_bn are
    layer factories with kernel size and conditioning size already bound.
    """

    def __init__(self, in_channels, out_channels, which_conv=nn.Conv2d, which_bn=bn,
                 activation=None, upsample=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.which_conv, self.which_bn = which_conv, which_bn
        self.activation = activation
        self.upsample = upsample
        self.conv1 = which_conv(in_channels, out_channels)
        self.conv2 = which_conv(out_channels, out_channels)
        self.learnable_sc = in_channels != out_channels or upsample is not None
        if self.learnable_sc:
            self.conv_sc = which_conv(in_channels, out_channels, kernel_size=1, padding=0)
        self.bn1 = which_bn(in_channels)
        self.bn2 = which_bn(out_channels)

    def forward(self, x, y):
        h = self.activation(self.bn1(x, y))
        if self.upsample:
            h = self.upsample(h)
        h = self.conv1(h)
        h = self.activation(self.bn2(h, y))
        h = self.conv2(h)
        # A 1x1 conv commutes with nearest upsampling, so the shortcut conv
        # runs at the lower resolution: the same result for a quarter of the work.
        if self.learnable_sc:
            x = self.conv_sc(x)
        if self.upsample:
            x = self.upsample(x)
        return h + x


class DBlock(nn.Module):
    """BigGAN discriminator block. x: (N, in_channels, H, W) -> (N, out_channels, H/2, W/2).

    wide=True (BigGAN/SA-GAN) puts out_channels in the hidden layer, wide=False
    (SN-GAN) in_channels. The preactivation ReLU is out of place: an in-place
    one would also change x, which the shortcut still needs.
    """

    def __init__(self, in_channels, out_channels, which_conv=sn_conv3x3, wide=True,
                 preactivation=False, activation=None, downsample=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = out_channels if wide else in_channels
        self.which_conv = which_conv
        self.preactivation = preactivation
        self.activation = activation
        self.downsample = downsample
        self.conv1 = which_conv(in_channels, self.hidden_channels)
        self.conv2 = which_conv(self.hidden_channels, out_channels)
        self.learnable_sc = in_channels != out_channels or downsample is not None
        if self.learnable_sc:
            self.conv_sc = which_conv(in_channels, out_channels, kernel_size=1, padding=0)

    def shortcut(self, x):
        # Average pooling and a 1x1 conv are both linear and commute, so pool
        # first whatever the original's order: identical output, 4x less work.
        if self.downsample:
            x = self.downsample(x)
        if self.learnable_sc:
            x = self.conv_sc(x)
        return x

    def forward(self, x):
        h = F.relu(x) if self.preactivation else x
        h = self.conv1(h)
        h = self.conv2(self.activation(h))
        if self.downsample:
            h = self.downsample(h)
        return h + self.shortcut(x)


def snconv_factories(param, num_svs, num_itrs, eps):
    """(which_conv, which_linear, which_embedding) for G_param/D_param 'SN' or 'none'.

    Convs default to 3x3 with padding 1; blocks pass kernel_size=1 for 1x1s.
    """
    if param == 'SN':
        sn = dict(num_svs=num_svs, num_itrs=num_itrs, eps=eps)
        return (functools.partial(SNConv2d, kernel_size=3, padding=1, **sn),
                functools.partial(SNLinear, **sn),
                functools.partial(SNEmbedding, **sn))
    return (functools.partial(nn.Conv2d, kernel_size=3, padding=1), nn.Linear, nn.Embedding)


def nearest_upsample(x):
    """2x nearest-neighbour upsampling. x: (N, C, H, W) -> (N, C, 2H, 2W)."""
    return F.interpolate(x, scale_factor=2)


def module_device(module):
    """The device of a module's parameters (G, D, the Inception network)."""
    return next(module.parameters()).device


def init_and_optimize(net, skip_init, adam, adam_eps):
    """Finish building G or D: initialise its weights with net.init (unless skip_init),
    then give it net.optim, an Adam with adam = (lr, beta1, beta2) (None: no optimizer,
    as for G_ema)."""
    if not skip_init:
        net.param_count = init_weights(net, net.init)
    if adam is None:
        return
    net.lr, net.B1, net.B2 = adam
    net.adam_eps = adam_eps
    net.optim = torch.optim.Adam(params=net.parameters(), lr=net.lr, betas=(net.B1, net.B2),
                                 weight_decay=0, eps=net.adam_eps)


def init_weights(module, style):
    """Initialise every conv, linear and embedding weight of `module` in place.

    style: 'ortho', 'N02' (normal, std 0.02) or 'glorot'/'xavier'.
    Returns the number of parameters in the initialised layers.
    """
    count = 0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            if style == 'ortho':
                nn.init.orthogonal_(m.weight)
            elif style == 'N02':
                nn.init.normal_(m.weight, 0, 0.02)
            elif style in ('glorot', 'xavier'):
                nn.init.xavier_uniform_(m.weight)
            else:
                raise ValueError(f"unknown init {style!r}: use ortho, N02, glorot or xavier")
            count += sum(p.numel() for p in m.parameters())
    return count
