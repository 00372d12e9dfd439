"""Multi-process training on CPU (gloo): cross-replica BN, sharding, metrics, torchrun runs."""
import functools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import BigGAN
import distributed
import inception_utils
import layers
import sync_batchnorm
import train
import train_fns
import utils
from conftest import ROOT

pytestmark = pytest.mark.usefixtures('one_thread')


# ---------------------------------------------------------------------------
# Cross-replica BN and metric gathering in 2 gloo processes (spawned once)
# ---------------------------------------------------------------------------
N_LOCAL, C, HW, Y_DIM = 3, 4, 5, 6
BN_CASES = ('ccbn', 'bn', 'mybn')


def _bn_layer(case, cross_replica):
    torch.manual_seed(0)
    linear = functools.partial(nn.Linear, bias=False)
    if case == 'bn':
        layer = layers.bn(C, cross_replica=cross_replica)
        with torch.no_grad():
            layer.gain.uniform_(0.5, 1.5)
            layer.bias.uniform_(-1, 1)
        return layer
    return layers.ccbn(C, Y_DIM, linear, cross_replica=cross_replica, mybn=case == 'mybn')


def _bn_inputs(world_size):
    g = torch.Generator().manual_seed(1)
    n = N_LOCAL * world_size
    # A mean far from zero relative to the spread, where E[x^2] - E[x]^2 would lose digits.
    x = torch.randn(n, C, HW, HW, generator=g) * 0.5 + 4.0
    y = torch.randn(n, Y_DIM, generator=g)
    w = torch.randn(n, C, HW, HW, generator=g)
    return x, y, w


def _bn_step(layer, x, y, w):
    """Forward in training mode, loss sum(out * w), backward: outputs, grads, buffers."""
    layer.train()
    x = x.clone().requires_grad_(True)
    out = layer(x, y)
    (out * w).sum().backward()
    return {'out': out.detach(), 'x_grad': x.grad,
            'param_grads': {k: p.grad for k, p in layer.named_parameters()},
            'buffers': {k: b.clone() for k, b in layer.named_buffers()}}


