"""The evaluation suite wired in: --test_metrics from one feature pass, the protocol stored with
every number, --which_best on any metric, reference files with real features, the command line.

A small linear stand-in for Inception (8-d pool features, 5 logits) keeps training runs cheap;
the command line and calculate_inception_moments run the TF network with random weights. These
check plumbing and equivalence (each number equals metrics.py's function on the same features),
never how good a score is.
"""
import json
import math

import numpy as np
import pytest
import torch
from fixtures.random_inception import random_inception_state_dict

import calculate_inception_moments
import datasets
import inception_utils as iu
import metrics
import train
import train_fns
import utils

ALL = 'IS,FID,KID,PR,DC,iFID'
DIM = 8


class _TinyInception(torch.nn.Module):
    """images (B, 3, H, W) -> (pool (B, 8), logits (B, 5)), counting the images it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.pool, self.logits = torch.nn.Linear(12, DIM), torch.nn.Linear(12, 5)
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        f = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return torch.relu(self.pool(f)) + 0.1 * f[:, :DIM], self.logits(f)


def _real_features(n=60, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return (np.abs(rng.standard_normal((n, DIM))).astype(np.float32),
            np.arange(n, dtype=np.int64) % classes)


def _write_reference(path, features=True, n=60):
    real, labels = _real_features(n)
    extra = {'features': real, 'labels': labels} if features else {}
    iu.save_moments(str(path), real.astype(np.float64).mean(0),
                    np.cov(real.astype(np.float64), rowvar=False) + 0.1 * np.eye(DIM),
                    num_images=np.int64(n), split=np.str_('train'),
                    network=np.str_('torchvision'), **extra)
    return real, labels


@pytest.fixture
def tiny_inception(monkeypatch):
    """Every load_inception_net returns one _TinyInception; its outputs are recorded."""
    net = _TinyInception()
    monkeypatch.setattr(iu, 'POOL_DIM', DIM)
    monkeypatch.setattr(iu, 'load_inception_net', lambda *a, **k: net)
    passes = []
    accumulate = iu.accumulate_inception_outputs

    def recording(*args, **kwargs):
        passes.append(accumulate(*args, **kwargs))
        return passes[-1]
    monkeypatch.setattr(iu, 'accumulate_inception_outputs', recording)
    net.passes = passes
    return net


class _Sampler:
    """A fake G: random images and cycling labels, `batch` at a time."""

    def __init__(self, batch=7, seed=0):
        self.gen, self.batch, self.calls = torch.Generator().manual_seed(seed), batch, 0

    def __call__(self):
        self.calls += 1
        labels = torch.arange(self.batch) % 10
        return torch.rand(self.batch, 3, 8, 8, generator=self.gen) * 2 - 1, labels


# ---------------------------------------------------------------------------
# One pass, every metric
# ---------------------------------------------------------------------------
def test_inception_outputs_keep_what_they_stream():
    net = _TinyInception()
    sampler = _Sampler(batch=7)
    outputs = iu.accumulate_inception_outputs(iter(sampler, None), net, 30, 3,
                                              keep_features=True)
    assert outputs.count == 30 and net.seen == 35 and sampler.calls == 5  # the last cut after
    pool = outputs.pool.double()
    assert outputs.pool.shape == (30, DIM) and outputs.pool.dtype == torch.float32
    np.testing.assert_allclose(outputs.moments.mu, pool.mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(outputs.moments.sigma, np.cov(pool.numpy(), rowvar=False),
                               rtol=1e-10, atol=1e-12)
    assert torch.equal(outputs.labels, (torch.arange(35) % 7)[:30])
    streamed = iu.accumulate_inception_outputs(iter(_Sampler(batch=7), None), net, 30, 3)
    assert streamed.pool is None and streamed.labels is None  # IS/FID alone keep nothing
    assert np.array_equal(streamed.moments.mu, outputs.moments.mu)


@pytest.mark.filterwarnings('ignore:intra-class FID from as few')
def test_every_test_metric_comes_from_one_pass_and_equals_its_function(tmp_path,
                                                                       tiny_inception):
    real, real_labels = _write_reference(tmp_path / 'Digits32_inception_moments.npz')
    options = {'kid_subsets': 4, 'kid_subset_size': 12, 'chunk_size': 5}
    get_metrics = iu.prepare_inception_metrics(
        'Digits32', False, data_root=str(tmp_path), test_metrics=ALL, options=options,
        sampling={'truncation': 0.5, 'z_var': 1.0, 'use_ema': True, 'G_eval_mode': False})
    sampler = _Sampler(batch=7)
    results = get_metrics(sampler, 40, num_splits=4, prints=False, as_dict=True)
    assert len(tiny_inception.passes) == 1 and sampler.calls == 6  # one pass: 42 drawn
    outputs = tiny_inception.passes[0]
    fake, fake_labels = outputs.pool, outputs.labels
    expected = {'FID': iu.numpy_calculate_frechet_distance(
        outputs.moments.mu, outputs.moments.sigma, *iu.load_moments(
            str(tmp_path / 'Digits32_inception_moments.npz')))}
    expected.update(zip(('IS_mean', 'IS_std'), outputs.scorer.result()))
    expected.update(metrics.kid(real, fake, 4, 12, chunk_size=5))
    expected.update(metrics.manifold_metrics(real, fake, chunk_size=5))
    expected.update(metrics.intra_class_fid(real, real_labels, fake, fake_labels))
    protocol = results.pop('protocol')
    assert results == expected
    assert protocol == {
        'metrics': ALL, 'network': 'torchvision', 'resize': 'bilinear_align_corners_299',
        'num_generated': 40, 'num_real': 60,
        'reference': str(tmp_path / 'Digits32_inception_moments.npz'),
        'reference_sha256': metrics.file_hash(str(tmp_path / 'Digits32_inception_moments.npz')),
        'split': 'train', 'truncation': 0.5, 'z_var': 1.0, 'use_ema': True,
        'G_eval_mode': False, 'kid_subsets': 4, 'kid_subset_size': 12}
    # The original's return value, by default.
    assert get_metrics(_Sampler(batch=7), 40, num_splits=4, prints=False) == (
        expected['IS_mean'], expected['IS_std'], expected['FID'])


def test_a_reference_without_real_features_is_refused_before_sampling(tmp_path,
                                                                      tiny_inception):
    _write_reference(tmp_path / 'Digits32_inception_moments.npz', features=False)
    for names in ('IS,FID,KID', 'PR', 'DC', 'iFID'):
        with pytest.raises(iu.InceptionMomentsInvalid) as err:
            iu.prepare_inception_metrics('Digits32', False, data_root=str(tmp_path),
                                         test_metrics=names)
        message = str(err.value)
        assert 'Digits32_inception_moments.npz has none of them' in message
        assert ('calculate_inception_moments.py --dataset Digits32 --data_root '
                f'{tmp_path} --inception_network torchvision --save_features') in message
    assert tiny_inception.seen == 0
    # IS and FID read the moments only; IS alone reads nothing.
    iu.prepare_inception_metrics('Digits32', False, data_root=str(tmp_path / 'none'),
                                 test_metrics='IS')


def test_a_metric_its_samples_do_not_allow_is_nan_in_training_and_an_error_elsewhere():
    real, real_labels = _real_features()
    fake = {'pool': real[:20] + 0.5, 'labels': np.r_[np.zeros(19, np.int64), 1]}  # class 1 once
    reference = metrics.Reference('ref', features=real, labels=real_labels)
    with pytest.raises(ValueError, match='the smallest class has 1'):
        metrics.compute_metrics('KID,iFID', fake, reference, kid_subset_size=10)
    with pytest.warns(UserWarning, match='iFID is not computed .NaN. this time: .*smallest class'):
        result = metrics.compute_metrics('KID,iFID', fake, reference, strict=False,
                                         kid_subset_size=10)
    assert math.isnan(result['iFID']) and math.isfinite(result['KID_mean'])


def test_file_hash_is_computed_once_per_file_version(tmp_path, monkeypatch):
    path = tmp_path / 'ref.npz'
    np.savez(path, mu=np.zeros(2), sigma=np.eye(2))
    import hashlib
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    reads = []
    real_open = open
    monkeypatch.setattr('builtins.open', lambda p, *a, **k: reads.append(p) or real_open(
        p, *a, **k))
    assert metrics.file_hash(str(path)) == digest == metrics.file_hash(str(path))
    assert len(reads) == 1


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('argv, message', [
    (['--test_metrics', 'IS,LPIPS'],
     '--test_metrics IS,LPIPS: use a comma-separated selection of IS, FID, KID, PR, DC, iFID'),
    (['--which_best', 'KID'], '--which_best KID: --test_metrics IS,FID does not compute it; '
                              'add KID to --test_metrics'),
    (['--which_best', 'PR'], '--which_best PR: use one of'),
    (['--test_metrics', 'FID,KID'], '--which_best IS: --test_metrics FID,KID does not'),
    (['--test_metrics', 'FID', '--no_fid'], '--test_metrics FID with --no_fid'),
    (['--kid_subset_size', '1'], '--kid_subset_size 1: must be at least 2'),
    (['--kid_subsets', '0'], '--kid_subsets 0: must be at least 1'),
    (['--metrics_chunk', '0'], '--metrics_chunk 0: must be at least 1'),
])
def test_bad_metric_flags_are_refused_naming_the_flag(argv, message):
    from conftest import tiny_config
    with pytest.raises(utils.ConfigError) as err:
        tiny_config(*argv)
    assert message in str(err.value)


@pytest.mark.parametrize('which_best', ['IS', 'FID', 'KID', 'precision', 'recall', 'density',
                                        'coverage', 'iFID'])
def test_which_best_accepts_every_computed_metric(which_best):
    from conftest import tiny_config
    config = tiny_config('--test_metrics', ALL, '--which_best', which_best)
    assert config['which_best'] == which_best
    assert tiny_config()['test_metrics'] == 'IS,FID'  # the original's metrics by default


@pytest.mark.parametrize('which_best, values, order', [
    ('IS', [3.0, 5.0, float('nan'), 4.0], [1, 3, 0, 2]),
    ('FID', [3.0, 5.0, float('nan'), 4.0], [0, 3, 1, 2]),
    ('KID', [0.3, 0.1, float('nan'), 0.2], [1, 3, 0, 2]),
    ('iFID', [30.0, 10.0, 20.0, float('inf')], [1, 2, 0, 3]),
    ('precision', [0.3, 0.9, 0.5, float('nan')], [1, 2, 0, 3]),
    ('coverage', [0.3, 0.9, 0.5, 0.1], [1, 2, 0, 3])])
def test_rank_best_orders_each_metric_in_its_direction(which_best, values, order):
    key = metrics.ranking(which_best)[0]
    entries = [{'itr': i, key: v} for i, v in enumerate(values)]
    assert [e['itr'] for e in train_fns.rank_best(entries, which_best)] == order
    # A record without the metric (written before it was computed) ranks last.
    assert train_fns.rank_best([{'itr': 9}, entries[order[0]]], which_best)[0]['itr'] == order[0]


# ---------------------------------------------------------------------------
# Training: logged metrics, their protocol and the best copies
# ---------------------------------------------------------------------------
TRAIN = ['--dataset', 'Digits32', '--G_ch', '8', '--D_ch', '8', '--batch_size', '8',
         '--num_D_steps', '1', '--G_attn', '0', '--D_attn', '0', '--num_workers', '0',
         '--experiment_name', 'exp']


@pytest.mark.filterwarnings('ignore:intra-class FID from as few')
@pytest.mark.filterwarnings('ignore:moments from')
def test_training_logs_every_metric_with_its_protocol_and_keeps_the_lowest_kid(
        tmp_path, tiny_inception):
    real, real_labels = _write_reference(tmp_path / 'data' / 'Digits32_inception_moments.npz')
    config = utils.parse_config(utils.prepare_parser(), TRAIN + [
        '--base_root', str(tmp_path), '--num_iters', '4', '--test_every', '1',
        '--num_inception_images', '100', '--test_metrics', ALL, '--which_best', 'KID',
        '--kid_subsets', '3', '--kid_subset_size', '10', '--metrics_chunk', '7',
        '--num_best_copies', '2', '--ema', '--use_ema', '--G_eval_mode'])
    train.run(config, log=lambda m: None)
    lines = (tmp_path / 'logs' / 'exp_log.jsonl').read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r['itr'] for r in records] == [1, 2, 3, 4]
    assert len(tiny_inception.passes) == 4  # one feature pass per test
    for record, outputs in zip(records, tiny_inception.passes):
        fake, fake_labels = outputs.pool, outputs.labels
        # The same computation (tile size 7, as --metrics_chunk) gives the same bits.
        assert record['KID_mean'] == metrics.kid(real, fake, 3, 10, chunk_size=7)['KID_mean']
        manifold = metrics.manifold_metrics(real, fake, chunk_size=7)
        assert {k: record[k] for k in manifold} == manifold
        ifid = metrics.intra_class_fid(real, real_labels, fake, fake_labels)
        assert record['iFID'] == ifid['iFID']
        assert record['iFID_per_class'] == {str(c): v for c, v in
                                            ifid['iFID_per_class'].items()}
        assert math.isfinite(record['IS_mean']) and math.isfinite(record['FID'])
        protocol = record['protocol']
        assert protocol['num_generated'] == 100 and protocol['num_real'] == 60
        assert protocol['use_ema'] is True and protocol['G_eval_mode'] is True
        assert protocol['truncation'] == 0.0 and protocol['split'] == 'train'
        assert (protocol['kid_subsets'], protocol['kid_subset_size']) == (3, 10)
        assert protocol['reference_sha256'] == metrics.file_hash(
            str(tmp_path / 'data' / 'Digits32_inception_moments.npz'))
    best = json.loads((tmp_path / 'weights' / 'exp' / 'best_copies.json').read_text())
    assert best['which_best'] == 'KID'
    lowest = sorted(records, key=lambda r: r['KID_mean'])[:2]
    assert [e['itr'] for e in best['best_copies']] == [r['itr'] for r in lowest]
    assert [e['KID_mean'] for e in best['best_copies']] == [r['KID_mean'] for r in lowest]
    state = utils.torch_load(str(tmp_path / 'weights' / 'exp' / 'state_dict.pth'))
    assert state['best_FID'] == min(r['FID'] for r in records)  # the original's keys
    assert state['best_IS'] == max(r['IS_mean'] for r in records)


# ---------------------------------------------------------------------------
# calculate_inception_moments: real features and per-class moments
# ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tf_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp('weights') / 'tf.pth'
    torch.save(random_inception_state_dict('tf', 0), path)
    return path


def _images(n, seed=7):
    """Images whose values survive a uint8 round trip exactly (k / 127.5 - 1)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=gen).float() / 127.5 - 1


