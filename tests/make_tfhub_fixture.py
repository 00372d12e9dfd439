"""Write a synthetic TF Hub BigGAN dump: the hub modules' variable names and shapes, random values.

The layout is written from the documented TF side (../shared/FACTS.md, the
original's TFHub port and the HF biggan-deep port), not from our models:

    python tests/make_tfhub_fixture.py -r 128 --ch 8 --out tmp/biggan-128.h5
    python tests/make_tfhub_fixture.py -r 256 --deep --ch 8 --out tmp/biggan-deep-256.h5

Names are as a TF1 `hub.Module` dump writes them: `module/<scope>/<var>:0`. The
deep file also holds `bn_stats/...` (51 per-truncation rows per BN) and
`bn_stats/truncation`, as TFHub/converter.py's dump step writes them.
"""
import argparse
import os

import h5py
import numpy as np

# Per GBlock (in, out) channel multiples of ch.
NONDEEP_BLOCKS = {
    128: [(16, 16), (16, 8), (8, 4), (4, 2), (2, 1)],
    256: [(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1)],
    512: [(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1), (1, 1)],
}
NONDEEP_Z_CHUNK = {128: 20, 256: 20, 512: 16}
# Channels (multiple of ch) of the self-attention block.
NONDEEP_ATTN = {128: 2, 256: 2, 512: 4}
# Deep stages (in, out); each is a non-upsampling in->in block then an upsampling in->out one.
DEEP_STAGES = {
    128: [(16, 16), (16, 8), (8, 4), (4, 2), (2, 1)],
    256: [(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1)],
    512: [(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1), (1, 1)],
}
DEEP_ATTN = {128: 2, 256: 4, 512: 4}
EMBED_DIM = 128
N_CLASSES = 1000
N_TRUNCATIONS = 51


def _scope(base, index):
    return base if index == 0 else f'{base}_{index}'