class _FakeInception(nn.Module):
    """images (B, 3, 4, 4) -> (pool (B, 16), logits (B, 10)): a small Inception stand-in."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.pool, self.logits = nn.Linear(48, 16), nn.Linear(48, 10)

    def forward(self, x):
        f = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.relu(self.pool(f)), self.logits(f)


METRIC_IMAGES, METRIC_BATCH = 23, 5  # 23 = 2 full rounds of 2 x 5, then 3 of rank 0's 5
ALL_METRICS = 'IS,FID,KID,PR,DC,iFID'


def _gloo_worker(rank, world_size, port, run_port, out_dir, data_root):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        ctx = distributed.Context(rank, world_size, rank, torch.device('cpu'), True)
        results = {}
        x, y, w = _bn_inputs(world_size)
        part = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        for case in BN_CASES:
            results[case] = _bn_step(_bn_layer(case, True), x[part], y[part], w[part])
        if rank == 0:
            # Work only rank 0 does (sample sheets) runs on local statistics: no collective
            # waits for rank 1, and the result is plain BN over rank 0's batch.
            with sync_batchnorm.local_stats():
                results['local'] = _bn_step(_bn_layer('ccbn', True), x[part], y[part], w[part])
        gen = torch.Generator().manual_seed(100 + rank)
        batches = []

        def sample():
            batches.append(torch.randn(METRIC_BATCH, 3, 4, 4, generator=gen))
            return batches[-1], None
        moments, scorer = distributed.gather_inception_statistics(
            sample, _FakeInception(), METRIC_IMAGES, 2, ctx, pool_dim=16)
        results['batches'] = batches
        if rank == 0:
            results['mu'] = torch.from_numpy(moments.mu)
            results['sigma'] = torch.from_numpy(moments.sigma)
            results['IS'] = scorer.result()
        # The whole metric function, with the stand-in network and 16-d moments.
        inception_utils.POOL_DIM = 16
        inception_utils.load_inception_net = lambda *args, **kwargs: _FakeInception()
        config = {'dataset': 'Digits32', 'data_root': data_root, 'no_fid': False,
                  'inception_network': 'torchvision', 'inception_weights': None}
        get_metrics = distributed.prepare_inception_metrics(config, ctx, log=lambda m: None)
        gen.manual_seed(200 + rank)
        results['metric_batches_start'] = len(batches)
        results['metrics'] = get_metrics(sample, METRIC_IMAGES, num_splits=2)
        # Every metric, from features and labels gathered once (the file holds real features).
        all_config = {**config, 'test_metrics': ALL_METRICS, 'kid_subsets': 3,
                      'kid_subset_size': 8, 'metrics_chunk': 5}
        get_all = distributed.prepare_inception_metrics(all_config, ctx, log=lambda m: None)
        labelled = []
        gen.manual_seed(300 + rank)

        def sample_labelled():
            labelled.append((torch.randn(METRIC_BATCH, 3, 4, 4, generator=gen),
                             torch.randint(0, 2, (METRIC_BATCH,), generator=gen)))
            return labelled[-1]
        results['all_metrics'] = json.dumps(get_all(sample_labelled, METRIC_IMAGES,
                                                    num_splits=2, as_dict=True))
        results['labelled_batches'] = labelled
        said = []
        missing = {**config, 'data_root': os.path.join(data_root, 'nowhere')}
        results['missing'] = distributed.prepare_inception_metrics(missing, ctx, said.append)
        results['missing_said'] = said
        # A moments file that exists but is corrupt (only rank 0 reads it): every rank raises.
        try:
            distributed.prepare_inception_metrics(
                {**config, 'data_root': os.path.join(data_root, 'corrupt')}, ctx, said.append)
            results['invalid'] = None
        except inception_utils.InceptionMomentsInvalid as err:
            results['invalid'] = str(err)
        results['mean'] = distributed.all_mean({'v': torch.tensor(float(rank + 1))}, ctx)['v']
        results['agree'] = distributed.agree(rank == 0, ctx), distributed.agree(True, ctx)
        torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()
    # train.run as one of two torchrun processes, with IS/FID on every iteration.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_PORT=str(run_port))
    config = utils.parse_config(utils.prepare_parser(), TINY + [
        '--data_root', data_root, *(f'--{kind}_root={os.path.join(out_dir, "run", kind)}'
                                   for kind in ('weights', 'logs', 'samples')),
        '--batch_size', '4', '--num_D_steps', '1', '--num_iters', '2', '--test_every', '1',
        '--num_inception_images', '14', '--cross_replica', '--ema', '--use_ema',
        '--G_eval_mode', '--accumulate_stats', '--num_standing_accumulations', '2',
        '--tensorboard'])
    train.run(config, log=lambda m: None)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def gloo_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('gloo')
    data_root = tmp_path_factory.mktemp('data')
    g = torch.Generator().manual_seed(7)
    a = torch.randn(16, 16, generator=g, dtype=torch.float64)
    np.savez(data_root / 'Digits32_inception_moments.npz',
             mu=torch.rand(16, generator=g, dtype=torch.float64).numpy(),
             sigma=(a @ a.T / 16 + torch.eye(16, dtype=torch.float64)).numpy(),
             features=torch.rand(30, 16, generator=g).numpy(), labels=np.arange(30) % 2)
    (data_root / 'corrupt').mkdir()
    (data_root / 'corrupt' / 'Digits32_inception_moments.npz').write_bytes(b'not an npz')
    ports = _free_port(), _free_port()
    mp.spawn(_gloo_worker, args=(2, *ports, str(out_dir), str(data_root)), nprocs=2, join=True)
    results = [torch.load(out_dir / f'rank{r}.pt', weights_only=True) for r in range(2)]
    results[0]['data_root'], results[0]['out_dir'] = data_root, out_dir
    return results


@pytest.mark.parametrize('case', BN_CASES)
def test_cross_replica_bn_equals_bn_over_the_concatenated_batch(gloo_results, case):
    x, y, w = _bn_inputs(2)
    ref = _bn_step(_bn_layer(case, False), x, y, w)
    ranks = [r[case] for r in gloo_results]
    out = torch.cat([r['out'] for r in ranks])
    x_grad = torch.cat([r['x_grad'] for r in ranks])
    assert (out - ref['out']).abs().max() < 1e-5
    assert (x_grad - ref['x_grad']).abs().max() < 1e-5
    # Each rank's parameter gradient is its local share; DDP sums (then averages) them.
    for name, grad in ref['param_grads'].items():
        total = sum(r['param_grads'][name] for r in ranks)
        assert (total - grad).abs().max() < 1e-4 * (1 + grad.abs().max()), name
    # Running statistics are global, hence identical on every rank.
    for name, buf in ref['buffers'].items():
        for r in ranks:
            assert torch.allclose(r['buffers'][name], buf, rtol=1e-5, atol=1e-6), name


def test_local_stats_switch_the_reduction_off(gloo_results):
    x, y, w = _bn_inputs(2)
    part = slice(0, N_LOCAL)
    ref = _bn_step(_bn_layer('ccbn', False), x[part], y[part], w[part])
    local = gloo_results[0]['local']
    assert (local['out'] - ref['out']).abs().max() < 1e-5
    assert (local['x_grad'] - ref['x_grad']).abs().max() < 1e-5


def test_metrics_gather_every_rank_features_in_rank_order(gloo_results):
    rounds = zip(*(r['batches'][:3] for r in gloo_results))
    ordered = [batch for rnd in rounds for batch in rnd]
    moments, scorer = inception_utils.accumulate_inception_statistics(
        iter(ordered), _FakeInception(), METRIC_IMAGES, 2)
    main = gloo_results[0]
    assert main['metric_batches_start'] == gloo_results[1]['metric_batches_start'] == 3
    assert abs(main['mu'].numpy() - moments.mu).max() < 1e-6
    assert abs(main['sigma'].numpy() - moments.sigma).max() < 1e-6
    assert main['IS'] == pytest.approx(scorer.result(), rel=1e-6)
    assert 'mu' not in gloo_results[1]


def test_metrics_from_all_ranks_equal_one_process_metrics_on_the_same_images(
        gloo_results, monkeypatch):
    monkeypatch.setattr(inception_utils, 'POOL_DIM', 16)
    monkeypatch.setattr(inception_utils, 'load_inception_net',
                        lambda *args, **kwargs: _FakeInception())
    start = gloo_results[0]['metric_batches_start']
    rounds = zip(*(r['batches'][start:] for r in gloo_results))
    ordered = iter([batch for rnd in rounds for batch in rnd])
    get_metrics = inception_utils.prepare_inception_metrics(
        'Digits32', False, data_root=str(gloo_results[0]['data_root']))
    expected = get_metrics(lambda: (next(ordered), None), METRIC_IMAGES, num_splits=2,
                           prints=False)
    for r in gloo_results:  # every rank returns rank 0's numbers
        assert r['metrics'] == pytest.approx(expected, rel=1e-6)
    assert all(math.isfinite(v) for v in expected)


@pytest.mark.filterwarnings('ignore:intra-class FID from as few')
@pytest.mark.filterwarnings('ignore:moments from')
def test_every_metric_from_all_ranks_equals_one_process_on_the_same_images(
        gloo_results, monkeypatch):
    monkeypatch.setattr(inception_utils, 'POOL_DIM', 16)
    monkeypatch.setattr(inception_utils, 'load_inception_net',
                        lambda *args, **kwargs: _FakeInception())
    rounds = zip(*(r['labelled_batches'] for r in gloo_results))
    ordered = iter([batch for rnd in rounds for batch in rnd])
    get_metrics = inception_utils.prepare_inception_metrics(
        'Digits32', False, data_root=str(gloo_results[0]['data_root']),
        test_metrics=ALL_METRICS, options={'kid_subsets': 3, 'kid_subset_size': 8,
                                           'chunk_size': 5})
    expected = get_metrics(lambda: next(ordered), METRIC_IMAGES, num_splits=2, prints=False,
                           as_dict=True)
    expected = json.loads(json.dumps(expected))  # as the ranks stored it
    assert {key for key in expected if key != 'protocol'} == {
        'IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std', 'KID_subset_size', 'KID_subsets',
        'precision', 'recall', 'density', 'coverage', 'iFID', 'iFID_per_class'}
    sampling = ('truncation', 'z_var', 'use_ema', 'G_eval_mode')  # train.py's config's
    for r in gloo_results:  # every rank returns rank 0's numbers: those of one process
        got = json.loads(r['all_metrics'])
        assert [got['protocol'].pop(key) for key in sampling] == [0.0, 1.0, False, False]
        assert got == expected
    assert expected['protocol']['num_generated'] == METRIC_IMAGES
    assert expected['protocol']['num_real'] == 30


def test_metrics_are_off_on_every_rank_when_the_moments_are_missing(gloo_results):
    assert [r['missing'] for r in gloo_results] == [None, None]
    assert 'no Inception moments' in gloo_results[0]['missing_said'][0]
    assert len(gloo_results[0]['missing_said']) == 1


def test_a_corrupt_moments_file_is_refused_on_every_rank(gloo_results):
    main, other = (r['invalid'] for r in gloo_results)
    assert 'Digits32_inception_moments.npz: cannot read it' in main
    assert 'calculate_inception_moments.py --dataset Digits32' in main
    assert other is not None  # the other rank stops too, without reading the file


def test_train_run_under_two_processes_logs_metrics_once(gloo_results):
    run = gloo_results[0]['out_dir'] / 'run'
    lines = (run / 'logs' / 'exp_log.jsonl').read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r['itr'] for r in records] == [1, 2]  # rank 0 alone logged
    assert all(math.isfinite(r['IS_mean']) and math.isfinite(r['FID']) for r in records)
    best = json.loads((run / 'weights' / 'exp' / 'best_copies.json').read_text())
    assert sorted(e['itr'] for e in best['best_copies']) == [1, 2]
    # --tensorboard: one event file (rank 0's), with each metric once per test.
    from tensorboard.backend.event_processing import event_accumulator
    events = run / 'logs' / 'exp' / 'tensorboard'
    assert len(os.listdir(events)) == 1
    acc = event_accumulator.EventAccumulator(str(events))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars('metrics/IS_mean')] == [
        (r['itr'], pytest.approx(r['IS_mean'], rel=1e-6)) for r in records]
    assert [e.step for e in acc.Scalars('train/G_loss')] == [1, 2]


def test_all_mean_and_agree(gloo_results):
    for r in gloo_results:
        assert float(r['mean']) == pytest.approx(1.5)
        assert r['agree'] == (False, True)


# ---------------------------------------------------------------------------
# Sharding of the data and refusals (single process)
# ---------------------------------------------------------------------------
TINY = ['--dataset', 'Digits32', '--G_ch', '8', '--D_ch', '8', '--G_attn', '0', '--D_attn', '0',
        '--num_workers', '0', '--shuffle', '--experiment_name', 'exp']


def _refused(monkeypatch, capsys, tmp_path, env, argv, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = utils.parse_config(utils.prepare_parser(),
                                TINY + ['--base_root', str(tmp_path), '--num_iters', '1', *argv])
    with pytest.raises(SystemExit) as err:
        train.run(config, log=lambda m: None)
    assert err.value.code == 2
    assert not os.listdir(tmp_path)  # nothing written
    text = capsys.readouterr().err
    assert (message in text) if message else text == ''


def test_sizes_that_do_not_split_are_refused_before_anything_is_written(
        monkeypatch, capsys, tmp_path):
    env = {'WORLD_SIZE': '2', 'RANK': '0', 'LOCAL_RANK': '0'}
    _refused(monkeypatch, capsys, tmp_path, env, ['--batch_size', '9'], '--batch_size 9')
    _refused(monkeypatch, capsys, tmp_path, env, ['--batch_size', '8', '--G_batch_size', '13'],
             '--G_batch_size 13')
    # The other ranks exit with the same status without repeating the message.
    _refused(monkeypatch, capsys, tmp_path, {**env, 'RANK': '1', 'LOCAL_RANK': '1'},
             ['--batch_size', '9'], None)


def test_cross_replica_under_data_parallel_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    _refused(monkeypatch, capsys, tmp_path, {}, ['--parallel', '--cross_replica'],
             '--cross_replica with --parallel')


def test_consistency_views_under_data_parallel_are_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    _refused(monkeypatch, capsys, tmp_path, {}, ['--parallel', '--bCR_real', '10', '--zCR_D',
                                                 '5'], '--bCR_real, --zCR_D with --parallel')


# ---------------------------------------------------------------------------
# torchrun end to end: 2 processes follow the 1-process trajectory
# ---------------------------------------------------------------------------
RUN = TINY + ['--batch_size', '8', '--G_batch_size', '12', '--num_D_steps', '2',
              '--num_D_accumulations', '2', '--num_G_accumulations', '2', '--G_shared',
              '--hier', '--dim_z', '20', '--shared_dim', '16', '--cross_replica', '--ema',
              '--G_ortho', '1e-4', '--D_ortho', '1e-4', '--adam_eps', '1e-4',
              '--sv_log_interval', '1', '--save_every', '2', '--test_every', '0']
# G's conv and linear biases feed batch norms, which cancel them: their true gradient
# is zero and Adam blows the rounding noise up to steps of ~lr, so they (and the running
# means that absorb them) are compared through G's output instead.
CANCELLED = re.compile(r'((linear|conv1|conv2|conv_sc)\.bias|stored_mean)$')
BUFFERS = re.compile(r'(\.u\d+|\.sv\d+|stored_mean|stored_var|accumulation_counter)$')
TOL = 5e-5


def _torchrun(root, *argv):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
           '2', 'train.py', *RUN, '--base_root', str(root), *argv]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _single(root, *argv):
    config = utils.parse_config(utils.prepare_parser(), RUN + ['--base_root', str(root), *argv])
    return train.run(config, log=lambda m: None)


def _load(root, part, suffix=None):
    name = f'{part}_{suffix}.pth' if suffix else f'{part}.pth'
    return utils.torch_load(str(root / 'weights' / 'exp' / name))


def _G_output(root):
    state = _load(root, 'state_dict')
    config = utils.prepare_config(state['config'])
    G = utils.load_model_module('BigGAN').Generator(**{**config, 'skip_init': True})
    G.load_state_dict(_load(root, 'G'))
    g = torch.Generator().manual_seed(5)
    z, y = torch.randn(16, G.dim_z, generator=g), torch.randint(0, 10, (16,), generator=g)
    with torch.no_grad():
        return G.train()(z, G.shared(y))


def _params(state, part):
    """The parameters of a G/D state dict as one vector (without G's cancelled biases)."""
    return torch.cat([v.flatten().float() for k, v in state.items()
                      if not BUFFERS.search(k) and not (part == 'G' and CANCELLED.search(k))])


def _assert_same_trajectory(a, b):
    """a and b hold the same run to float tolerance; b's copy0 is one save earlier."""
    for part in ('G', 'D', 'G_ema'):
        sa, sb = _load(a, part), _load(b, part)
        assert sa.keys() == sb.keys()
        for key in sa:
            if part == 'G' and CANCELLED.search(key):
                continue
            assert (sa[key] - sb[key]).abs().max() < TOL, (part, key)
        if part != 'G_ema':
            # Relative to the last update: rounding noise, not a different trajectory.
            step = (_params(sb, part) - _params(_load(b, part, 'copy0'), part)).norm()
            assert (_params(sa, part) - _params(sb, part)).norm() < 0.02 * step, part
    assert (_G_output(a) - _G_output(b)).abs().max() < 1e-3
    ra, rb = _load(a, 'state_dict')['rng'], _load(b, 'state_dict')['rng']
    assert torch.equal(ra['torch'], rb['torch'])  # the same z/y draws, in the same number


def test_torchrun_matches_one_process_and_resumes_across_world_sizes(tmp_path):
    one, two = tmp_path / 'one', tmp_path / 'two'
    _single(one, '--num_iters', '3')
    output = _torchrun(two, '--num_iters', '3')
    _assert_same_trajectory(one, two)

    # Rank 0 alone wrote, and completely.
    assert output.count('Experiment exp:') == 1 and output.count('Finished at iteration 3') == 1
    weights = set(os.listdir(two / 'weights' / 'exp'))
    expected = {f'{part}{suffix}.pth' for part in ('G', 'G_optim', 'D', 'D_optim', 'state_dict',
                                                    'G_ema') for suffix in ('', '_copy0', '_copy1')}
    assert weights == expected
    logs = two / 'logs' / 'exp'
    for metric in ('G_loss', 'D_loss_real', 'D_loss_fake', 'G_linear_sv0'):
        lines = (logs / f'{metric}.log').read_text().splitlines()
        assert [int(line.split(':')[0]) for line in lines] == [1, 2, 3], metric
    for itr in (2, 3):
        names = set(os.listdir(two / 'samples' / 'exp' / str(itr)))
        assert {'samples0.jpg', 'interpZY0.jpg', 'interpY0.jpg', 'interpZ0.jpg'} <= names
        assert (two / 'samples' / 'exp' / f'fixed_samples{itr}.jpg').is_file()

    # Resume with the other world size: 1 -> 2 processes and 2 -> 1, two more iterations.
    one_to_two = tmp_path / 'one_to_two'
    shutil.copytree(one, one_to_two)
    _torchrun(one_to_two, '--num_iters', '5', '--resume')
    _single(two, '--num_iters', '5', '--resume')
    assert _load(one_to_two, 'state_dict')['itr'] == _load(two, 'state_dict')['itr'] == 5
    _assert_same_trajectory(one_to_two, two)
    lines = (one_to_two / 'logs' / 'exp' / 'G_loss.log').read_text().splitlines()
    assert [int(line.split(':')[0]) for line in lines] == [1, 2, 3, 4, 5]


def test_torchrun_with_every_small_data_option_matches_one_process(tmp_path):
    """Augmentation draws for the global batch, ADA's statistics and LeCam's means summed
    over the ranks, bCR's and zCR's extra views: 2 processes follow the 1-process run."""
    flags = ['--num_iters', '3', '--DiffAugment', 'color,translation,cutout',
             '--ADA_target', '0.01', '--ADA_interval', '1', '--ADA_kimg', '0.05',
             '--LeCam_lambda', '0.1', '--bCR_real', '10', '--bCR_fake', '10', '--zCR_D', '5',
             '--zCR_G', '0.5', '--data_subset', '400']
    one, two = tmp_path / 'one', tmp_path / 'two'
    _single(one, *flags)
    _torchrun(two, *flags)
    _assert_same_trajectory(one, two)
    a, b = _load(one, 'state_dict'), _load(two, 'state_dict')
    assert a['ADA']['steps'] == b['ADA']['steps'] == 6
    assert torch.equal(a['ADA']['p'], b['ADA']['p'])  # the same signs, summed over ranks
    for key in ('anchor_real', 'anchor_fake'):
        assert abs(float(a['LeCam'][key]) - float(b['LeCam'][key])) < 1e-3, key


# ---------------------------------------------------------------------------
# DistributedG_D, with and without --split_D, against G_D on the whole batch
# ---------------------------------------------------------------------------
SPLIT_N = 2  # per rank


def _split_D_setup(world_size):
    """Tiny G (eval mode: per-sample outputs), D, and one global batch of z, y, x, dy."""
    from conftest import tiny_config
    config = tiny_config()
    torch.manual_seed(0)
    G, D = BigGAN.Generator(**config).eval(), BigGAN.Discriminator(**config)
    g = torch.Generator().manual_seed(1)
    n = SPLIT_N * world_size
    z = torch.randn(n, G.dim_z, generator=g)
    y = torch.randint(0, config['n_classes'], (n,), generator=g)
    x = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    dy = torch.randint(0, config['n_classes'], (n,), generator=g)
    return G, D, (z, y, x, dy)


def _D_and_G_steps(GD, G, D, z, y, x, dy, split_D):
    """One D step's outputs and D grads, then one G step's G grads (hinge losses)."""
    D_fake, D_real = GD(z, y, x, dy, train_G=False, split_D=split_D)
    sum(train_fns.discriminator_loss(D_fake, D_real)).backward()
    out = {'D_fake': D_fake.detach(), 'D_real': D_real.detach(),
           'D_grads': {k: p.grad.clone() for k, p in D.named_parameters()}}
    train_fns.generator_loss(GD(z, y, train_G=True, split_D=split_D)).backward()
    out['G_grads'] = {k: p.grad.clone() for k, p in G.named_parameters() if p.grad is not None}
    return out


def _split_D_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        results = {}
        for split_D in (False, True):
            G, D, batch = _split_D_setup(world_size)
            part = slice(rank * SPLIT_N, (rank + 1) * SPLIT_N)
            GD = distributed.DistributedG_D(G, D, torch.device('cpu'))
            results[split_D] = _D_and_G_steps(GD, G, D, *(t[part] for t in batch), split_D)
        torch.save(results, os.path.join(out_dir, f'split{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('split_D', [False, True])
def test_ddp_G_D_equals_G_D_on_the_global_batch(tmp_path_factory, split_D):
    out_dir = tmp_path_factory.getbasetemp() / 'split_D'
    if not (out_dir / 'split1.pt').exists():
        out_dir.mkdir(exist_ok=True)
        mp.spawn(_split_D_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=True)
    ranks = [torch.load(out_dir / f'split{r}.pt', weights_only=True)[split_D] for r in range(2)]
    G, D, batch = _split_D_setup(2)
    ref = _D_and_G_steps(BigGAN.G_D(G, D), G, D, *batch, split_D)
    for key in ('D_fake', 'D_real'):
        assert torch.allclose(torch.cat([r[key] for r in ranks]), ref[key], atol=1e-5), key
    # DDP averages each rank's gradient of its local mean loss: the global-batch gradient.
    for grads in ('D_grads', 'G_grads'):
        assert ref[grads].keys() == ranks[0][grads].keys()
        for name, grad in ref[grads].items():
            for r in ranks:
                error = (r[grads][name] - grad).abs().max()
                assert error <= 1e-4 * (1 + grad.abs().max()), (grads, name)