@pytest.mark.filterwarnings('ignore:moments from')
def test_calculate_inception_moments_writes_features_and_class_moments(
        tmp_path, tf_weights, monkeypatch, capsys):
    images, labels = _images(6), torch.tensor([0, 1, 0, 1, 0, 1])
    monkeypatch.setattr(datasets, 'get_data_loaders', lambda **kwargs: [
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                    batch_size=kwargs['batch_size'])])
    calculate_inception_moments.main([
        '--dataset', 'C10', '--data_root', str(tmp_path), '--batch_size', '4',
        '--inception_network', 'tf', '--inception_weights', str(tf_weights),
        '--save_features', '--save_class_moments'])
    assert 'Saved the Inception moments, real features and labels, per-class moments' in \
        capsys.readouterr().out
    path = str(tmp_path / 'C10_inception_moments_tf.npz')
    net = iu.load_inception_net(network='tf', weights_path=str(tf_weights), device='cpu')
    with torch.no_grad():
        pool = net(images)[0].double().numpy()
    reference = metrics.load_reference(path)
    np.testing.assert_allclose(reference.features, pool, rtol=1e-5, atol=1e-6)
    assert reference.features.dtype == np.float32
    assert reference.labels.tolist() == labels.tolist()
    assert sorted(reference.class_moments) == [0, 1]
    for c in (0, 1):
        mu, sigma = reference.class_moments[c]
        np.testing.assert_allclose(mu, pool[labels.numpy() == c].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sigma, np.cov(pool[labels.numpy() == c], rowvar=False),
                                   rtol=1e-4, atol=1e-6)
    assert (reference.num_real, reference.split, reference.network) == (6, 'train', 'tf')
    np.testing.assert_allclose(reference.mu, pool.mean(0), rtol=1e-5, atol=1e-6)
    # The moments stay where the TF TTUR, pytorch-fid and clean-fid code read them.
    with np.load(path) as f:
        assert f['mu'][:].shape == (2048,) and f['sigma'][:].shape == (2048, 2048)
    # Reading for IS/FID only leaves the features alone.
    light = metrics.load_reference(path, extra=False)
    assert light.features is None and light.class_moments is None and light.num_real == 6
    assert [p.name for p in tmp_path.iterdir()] == ['C10_inception_moments_tf.npz']


