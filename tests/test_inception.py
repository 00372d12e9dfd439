"""IS / FID: the Inception networks, the TF resize, exact Frechet distance, streaming statistics.

Every network here carries random weights written by the tests (nothing is downloaded), so
these check layouts, equivalences and plumbing, never how good a score is.
"""
import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from fixtures.random_inception import random_inception_state_dict

import calculate_inception_moments
import datasets
import inception_utils as iu
import utils

FIXTURES = Path(__file__).resolve().parent / 'fixtures'


# ---------------------------------------------------------------------------
# Random weights, written to files and loaded through weights_path
# ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """{network: path of a random-weights state-dict file}."""
    root = tmp_path_factory.mktemp('inception_weights')
    paths = {}
    for seed, network in enumerate(iu.NETWORKS):
        paths[network] = root / f'{network}.pth'
        torch.save(random_inception_state_dict(network, seed), paths[network])
    return paths


@pytest.fixture(scope='module')
def tf_net(weights):
    return iu.load_inception_net(network='tf', weights_path=str(weights['tf']), device='cpu')


@pytest.fixture(scope='module')
def tv_net(weights):
    return iu.load_inception_net(network='torchvision', weights_path=str(weights['torchvision']),
                                 device='cpu')


def _images(n, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen) * 2 - 1


@pytest.fixture(scope='module')
def reference_images():
    """Four images whose values survive a uint8 round trip exactly (k / 127.5 - 1)."""
    gen = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (4, 3, 32, 32), generator=gen).float() / 127.5 - 1


@pytest.fixture(scope='module')
def reference_outputs(tf_net, reference_images):
    with torch.no_grad():
        pool, logits = tf_net(reference_images)
    return pool.double().numpy(), logits.double()


# ---------------------------------------------------------------------------
# Layout and loading
# ---------------------------------------------------------------------------
def test_tf_network_has_exactly_the_pt_inception_layout():
    layout = json.loads((FIXTURES / 'pt_inception_keys.json').read_text())
    assert layout['file'] == iu.TF_WEIGHTS_FILE
    ours = [[key, list(value.shape)] for key, value in iu.TFInceptionV3().state_dict().items()]
    assert ours == layout['state_dict']
    shapes = {key: tuple(shape) for key, shape in layout['state_dict']}
    assert shapes['fc.weight'] == (1008, 2048) and not any('AuxLogits' in k for k in shapes)