def _layout_nondeep(resolution, ch, ema, raw):
    z = NONDEEP_Z_CHUNK[resolution]
    cond = z + EMBED_DIM
    shapes, kinds = {}, {}

    def trained(name, shape, kind):
        if raw:
            shapes[name], kinds[name] = shape, kind
        if ema:
            shapes[f'{name}/ema_b999900'], kinds[f'{name}/ema_b999900'] = shape, kind

    def sn(scope, w_shape, bias=True):
        trained(f'{scope}/w', w_shape, 'weight')
        if bias:
            trained(f'{scope}/b', (w_shape[-1],), 'bias')
        for u in ('u0', 'u1'):
            shapes[f'{scope}/{u}'], kinds[f'{scope}/{u}'] = (1, w_shape[-1]), 'u'

    def accumulated(scope, channels):
        for name, shape, kind in (('accumulated_mean', (channels,), 'mean'),
                                  ('accumulated_var', (channels,), 'var'),
                                  ('accumulation_counter', (), 'counter')):
            shapes[f'{scope}/{name}'], kinds[f'{scope}/{name}'] = shape, kind

    trained('linear/w', (N_CLASSES, EMBED_DIM), 'weight')
    sn('Generator/G_Z/G_linear', (z, 4 * 4 * 16 * ch))
    for i, (cin, cout) in enumerate(NONDEEP_BLOCKS[resolution]):
        block = _scope('Generator/GBlock', i)
        sn(f'{block}/conv0', (3, 3, cin * ch, cout * ch))
        sn(f'{block}/conv1', (3, 3, cout * ch, cout * ch))
        sn(f'{block}/conv_sc', (1, 1, cin * ch, cout * ch))
        for k, channels in enumerate((cin * ch, cout * ch)):
            for param in ('gamma', 'beta'):
                sn(f"{_scope(f'{block}/HyperBN', k)}/{param}", (cond, channels), bias=False)
            accumulated(_scope(f'{block}/CrossReplicaBN', k), channels)
    attn = NONDEEP_ATTN[resolution] * ch
    for name, cin, cout in (('theta', attn, attn // 8), ('phi', attn, attn // 8),
                            ('g', attn, attn // 2), ('o_conv', attn // 2, attn)):
        sn(f'Generator/attention/{name}', (1, 1, cin, cout), bias=False)
    trained('Generator/attention/gamma', (1,), 'gamma')
    trained('Generator/ScaledCrossReplicaBN/gamma', (1, 1, 1, ch), 'scale')
    trained('Generator/ScaledCrossReplicaBN/beta', (1, 1, 1, ch), 'bias')
    accumulated('Generator/ScaledCrossReplicaBNbn', ch)
    sn('Generator/conv_2d', (3, 3, ch, 3))
    return shapes, kinds


def _layout_deep(resolution, ch, ema, raw, stats):
    cond = 2 * EMBED_DIM
    shapes, kinds = {}, {}

    def trained(name, shape, kind):
        if raw:
            shapes[name], kinds[name] = shape, kind
        if ema:
            shapes[f'{name}/ema_0.9999'], kinds[f'{name}/ema_0.9999'] = shape, kind

    def sn(scope, w_shape, bias=True):
        trained(f'{scope}/w', w_shape, 'weight')
        if bias:
            trained(f'{scope}/b', (w_shape[-1],), 'bias')
        shapes[f'{scope}/u0'], kinds[f'{scope}/u0'] = (1, w_shape[-1]), 'u'

    def bn_stats(scope, channels):
        if stats:
            for stat in ('mean', 'var'):
                name = f'bn_stats/{scope}/{stat}'
                shapes[name], kinds[name] = (N_TRUNCATIONS, channels), f'stack_{stat}'

    trained('linear/w', (N_CLASSES, EMBED_DIM), 'weight')
    sn('Generator/GenZ/G_linear', (cond, 4 * 4 * 16 * ch))
    index = 0
    for cin, cout in DEEP_STAGES[resolution]:
        for last in (False, True):
            block = _scope('Generator/GBlock', index)
            c_in, c_out, hidden = cin * ch, (cout if last else cin) * ch, cin * ch // 4
            for k, channels in enumerate((c_in, hidden, hidden, hidden)):
                bn = _scope(f'{block}/BatchNorm', k)
                for param in ('scale', 'offset'):
                    sn(f'{bn}/{param}', (cond, channels), bias=False)
                bn_stats(bn, channels)
            for k, w_shape in enumerate(((1, 1, c_in, hidden), (3, 3, hidden, hidden),
                                         (3, 3, hidden, hidden), (1, 1, hidden, c_out))):
                sn(f'{block}/conv{k}', w_shape)
            index += 1
    attn = DEEP_ATTN[resolution] * ch
    for name, cin, cout in (('theta', attn, attn // 8), ('phi', attn, attn // 8),
                            ('g', attn, attn // 2), ('o_conv', attn // 2, attn)):
        sn(f'Generator/attention/{name}', (1, 1, cin, cout), bias=False)
    trained('Generator/attention/gamma', (1,), 'gamma')
    trained('Generator/BatchNorm/scale', (ch,), 'scale')
    trained('Generator/BatchNorm/offset', (ch,), 'bias')
    bn_stats('Generator/BatchNorm', ch)
    sn('Generator/conv_to_rgb', (3, 3, ch, ch))
    if stats:
        shapes['bn_stats/truncation'], kinds['bn_stats/truncation'] = (N_TRUNCATIONS,), 'grid'
    return shapes, kinds


def tfhub_layout(resolution, deep=False, ch=None, ema=True, raw=None, stats=True,
                 with_kinds=False):
    """{full TF name: shape} of a hub module dump (names as `module/...:0`).

    ch: channel width (default: the hub's 96, or 128 for deep). raw: also the
    non-EMA weights (default: for non-deep only; the documented deep layout has
    only EMA copies). stats: the deep per-truncation BN statistics.
    with_kinds: also return {name: kind} (weight, bias, u, mean, var, ...).
    """
    if deep:
        shapes, kinds = _layout_deep(resolution, ch or 128, ema, bool(raw), stats)
    else:
        shapes, kinds = _layout_nondeep(resolution, ch or 96, ema, raw is None or raw)

    def full(name):
        return name if name.startswith('bn_stats/') else f'module/{name}:0'
    shapes = {full(k): v for k, v in shapes.items()}
    kinds = {full(k): v for k, v in kinds.items()}
    return (shapes, kinds) if with_kinds else shapes


def _random_value(kind, shape, rng):
    if kind in ('var',):
        return rng.uniform(0.5, 1.5, shape)
    if kind == 'mean':
        return rng.normal(0, 0.1, shape)
    if kind == 'counter':
        return np.asarray(rng.integers(1, 100), dtype=np.float64).reshape(shape)
    if kind == 'stack_var':
        return rng.uniform(0.5, 1.5, shape)
    if kind == 'stack_mean':
        return rng.normal(0, 0.1, shape)
    if kind == 'grid':
        return np.linspace(0, 1, shape[0])
    if kind == 'u':
        u = rng.normal(size=shape)
        return u / np.linalg.norm(u)
    if kind == 'gamma':
        return rng.uniform(0.2, 0.8, shape)
    if kind == 'scale':
        return 1 + rng.normal(0, 0.1, shape)
    if kind == 'bias':
        return rng.normal(0, 0.1, shape)
    return rng.normal(0, 0.2, shape)


def write_fixture(path, resolution=128, deep=False, ch=8, seed=0, ema=True, raw=None,
                  stats=True):
    """Write a random-valued dump with the exact hub names and (width-ch) shapes; returns path."""
    rng = np.random.default_rng(seed)
    shapes, kinds = tfhub_layout(resolution, deep, ch, ema, raw, stats, with_kinds=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with h5py.File(path, 'w') as h5file:
        for name, shape in shapes.items():
            value = _random_value(kinds[name], shape, rng).astype(np.float32)
            h5file.create_dataset(name, data=value)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description='Write a synthetic TF Hub BigGAN h5 dump.')
    parser.add_argument('-r', '--resolution', type=int, default=128, choices=(128, 256, 512))
    parser.add_argument('--deep', action='store_true')
    parser.add_argument('--ch', type=int, default=8, help='channel width (hub: 96, deep 128)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', required=True, help='output .h5 path')
    args = parser.parse_args(argv)
    write_fixture(args.out, args.resolution, args.deep, args.ch, args.seed)
    print(f'Wrote {args.out}')


if __name__ == '__main__':
    main()
