"""BigGAN generator and discriminator (Brock, Donahue and Simonyan, 2018).

Built from the shared config: `Generator(**config)`, `Discriminator(**config)`
and `G_D(G, D)`. The module and parameter layout reproduces the original
BigGAN-PyTorch one, so its released G.pth / G_ema.pth / D.pth load with
strict=True and its optimizer files line up.
"""
import functools

import torch
import torch.nn as nn

import layers


def _attention_flags(attention, resolutions):
    """Map each resolution to whether attention is requested there ('64', '32_64', '0')."""
    wanted = {int(item) for item in str(attention).split('_') if item}
    return {res: res in wanted for res in resolutions}


# Resolution-keyed architectures (BigGANdeep uses the same G table). Each entry lists,
# per stage, the input and output channels (as multiples of ch).
_G_TABLE = {
    512: ([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    32: ([4, 4, 4], [4, 4, 4]),
}


def G_arch(ch=64, attention='64', ksize='333333', dilation='111111'):
    """Generator architectures keyed by output resolution (BigGAN and BigGANdeep);
    'resolution' is each stage's output resolution.
    ksize, dilation: kept for the original's signature; unused."""
    arch = {}
    for res, (ins, outs) in _G_TABLE.items():
        resolution = [8 * 2 ** i for i in range(len(outs))]
        arch[res] = {'in_channels': [ch * m for m in ins],
                     'out_channels': [ch * m for m in outs],
                     'upsample': [True] * len(outs),
                     'resolution': resolution,
                     'attention': _attention_flags(attention, resolution)}
    return arch


# D: (in multiples after the RGB input, out multiples, downsample flags, output resolutions).
# 512 is new here; it mirrors G's 512 channel pattern.
_D_TABLE = {
    512: ([1, 1, 2, 4, 8, 8, 16], [1, 1, 2, 4, 8, 8, 16, 16], [True] * 7 + [False],
          [256, 128, 64, 32, 16, 8, 4, 4]),
    256: ([1, 2, 4, 8, 8, 16], [1, 2, 4, 8, 8, 16, 16], [True] * 6 + [False],
          [128, 64, 32, 16, 8, 4, 4]),
    128: ([1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16], [True] * 5 + [False],
          [64, 32, 16, 8, 4, 4]),
    64: ([1, 2, 4, 8], [1, 2, 4, 8, 16], [True] * 4 + [False], [32, 16, 8, 4, 4]),
    32: ([4, 4, 4], [4, 4, 4, 4], [True, True, False, False], [16, 8, 8, 8]),
}


def D_arch_from(table, ch, attention, input_channels=()):
    """D architectures from a table {res: (in multiples, out multiples, downsample flags,
    output resolutions)}: channels times ch, after `input_channels` as they are."""
    arch = {}
    for res, (ins, outs, down, resolution) in table.items():
        arch[res] = {'in_channels': list(input_channels) + [ch * m for m in ins],
                     'out_channels': [ch * m for m in outs],
                     'downsample': down,
                     'resolution': resolution,
                     'attention': _attention_flags(attention, resolution)}
    return arch


def D_arch(ch=64, attention='64', ksize='333333', dilation='111111'):
    """Discriminator architectures keyed by input resolution.
    ksize, dilation: kept for the original's signature; unused."""
    return D_arch_from(_D_TABLE, ch, attention, input_channels=[3])


def check_attention(config, G_arch, D_arch, name):
    """Errors for --G_attn/--D_attn resolutions that `name`'s arch tables lack,
    or where the stage is too narrow for the ch/8 attention projections."""
    errors = []
    res = config['resolution']
    for flag, arch, ch in (('G_attn', G_arch, config['G_ch']), ('D_attn', D_arch, config['D_ch'])):
        table = arch(ch, '0')[res]
        for item in str(config[flag]).split('_'):
            r = int(item)
            if r == 0:
                continue
            if r not in table['resolution']:
                errors.append(f"--{flag} {config[flag]}: the {res}x{res} {name} {flag[0]} has "
                              f"no stage at resolution {r}; choose from "
                              f"{sorted(set(table['resolution']))} or 0 for none")
                continue
            channels = min(c for c, rr in zip(table['out_channels'], table['resolution'])
                           if rr == r)
            if channels < 8:
                errors.append(f"--{flag} {config[flag]}: attention at {r} needs at least 8 "
                              f"channels there but --{flag[0]}_ch {ch} gives {channels}")
    return errors


def check_config(config):
    """Reasons this model cannot be built from `config` (an empty list if it can)."""
    res = config['resolution']
    if res not in _G_TABLE:
        return [f"resolution {res} is not supported: BigGAN has architectures for "
                f"{sorted(_G_TABLE)} (set by --dataset, or by --resolution for --dataset folder)"]
    errors = check_attention(config, G_arch, D_arch, 'BigGAN')
    if config['hier']:
        if not config['G_shared']:
            errors.append("--hier needs --G_shared: the z chunks are concatenated with "
                          "the shared class embedding")
        num_slots = len(_G_TABLE[res][1]) + 1
        if config['dim_z'] < num_slots:
            errors.append(f"--hier with --dim_z {config['dim_z']}: z is split into {num_slots} "
                          f"chunks at {res}x{res}, so --dim_z must be at least {num_slots}")
    return errors


class Generator(nn.Module):
    """Class-conditional BigGAN generator.

    forward(z, y): z (N, dim_z), y = G.shared(classes) (N, shared_dim) with
    G_shared, else class indices (N,) -> images (N, 3, resolution, resolution)
    in [-1, 1]. With `hier`, z is split into one chunk for the first linear
    layer and one per block, each concatenated after y.
    G_kernel_size, G_mixed_precision, G_fp16: kept for the original's signature; unused.
    """

    def __init__(self, G_ch=64, dim_z=128, bottom_width=4, resolution=128,
                 G_kernel_size=3, G_attn='64', n_classes=1000,
                 num_G_SVs=1, num_G_SV_itrs=1,
                 G_shared=True, shared_dim=0, hier=False,
                 cross_replica=False, mybn=False,
                 G_activation=nn.ReLU(inplace=False),
                 G_lr=5e-5, G_B1=0.0, G_B2=0.999, adam_eps=1e-8,
                 BN_eps=1e-5, SN_eps=1e-12, G_mixed_precision=False, G_fp16=False,
                 G_init='ortho', skip_init=False, no_optim=False,
                 G_param='SN', norm_style='bn', **kwargs):
        super().__init__()
        self.ch = G_ch
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

        if self.hier:
            # One chunk for the linear layer and one per block; dim_z is rounded
            # down to a multiple, as the original does.
            self.num_slots = len(self.arch['in_channels']) + 1
            self.z_chunk_size = self.dim_z // self.num_slots
            self.dim_z = self.z_chunk_size * self.num_slots
        else:
            self.num_slots = 1
            self.z_chunk_size = 0

        self.which_conv, self.which_linear, _ = layers.snconv_factories(
            G_param, num_G_SVs, num_G_SV_itrs, SN_eps)
        # G's class embedding is never spectrally normalised: the original found
        # SN there randomly cripples G.
        self.which_embedding = nn.Embedding
        bn_linear = (functools.partial(self.which_linear, bias=False) if G_shared
                     else self.which_embedding)
        self.which_bn = functools.partial(
            layers.ccbn, which_linear=bn_linear, cross_replica=cross_replica, mybn=mybn,
            input_size=(self.shared_dim + self.z_chunk_size if G_shared else n_classes),
            norm_style=norm_style, eps=BN_eps)

        self.shared = (self.which_embedding(n_classes, self.shared_dim) if G_shared
                       else layers.identity())
        self.linear = self.which_linear(self.dim_z // self.num_slots,
                                        self.arch['in_channels'][0] * self.bottom_width ** 2)
        blocks = []
        for index, out_ch in enumerate(self.arch['out_channels']):
            stage = [layers.GBlock(in_channels=self.arch['in_channels'][index],
                                   out_channels=out_ch,
                                   which_conv=self.which_conv, which_bn=self.which_bn,
                                   activation=self.activation,
                                   upsample=(layers.nearest_upsample
                                             if self.arch['upsample'][index] else None))]
            if self.arch['attention'][self.arch['resolution'][index]]:
                stage.append(layers.Attention(out_ch, self.which_conv))
            blocks.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(blocks)
        self.output_layer = nn.Sequential(
            layers.bn(self.arch['out_channels'][-1], eps=BN_eps,
                      cross_replica=cross_replica, mybn=mybn),
            self.activation,
            self.which_conv(self.arch['out_channels'][-1], 3))

        layers.init_and_optimize(self, skip_init, None if no_optim else (G_lr, G_B1, G_B2),
                                 adam_eps)

    def forward(self, z, y):
        if self.hier:
            zs = torch.split(z, self.z_chunk_size, 1)
            z = zs[0]
            ys = [torch.cat([y, item], 1) for item in zs[1:]]
        else:
            ys = [y] * len(self.blocks)
        h = self.linear(z)
        h = h.view(h.size(0), -1, self.bottom_width, self.bottom_width)
        for blocklist, y_block in zip(self.blocks, ys):
            for block in blocklist:
                h = block(h, y_block)
        return torch.tanh(self.output_layer(h))


class Discriminator(nn.Module):
    """Projection discriminator. forward(x, y): x (N, 3, res, res), y (N,) class
    indices -> (N, output_dim) scores; y=None gives the unconditional score.
    D_kernel_size, D_mixed_precision, D_fp16: kept for the original's signature; unused."""

    def __init__(self, D_ch=64, D_wide=True, resolution=128,
                 D_kernel_size=3, D_attn='64', n_classes=1000,
                 num_D_SVs=1, num_D_SV_itrs=1, D_activation=nn.ReLU(inplace=False),
                 D_lr=2e-4, D_B1=0.0, D_B2=0.999, adam_eps=1e-8,
                 SN_eps=1e-12, output_dim=1, D_mixed_precision=False, D_fp16=False,
                 D_init='ortho', skip_init=False, D_param='SN', **kwargs):
        super().__init__()
        self.ch = D_ch
        self.D_wide = D_wide
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

        blocks = []
        for index, out_ch in enumerate(self.arch['out_channels']):
            stage = [layers.DBlock(in_channels=self.arch['in_channels'][index],
                                   out_channels=out_ch, which_conv=self.which_conv,
                                   wide=self.D_wide, activation=self.activation,
                                   preactivation=index > 0,
                                   downsample=(nn.AvgPool2d(2)
                                               if self.arch['downsample'][index] else None))]
            if self.arch['attention'][self.arch['resolution'][index]]:
                stage.append(layers.Attention(out_ch, self.which_conv))
            blocks.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(blocks)
        self.linear = self.which_linear(self.arch['out_channels'][-1], output_dim)
        self.embed = self.which_embedding(self.n_classes, self.arch['out_channels'][-1])

        layers.init_and_optimize(self, skip_init, (D_lr, D_B1, D_B2), adam_eps)

    def forward(self, x, y=None):
        h = x
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h)
        # Global sum pooling, as in SN-GAN.
        h = torch.sum(self.activation(h), [2, 3])
        out = self.linear(h)
        if y is not None:
            out = out + torch.sum(self.embed(y) * h, 1, keepdim=True)
        return out


def D_on_fake_and_real(D, G_z, gy, x=None, dy=None, split_D=False, return_G_z=False,
                       D_pair=None, augment=None):
    """D's part of G_D.forward (for G_D and distributed.DistributedG_D alike).

    G_z (N, 3, H, W) fakes with classes gy (N,); x (M, 3, H, W), dy (M,) optional reals.
    Returns (D_fake, D_real) when x is given, else D_fake, or (D_fake, G_z) with
    return_G_z. D runs once on the concatenation of fakes and reals, or with split_D
    on each separately; D_pair(x1, y1, x2, y2) -> (D(x1, y1), D(x2, y2)), when given,
    runs those two passes as one call (DDP wants one forward per backward).
    augment: None, or a callable G_z -> (k * N, 3, H, W), the fakes D sees (k views
    of the batch, each with the classes gy); D_fake is then (k * N, 1) and the
    returned G_z stays the un-augmented batch.
    """
    fake, fy = G_z, gy
    if augment is not None:
        fake = augment(G_z)
        fy = gy.repeat(fake.shape[0] // G_z.shape[0])
    if split_D:
        if x is not None:
            return D_pair(fake, fy, x, dy) if D_pair is not None else (D(fake, fy), D(x, dy))
        D_out = D(fake, fy)
    else:
        D_input = torch.cat([fake, x], 0) if x is not None else fake
        D_class = torch.cat([fy, dy], 0) if dy is not None else fy
        D_out = D(D_input, D_class)
        if x is not None:
            return torch.split(D_out, [fake.shape[0], x.shape[0]])
    return (D_out, G_z) if return_G_z else D_out


class G_D(nn.Module):
    """G and D in one module, so DataParallel never gathers G's output.

    forward(z, gy, x=None, dy=None): z (N, dim_z), gy (N,) classes for G; x, dy
    optional real images and classes. Returns D_out, or (D_fake, D_real) when x
    is given, or (D_out, G_z) with return_G_z. split_D runs D separately on
    fake and real batches instead of on their concatenation. augment: None, or a
    callable G_z (N, 3, H, W) -> (k * N, 3, H, W), the fake images D sees (k
    views of the batch, each with the classes gy, e.g. augmented copies); the
    caller prepares the real images the same way. G_z stays the un-augmented batch.
    """

    def __init__(self, G, D):
        super().__init__()
        self.G = G
        self.D = D

    def forward(self, z, gy, x=None, dy=None, train_G=False, return_G_z=False,
                split_D=False, augment=None):
        with torch.set_grad_enabled(train_G):
            G_z = self.G(z, self.G.shared(gy))
        return D_on_fake_and_real(self.D, G_z, gy, x, dy, split_D, return_G_z,
                                  augment=augment)