def test_random_tf_weights_load_through_weights_path(weights, tf_net):
    saved = torch.load(weights['tf'], weights_only=True)
    loaded = tf_net.state_dict()
    assert list(loaded) == list(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not tf_net.training and not any(p.requires_grad for p in tf_net.parameters())


def test_weights_without_bn_counters_load_the_same(weights, tf_net, tmp_path):
    # torch-fidelity's converter writes a plain dict without num_batches_tracked.
    saved = torch.load(weights['tf'], weights_only=True)
    plain = {k: v for k, v in saved.items() if not k.endswith('num_batches_tracked')}
    torch.save(plain, tmp_path / 'plain.pth')
    net = iu.load_inception_net(network='tf', weights_path=str(tmp_path / 'plain.pth'),
                                device='cpu')
    assert all(torch.equal(net.state_dict()[k], v) for k, v in plain.items())


def test_wrong_weights_file_is_refused_with_the_file_named(weights):
    with pytest.raises(iu.InceptionWeightsUnavailable, match='not the tf Inception weights') as e:
        iu.load_inception_net(network='tf', weights_path=str(weights['torchvision']),
                              device='cpu')
    assert 'wrong shape: fc.weight' in str(e.value) and 'unexpected: AuxLogits' in str(e.value)


def test_missing_weights_raise_a_clear_error_without_torch_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    calls = []

    def offline(url):
        calls.append(url)
        raise urllib.error.URLError('Name or service not known')
    monkeypatch.setattr(iu, '_download_state_dict', offline)
    for network, filename in (('tf', iu.TF_WEIGHTS_FILE),
                              ('torchvision', iu.TORCHVISION_WEIGHTS_FILE)):
        with pytest.raises(iu.InceptionWeightsUnavailable) as err:
            iu.load_inception_net(network=network, device='cpu')
        message = str(err.value)
        assert filename in message and str(tmp_path / 'hub' / 'checkpoints') in message
        assert '--inception_weights' in message and 'Name or service not known' in message
        assert err.value.__suppress_context__ and err.value.__cause__ is None
    assert calls == [iu.TF_WEIGHTS_URL, iu.TORCHVISION_WEIGHTS_URL]
    with pytest.raises(iu.InceptionWeightsUnavailable, match='--inception_weights .*no such'):
        iu.load_inception_net(network='tf', weights_path=str(tmp_path / 'nope.pth'))


def test_weights_are_found_in_the_torch_hub_checkpoint_dir(monkeypatch, tmp_path, weights):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(iu, '_download_state_dict', lambda url: pytest.fail('downloaded'))
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    (tmp_path / 'hub' / 'checkpoints' / iu.TF_WEIGHTS_FILE).write_bytes(
        weights['tf'].read_bytes())
    net = iu.load_inception_net(network='tf', device='cpu')
    saved = torch.load(weights['tf'], weights_only=True)
    assert torch.equal(net.state_dict()['fc.weight'], saved['fc.weight'])


# ---------------------------------------------------------------------------
# The TF resize and the networks' outputs
# ---------------------------------------------------------------------------
def _tf1_resize_reference(img, out_h, out_w):
    """TF1 resize_bilinear (align_corners=False) from its formula, in float32 numpy loops."""
    in_h, in_w = img.shape
    out = np.zeros((out_h, out_w), np.float32)
    sy, sx = np.float32(in_h) / np.float32(out_h), np.float32(in_w) / np.float32(out_w)
    for i in range(out_h):
        fy = np.float32(i) * sy
        y0 = int(np.floor(fy))
        y1, dy = min(y0 + 1, in_h - 1), np.float32(fy - np.floor(fy))
        for j in range(out_w):
            fx = np.float32(j) * sx
            x0 = int(np.floor(fx))
            x1, dx = min(x0 + 1, in_w - 1), np.float32(fx - np.floor(fx))
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            out[i, j] = top + (bottom - top) * dy
    return out


def test_tf_resize_hand_checked_example():
    # Width 2 -> 4: sources 0, 0.5, 1, 1.5 (the last clamps to pixel 1); no half-pixel shift.
    x = torch.tensor([[[[0.0, 10.0]]]])
    assert iu.tf1_resize_bilinear(x, (1, 4)).flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    # PyTorch's align_corners=False uses half-pixel centres and gives something else.
    torch_resized = F.interpolate(x, size=(1, 4), mode='bilinear', align_corners=False)
    assert torch_resized.flatten().tolist() == [0.0, 2.5, 7.5, 10.0]


@pytest.mark.parametrize('in_hw, out_hw', [((3, 5), (7, 4)), ((32, 32), (299, 299)),
                                           ((13, 11), (5, 6)), ((512, 40), (299, 299))])
def test_tf_resize_matches_the_tf1_formula(in_hw, out_hw):
    gen = torch.Generator().manual_seed(sum(in_hw))
    img = torch.rand(1, 2, *in_hw, generator=gen) * 255
    ours = iu.tf1_resize_bilinear(img, out_hw)
    for c in range(2):
        expected = _tf1_resize_reference(img[0, c].numpy(), *out_hw)
        np.testing.assert_array_equal(ours[0, c].numpy(), expected)  # same float32 ops


def test_tf_resize_is_the_identity_at_299():
    x = torch.randn(2, 3, 299, 299)
    assert torch.equal(iu.tf1_resize_bilinear(x), x)


@pytest.mark.parametrize('network, classes', [('tf', 1008), ('torchvision', 1000)])
@pytest.mark.parametrize('size', [32, 512])
def test_pool_and_logits_shapes_for_32_to_512_inputs(network, classes, size, tf_net, tv_net):
    net = tf_net if network == 'tf' else tv_net
    with torch.no_grad():
        pool, logits = net(_images(1, size))
    assert pool.shape == (1, 2048) and logits.shape == (1, classes)
    assert torch.isfinite(pool).all() and torch.isfinite(logits).all() and pool.std() > 0


def _input_of_first_conv(net, images, inner=None):
    seen = []
    hook = (inner or net).Conv2d_1a_3x3.register_forward_pre_hook
    handle = hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        out = net(images)
    handle.remove()
    return seen[0], out


def test_tf_network_scales_inputs_like_the_tf_graph_and_drops_the_fc_bias(tf_net):
    # Pixels 0 and 255 ([-1, 1] here) reach the first conv as (p - 128) / 128: -1 and 0.9921875.
    images = torch.cat([torch.full((1, 3, 32, 32), -1.0), torch.full((1, 3, 32, 32), 1.0)])
    first, (pool, logits) = _input_of_first_conv(tf_net, images)
    assert first.shape == (2, 3, 299, 299)
    assert torch.equal(first[0], torch.full_like(first[0], -1.0))
    assert torch.equal(first[1], torch.full_like(first[1], 0.9921875))
    torch.testing.assert_close(logits, pool @ tf_net.fc.weight.T)
    assert (logits - tf_net.fc(pool)).abs().max() > 0.1  # the bias is really left out


def test_torchvision_network_keeps_the_original_input_handling(tv_net):
    images = _images(2, 40, seed=3)
    first, (pool, logits) = _input_of_first_conv(tv_net, images, inner=tv_net.net)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = F.interpolate(((images + 1) / 2 - mean) / std, size=(299, 299), mode='bilinear',
                             align_corners=True)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(logits, tv_net.net.fc(pool))
    assert tv_net.net.AuxLogits is None


# ---------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------
def _is_reference(pred, num_splits):
    """The original's formula, straight from its definition, in numpy."""
    scores = []
    size = pred.shape[0] // num_splits
    for k in range(num_splits):
        part = pred[k * size:(k + 1) * size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return np.mean(scores), np.std(scores)


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = iu.calculate_inception_score(np.full((40, 25), 1 / 25), num_splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_diverse_predictions_is_the_class_count():
    classes = 8
    pred = np.eye(classes)[np.tile(np.arange(classes), 10)]  # every split holds each class
    mean, std = iu.calculate_inception_score(pred, num_splits=5)
    assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_the_reference_formula_and_streams():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(103, 30, generator=gen, dtype=torch.float64) * 3
    pred = torch.softmax(logits, 1).numpy()
    expected = _is_reference(pred, 10)
    assert iu.calculate_inception_score(pred, 10) == pytest.approx(expected, rel=1e-12)
    scorer = iu.InceptionScore(103, 10)
    for chunk in torch.split(logits, [7, 1, 40, 55]):
        scorer.update(chunk.float())
    assert scorer.result() == pytest.approx(expected, rel=1e-6)


def test_inception_score_seeded_splits_are_a_permutation():
    gen = torch.Generator().manual_seed(1)
    pred = torch.softmax(torch.randn(50, 12, generator=gen, dtype=torch.float64) * 2, 1)
    scorer = iu.InceptionScore(50, 5, seed=3)
    scorer.update_probs(pred[:20])
    scorer.update_probs(pred[20:])
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    permuted = torch.empty_like(pred)
    permuted[order] = pred
    assert scorer.result() == pytest.approx(_is_reference(permuted.numpy(), 5), rel=1e-12)
    with pytest.raises(ValueError, match='at least num_splits'):
        iu.InceptionScore(3, 10)


# ---------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------
def _random_spd(dim, rng, n=None):
    x = rng.standard_normal((n or 3 * dim, dim)) * rng.uniform(0.1, 2.0, dim)
    return np.cov(x @ rng.standard_normal((dim, dim)) / np.sqrt(dim), rowvar=False)


def _fid_sqrtm(mu1, s1, mu2, s2):
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(root).real)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_fid_matches_scipy_sqrtm_in_float64(seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    s1, s2 = _random_spd(64, rng), _random_spd(64, rng)
    expected = _fid_sqrtm(mu1, s1, mu2, s2)
    ours = iu.numpy_calculate_frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(ours, float) and ours == pytest.approx(expected, rel=1e-9)
    from_torch = iu.torch_calculate_frechet_distance(
        torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2),
        torch.from_numpy(s2))
    assert isinstance(from_torch, float) and from_torch == pytest.approx(expected, rel=1e-9)


def test_fid_of_identical_statistics_is_zero():
    rng = np.random.default_rng(5)
    mu, sigma = rng.standard_normal(64) * 10, _random_spd(64, rng)
    assert abs(iu.numpy_calculate_frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    assert abs(iu.torch_calculate_frechet_distance(torch.from_numpy(mu), torch.from_numpy(sigma),
                                                   mu, sigma)) < 1e-6


def _low_rank(dim, rank, rng, zero_rows):
    # Exact zero rows make the covariance singular for sure (Cholesky meets a zero pivot).
    a = rng.standard_normal((dim, rank))
    a[zero_rows] = 0.0
    return a @ a.T, a


@pytest.mark.parametrize('sigma2_singular', [False, True])
def test_fid_with_singular_sigma1_uses_the_fallback_exactly(sigma2_singular):
    rng = np.random.default_rng(11)
    dim = 48
    s1, a = _low_rank(dim, 10, rng, slice(0, 5))
    if sigma2_singular:
        s2, b = _low_rank(dim, 30, rng, slice(40, 48))
    else:
        s2, b = _low_rank(dim, dim, rng, slice(0, 0))
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(s1)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    # trace sqrt(A A^T B B^T) is the nuclear norm of A^T B: an independent exact formula.
    nuclear = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * nuclear
    assert iu.numpy_calculate_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        expected, rel=1e-9)


def test_fid_of_identical_statistics_from_fewer_samples_than_dimensions_is_zero():
    acts = np.random.default_rng(4).standard_normal((12, 256)) * 3 + 1
    mu, sigma = acts.mean(0), np.cov(acts, rowvar=False)  # rank 11
    assert abs(iu.numpy_calculate_frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


@pytest.mark.parametrize('bad', ['mu1', 'sigma1', 'mu2', 'sigma2'])
def test_fid_refuses_non_finite_statistics(bad):
    rng = np.random.default_rng(0)
    stats = {'mu1': rng.standard_normal(8), 'sigma1': np.eye(8), 'mu2': np.zeros(8),
             'sigma2': np.eye(8)}
    stats[bad] = stats[bad].copy()
    stats[bad].flat[3] = np.nan
    with pytest.raises(ValueError, match=f'{bad} has non-finite'):
        iu.numpy_calculate_frechet_distance(**stats)
    with pytest.raises(ValueError, match='shapes'):
        iu.numpy_calculate_frechet_distance(np.zeros(8), np.eye(8), np.zeros(7), np.eye(7))


# ---------------------------------------------------------------------------
# Streaming moments
# ---------------------------------------------------------------------------
def test_streamed_moments_equal_the_whole_batch_moments():
    rng = np.random.default_rng(2)
    acts = rng.standard_normal((300, 20)) * rng.uniform(0.1, 3, 20) + 50.0  # far from zero
    moments = iu.RunningMoments()
    for i, chunk in enumerate(np.split(acts, [1, 64, 65, 200])):
        moments.update(torch.from_numpy(chunk) if i % 2 else chunk)  # tensors and arrays
    np.testing.assert_allclose(moments.mu, acts.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments.sigma, np.cov(acts, rowvar=False), rtol=1e-9, atol=1e-12)
    assert moments.n == 300


def test_moments_warn_when_samples_do_not_exceed_dimensions():
    moments = iu.RunningMoments()
    moments.update(np.random.default_rng(0).standard_normal((10, 16)))
    with pytest.warns(UserWarning, match='from 10 samples of 16-d'):
        _ = moments.sigma
    one = iu.RunningMoments()
    one.update(np.zeros((1, 4)))
    with pytest.raises(ValueError, match='at least 2 samples'):
        _ = one.sigma


# ---------------------------------------------------------------------------
# Training-time metrics
# ---------------------------------------------------------------------------
def test_bad_moments_files_are_refused_with_the_file_named(tmp_path):
    (tmp_path / 'junk.npz').write_bytes(b'not a zip')
    np.savez(tmp_path / 'keys.npz', mean=np.zeros(3))
    np.savez(tmp_path / 'shape.npz', mu=np.zeros(3), sigma=np.eye(4))
    for name, message in (('junk.npz', 'cannot read it'), ('keys.npz', 'needs the keys mu'),
                          ('shape.npz', 'expected')):
        with pytest.raises(ValueError, match=message) as err:
            iu.load_moments(tmp_path / name)
        assert name in str(err.value)
    iu.save_moments(tmp_path / 'C10_inception_moments_tf.npz', np.zeros(3), np.eye(3))
    assert [p.name for p in tmp_path.iterdir() if 'tmp' in p.name] == []
    with pytest.raises(ValueError, match='3-d moments, not the 2048-d'):
        iu.prepare_inception_metrics('C10', False, data_root=str(tmp_path), network='tf')


def test_torchvision_weights_url_is_torchvisions_own():
    from torchvision.models import Inception_V3_Weights
    assert iu.TORCHVISION_WEIGHTS_URL == Inception_V3_Weights.IMAGENET1K_V1.url


def test_moments_files_are_named_per_network():
    assert iu.moments_filename('I128_hdf5', 'data') == 'data/I128_inception_moments.npz'
    assert iu.moments_filename('C10', '/d', 'tf') == '/d/C10_inception_moments_tf.npz'
    parser = utils.prepare_parser()
    assert parser.parse_args([]).inception_network == 'torchvision'
    assert parser.parse_args(['--inception_network', 'tf']).inception_network == 'tf'
    with pytest.raises(SystemExit):
        parser.parse_args(['--inception_network', 'keras'])
    for call in (lambda: iu.moments_filename('C10', 'data', 'keras'),
                 lambda: iu.load_inception_net(network='keras')):
        with pytest.raises(ValueError, match='--inception_network keras: use one of'):
            call()


class _Sampler:
    """A fake G: cycles through fixed images, `batch` at a time, counting its calls."""

    def __init__(self, images, batch):
        self.images, self.batch, self.calls = images, batch, 0

    def __call__(self):
        index = torch.arange(self.calls * self.batch, (self.calls + 1) * self.batch)
        self.calls += 1
        index = index % len(self.images)
        return self.images[index], torch.zeros(len(index), dtype=torch.long)


def test_get_inception_metrics_end_to_end(tmp_path, weights, reference_images,
                                          reference_outputs):
    pool, logits = reference_outputs
    # A full-rank reference, as 50k real images give (and the fast exact path).
    ref_mu, ref_sigma = pool.mean(0) + 0.1, np.cov(pool, rowvar=False) + np.eye(2048)
    iu.save_moments(iu.moments_filename('C10_hdf5', str(tmp_path), 'tf'), ref_mu, ref_sigma)
    get_metrics = iu.prepare_inception_metrics('C10_hdf5', False, data_root=str(tmp_path),
                                               network='tf', weights_path=str(weights['tf']))
    sample = _Sampler(reference_images, batch=3)
    with pytest.warns(UserWarning, match='singular'):
        IS_mean, IS_std, FID = get_metrics(sample, 4, num_splits=2, prints=False)
    assert sample.calls == 2  # 6 drawn, the first 4 used
    expected = iu.calculate_inception_score(torch.softmax(logits, 1).numpy(), 2)
    assert (IS_mean, IS_std) == pytest.approx(expected, rel=1e-5, abs=1e-7)  # float32 batches
    direct = iu.numpy_calculate_frechet_distance(pool.mean(0), np.cov(pool, rowvar=False),
                                                 ref_mu, ref_sigma)
    assert FID == pytest.approx(direct, rel=1e-5)

    get_no_fid = iu.prepare_inception_metrics('C10', False, no_fid=True,
                                              data_root=str(tmp_path / 'empty'), network='tf',
                                              weights_path=str(weights['tf']))
    IS_mean2, IS_std2, FID2 = get_no_fid(_Sampler(reference_images, batch=2), 2, num_splits=2,
                                         prints=False)
    expected2 = iu.calculate_inception_score(torch.softmax(logits[:2], 1).numpy(), 2)
    assert (IS_mean2, IS_std2) == pytest.approx(expected2, rel=1e-5, abs=1e-7)
    assert np.isnan(FID2)


def test_metrics_fail_early_on_missing_moments_or_weights(tmp_path, weights, monkeypatch):
    with pytest.raises(iu.InceptionMomentsMissing) as err:
        iu.prepare_inception_metrics('I64_hdf5', False, data_root=str(tmp_path), network='tf',
                                     weights_path=str(weights['tf']))
    assert str(tmp_path / 'I64_inception_moments_tf.npz') in str(err.value)
    assert 'calculate_inception_moments.py --dataset I64_hdf5' in str(err.value)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(iu, '_download_state_dict',
                        lambda url: (_ for _ in ()).throw(urllib.error.URLError('offline')))
    with pytest.raises(iu.InceptionWeightsUnavailable, match=iu.TORCHVISION_WEIGHTS_FILE):
        iu.prepare_inception_metrics('C10', False, no_fid=True)


# ---------------------------------------------------------------------------
# calculate_inception_moments
# ---------------------------------------------------------------------------
def _loader(images, batch_size=3):
    labels = torch.zeros(len(images), dtype=torch.long)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                       batch_size=batch_size, shuffle=False)


@pytest.mark.filterwarnings('ignore:moments from')
def test_compute_moments_streams_a_loader_to_the_direct_moments(tf_net, reference_images,
                                                                 reference_outputs):
    pool, logits = reference_outputs
    stats = calculate_inception_moments.compute_moments(_loader(reference_images), tf_net,
                                                        num_splits=2, seed=0, progress=False)
    assert stats['num_images'] == 4
    np.testing.assert_allclose(stats['mu'], pool.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats['sigma'], np.cov(pool, rowvar=False), rtol=1e-4, atol=1e-6)
    scorer = iu.InceptionScore(4, 2, seed=0)
    scorer.update(logits)
    assert (stats['IS_mean'], stats['IS_std']) == pytest.approx(scorer.result(), rel=1e-5,
                                                                abs=1e-7)


@pytest.mark.filterwarnings('ignore:moments from')
def test_calculate_inception_moments_cli_writes_the_npz(tmp_path, weights, reference_images,
                                                         reference_outputs, monkeypatch, capsys):
    calls = []

    def get_data_loaders(**kwargs):
        calls.append(kwargs)
        return [_loader(reference_images, kwargs['batch_size'])]
    monkeypatch.setattr(datasets, 'get_data_loaders', get_data_loaders, raising=False)
    argv = ['--dataset', 'C10', '--data_root', str(tmp_path), '--batch_size', '3',
            '--inception_network', 'tf', '--inception_weights', str(weights['tf'])]
    calculate_inception_moments.main(argv)
    assert calls[0]['shuffle'] is False and calls[0]['drop_last'] is False
    assert calls[0]['dataset'] == 'C10' and calls[0]['data_root'] == str(tmp_path)
    pool, _ = reference_outputs
    with np.load(tmp_path / 'C10_inception_moments_tf.npz') as data:
        # The moments, and how they were made (for the protocol of every metric against them).
        assert sorted(data.files) == ['mu', 'network', 'num_images', 'sigma', 'split']
        assert (int(data['num_images']), str(data['split']), str(data['network'])) == (
            4, 'train', 'tf')
        np.testing.assert_allclose(data['mu'], pool.mean(0), rtol=1e-5, atol=1e-6)
        assert data['sigma'].shape == (2048, 2048) and data['sigma'].dtype == np.float64
    assert 'Training data from dataset C10 has IS of' in capsys.readouterr().out


def test_calculate_inception_moments_exits_2_on_missing_weights(tmp_path, capsys):
    argv = ['--dataset', 'C10', '--data_root', str(tmp_path), '--inception_network', 'tf',
            '--inception_weights', str(tmp_path / 'missing.pth')]
    with pytest.raises(SystemExit) as err:
        calculate_inception_moments.main(argv)
    assert err.value.code == 2
    assert 'missing.pth: no such file' in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# inception_utils command line
# ---------------------------------------------------------------------------
def _to_uint8(images):
    return np.rint((images.numpy() + 1) * 127.5).astype(np.uint8)


@pytest.fixture(scope='module')
def sample_files(tmp_path_factory, reference_images):
    """The reference images as an NCHW npz (what the original sample.py writes), an NHWC npz
    and a folder of PNGs."""
    from PIL import Image
    root = tmp_path_factory.mktemp('samples')
    x = _to_uint8(reference_images)
    np.savez(root / 'samples.npz', x=x, y=np.zeros(len(x), np.int64))
    np.savez(root / 'samples_nhwc.npz', x=x.transpose(0, 2, 3, 1))
    (root / 'folder').mkdir()
    for i, image in enumerate(x.transpose(0, 2, 3, 1)):
        Image.fromarray(image).save(root / 'folder' / f'{i:03d}.png')
    return root


def test_npz_and_folder_readers_give_the_same_images(sample_files, reference_images):
    for name in ('samples.npz', 'samples_nhwc.npz', 'folder'):
        count, batches = iu.image_batches(str(sample_files / name), batch_size=3)
        batches = list(batches)
        assert count == 4 and [len(b) for b in batches] == [3, 1]
        assert torch.equal(torch.cat(batches), reference_images), name


def _cli_output(capsys, argv):
    assert iu.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return dict(line.split(': ', 1) for line in lines)


@pytest.mark.filterwarnings('ignore:moments from')
def test_cli_scores_samples_against_a_folder(sample_files, weights, reference_outputs, capsys):
    _, logits = reference_outputs
    out = _cli_output(capsys, [
        '--samples', str(sample_files / 'samples.npz'), '--reference',
        str(sample_files / 'folder'), '--network', 'tf', '--weights_path', str(weights['tf']),
        '--num_splits', '2', '--batch_size', '3', '--device', 'cpu'])
    is_mean, is_std = map(float, out['Inception Score (tf, 4 samples, 2 splits)'].split(' +/- '))
    expected = iu.calculate_inception_score(torch.softmax(logits, 1).numpy(), 2)
    assert (is_mean, is_std) == pytest.approx(expected, abs=1e-3)
    assert float(out['FID (tf)']) == pytest.approx(0.0, abs=1e-2)  # the same images


@pytest.mark.filterwarnings('ignore:moments from')
def test_cli_scores_samples_against_a_moments_file(tmp_path, sample_files, weights,
                                                   reference_outputs, capsys):
    pool, _ = reference_outputs
    ref_mu, ref_sigma = pool.mean(0) - 0.1, np.cov(pool, rowvar=False) + np.eye(2048)
    iu.save_moments(tmp_path / 'ref_tf.npz', ref_mu, ref_sigma)
    out = _cli_output(capsys, [
        '--samples', str(sample_files / 'folder'), '--moments', str(tmp_path / 'ref_tf.npz'),
        '--network', 'tf', '--weights_path', str(weights['tf']), '--num_splits', '3',
        '--device', 'cpu'])
    expected = iu.numpy_calculate_frechet_distance(pool.mean(0), np.cov(pool, rowvar=False),
                                                   ref_mu, ref_sigma)
    assert float(out['FID (tf)']) == pytest.approx(expected, abs=1e-3)
    assert 'Inception Score (tf, 4 samples, 3 splits)' in out


def test_cli_reports_bad_inputs_with_status_2(tmp_path, weights, capsys):
    np.savez(tmp_path / 'float.npz', x=np.zeros((2, 32, 32, 3), np.float32))
    assert iu.main(['--samples', str(tmp_path / 'float.npz'), '--network', 'tf',
                    '--weights_path', str(weights['tf'])]) == 2
    assert 'expected uint8 images' in capsys.readouterr().err
    # The samples are read before the network loads: bad samples are named even then.
    assert iu.main(['--samples', str(tmp_path / 'float.npz'), '--network', 'tf',
                    '--weights_path', str(tmp_path / 'none.pth')]) == 2
    assert 'expected uint8 images' in capsys.readouterr().err
    np.savez(tmp_path / 'uint8.npz', x=np.zeros((2, 32, 32, 3), np.uint8))
    assert iu.main(['--samples', str(tmp_path / 'uint8.npz'), '--network', 'tf',
                    '--weights_path', str(tmp_path / 'none.pth')]) == 2
    assert 'none.pth: no such file' in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        iu.main(['--samples', str(tmp_path / 'float.npz'), '--reference', str(tmp_path / 'x')])
    assert err.value.code == 2 and '--reference' in capsys.readouterr().err


class _Evil:
    def __reduce__(self):
        return (os.system, (f'touch {_Evil.marker}',))


def test_readers_name_the_file_and_never_suggest_an_unsafe_load(tmp_path):
    _Evil.marker = tmp_path / 'pwned'
    np.savez(tmp_path / 'objects.npz', x=np.array([{'a': 1}], dtype=object),
             mu=np.array([None], dtype=object), sigma=np.zeros((1, 1)))
    (tmp_path / 'text.npz').write_text('hello')
    np.save(tmp_path / 'single.npy', np.zeros(3))
    for path in ('objects.npz', 'text.npz', 'single.npy'):
        for read in (lambda p: iu.npz_image_batches(p, 2), iu.load_moments):
            with pytest.raises(ValueError) as err:
                read(str(tmp_path / path))
            assert str(err.value).startswith(str(tmp_path / path))
            assert 'allow_pickle' not in str(err.value) and 'unsafe' not in str(err.value)
    torch.save({'w': _Evil()}, tmp_path / 'evil.pth')
    with pytest.raises(iu.InceptionWeightsUnavailable) as err:
        iu.load_inception_state_dict('tf', str(tmp_path / 'evil.pth'))
    assert str(tmp_path / 'evil.pth') in str(err.value) and 'weights-only' in str(err.value)
    assert 'weights_only' not in str(err.value) and not _Evil.marker.exists()


def test_a_corrupt_image_in_a_sample_folder_is_named(tmp_path):
    from PIL import Image
    Image.new('RGB', (8, 8)).save(tmp_path / 'a.png')
    (tmp_path / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    count, batches = iu.folder_image_batches(str(tmp_path), 4)
    assert count == 2
    with pytest.raises(ValueError, match='b.png: cannot read this image'):
        list(batches)


def test_saving_moments_removes_a_killed_writers_temporary(tmp_path):
    path = tmp_path / 'C10_inception_moments.npz'
    stale = tmp_path / 'C10_inception_moments.npz.0badf00d.part'
    stale.write_bytes(b'half written')
    old = os.stat(tmp_path).st_mtime - 3600
    os.utime(stale, (old, old))
    iu.save_moments(str(path), np.zeros(3), np.eye(3))
    assert os.listdir(tmp_path) == [path.name]
