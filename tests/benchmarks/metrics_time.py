"""Time and peak memory of metrics.py's metrics against torch-fidelity and prdc, same features.

Real and generated features are --n x --dim float32 (what the Inception network gives), random
ReLU features shaped like pool_3 (tests/benchmarks/fid_time.py), with --classes labels and
1008-way logits. Each method runs in its own fresh process on the same saved arrays, with the
same thread settings, and reports:

- wall and CPU seconds of the call alone (loading the arrays and imports are not timed); on a
  busy machine the CPU-time ratios are the steadier ones (a method's CPU time sums its threads);
- peak memory: the process's peak resident set (ru_maxrss) minus its resident set just before
  the call, i.e. what the call added on top of the loaded features (torch and numpy buffers,
  the float64 copies of the features, BLAS workspaces; freed-and-reused memory counts once);
- the value it computed, and its difference from the other implementation of the same metric.

Pairs (ours / baseline):
- KID, 100 subsets of 1000: ours (default: float32 products and kernels, float64 sums; and
  dtype=float64 throughout) / torch-fidelity kid_features_to_metric (float32 throughout on
  float32 features);
- precision, recall, density, coverage: ours (one tiled pass, P/R k=3 and D/C k=5; float64, and
  dtype=float32) / prdc compute_prdc (k=5, all four from full N x N matrices; sklearn computes
  the distances in float64 and stores them in float32), and / torch-fidelity's precision and
  recall (k=3, float32 torch.cdist, full matrices);
- FID: ours (float64 moments, exact Frechet distance) / torch-fidelity (np.cov, scipy sqrtm);
- intra-class FID: ours / torch-fidelity's FID run once per class (none of them has iFID);
- IS from logits: ours / torch-fidelity isc_features_to_metric (no shuffle);
- all of IS,FID,KID,PR,DC,iFID through metrics.compute_metrics in one call.

prdc always runs sklearn with n_jobs=8 threads, whatever --threads says.

    python tests/benchmarks/metrics_time.py [--n 10000] [--dim 2048] [--classes 10] [--threads N]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PAIRS = [  # (ours, baseline, value keys compared)
    ('ours KID', 'torch-fidelity KID', ('KID_mean',)),
    ('ours KID dtype=float64', 'torch-fidelity KID', ('KID_mean',)),
    ('ours PR+DC', 'prdc PRDC (k=5)', ('density', 'coverage')),
    ('ours PR+DC', 'torch-fidelity PR', ('precision', 'recall')),
    ('ours PR+DC dtype=float32', 'prdc PRDC (k=5)', ('density', 'coverage')),
    ('ours PR+DC dtype=float32', 'torch-fidelity PR', ('precision', 'recall')),
    ('ours FID', 'torch-fidelity FID', ('FID',)),
    ('ours iFID', 'torch-fidelity FID per class', ('iFID',)),
    ('ours IS', 'torch-fidelity IS', ('IS_mean',)),
]
METHODS = list(dict.fromkeys([m for pair in PAIRS for m in pair[:2]] + ['ours all metrics']))


def _rss_kb():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))


def _run_method(method, arrays, args):
    """Compute `method` on the loaded arrays; returns {key: value}."""
    import torch

    import metrics
    real, fake = arrays['real'], arrays['fake']
    kid_options = dict(num_subsets=args.kid_subsets, subset_size=args.kid_subset_size)
    if method == 'ours KID':
        return metrics.kid(real, fake, **kid_options, chunk_size=args.chunk_size)
    if method == 'ours KID dtype=float64':
        return metrics.kid(real, fake, **kid_options, chunk_size=args.chunk_size,
                           dtype=torch.float64)
    if method == 'ours PR+DC':
        return metrics.manifold_metrics(real, fake, chunk_size=args.chunk_size)
    if method == 'ours PR+DC dtype=float32':
        return metrics.manifold_metrics(real, fake, chunk_size=args.chunk_size,
                                        dtype=torch.float32)
    generated = {'pool': fake, 'logits': arrays['logits'], 'labels': arrays['fake_labels']}
    reference = metrics.Reference('benchmark', features=real, labels=arrays['real_labels'])
    names = {'ours FID': 'FID', 'ours iFID': 'iFID', 'ours IS': 'IS',
             'ours all metrics': 'IS,FID,KID,PR,DC,iFID'}
    if method in names:
        return metrics.compute_metrics(names[method], generated, reference,
                                       chunk_size=args.chunk_size, kid_subsets=args.kid_subsets,
                                       kid_subset_size=args.kid_subset_size)
    return _run_baseline(method, arrays, args)


def _run_baseline(method, arrays, args):
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric
    real, fake = torch.from_numpy(arrays['real']), torch.from_numpy(arrays['fake'])
    if method == 'torch-fidelity KID':
        out = kid_features_to_metric(fake, real, kid_subsets=args.kid_subsets,
                                     kid_subset_size=args.kid_subset_size, verbose=False)
        return {'KID_mean': out['kernel_inception_distance_mean']}
    if method == 'torch-fidelity PR':
        return prc_features_to_metric(fake, real, verbose=False)
    if method == 'prdc PRDC (k=5)':
        import prdc
        return prdc.compute_prdc(arrays['real'], arrays['fake'], 5)
    if method == 'torch-fidelity FID':
        out = fid_statistics_to_metric(fid_features_to_statistics(fake),
                                       fid_features_to_statistics(real), verbose=False)
        return {'FID': out['frechet_inception_distance']}
    if method == 'torch-fidelity FID per class':
        values = []
        for c in np.unique(arrays['fake_labels']):
            fake_c = fake[torch.from_numpy(arrays['fake_labels'] == c)]
            real_c = real[torch.from_numpy(arrays['real_labels'] == c)]
            values.append(fid_statistics_to_metric(fid_features_to_statistics(fake_c),
                                                   fid_features_to_statistics(real_c),
                                                   verbose=False)['frechet_inception_distance'])
        return {'iFID': float(np.mean(values))}
    if method == 'torch-fidelity IS':
        out = isc_features_to_metric(torch.from_numpy(arrays['logits']), shuffle=False)
        return {'IS_mean': out['inception_score_mean']}
    raise ValueError(f'unknown method {method}')


def child(args):
    """Run one method in this fresh process and print its measurements as one JSON line."""
    # Imports are not timed: import everything before the clock starts.
    import prdc  # noqa: F401
    import torch
    import torch_fidelity  # noqa: F401

    import metrics  # noqa: F401
    torch.set_num_threads(args.threads)
    arrays = {name: np.load(Path(args.dir) / f'{name}.npy')
              for name in ('real', 'fake', 'real_labels', 'fake_labels', 'logits')}
    rss_before = _rss_kb()
    cpu_before, start = time.process_time(), time.perf_counter()
    values = _run_method(args.child, arrays, args)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({'seconds': seconds, 'cpu': cpu, 'peak_mb': (peak - rss_before) / 1024,
                      'values': {k: float(v) for k, v in values.items()
                                 if isinstance(v, (int, float, np.number))}}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n', type=int, default=10000, help='samples per side (%(default)s)')
    parser.add_argument('--dim', type=int, default=2048, help='feature dimension (%(default)s)')
    parser.add_argument('--classes', type=int, default=10,
                        help='classes, for intra-class FID (%(default)s)')
    parser.add_argument('--threads', type=int, default=os.cpu_count(),
                        help='torch, OpenMP and BLAS threads per method (%(default)s)')
    parser.add_argument('--chunk_size', type=int, default=2048, help='ours (%(default)s)')
    parser.add_argument('--kid_subsets', type=int, default=100, help='(%(default)s)')
    parser.add_argument('--kid_subset_size', type=int, default=1000, help='(%(default)s)')
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=METHODS,
                        help='run only these (default: all)')
    parser.add_argument('--child', choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument('--dir', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from fid_time import inception_like_features
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        # One distribution, the generated side slightly off, so that P/R/D/C are neither 0 nor 1
        features = inception_like_features(2 * args.n, 1, args.dim)
        arrays = {'real': features[:args.n], 'fake': features[args.n:] * 1.02,
                  'real_labels': rng.integers(0, args.classes, args.n),
                  'fake_labels': rng.integers(0, args.classes, args.n),
                  'logits': rng.standard_normal((args.n, 1008)) * 3}
        for name, value in arrays.items():
            np.save(Path(tmp) / f'{name}.npy',
                    value.astype(np.float32) if value.dtype == np.float64 else value)
        del arrays, features
        env = dict(os.environ, **{var: str(args.threads) for var in (
            'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')})
        results = {}
        for method in args.methods:
            command = [sys.executable, __file__, '--child', method, '--dir', tmp]
            for flag in ('n', 'dim', 'threads', 'chunk_size', 'kid_subsets', 'kid_subset_size'):
                command += [f'--{flag}', str(getattr(args, flag))]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                print(f'{method}: failed\n{done.stderr}', file=sys.stderr)
                continue
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[method]
            print(f'  {method}: {r["seconds"]:.2f} s', file=sys.stderr)
    report(results, args)


def report(results, args):
    print(f'\n{args.n} real and {args.n} generated {args.dim}-d float32 features, '
          f'{args.classes} classes; {args.threads} threads; chunk_size {args.chunk_size}; '
          f'KID {args.kid_subsets} x {args.kid_subset_size}; load average '
          f'{os.getloadavg()[0]:.1f}')
    print('\n| method | wall s | CPU s | peak MB above the features |')
    print('|---|---:|---:|---:|')
    for method, r in results.items():
        print(f'| {method} | {r["seconds"]:.2f} | {r["cpu"]:.2f} | {r["peak_mb"]:.0f} |')
    print('\n| ours / baseline | wall time ratio | CPU time ratio | memory ratio | '
          'value: ours, baseline |')
    print('|---|---:|---:|---:|---|')
    for ours, baseline, keys in PAIRS:
        if ours not in results or baseline not in results:
            continue
        a, b = results[ours], results[baseline]
        values = '; '.join(f'{key} {a["values"][key]:.8g}, {b["values"][key]:.8g}'
                           for key in keys)
        print(f'| {ours} / {baseline} | {a["seconds"] / b["seconds"]:.2f} | '
              f'{a["cpu"] / max(b["cpu"], 1e-3):.2f} | {a["peak_mb"] / max(b["peak_mb"], 1):.2f} '
              f'| {values} |')


if __name__ == '__main__':
    main()
