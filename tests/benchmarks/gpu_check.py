"""GPU check of the training step: speed, memory and FLOP use per precision mode.

For the released 128x128 model's flags (launch_BigGAN_bs256x8.sh: ch96, attention at 64,
shared + hier, dim_z 120) and for the same at ch64, one training iteration (a D step then a
G step, one micro-batch each, synthetic data: no dataset needed) is timed in four modes:
fp32 (PyTorch defaults: TF32 convolutions), bf16 (--amp bf16), bf16 + channels_last, and
bf16 + torch.compile. Per mode it prints seconds per iteration and peak memory, each as a
ratio to fp32 measured in the same run, whether the losses stayed finite, and the achieved
fraction of the GPU's dense bf16 peak (model FLOPs per iteration from FlopCounterMode divided
by the time). The batch is the largest that fits in fp32, searched downward from --max_batch.

Each (config, mode) runs in its own subprocess with a timeout, and the whole check keeps to
--budget seconds (default 450: about 8 minutes with start-up), skipping what no longer fits;
the compiled runs come last, after every other mode of every config.

    python tests/benchmarks/gpu_check.py [--configs ch96,ch64] [--peak_tflops 989]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = {
    'ch96': ('--dataset I128_hdf5 --G_ch 96 --D_ch 96 --G_attn 64 --D_attn 64 --G_shared --hier '
             '--dim_z 120 --shared_dim 128 --G_nl inplace_relu --D_nl inplace_relu '
             '--SN_eps 1e-6 --BN_eps 1e-5 --adam_eps 1e-6 --G_init ortho --D_init ortho '
             '--num_D_steps 1 --G_lr 1e-4 --D_lr 4e-4'),
}
CONFIGS['ch64'] = CONFIGS['ch96'].replace('--G_ch 96 --D_ch 96', '--G_ch 64 --D_ch 64')
# For a dry run of the script itself on CPU: --device cpu --configs tiny --max_batch 8.
CONFIGS['tiny'] = ('--dataset C10 --G_ch 8 --D_ch 8 --G_attn 16 --D_attn 16 --G_shared --hier '
                   '--dim_z 20 --shared_dim 16 --num_D_steps 1')
MODES = {'fp32': ('none', False, False), 'bf16': ('bf16', False, False),
         'bf16+channels_last': ('bf16', True, False), 'bf16+compile': ('bf16', False, True)}
BATCHES = (256, 192, 128, 96, 64, 48, 32, 16, 8)
# Dense bf16 tensor-core peaks in TFLOP/s (no sparsity), matched against the device name.
PEAKS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.4), ('H200', 989.4),
         ('GH200', 989.4), ('B200', 2250.0), ('A100', 312.0), ('L40S', 362.0), ('L4', 121.0),
         ('A10', 125.0))


# ---------------------------------------------------------------------------
# Worker: one config, one mode, in its own process
# ---------------------------------------------------------------------------
def _build(config_name, mode, batch, device):
    import torch

    sys.path.insert(0, str(ROOT))
    import BigGAN
    import train_fns
    import utils
    amp, channels_last, compile_ = MODES[mode]
    argv = CONFIGS[config_name].split() + ['--amp', amp, '--batch_size', str(batch)]
    config = utils.parse_config(utils.prepare_parser(), argv)
    torch.manual_seed(0)
    G = BigGAN.Generator(**config).to(device)
    D = BigGAN.Discriminator(**config).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    G.to(memory_format=fmt)
    D.to(memory_format=fmt)
    G_train, D_train = (torch.compile(G), torch.compile(D)) if compile_ else (G, D)
    GD = BigGAN.G_D(G_train, D_train)
    z_, y_ = utils.prepare_z_y(batch, G.dim_z, config['n_classes'], device=device)
    scalers = train_fns.make_grad_scalers(config, device)
    step = train_fns.GAN_training_function(G, D, GD, z_, y_, None, {'itr': 1}, config,
                                           scalers=scalers)
    g = torch.Generator(device=device).manual_seed(1)
    res = config['resolution']
    x = torch.rand(batch, 3, res, res, device=device, generator=g).mul_(2).sub_(1)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, config['n_classes'], (batch,), device=device, generator=g)
    return step, x, y


def _count_flops(step, x, y):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step(x, y)
    return counter.get_total_flops()


def worker(config_name, mode, batches, reps, warmup, count_flops, device):
    """Print one JSON line: batch, seconds per iteration, peak bytes, losses, flops."""
    import gc

    import torch
    torch.backends.cudnn.benchmark = True
    device = torch.device(device)
    cuda = device.type == 'cuda'

    def sync():
        if cuda:
            torch.cuda.synchronize()
    result = {'config': config_name, 'mode': mode}
    for batch in batches:
        oom = False
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            step, x, y = _build(config_name, mode, batch, device)
            t0 = time.perf_counter()
            for _ in range(warmup):
                out = step(x, y)
            sync()
            result['warmup_s'] = time.perf_counter() - t0
            losses = []
            t0 = time.perf_counter()
            for _ in range(reps):
                out = step(x, y)
                losses.append(torch.stack(list(out.values())))
            sync()
            seconds = (time.perf_counter() - t0) / reps
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError, or cuDNN's own message
            if not isinstance(err, torch.cuda.OutOfMemoryError) and \
                    'out of memory' not in str(err).lower():
                raise
            oom = True
        if oom:
            # Outside the except block, so the traceback no longer holds the tensors.
            step = x = y = out = losses = None
            gc.collect()
            torch.cuda.empty_cache()
            result.setdefault('oom', []).append(batch)
            continue
        losses = torch.stack(losses)
        peak_bytes = torch.cuda.max_memory_allocated() if cuda else math.nan
        result.update(batch=batch, seconds=seconds, peak_bytes=peak_bytes,
                      finite=bool(torch.isfinite(losses).all()),
                      last_losses=dict(zip(out, losses[-1].tolist())))
        if count_flops:
            result['flops'] = _count_flops(step, x, y)
        break
    print('RESULT ' + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# Parent: orchestration and the report
# ---------------------------------------------------------------------------
def _run_worker(args, config_name, mode, batches, timeout):
    cmd = [sys.executable, __file__, '--worker', config_name, '--mode', mode,
           '--batches', ','.join(map(str, batches)), '--reps', str(args.reps),
           '--warmup', str(args.warmup), '--device', args.device]
    if mode == 'fp32':
        cmd.append('--count_flops')
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'config': config_name, 'mode': mode, 'error': f'timed out after {timeout:.0f} s'}
    for line in proc.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT '):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    error = ' | '.join(tail) or f'exit status {proc.returncode}'
    return {'config': config_name, 'mode': mode, 'error': error}


def _peak_tflops(name, override):
    if override:
        return override
    for key, value in PEAKS:
        if key in name:
            return value
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', default='ch96,ch64')
    parser.add_argument('--modes', default=','.join(MODES))
    parser.add_argument('--max_batch', type=int, default=256)
    parser.add_argument('--reps', type=int, default=5, help='timed iterations per mode')
    parser.add_argument('--warmup', type=int, default=3,
                        help='untimed iterations first (compilation happens here)')
    parser.add_argument('--budget', type=float, default=450.0,
                        help='seconds for the whole check (default: %(default)s)')
    parser.add_argument('--timeout', type=float, default=150.0,
                        help='seconds per (config, mode) subprocess (default: %(default)s)')
    parser.add_argument('--peak_tflops', type=float, default=0.0,
                        help='dense bf16 peak of the GPU; default: from the device name')
    parser.add_argument('--device', default='cuda',
                        help='cuda; cpu only for a dry run of the script (--configs tiny)')
    parser.add_argument('--worker', default='', help=argparse.SUPPRESS)
    parser.add_argument('--mode', default='fp32', help=argparse.SUPPRESS)
    parser.add_argument('--batches', default='', help=argparse.SUPPRESS)
    parser.add_argument('--count_flops', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.mode, [int(b) for b in args.batches.split(',')], args.reps,
               args.warmup, args.count_flops, args.device)
        return 0

    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('gpu_check: no CUDA device; nothing to measure.')
        return 2
    name = torch.cuda.get_device_name(0) if args.device == 'cuda' else args.device
    modes = ['fp32'] + [m for m in args.modes.split(',') if m != 'fp32']
    peak = _peak_tflops(name, args.peak_tflops)
    print(f'device {name}, torch {torch.__version__}, dense bf16 peak '
          f'{f"{peak:.0f} TFLOP/s" if peak else "unknown (pass --peak_tflops)"}')
    print('one iteration = one D step + one G step, one micro-batch each, synthetic data')
    start = time.monotonic()
    configs = args.configs.split(',')
    # Everything but compilation first, for every config; compilation (minutes) last.
    order = [(c, m) for c in configs for m in modes if m != 'bf16+compile']
    order += [(c, m) for c in configs for m in modes if m == 'bf16+compile']
    rows, base, failed = [], {}, False
    for config_name, mode in order:
        left = args.budget - (time.monotonic() - start)
        if mode != 'fp32' and config_name not in base:
            rows.append({'config': config_name, 'mode': mode, 'error': 'skipped: no fp32 run'})
            continue
        if left < 30:
            rows.append({'config': config_name, 'mode': mode, 'error': 'skipped: budget'})
            continue
        ref = base.get(config_name)
        batches = [b for b in BATCHES if b <= args.max_batch] if ref is None else [ref['batch']]
        timeout = args.timeout * (2 if mode in ('fp32', 'bf16+compile') else 1)
        r = _run_worker(args, config_name, mode, batches, min(timeout, left))
        rows.append(r)
        if 'batch' not in r:
            continue
        if mode == 'fp32':
            base[config_name] = ref = r
        r['ratio_s'] = r['seconds'] / ref['seconds']
        r['ratio_mem'] = r['peak_bytes'] / ref['peak_bytes']
        if ref.get('flops'):
            r['tflops'] = ref['flops'] / r['seconds'] / 1e12
            if peak:
                r['peak_fraction'] = r['tflops'] / peak
        failed |= not r['finite']
    rows.sort(key=lambda r: (configs.index(r['config']), modes.index(r['mode'])))

    header = (f"{'config':<7}{'mode':<20}{'batch':>6}{'s/it':>9}{'x fp32':>8}{'peak GiB':>10}"
              f"{'x fp32':>8}{'TFLOP/s':>9}{'of peak':>9}  losses")
    print(header)
    for r in rows:
        if 'batch' not in r:
            print(f"{r['config']:<7}{r['mode']:<20}  {r.get('error', 'no batch fitted')}")
            continue
        frac = r.get('peak_fraction')
        print(f"{r['config']:<7}{r['mode']:<20}{r['batch']:>6}{r['seconds']:>9.3f}"
              f"{r['ratio_s']:>8.2f}{r['peak_bytes'] / 2**30:>10.2f}{r['ratio_mem']:>8.2f}"
              f"{r.get('tflops', math.nan):>9.1f}{(frac * 100 if frac else math.nan):>8.1f}%"
              f"  {'finite' if r['finite'] else 'NOT FINITE'} {r['last_losses']}"
              f" (warm-up {r['warmup_s']:.0f} s)")
        if r.get('oom'):
            print(f"{'':<27}(out of memory at batch {', '.join(map(str, r['oom']))})")
    flops = {r['config']: r['flops'] for r in rows if r.get('flops')}
    for config_name, f in flops.items():
        print(f'{config_name}: {f / 1e12:.2f} TFLOP per iteration (FlopCounterMode, fp32 run)')
    print(f'total {time.monotonic() - start:.0f} s')
    return 1 if failed else 0


if __name__ == '__main__':
    os.environ.setdefault('PYTORCH_CUDA_ALLOC_CONF', 'expandable_segments:True')
    sys.exit(main())