def test_per_class_moments_of_many_classes_are_refused_before_the_pass(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        calculate_inception_moments.main(['--dataset', 'I128_hdf5', '--data_root',
                                          str(tmp_path), '--save_class_moments'])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert '--save_class_moments: 1000 classes' in message and '--save_features' in message


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def cli_files(tmp_path_factory, tf_weights):
    """Samples (npz with labels), real images (folder) and their features (npz)."""
    from PIL import Image
    root = tmp_path_factory.mktemp('cli')
    fake, real = _images(8, seed=1), _images(8, seed=2)
    fake_labels = np.array([0, 1] * 4, np.int64)
    to_uint8 = lambda x: np.rint((x.numpy() + 1) * 127.5).astype(np.uint8)  # noqa: E731
    np.savez(root / 'samples.npz', x=to_uint8(fake), y=fake_labels)
    (root / 'real').mkdir()
    for i, image in enumerate(to_uint8(real).transpose(0, 2, 3, 1)):
        Image.fromarray(image).save(root / 'real' / f'{i}.png')
    net = iu.load_inception_net(network='tf', weights_path=str(tf_weights), device='cpu')
    with torch.no_grad():
        fake_pool, fake_logits = net(fake)
        real_pool = net(real)[0]
    real_labels = np.array([1, 0] * 4, np.int64)
    iu.save_moments(str(root / 'real_tf.npz'), real_pool.double().mean(0).numpy(),
                    np.cov(real_pool.double().numpy(), rowvar=False) + np.eye(2048),
                    features=real_pool.numpy(), labels=real_labels)
    np.savez(root / 'fid_stats_tf.npz', mu=np.zeros(2048, np.float32),
             sigma=np.eye(2048, dtype=np.float32))  # TF TTUR's layout
    return {'root': root, 'fake_pool': fake_pool, 'fake_logits': fake_logits,
            'fake_labels': fake_labels, 'real_pool': real_pool, 'real_labels': real_labels}


def _cli(capsys, argv):
    status = iu.main(argv)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return status, dict(line.split(': ', 1) for line in lines if ': ' in line), captured.err


@pytest.mark.filterwarnings('ignore:moments from')
@pytest.mark.filterwarnings('ignore:intra-class FID from as few')
def test_cli_computes_every_metric_as_the_library_does(cli_files, tf_weights, capsys):
    root = cli_files['root']
    status, out, _ = _cli(capsys, [
        '--samples', str(root / 'samples.npz'), '--reference', str(root / 'real_tf.npz'),
        '--metrics', ALL, '--network', 'tf', '--weights_path', str(tf_weights),
        '--num_splits', '2', '--batch_size', '3', '--device', 'cpu', '--kid_subsets', '5',
        '--kid_subset_size', '6'])
    assert status == 0
    reference = metrics.load_reference(str(root / 'real_tf.npz'))
    expected = metrics.compute_metrics(
        ALL, {'pool': cli_files['fake_pool'], 'logits': cli_files['fake_logits'],
              'labels': cli_files['fake_labels']}, reference, num_splits=2, kid_subsets=5,
        kid_subset_size=6)
    is_mean, is_std = map(float, out['Inception Score (tf, 8 samples, 2 splits)'].split(' +/- '))
    assert (is_mean, is_std) == pytest.approx((expected['IS_mean'], expected['IS_std']),
                                              abs=1e-4)
    assert float(out['FID (tf)']) == pytest.approx(expected['FID'], abs=1e-3)
    kid_mean, kid_std = map(float, out['KID (tf, 5 subsets of 6)'].split(' +/- '))
    assert kid_mean == pytest.approx(expected['KID_mean'], abs=2e-6)
    for key, k in (('precision', 3), ('recall', 3), ('density', 5), ('coverage', 5)):
        assert float(out[f'{key} (tf, k={k})']) == pytest.approx(expected[key], abs=1e-4)
    assert float(out['iFID (tf, 2 classes)']) == pytest.approx(expected['iFID'], abs=1e-3)
    protocol = json.loads(out['protocol'])
    assert protocol == {'metrics': ALL, 'network': 'tf', 'resize': 'tf1_resize_bilinear_299',
                        'num_generated': 8, 'num_real': 8, 'reference': str(root / 'real_tf.npz'),
                        'reference_sha256': metrics.file_hash(str(root / 'real_tf.npz')),
                        'split': None, 'kid_subsets': 5, 'kid_subset_size': 6}


@pytest.mark.filterwarnings('ignore:moments from')
def test_cli_takes_real_features_from_a_folder_of_images(cli_files, tf_weights, capsys):
    root = cli_files['root']
    status, out, _ = _cli(capsys, [
        '--samples', str(root / 'samples.npz'), '--reference', str(root / 'real'),
        '--metrics', 'KID,PR', '--network', 'tf', '--weights_path', str(tf_weights),
        '--device', 'cpu', '--kid_subsets', '3'])
    assert status == 0, _
    expected = metrics.kid(cli_files['real_pool'], cli_files['fake_pool'], 3, 1000)
    kid_mean = float(out['KID (tf, 3 subsets of 8)'].split(' +/- ')[0])
    assert kid_mean == pytest.approx(expected['KID_mean'], abs=2e-6)
    pr = metrics.precision_recall(cli_files['real_pool'], cli_files['fake_pool'])
    assert float(out['precision (tf, k=3)']) == pytest.approx(pr['precision'], abs=1e-4)
    protocol = json.loads(out['protocol'])
    assert protocol['num_real'] == 8 and protocol['reference_sha256'] is None


def test_cli_refuses_bad_inputs_clearly(cli_files, tf_weights, tmp_path, capsys):
    root = cli_files['root']
    common = ['--network', 'tf', '--weights_path', str(tf_weights), '--device', 'cpu']
    status, _, err = _cli(capsys, ['--samples', str(root / 'samples.npz'), '--reference',
                                   str(root / 'fid_stats_tf.npz'), '--metrics', 'FID,KID',
                                   *common])
    assert status == 2
    assert 'KID needs a reference with features' in err
    assert 'fid_stats_tf.npz has none of them' in err and '--save_features' in err
    for argv, message in (
            (['--metrics', 'IS,LPIPS'], '--metrics IS,LPIPS: use a comma-separated selection'),
            (['--metrics', 'KID'], '--metrics KID: all but IS need --reference'),
            (['--reference', str(tmp_path / 'missing.npz')],
             f'--reference {tmp_path / "missing.npz"}: no such file or folder'),
            (['--kid_subset_size', '1'], '--kid_subset_size 1: must be at least 2')):
        with pytest.raises(SystemExit) as exit_:
            iu.main(['--samples', str(root / 'samples.npz'), *argv, *common])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    # iFID needs labels on both sides: a folder of real images has none.
    status, _, err = _cli(capsys, ['--samples', str(root / 'samples.npz'), '--reference',
                                   str(root / 'real'), '--metrics', 'iFID', *common])
    assert status == 2 and f'{root / "real"}: a folder of images has no class labels' in err
    np.savez(tmp_path / 'unlabelled.npz', x=np.zeros((8, 16, 16, 3), np.uint8))
    status, _, err = _cli(capsys, ['--samples', str(tmp_path / 'unlabelled.npz'), '--reference',
                                   str(root / 'real_tf.npz'), '--metrics', 'iFID', *common])
    assert status == 2 and 'unlabelled.npz: iFID needs the class of each sample' in err
