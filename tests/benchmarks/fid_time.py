"""Seconds and relative error of Frechet-distance methods on 2048-d statistics.

Two cases, both built from random 2048-d activations shaped like Inception pool features
(non-negative, correlated, decaying spectrum):

- ``N=10000``: well-conditioned statistics, as 10k+ images give;
- ``N=2100``: just above the dimension, so the covariances are nearly singular.

Methods, each computing the full FID in the same run:

- ``ours``: inception_utils.numpy_calculate_frechet_distance (Cholesky + eigenvalues, float64);
- ``scipy sqrtm``: trace of scipy.linalg.sqrtm(S1 S2) in float64 (the reference and baseline);
- ``newton-schulz 50 it``: the original's fast path (50 iterations, no convergence check) in
  float32 and in float64.

Relative errors are against sqrtm; the ratio is each method's time over sqrtm's. Times are
medians over --reps calls (at least 5 for ours): this machine is shared, and single timings
jump by 10x when a neighbour is busy.

    python tests/benchmarks/fid_time.py [--cases 10000 2100] [--reps 1] [--threads N]
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import inception_utils  # noqa: E402

DIM = 2048


def inception_like_features(n, seed, dim=DIM):
    """(n, dim) float64 random ReLU features with a decaying spectrum, like Inception pool_3."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 256)) * (1.0 / np.arange(1, 257)) ** 0.5
    mixing = rng.standard_normal((256, dim)) / 4.0
    noise = rng.standard_normal((n, dim)) * 0.05
    return np.maximum(latent @ mixing + noise + 0.2, 0.0)


def inception_like_moments(n, seed):
    """mu (2048,), sigma (2048, 2048) of n inception_like_features."""
    acts = inception_like_features(n, seed)
    return acts.mean(0), np.cov(acts, rowvar=False)


def fid_sqrtm(mu1, s1, mu2, s2):
    root = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def fid_newton_schulz(mu1, s1, mu2, s2, dtype, iters=50):
    """The original's torch FID: 50 Newton-Schulz iterations for sqrt(S1 S2), in `dtype`."""
    mu1, s1, mu2, s2 = (torch.from_numpy(v).to(dtype) for v in (mu1, s1, mu2, s2))
    a = s1 @ s2
    norm = a.norm()
    y = a / norm
    eye = torch.eye(DIM, dtype=dtype)
    z = eye.clone()
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    diff = mu1 - mu2
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * (y * norm.sqrt()).trace())


def timed(reps, fn, *args):
    """(median seconds over `reps` calls, value): this machine is shared and its timings jump."""
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        value = fn(*args)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', type=int, nargs='+', default=[10000, 2100],
                        help='samples per set of activations (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--reps', type=int, default=1,
                        help='timed calls per method, median reported; ours always gets at '
                             'least 5 (default: %(default)s)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'Frechet distance on {DIM}-d statistics; torch threads {torch.get_num_threads()}')
    for n in args.cases:
        mu1, s1 = inception_like_moments(n, seed=1)
        mu2, s2 = inception_like_moments(n, seed=2)
        ref_time, ref = timed(args.reps, fid_sqrtm, mu1, s1, mu2, s2)
        rows = [('ours (Cholesky + eigvalsh, f64)', *timed(
                    max(args.reps, 5), inception_utils.numpy_calculate_frechet_distance,
                    mu1, s1, mu2, s2)),
                ('scipy sqrtm (f64, reference)', ref_time, ref),
                ('newton-schulz 50 it (f32)', *timed(args.reps, fid_newton_schulz, mu1, s1,
                                                      mu2, s2, torch.float32)),
                ('newton-schulz 50 it (f64)', *timed(args.reps, fid_newton_schulz, mu1, s1,
                                                      mu2, s2, torch.float64))]
        print(f'\nN={n} activations per set, cond(sigma1)={np.linalg.cond(s1):.2e}, '
              f'FID={ref:.6f}, load average {os.getloadavg()[0]:.1f}')
        print(f'| {"method":32s} | {"seconds":>8s} | {"x sqrtm":>8s} | {"FID":>14s} | '
              f'{"rel. error":>10s} |')
        print(f'|{"-" * 34}|{"-" * 10}:|{"-" * 10}:|{"-" * 16}:|{"-" * 12}:|')
        for name, seconds, value in rows:
            error = abs(value - ref) / abs(ref) if np.isfinite(value) else float('nan')
            print(f'| {name:32s} | {seconds:8.2f} | {seconds / ref_time:8.3f} | {value:14.6f} '
                  f'| {error:10.1e} |')


if __name__ == '__main__':
    main()
