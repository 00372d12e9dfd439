"""BigGAN-deep generator and discriminator.

Residual bottleneck blocks (channel ratio 4), G_depth / D_depth blocks per
stage, channel dropping in G's skip path and channel concatenation in D's.
The generator matches the TF Hub biggan-deep-128/256/512 modules: spectral
norm on every conv, the latent fed as [z, y] to the first linear layer and to
every conditional BN, and a final conv to `ch` channels of which the first
three are the image.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

import layers
from BigGAN import _G_TABLE, G_D, D_arch_from, G_arch, check_attention  # noqa: F401


class GBlock(nn.Module):
    """Bottleneck generator block.

    BN-act-1x1 (in -> in/4), BN-act-[up]-3x3, BN-act-3x3, BN-act-1x1 (-> out).
    The skip path keeps the first out_channels of x when out < in, then
    upsamples. x: (N, in, H, W) -> (N, out, 2H or H, ...).
    """

    def __init__(self, in_channels, out_channels, which_conv=layers.sn_conv3x3,
                 which_bn=layers.bn, activation=None, upsample=None, channel_ratio=4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = in_channels // channel_ratio
        self.which_conv, self.which_bn = which_conv, which_bn
        self.activation = activation
        self.conv1 = which_conv(in_channels, self.hidden_channels, kernel_size=1, padding=0)
        self.conv2 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv3 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv4 = which_conv(self.hidden_channels, out_channels, kernel_size=1, padding=0)
        self.bn1 = which_bn(in_channels)
        self.bn2 = which_bn(self.hidden_channels)
        self.bn3 = which_bn(self.hidden_channels)
        self.bn4 = which_bn(self.hidden_channels)
        self.upsample = upsample

    def forward(self, x, y):
        h = self.conv1(self.activation(self.bn1(x, y)))
        h = self.activation(self.bn2(h, y))
        if self.upsample:
            h = self.upsample(h)
        h = self.conv2(h)
        h = self.conv3(self.activation(self.bn3(h, y)))
        h = self.conv4(self.activation(self.bn4(h, y)))
        if self.in_channels != self.out_channels:
            x = x[:, :self.out_channels]
        if self.upsample:
            x = self.upsample(x)
        return h + x


class Generator(nn.Module):
    """BigGAN-deep generator.

    forward(z, y): z (N, dim_z), y = G.shared(classes) (N, shared_dim) ->
    images (N, 3, res, res). With `hier` (as in TF Hub) the condition
    cat([z, y]) feeds the first linear layer and every conditional BN;
    without it the linear layer sees z and the BNs see y.
    G_kernel_size, G_mixed_precision, G_fp16: kept for the original's signature; unused.
    """

    def __init__(self, G_ch=128, G_depth=2, dim_z=128, bottom_width=4, resolution=128,
                 G_kernel_size=3, G_attn='64', n_classes=1000,
                 num_G_SVs=1, num_G_SV_itrs=1,
                 G_shared=True, shared_dim=0, hier=True,
                 cross_replica=False, mybn=False,
                 G_activation=nn.ReLU(inplace=False),
                 G_lr=5e-5, G_B1=0.0, G_B2=0.999, adam_eps=1e-8,
                 BN_eps=1e-5, SN_eps=1e-12, G_mixed_precision=False, G_fp16=False,
                 G_init='ortho', skip_init=False, no_optim=False,
                 G_param='SN', norm_style='bn', **kwargs):
        super().__init__()
        self.ch = G_ch
        self.G_depth = G_depth
        self.dim_z = dim_z
        self.bottom_width = bottom_width
        self.resolution = resolution
        self.attention = G_attn
        self.n_classes = n_classes
        self.G_shared = G_shared
        self.shared_dim = shared_dim if shared_dim > 0 else dim_z
        self.hier = hier
        self.cross_replica = cross_replica
        self.mybn = mybn
        self.activation = G_activation
        self.init = G_init
        self.G_param = G_param
        self.norm_style = norm_style
        self.BN_eps, self.SN_eps = BN_eps, SN_eps
        self.arch = G_arch(self.ch, self.attention)[resolution]

        self.which_conv, self.which_linear, _ = layers.snconv_factories(
            G_param, num_G_SVs, num_G_SV_itrs, SN_eps)
        self.which_embedding = nn.Embedding
        bn_linear = (functools.partial(self.which_linear, bias=False) if G_shared
                     else self.which_embedding)
        if G_shared:
            bn_input = self.shared_dim + (self.dim_z if hier else 0)
        else:
            bn_input = n_classes
        self.which_bn = functools.partial(
            layers.ccbn, which_linear=bn_linear, cross_replica=cross_replica, mybn=mybn,
            input_size=bn_input, norm_style=norm_style, eps=BN_eps)

        self.shared = (self.which_embedding(n_classes, self.shared_dim) if G_shared
                       else layers.identity())
        self.linear = self.which_linear(self.dim_z + (self.shared_dim if hier else 0),
                                        self.arch['in_channels'][0] * self.bottom_width ** 2)
        blocks = []
        for index, out_ch in enumerate(self.arch['out_channels']):
            in_ch = self.arch['in_channels'][index]
            for g_index in range(G_depth):
                last = g_index == G_depth - 1
                blocks.append(nn.ModuleList([GBlock(
                    in_channels=in_ch, out_channels=out_ch if last else in_ch,
                    which_conv=self.which_conv, which_bn=self.which_bn,
                    activation=self.activation,
                    upsample=(layers.nearest_upsample
                              if self.arch['upsample'][index] and last else None))]))
            if self.arch['attention'][self.arch['resolution'][index]]:
                blocks[-1].append(layers.Attention(out_ch, self.which_conv))
        self.blocks = nn.ModuleList(blocks)
        # TF Hub's final conv keeps all `ch` channels; the image is the first 3.
        self.output_layer = nn.Sequential(
            layers.bn(self.arch['out_channels'][-1], eps=BN_eps,
                      cross_replica=cross_replica, mybn=mybn),
            self.activation,
            self.which_conv(self.arch['out_channels'][-1], self.ch))

        layers.init_and_optimize(self, skip_init, None if no_optim else (G_lr, G_B1, G_B2),
                                 adam_eps)

    def adapt_original_state(self, state):
        """Map a G state dict in the original BigGAN-PyTorch deep layout onto this one.

        The original feeds the latent as [y, z] and ends in a conv to 3 channels;
        this G (as TF Hub) feeds [z, y] and ends in a conv to `ch` channels whose
        first 3 are the image. The layers reading the latent get their input columns
        swapped, and the output conv gets zero rows (and zero u entries, which leave
        its singular value as it was), so the mapped G computes exactly the
        original's function. Returns (mapped state, convert) where convert(name,
        tensor) maps any per-parameter tensor (the optimizer's moments too), or
        (state, None) when `state` is not in the original's layout.
        """
        out_weight = state.get('output_layer.2.weight')
        if out_weight is None or out_weight.shape[0] != 3 or self.ch == 3:
            return state, None
        latent_readers = set()
        if self.hier:
            latent_readers.add('linear.weight')
            latent_readers.update(f'{name}.{part}.weight' for name, m in self.named_modules()
                                  if isinstance(m, layers.ccbn) for part in ('gain', 'bias'))
        y_dim = self.shared_dim

        def convert(name, tensor):
            if name in latent_readers and tensor.ndim == 2:
                return torch.cat([tensor[:, y_dim:], tensor[:, :y_dim]], 1)
            if name.startswith('output_layer.2.'):
                leaf = name.rsplit('.', 1)[-1]
                dim = 1 if leaf.startswith('u') else 0 if leaf in ('weight', 'bias') else None
                if dim is not None and tensor.shape[dim] == 3:
                    pad = list(tensor.shape)
                    pad[dim] = self.ch - 3
                    return torch.cat([tensor, tensor.new_zeros(pad)], dim)
            return tensor

        return {k: convert(k, v) for k, v in state.items()}, convert

    def forward(self, z, y):
        if self.hier:
            z = torch.cat([z, y], 1)
            y = z
        h = self.linear(z)
        h = h.view(h.size(0), -1, self.bottom_width, self.bottom_width)
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h, y)
        return torch.tanh(self.output_layer(h)[:, :3])


class DBlock(nn.Module):
    """Bottleneck discriminator block: 1x1 (in -> out/4), two 3x3, [down], 1x1 (-> out).

    The shortcut pools, then appends out - in learned channels when the width
    grows. x: (N, in, H, W) -> (N, out, H/2 or H, ...).
    """

    def __init__(self, in_channels, out_channels, which_conv=layers.sn_conv3x3, wide=True,
                 preactivation=True, activation=None, downsample=None, channel_ratio=4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = out_channels // channel_ratio
        self.which_conv = which_conv
        self.preactivation = preactivation
        self.activation = activation
        self.downsample = downsample
        self.conv1 = which_conv(in_channels, self.hidden_channels, kernel_size=1, padding=0)
        self.conv2 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv3 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv4 = which_conv(self.hidden_channels, out_channels, kernel_size=1, padding=0)
        self.learnable_sc = in_channels != out_channels
        if self.learnable_sc:
            self.conv_sc = which_conv(in_channels, out_channels - in_channels,
                                      kernel_size=1, padding=0)

    def shortcut(self, x):
        if self.downsample:
            x = self.downsample(x)
        if self.learnable_sc:
            x = torch.cat([x, self.conv_sc(x)], 1)
        return x

    def forward(self, x):
        # Out-of-place: x is still needed by the shortcut.
        h = self.conv1(F.relu(x))
        h = self.conv2(self.activation(h))
        h = self.conv3(self.activation(h))
        h = self.activation(h)
        if self.downsample:
            h = self.downsample(h)
        h = self.conv4(h)
        return h + self.shortcut(x)


# (in multiples, out multiples, downsample flags, output resolutions) per stage.
_D_TABLE = {
    512: ([1, 1, 2, 4, 8, 8, 16], [1, 2, 4, 8, 8, 16, 16], [True] * 7,
          [256, 128, 64, 32, 16, 8, 4]),
    256: ([1, 2, 4, 8, 8, 16], [2, 4, 8, 8, 16, 16], [True] * 6, [128, 64, 32, 16, 8, 4]),
    128: ([1, 2, 4, 8, 16], [2, 4, 8, 16, 16], [True] * 5, [64, 32, 16, 8, 4]),
    64: ([1, 2, 4, 8], [2, 4, 8, 16], [True] * 4, [32, 16, 8, 4]),
    32: ([4, 4, 4], [4, 4, 4], [True, True, False], [16, 8, 8]),
}


def D_arch(ch=64, attention='64', ksize='333333', dilation='111111'):
    """Discriminator architectures keyed by input resolution.
    ksize, dilation: kept for the original's signature; unused."""
    return D_arch_from(_D_TABLE, ch, attention)


def check_config(config):
    """Reasons this model cannot be built from `config` (an empty list if it can)."""
    res = config['resolution']
    if res not in _G_TABLE:
        return [f"resolution {res} is not supported: BigGANdeep has architectures for "
                f"{sorted(_G_TABLE)} (set by --dataset, or by --resolution for --dataset folder)"]
    errors = check_attention(config, G_arch, D_arch, 'BigGANdeep')
    if config['hier'] and not config['G_shared']:
        errors.append("--hier needs --G_shared: z is concatenated with the shared embedding")
    for flag in ('G_depth', 'D_depth'):
        if config[flag] < 1:
            errors.append(f"--{flag} {config[flag]}: BigGANdeep needs at least one block per stage")
    if min(config['G_ch'], config['D_ch']) < 4:
        errors.append("BigGANdeep needs --G_ch and --D_ch of at least 4 (bottleneck ratio 4)")
    return errors


class Discriminator(nn.Module):
    """BigGAN-deep projection discriminator. forward(x, y): x (N, 3, res, res),
    y (N,) class indices or None -> (N, output_dim).
    D_kernel_size, D_mixed_precision, D_fp16: kept for the original's signature; unused."""

    def __init__(self, D_ch=64, D_wide=True, D_depth=2, resolution=128,
                 D_kernel_size=3, D_attn='64', n_classes=1000,
                 num_D_SVs=1, num_D_SV_itrs=1, D_activation=nn.ReLU(inplace=False),
                 D_lr=2e-4, D_B1=0.0, D_B2=0.999, adam_eps=1e-8,
                 SN_eps=1e-12, output_dim=1, D_mixed_precision=False, D_fp16=False,
                 D_init='ortho', skip_init=False, D_param='SN', **kwargs):
        super().__init__()
        self.ch = D_ch
        self.D_wide = D_wide
        self.D_depth = D_depth
        self.resolution = resolution
        self.attention = D_attn
        self.n_classes = n_classes
        self.activation = D_activation
        self.init = D_init
        self.D_param = D_param
        self.SN_eps = SN_eps
        self.arch = D_arch(self.ch, self.attention)[resolution]
        self.which_conv, self.which_linear, self.which_embedding = layers.snconv_factories(
            D_param, num_D_SVs, num_D_SV_itrs, SN_eps)

        self.input_conv = self.which_conv(3, self.arch['in_channels'][0])
        # One list per stage, as in the original: its D_depth blocks, then the stage's
        # attention (blocks.<stage>.<D_depth>), so its checkpoints load as they are.
        blocks = []
        for index, out_ch in enumerate(self.arch['out_channels']):
            stage = [DBlock(
                in_channels=self.arch['in_channels'][index] if d_index == 0 else out_ch,
                out_channels=out_ch, which_conv=self.which_conv, wide=self.D_wide,
                activation=self.activation, preactivation=True,
                downsample=(nn.AvgPool2d(2)
                            if self.arch['downsample'][index] and d_index == 0 else None))
                for d_index in range(D_depth)]
            if self.arch['attention'][self.arch['resolution'][index]]:
                stage.append(layers.Attention(out_ch, self.which_conv))
            blocks.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(blocks)
        self.linear = self.which_linear(self.arch['out_channels'][-1], output_dim)
        self.embed = self.which_embedding(self.n_classes, self.arch['out_channels'][-1])

        layers.init_and_optimize(self, skip_init, (D_lr, D_B1, D_B2), adam_eps)

    def forward(self, x, y=None):
        h = self.input_conv(x)
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h)
        h = torch.sum(self.activation(h), [2, 3])
        out = self.linear(h)
        if y is not None:
            out = out + torch.sum(self.embed(y) * h, 1, keepdim=True)
        return out
