"""Seconds and peak memory for G and D forward + backward at a fixed small config.

Config: BigGAN 64x64, G_ch = D_ch = 32, batch 16, attention at 32 in G and D,
shared embedding + hier. Each network is timed twice in the same run: as
built here, and with the original BigGAN-PyTorch's computation order swapped
in (three-matvec SN, F.batch_norm then separate gain/bias ops, explicit
bmm/softmax attention, shortcut convs at full resolution). Ratios < 1 mean
we are faster.

    python tests/benchmarks/model_time.py [--device cuda] [--reps 10]
"""
import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import BigGAN  # noqa: E402
import layers  # noqa: E402
import utils  # noqa: E402

ARGV = ('--dataset I64 --G_ch 32 --D_ch 32 --G_attn 32 --D_attn 32 --G_shared --hier '
        '--dim_z 120 --shared_dim 128').split()


def _orig_power_iteration(W, us, update=True, eps=1e-12, grad=True):
    new_us, vs, svs = [], [], []
    for u in us:
        with torch.no_grad():
            v = F.normalize(layers._gram_schmidt(u @ W, vs), eps=eps)
            vs.append(v)
            u_new = F.normalize(layers._gram_schmidt(v @ W.t(), new_us), eps=eps)
            new_us.append(u_new)
            if update:
                u.copy_(u_new)
        svs.append(torch.squeeze((v @ W.t()) @ u_new.t()))
    return svs, new_us, vs


def _orig_normalize(self, x, gain, bias):
    out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None,
                       self.training, self.momentum, self.eps)
    return out * gain + bias


def _orig_attention(self, x, y=None):
    N, C, H, W = x.shape
    theta = self.theta(x).view(N, C // 8, H * W)
    phi = F.max_pool2d(self.phi(x), [2, 2]).view(N, C // 8, H * W // 4)
    g = F.max_pool2d(self.g(x), [2, 2]).view(N, C // 2, H * W // 4)
    beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
    o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(N, C // 2, H, W))
    return self.gamma * o + x


def _orig_gblock(self, x, y):
    h = self.activation(self.bn1(x, y))
    if self.upsample:
        h, x = self.upsample(h), self.upsample(x)
    h = self.conv2(self.activation(self.bn2(self.conv1(h), y)))
    return h + (self.conv_sc(x) if self.learnable_sc else x)


def _orig_dshortcut(self, x):
    if self.preactivation:
        if self.learnable_sc:
            x = self.conv_sc(x)
        return self.downsample(x) if self.downsample else x
    if self.downsample:
        x = self.downsample(x)
    return self.conv_sc(x) if self.learnable_sc else x


@contextlib.contextmanager
def original_order():
    """Temporarily swap in the original codebase's computation order."""
    saved = [(layers, 'power_iteration'), (layers._NormBase, '_normalize'),
             (layers.Attention, 'forward'), (layers.GBlock, 'forward'),
             (layers.DBlock, 'shortcut')]
    old = [getattr(obj, name) for obj, name in saved]
    new = [_orig_power_iteration, _orig_normalize, _orig_attention, _orig_gblock, _orig_dshortcut]
    for (obj, name), fn in zip(saved, new):
        setattr(obj, name, fn)
    try:
        yield
    finally:
        for (obj, name), fn in zip(saved, old):
            setattr(obj, name, fn)


def _time(fn, reps, device):
    fn()  # warm up
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    best = float('inf')
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if device == 'cuda':
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda' else float('nan')
    return best, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--reps', type=int, default=10)
    parser.add_argument('--batch', type=int, default=16)
    args = parser.parse_args()
    config = utils.parse_config(utils.prepare_parser(), ARGV)
    torch.manual_seed(0)
    G = BigGAN.Generator(**config).to(args.device)
    D = BigGAN.Discriminator(**config).to(args.device)
    z = torch.randn(args.batch, G.dim_z, device=args.device)
    y = torch.randint(0, config['n_classes'], (args.batch,), device=args.device)
    x = torch.randn(args.batch, 3, 64, 64, device=args.device)

    def step_G():
        G.zero_grad(set_to_none=True)
        G(z, G.shared(y)).square().mean().backward()

    def step_D():
        D.zero_grad(set_to_none=True)
        D(x, y).mean().backward()

    print(f'device {args.device}, batch {args.batch}, threads {torch.get_num_threads()}, '
          f'best of {args.reps}')
    print(f"{'net':<4}{'ours s':>10}{'original s':>12}{'ratio':>8}{'ours MiB':>10}{'orig MiB':>10}")
    for name, fn in (('G', step_G), ('D', step_D)):
        ours, ours_mem = _time(fn, args.reps, args.device)
        with original_order():
            orig, orig_mem = _time(fn, args.reps, args.device)
        print(f'{name:<4}{ours:>10.4f}{orig:>12.4f}{ours / orig:>8.2f}'
              f'{ours_mem:>10.1f}{orig_mem:>10.1f}')


if __name__ == '__main__':
    main()
