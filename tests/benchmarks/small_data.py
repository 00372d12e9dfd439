"""The gain of the small-data options on real digits, and their cost, on this machine.

The CPU demo's configuration (scripts/launch_demo.sh) on 500 of the bundled
digits (--data_subset 500: 50 per class), trained for the same number of
iterations with: nothing; DiffAugment; ADA; DiffAugment + LeCam. Each run is
scored by demo_quality.py (accuracy, spread, FID in the classifier's features)
and by a memorisation check: the distance of every sample to its nearest
training image (of the 500), beside the same distance for the 4,500 digits not
trained on (what a new digit's distance looks like, per class). Two pictures
go to --out: samples_<iters>.png (10 samples of each class per option, side by
side) and nearest_<iters>.png (each option's samples closest to a training
digit, over that digit). Then seconds per iteration of each option against
none, timed in turns in one process.

    python tests/benchmarks/small_data.py [--iters 600] [--jobs 2] [--out /tmp/small_data]
        [--resume]   # continue the runs in --out to --iters (train.py --resume)

README's "Small datasets" table is one run continued in stages with --resume
(300, 700, 2000, 3500, 5000, 6500, 8000 iterations), scored at each.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_quality  # noqa: E402

import datasets  # noqa: E402
import train_fns  # noqa: E402
import utils  # noqa: E402

SUBSET = 500
# scripts/launch_demo.sh's flags, less its run length, saving and metric settings.
DEMO = ('--dataset Digits32 --shuffle --num_workers 0 --batch_size 32 '
        '--num_G_accumulations 1 --num_D_accumulations 1 --num_D_steps 2 '
        '--G_lr 2e-4 --D_lr 2e-4 --G_ch 8 --D_ch 8 --G_attn 0 --D_attn 0 '
        '--G_init N02 --D_init N02 --dim_z 64 '
        '--ema --use_ema --ema_decay 0.999 --ema_start 1000 --channels_last --seed 0').split()
# DiffAugment: the paper's BigGAN CIFAR policy. ADA: stylegan2-ada's target and pipeline,
# with p allowed to reach 1 within 20k images (its 500k suits runs 100x longer than these).
# LeCam: the paper's CIFAR weight, 0.3.
OPTIONS = {
    'none': [],
    'DiffAugment': ['--DiffAugment', 'translation,cutout'],
    'ADA': ['--ADA_target', '0.6', '--ADA_kimg', '20'],
    'DiffAugment+LeCam': ['--DiffAugment', 'translation,cutout', '--LeCam_lambda', '0.3'],
}


def run_argv(name, iters, out):
    # 500 images are 7 iterations an epoch: --num_epochs is set out of the way of --num_iters.
    return [*DEMO, '--data_subset', str(SUBSET), *OPTIONS[name], '--num_iters', str(iters),
            '--num_epochs', '1000000',
            '--save_every', str(iters), '--test_every', '0', '--sv_log_interval', '0',
            '--base_root', str(out), '--experiment_name', f'small_{name}']


def train_all(iters, out, jobs, resume=False):
    """Train every option as its own train.py process, `jobs` at a time, one thread each
    (with resume, continue each run in `out` to `iters`)."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    pending, running = list(OPTIONS), []
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            log = open(out / f'small_{name}.out', 'a' if resume else 'w')
            cmd = [sys.executable, str(ROOT / 'train.py'), *run_argv(name, iters, out),
                   *(['--resume'] if resume else [])]
            running.append((name, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT), time.time()))
        time.sleep(2)
        for item in list(running):
            name, proc, start = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode:
                    raise SystemExit(f'{name}: train.py failed, see {out}/small_{name}.out')
                print(f'trained {name}: {iters} iterations in {time.time() - start:.0f} s',
                      flush=True)


def nearest_distances(x, train_x, chunk=500):
    """Per row of x (N, 1, 32, 32), the L2 distance (in [-1, 1] pixels) to the nearest
    image of train_x (M, 1, 32, 32), and that image's index: (N,), (N,)."""
    t = train_x.flatten(1)
    nearest = [torch.cdist(xb.flatten(1), t).min(1) for xb in x.split(chunk)]
    return torch.cat([n.values for n in nearest]), torch.cat([n.indices for n in nearest])


def nearest_sheet(path, fakes, train_x, per_class=2):
    """Save one picture: per option, the `per_class` samples of each class closest to a
    training digit (top row) over those training digits (bottom row). fakes: [(x_fake,
    y_fake, distances, indices)] in OPTIONS order."""
    rows = []
    for x_fake, y_fake, dist, index in fakes:
        closest = torch.cat([torch.nonzero(y_fake == c)[dist[y_fake == c].argsort()[:per_class],
                                                        0] for c in range(10)])
        rows += [x_fake[closest], train_x[index[closest]]]
    torchvision.utils.save_image(torch.cat(rows), path, nrow=10 * per_class, normalize=True,
                                 value_range=(-1, 1), pad_value=1)


def class_sheets(path, fakes, per_class=10):
    """Save one picture: per option, side by side, `per_class` samples of each class (one
    class per row), as demo_quality drew them. fakes: as for nearest_sheet."""
    grids = []
    for x_fake, y_fake, _, _ in fakes:
        rows = torch.cat([x_fake[y_fake == c][:per_class] for c in range(10)])
        grids.append(torchvision.utils.make_grid(rows, nrow=per_class, normalize=True,
                                                 value_range=(-1, 1), pad_value=1))
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 8)
    torchvision.utils.save_image(torch.cat([t for g in grids for t in (g, gap)][:-1], 2), path)


