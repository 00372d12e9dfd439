"""Seconds per full training iteration (train(x, y): D steps, G step, EMA), ours vs the original.

Two configurations: the CPU demo's (scripts/launch_demo.sh: Digits32, ch 8,
batch 32, 2 D steps, EMA) and BigGAN 64x64 ch 32 (batch 16, attention at 32,
shared embedding + hier). Each is timed as built here and with the original
BigGAN-PyTorch's computation order swapped in (model_time.original_order) in
the same run; the demo also with --channels_last. Ratios < 1 mean we are faster.

    python tests/benchmarks/step_time.py [--device cuda] [--reps 10]

--tensorboard instead times the whole loop of train.run (the demo's config,
--iters iterations, logs flushed every 2 s, one save with its sheets at the
end) with and without --tensorboard, alternating, --reps rounds of each, and
prints seconds per iteration and the ratio (TensorBoard's overhead):

    python tests/benchmarks/step_time.py --tensorboard [--iters 200] [--reps 3]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_time  # noqa: E402

import train  # noqa: E402
import train_fns  # noqa: E402
import utils  # noqa: E402

CONFIGS = {
    'demo (Digits32 ch8 bs32)': (
        '--dataset Digits32 --G_ch 8 --D_ch 8 --batch_size 32 --num_D_steps 2 --G_lr 2e-4 '
        '--D_lr 2e-4 --G_init N02 --D_init N02 --dim_z 64 --G_attn 0 --D_attn 0 --ema '
        '--ema_decay 0.999 --ema_start 1000'),
    '64x64 ch32 bs16': (
        '--dataset I64 --G_ch 32 --D_ch 32 --batch_size 16 --num_D_steps 1 --G_attn 32 '
        '--D_attn 32 --G_shared --hier --dim_z 120 --shared_dim 128 --ema'),
}


def build_step(argv, device, channels_last=False):
    """A zero-argument function running one training iteration of the config."""
    config = utils.parse_config(utils.prepare_parser(), argv.split())
    model = utils.load_model_module(config['model'])
    torch.manual_seed(0)
    G, D = model.Generator(**config).to(device), model.Discriminator(**config).to(device)
    G_ema = model.Generator(**{**config, 'skip_init': True, 'no_optim': True}).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for net in (G, D, G_ema):
        net.to(memory_format=fmt)
    ema = train_fns.ema(G, G_ema, config['ema_decay'], config['ema_start'])
    z_, y_ = utils.prepare_z_y(config['batch_size'], G.dim_z, config['n_classes'], device=device)
    state = {'itr': 0}
    train = train_fns.GAN_training_function(G, D, model.G_D(G, D), z_, y_, ema, state, config)
    n = config['batch_size'] * config['num_D_steps'] * config['num_D_accumulations']
    res = config['resolution']
    x = torch.randn(n, 3, res, res, device=device).to(memory_format=fmt)
    y = torch.randint(0, config['n_classes'], (n,), device=device)

    def step():
        state['itr'] += 1
        train(x, y)
    return step


def time_loop(iters, tensorboard):
    """Seconds per iteration of train.run's loop: from its 'Experiment' line (models
    built, loader ready) to its 'Finished' line, on a fresh demo run of `iters`."""
    stamps = {}

    def log(message):
        stamps.setdefault(message.split(' ', 1)[0], time.perf_counter())
    with tempfile.TemporaryDirectory() as root:
        argv = (CONFIGS['demo (Digits32 ch8 bs32)'].split()
                + ['--channels_last', '--shuffle', '--num_workers', '0', '--num_iters', str(iters),
                   '--save_every', str(iters), '--test_every', '0', '--experiment_name',
                   'bench', '--base_root', root] + (['--tensorboard'] if tensorboard else []))
        train.run(utils.parse_config(utils.prepare_parser(), argv), log=log)
    return (stamps['Finished'] - stamps['Experiment']) / iters


def main_tensorboard(args):
    print(f'train.run loop, demo config, {args.iters} iterations, threads '
          f'{torch.get_num_threads()}, {args.reps} rounds of each (alternating)')
    times = {False: [], True: []}
    for round_ in range(args.reps):
        for tensorboard in ((False, True) if round_ % 2 == 0 else (True, False)):
            times[tensorboard].append(time_loop(args.iters, tensorboard))
        print(f'round {round_ + 1}: without {times[False][-1]:.4f} s/itr, with '
              f'{times[True][-1]:.4f} s/itr, ratio {times[True][-1] / times[False][-1]:.3f}')
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f'median: without {off:.4f} s/itr, with --tensorboard {on:.4f} s/itr, '
          f'ratio {on / off:.3f}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--reps', type=int, default=10)
    parser.add_argument('--tensorboard', action='store_true',
                        help='time the training loop with and without --tensorboard')
    parser.add_argument('--iters', type=int, default=200,
                        help='iterations per run with --tensorboard (default: %(default)s)')
    args = parser.parse_args()
    if args.tensorboard:
        return main_tensorboard(args)
    print(f'device {args.device}, threads {torch.get_num_threads()}, best of {args.reps}')
    print(f"{'config':<28}{'ours s':>9}{'original s':>12}{'ratio':>7}{'channels_last s':>17}"
          f"{'ratio':>7}")
    for name, argv in CONFIGS.items():
        ours = model_time._time(build_step(argv, args.device), args.reps, args.device)[0]
        with model_time.original_order():
            orig = model_time._time(build_step(argv, args.device), args.reps, args.device)[0]
        cl = model_time._time(build_step(argv, args.device, True), args.reps, args.device)[0]
        print(f'{name:<28}{ours:>9.3f}{orig:>12.3f}{ours / orig:>7.2f}{cl:>17.3f}'
              f'{cl / orig:>7.2f}')


if __name__ == '__main__':
    main()