def score_all(iters, out):
    rows, classifier = [], None
    x_real, y_real = demo_quality.real_digits()
    chosen = datasets.balanced_subset(y_real, SUBSET, seed=0)
    mask = torch.zeros(len(y_real), dtype=torch.bool)
    mask[chosen] = True
    train_x, unseen_x, unseen_y = x_real[mask], x_real[~mask], y_real[~mask]
    unseen = nearest_distances(unseen_x, train_x)[0]
    # A sample closer to a training digit than 99% of new digits of its class are: a likely
    # copy. Per class, since a 1 lies much nearer to some training 1 than an 8 to an 8.
    copy_radius = torch.stack([torch.quantile(unseen[unseen_y == c], 0.01) for c in range(10)])
    fakes = []
    for name in OPTIONS:
        config = utils.parse_config(utils.add_sample_parser(utils.prepare_parser()),
                                    run_argv(name, iters, out))
        result = demo_quality.evaluate(config, 100, classifier)
        classifier = result['classifier']
        near, index = nearest_distances(result['x_fake'], train_x)
        y_fake = result['y_fake']
        fakes.append((result['x_fake'], y_fake, near, index))
        rows.append((name, result['accuracy'], result['spread'], result['FID'],
                     near.median().item(), (near < copy_radius[y_fake]).float().mean().item()))
    print(f'\nscores after {iters} iterations on {SUBSET} digits (1000 EMA samples; classifier '
          f"held-out accuracy {classifier[1]:.3f}); nearest-training-image distance of new "
          f'digits: median {unseen.median().item():.2f}, 1st percentile per class '
          f"{' '.join(f'{r:.2f}' for r in copy_radius.tolist())}")
    print(f"{'option':<20}{'accuracy':>9}{'spread':>8}{'FID':>8}{'NN dist':>9}{'copies':>8}")
    for name, acc, sp, fid, nn, copies in rows:
        print(f'{name:<20}{acc:>9.3f}{sp:>8.2f}{fid:>8.1f}{nn:>9.2f}{copies:>8.3f}')
    print('NN dist: median distance of a sample to its nearest training digit; copies: '
          'fraction of samples closer than the 1st percentile of new digits of their class')
    sheet = out / f'nearest_{iters}.png'
    nearest_sheet(sheet, fakes, train_x)
    print(f"{sheet}: per option ({', '.join(OPTIONS)}), the 2 samples of each class closest "
          'to a training digit (top row) over those digits (bottom row)')
    sheet = out / f'samples_{iters}.png'
    class_sheets(sheet, fakes)
    print(f"{sheet}: 10 samples of each class per option, left to right ({', '.join(OPTIONS)})")


def build_step(name):
    """One training iteration of the option's configuration (random real batch)."""
    config = utils.parse_config(utils.prepare_parser(), [*DEMO, *OPTIONS[name]])
    model = utils.load_model_module(config['model'])
    torch.manual_seed(0)
    G, D = model.Generator(**config), model.Discriminator(**config)
    G_ema = model.Generator(**{**config, 'skip_init': True, 'no_optim': True})
    for net in (G, D, G_ema):
        net.to(memory_format=torch.channels_last)
    ema = utils.ema(G, G_ema, config['ema_decay'], config['ema_start'])
    z_, y_ = utils.prepare_z_y(config['batch_size'], G.dim_z, config['n_classes'], device='cpu')
    state = {'itr': 0, 'ADA': None, 'LeCam': None}
    train = train_fns.GAN_training_function(G, D, model.G_D(G, D), z_, y_, ema, state, config)
    n = config['batch_size'] * config['num_D_steps']
    x = (torch.rand(n, 3, 32, 32) * 2 - 1).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (n,))

    def step():
        state['itr'] += 1
        train(x, y)
    return step


def time_all(rounds, per_round):
    """Median seconds per iteration of each option, timed in turns (same load for all)."""
    steps = {name: build_step(name) for name in OPTIONS}
    times = {name: [] for name in OPTIONS}
    for name in OPTIONS:
        steps[name]()  # warm up
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - start) / per_round)
    medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    print(f'\nseconds per iteration ({torch.get_num_threads()} threads, median of {rounds} '
          f'rounds of {per_round}, options in turns)')
    print(f"{'option':<20}{'s/iter':>8}{'vs none':>9}")
    for name, t in medians.items():
        print(f"{name:<20}{t:>8.3f}{t / medians['none']:>9.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=600)
    parser.add_argument('--jobs', type=int, default=2, help='training runs at a time')
    parser.add_argument('--out', default='/tmp/small_data')
    parser.add_argument('--time_rounds', type=int, default=5)
    parser.add_argument('--time_iters', type=int, default=5)
    parser.add_argument('--skip_training', action='store_true',
                        help='score the runs already in --out')
    parser.add_argument('--resume', action='store_true',
                        help='continue the runs already in --out to --iters')
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_training:
        train_all(args.iters, out, args.jobs, args.resume)
    score_all(args.iters, out)
    torch.set_num_threads(1)
    time_all(args.time_rounds, args.time_iters)


if __name__ == '__main__':
    main()
