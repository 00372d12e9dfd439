"""KID, precision/recall, density/coverage, intra-class FID, reference files and the metrics table.

Each metric is checked against its paper's definition written out here (distances from explicit
differences, loops over samples), to 1e-10 in float64, and against the reference packages
(torch-fidelity's KID and precision/recall, prdc's compute_prdc) on the same features.
"""
import numpy as np
import prdc
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

import inception_utils
import metrics

TOL = 1e-10


def _features(n, dim=16, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)) * np.linspace(0.5, 1.5, dim) + shift


@pytest.fixture(scope='module')
def real():
    return _features(200, seed=0)


@pytest.fixture(scope='module')
def fake():
    return _features(180, seed=1, shift=0.3)


# ---------------------------------------------------------------------------
# The definitions, written out
# ---------------------------------------------------------------------------
def _distances(a, b):
    """Euclidean distances from explicit differences, (len(a), len(b))."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def _radii(x, k):
    """Distance from each sample to its k-th nearest other sample, by sorting."""
    d = _distances(x, x)
    return np.array([np.sort(np.delete(d[i], i))[k - 1] for i in range(len(x))])


def _precision_recall_definition(real, fake, k):
    """Kynkaanniemi et al. 2019, eq. 1-2: in the manifold if within some sample's k-NN ball."""
    d, r_real, r_fake = _distances(real, fake), _radii(real, k), _radii(fake, k)
    precision = np.mean([any(d[i, j] <= r_real[i] for i in range(len(real)))
                         for j in range(len(fake))])
    recall = np.mean([any(d[i, j] <= r_fake[j] for j in range(len(fake)))
                      for i in range(len(real))])
    return precision, recall


def _density_coverage_definition(real, fake, k):
    """Naeem et al. 2020, eq. 3-4 (open balls, as their code)."""
    d, r_real = _distances(real, fake), _radii(real, k)
    density = sum(d[i, j] < r_real[i] for i in range(len(real))
                  for j in range(len(fake))) / (k * len(fake))
    coverage = np.mean([min(d[i]) < r_real[i] for i in range(len(real))])
    return density, coverage


def _kid_definition(real, fake, num_subsets, subset_size, seed):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, by loops over pairs; draws as
    torch-fidelity: per subset the generated then the real indices, from one RandomState."""
    dim = real.shape[1]

    def kernel(a, b):
        return (float(np.dot(a, b)) / dim + 1.0) ** 3

    rng = np.random.RandomState(seed)
    values = []
    m = subset_size
    for _ in range(num_subsets):
        y = fake[rng.choice(len(fake), m, replace=False)]
        x = real[rng.choice(len(real), m, replace=False)]
        xx = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
        yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
        xy = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
        values.append((xx + yy) / (m * (m - 1)) - 2 * xy / m ** 2)
    return np.mean(values), np.std(values)


def _fid_definition(a, b):
    """FID of two feature sets: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


# ---------------------------------------------------------------------------
# Exactness against the definitions
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('k', [1, 3, 5])
def test_knn_radii_are_the_distance_to_the_kth_nearest_other_sample(real, k):
    radii = metrics.knn_radii(real, k).numpy()
    np.testing.assert_allclose(radii, _radii(real, k), rtol=0, atol=TOL)


def test_precision_recall_equal_the_definition(real, fake):
    result = metrics.precision_recall(real, fake, k=3)
    precision, recall = _precision_recall_definition(real, fake, 3)
    assert abs(result['precision'] - precision) < TOL
    assert abs(result['recall'] - recall) < TOL
    assert 0 < result['precision'] < 1 and 0 < result['recall'] < 1  # not a degenerate case


def test_density_coverage_equal_the_definition(real, fake):
    result = metrics.density_coverage(real, fake, k=5)
    density, coverage = _density_coverage_definition(real, fake, 5)
    assert abs(result['density'] - density) < TOL
    assert abs(result['coverage'] - coverage) < TOL
    assert 0 < result['coverage'] < 1


def test_ties_and_duplicates_follow_each_papers_rule():
    # Small integers: every distance is exact in float64, so ties at a radius and duplicate
    # samples (radius 0) really occur; P/R count the ball's boundary (<=), D/C do not (<).
    rng = np.random.default_rng(4)
    real, fake = rng.integers(0, 3, (60, 3)).astype(float), rng.integers(0, 3, (50, 3)) * 1.0
    ours = metrics.manifold_metrics(real, fake, pr_k=3, dc_k=5, chunk_size=16)
    assert (ours['precision'], ours['recall']) == pytest.approx(
        _precision_recall_definition(real, fake, 3), abs=TOL)
    assert (ours['density'], ours['coverage']) == pytest.approx(
        _density_coverage_definition(real, fake, 5), abs=TOL)
    strict = prdc.compute_prdc(real, fake, 3)
    assert ours['precision'] != strict['precision']  # the data does have boundary ties
    theirs = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real),
                                    prc_neighborhood=3, prc_batch_size=64, save_cpu_ram=False,
                                    verbose=False)
    assert (ours['precision'], ours['recall']) == pytest.approx(
        (theirs['precision'], theirs['recall']), abs=1e-6)
    theirs = prdc.compute_prdc(real, fake, 5)
    assert (ours['density'], ours['coverage']) == pytest.approx(
        (theirs['density'], theirs['coverage']), abs=TOL)


def test_kid_equals_the_definition(real, fake):
    result = metrics.kid(real, fake, num_subsets=3, subset_size=40, seed=5, dtype=torch.float64)
    mean, std = _kid_definition(real, fake, 3, 40, 5)
    assert abs(result['KID_mean'] - mean) < TOL and abs(result['KID_std'] - std) < TOL
    assert result['KID_subset_size'] == 40 and result['KID_subsets'] == 3


def test_intra_class_fid_is_the_mean_of_per_class_fids(real, fake):
    real_labels, fake_labels = np.arange(200) % 4, (np.arange(180) * 7) % 4
    result = metrics.intra_class_fid(real, real_labels, fake, fake_labels)
    expected = {c: _fid_definition(fake[fake_labels == c], real[real_labels == c])
                for c in range(4)}
    assert set(result['iFID_per_class']) == set(expected)
    for c, value in expected.items():
        assert abs(result['iFID_per_class'][c] - value) < TOL
    assert abs(result['iFID'] - np.mean(list(expected.values()))) < TOL


def test_intra_class_fid_from_class_moments_equals_from_features(real, fake):
    real_labels, fake_labels = np.arange(200) % 4, np.arange(180) % 4
    class_moments = {c: (real[real_labels == c].mean(0), np.cov(real[real_labels == c].T))
                     for c in range(4)}
    class_moments[9] = (np.zeros(16), np.eye(16))  # a class that was not generated is ignored
    from_moments = metrics.intra_class_fid(class_moments, None, fake, fake_labels)
    from_features = metrics.intra_class_fid(real, real_labels, fake, fake_labels)
    assert from_moments['iFID'] == pytest.approx(from_features['iFID'], rel=1e-12)
    assert set(from_moments['iFID_per_class']) == {0, 1, 2, 3}


def test_intra_class_fid_refuses_classes_the_reference_lacks(real, fake):
    with pytest.raises(ValueError, match='no samples of generated classes 4'):
        metrics.intra_class_fid(real, np.arange(200) % 4, fake, np.arange(180) % 5)
    with pytest.raises(ValueError, match='at least 2 samples'):
        metrics.intra_class_fid(real, np.arange(200) % 4, fake, np.r_[np.zeros(179, int), 1])


# ---------------------------------------------------------------------------
# Tiles change nothing
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('chunk_size', [7, 17, 64, 100000])
def test_chunked_equals_unchunked(real, fake, chunk_size):
    whole = metrics.manifold_metrics(real, fake, chunk_size=100000)
    assert metrics.manifold_metrics(real, fake, chunk_size=chunk_size) == whole
    np.testing.assert_allclose(metrics.knn_radii(real, 3, chunk_size=chunk_size),
                               metrics.knn_radii(real, 3, chunk_size=100000), rtol=1e-13)
    kid = metrics.kid(real, fake, num_subsets=4, subset_size=150, chunk_size=chunk_size)
    kid_whole = metrics.kid(real, fake, num_subsets=4, subset_size=150, chunk_size=100000)
    assert kid['KID_mean'] == pytest.approx(kid_whole['KID_mean'], rel=1e-12)


def test_pairwise_matrices_never_exceed_the_chunk_size(monkeypatch):
    shapes = []
    squared_distances = metrics._squared_distances

    def spy(*args):
        d = squared_distances(*args)
        shapes.append(d.shape)
        return d
    monkeypatch.setattr(metrics, '_squared_distances', spy)
    metrics.manifold_metrics(_features(300, seed=2), _features(250, seed=3), chunk_size=64)
    assert max(max(shape) for shape in shapes) == 64

    def unordered_pairs(n):  # a symmetric matrix's tiles on and above the diagonal
        sizes = [min(64, n - start) for start in range(0, n, 64)]
        return (n * n + sum(size * size for size in sizes)) // 2
    # real-real and fake-fake tiles once per unordered pair, real-fake tiles all once
    assert sum(a * b for a, b in shapes) == unordered_pairs(300) + unordered_pairs(250) + 300 * 250


def test_kid_kernel_tiles_never_exceed_the_chunk_size(monkeypatch, real, fake):
    shapes = []
    cube_sum = metrics._kernel_cube_sum
    monkeypatch.setattr(metrics, '_kernel_cube_sum',
                        lambda g, *a, **k: shapes.append(g.shape) or cube_sum(g, *a, **k))
    expected = metrics.kid(real, fake, 2, 150)
    shapes.clear()
    assert metrics.kid(real, fake, 2, 150, chunk_size=64) == pytest.approx(expected, rel=1e-12)
    assert max(max(shape) for shape in shapes) == 64
    # Per subset: 150 x 150 products from each side alone (tiles on and above the diagonal)
    # and across.
    sizes = [64, 64, 22]
    same = sum(a * b for i, a in enumerate(sizes) for b in sizes[i:])
    assert sum(a * b for a, b in shapes) == 2 * (2 * same + 150 * 150)


def test_torch_and_numpy_and_float32_inputs_give_the_same_numbers(real, fake):
    expected = metrics.manifold_metrics(real, fake)
    assert metrics.manifold_metrics(torch.from_numpy(real), torch.from_numpy(fake)) == expected
    real32, fake32 = real.astype(np.float32), fake.astype(np.float32)
    # float32 features give the same numbers as their float64 copies
    assert (metrics.kid(real32, fake32, 2, 50)
            == metrics.kid(real32.astype(np.float64), fake32.astype(np.float64), 2, 50))
    # dtype=float32 products (sums still float64): the same metrics to float32 rounding
    fast = metrics.kid(real, fake, 2, 50, dtype=torch.float32)
    exact = metrics.kid(real, fake, 2, 50, dtype=torch.float64)
    assert fast['KID_mean'] == pytest.approx(exact['KID_mean'], rel=1e-5)
    assert metrics.manifold_metrics(real, fake, dtype=torch.float32) == expected


# ---------------------------------------------------------------------------
# Against the reference packages
# ---------------------------------------------------------------------------
def test_kid_default_float32_is_far_closer_to_float64_than_torch_fidelity():
    # Inception-like features (non-negative, one distribution): KID is a small difference of
    # large kernel sums, where float32 sums lose digits; ours keeps them in float64
    rng = np.random.default_rng(3)
    real, fake = (np.abs(rng.standard_normal((400, 256))).astype(np.float32) for _ in range(2))
    exact = metrics.kid(real, fake, 4, 200, dtype=torch.float64)['KID_mean']
    ours = metrics.kid(real, fake, 4, 200)['KID_mean']
    theirs = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real),
                                    kid_subsets=4, kid_subset_size=200,
                                    verbose=False)['kernel_inception_distance_mean']
    assert abs(ours - exact) < 1e-4 * abs(exact)
    assert abs(ours - exact) < abs(theirs - exact) / 10


@pytest.mark.parametrize('subset_size, seed', [(50, 2020), (100, 0), (180, 7)])
def test_kid_equals_torch_fidelity(real, fake, subset_size, seed):
    ours = metrics.kid(real, fake, num_subsets=5, subset_size=subset_size, seed=seed,
                       dtype=torch.float64)
    theirs = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real),
                                    kid_subsets=5, kid_subset_size=subset_size, rng_seed=seed,
                                    verbose=False)
    assert abs(ours['KID_mean'] - theirs['kernel_inception_distance_mean']) < TOL
    assert abs(ours['KID_std'] - theirs['kernel_inception_distance_std']) < TOL


def test_kid_clamps_the_subset_size_to_the_smaller_side(real, fake):
    clamped = metrics.kid(real, fake, num_subsets=2, subset_size=1000)
    assert clamped['KID_subset_size'] == len(fake)
    assert clamped == metrics.kid(real, fake, num_subsets=2, subset_size=len(fake))
    with pytest.raises(ValueError, match='at least 2 samples'):
        metrics.kid(real[:1], fake)


def test_kid_subsets_follow_the_seed(real, fake):
    a, b = (metrics.kid(real, fake, 3, 50, seed=s)['KID_mean'] for s in (1, 2))
    assert a != b
    assert metrics.kid(real, fake, 3, 50, seed=1)['KID_mean'] == a


@pytest.mark.parametrize('k', [3, 5])
def test_precision_recall_density_coverage_equal_prdc(real, fake, k):
    ours = metrics.manifold_metrics(real, fake, pr_k=k, dc_k=k)
    theirs = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    for key in ('precision', 'recall', 'density', 'coverage'):
        assert abs(ours[key] - theirs[key]) < TOL, key


def test_precision_recall_equal_torch_fidelity(real, fake):
    ours = metrics.precision_recall(real, fake, k=3)
    theirs = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real),
                                    prc_neighborhood=3, prc_batch_size=64, save_cpu_ram=False,
                                    verbose=False)
    # torch-fidelity averages in float32; a count apart would differ by 1/180 or 1/200
    assert abs(ours['precision'] - theirs['precision']) < 1e-6
    assert abs(ours['recall'] - theirs['recall']) < 1e-6


# ---------------------------------------------------------------------------
# Reference files
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('tool', ['ours', 'ttur', 'pytorch-fid', 'clean-fid'])
def test_moments_files_of_every_tool_load(tmp_path, tool):
    mu, sigma = np.arange(4.0), np.diag(np.arange(1.0, 5.0))
    path = str(tmp_path / f'{tool}.npz')
    if tool == 'ours':
        inception_utils.save_moments(path, mu, sigma)
    elif tool == 'ttur':  # TTUR's fid_stats_*.npz: np.savez, float32
        np.savez(path, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    else:  # pytorch-fid --save-stats and clean-fid: np.savez_compressed
        np.savez_compressed(path, mu=mu, sigma=sigma)
    reference = metrics.load_reference(path)
    np.testing.assert_array_equal(reference.mu, mu)
    np.testing.assert_array_equal(reference.sigma, sigma)
    assert reference.features is None and reference.class_moments is None
    assert reference.dim == 4
    # What TTUR, pytorch-fid and clean-fid do with a stats file works on ours
    with np.load(path) as f:
        np.testing.assert_array_equal(f['mu'][:], mu)
        np.testing.assert_array_equal(f['sigma'][:], sigma)


def test_features_and_class_moments_files_load(tmp_path, real):
    labels = np.arange(200) % 3
    path = str(tmp_path / 'features.npz')
    class_mu = np.stack([real[labels == c].mean(0) for c in range(3)])
    class_sigma = np.stack([np.cov(real[labels == c].T) for c in range(3)])
    np.savez(path, features=real.astype(np.float32), labels=labels, mu=real.mean(0),
             sigma=np.cov(real.T), class_mu=class_mu, class_sigma=class_sigma,
             classes=np.array([5, 6, 7]))
    reference = metrics.load_reference(path)
    np.testing.assert_array_equal(reference.features, real.astype(np.float32))
    np.testing.assert_array_equal(reference.labels, labels)
    assert sorted(reference.class_moments) == [5, 6, 7]
    np.testing.assert_array_equal(reference.class_moments[6][1], class_sigma[1])
    # moments() computes them from the features when the file has none
    np.savez(path, features=real)
    mu, sigma = metrics.load_reference(path).moments()
    np.testing.assert_allclose(mu, real.mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(real.T), atol=1e-12)


@pytest.mark.parametrize('case', ['text', 'npy', 'other keys', 'mu only', 'labels length',
                                  'int features', 'class_mu only', 'dims', 'missing',
                                  'pickled'])
def test_wrong_reference_files_are_refused_in_one_line_naming_the_file(tmp_path, case):
    path = tmp_path / 'ref.npz'
    f32 = np.zeros((5, 4), np.float32)
    if case == 'text':
        path.write_text('mu sigma')
    elif case == 'npy':
        np.save(path.with_suffix('.npy'), f32)
        path = path.with_suffix('.npy')
    elif case == 'other keys':
        np.savez(path, x=f32)
    elif case == 'mu only':
        np.savez(path, mu=np.zeros(4))
    elif case == 'labels length':
        np.savez(path, features=f32, labels=np.zeros(4, np.int64))
    elif case == 'int features':
        np.savez(path, features=f32.astype(np.int64))
    elif case == 'class_mu only':
        np.savez(path, class_mu=f32)
    elif case == 'dims':
        np.savez(path, features=f32, mu=np.zeros(3), sigma=np.eye(3))
    elif case == 'pickled':
        np.savez(path, features=np.array([{'x': 1}], dtype=object))
    with pytest.raises(metrics.ReferenceFileError) as err:
        metrics.load_reference(str(path))
    assert str(err.value).startswith(str(path)) and '\n' not in str(err.value)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------
def test_compute_metrics_gives_every_metric_as_its_own_function(real, fake, tmp_path):
    rng = np.random.default_rng(3)
    real_labels, fake_labels = np.arange(200) % 2, np.arange(180) % 2
    logits = rng.standard_normal((180, 10))
    path = str(tmp_path / 'features.npz')
    np.savez(path, features=real, labels=real_labels)
    reference = metrics.load_reference(path)
    generated = {'pool': fake, 'logits': logits, 'labels': fake_labels}
    result = metrics.compute_metrics('IS,FID,KID,PR,DC,iFID', generated, reference,
                                     kid_subsets=3, kid_subset_size=50, num_splits=5)
    expected = dict(zip(('IS_mean', 'IS_std'), inception_utils.calculate_inception_score(
        torch.softmax(torch.from_numpy(logits), 1).numpy(), 5)))
    expected['FID'] = _fid_definition(fake, real)
    expected.update(metrics.kid(real, fake, 3, 50))
    expected.update(metrics.manifold_metrics(real, fake, pr_k=3, dc_k=5))
    expected.update(metrics.intra_class_fid(real, real_labels, fake, fake_labels))
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-10), key
    returned = {key for metric in metrics.METRICS.values() for key in metric.keys}
    assert returned == set(result)


def test_precision_recall_and_density_coverage_share_one_pass(real, fake, monkeypatch):
    calls = []
    manifold = metrics.manifold_metrics
    monkeypatch.setattr(metrics, 'manifold_metrics', lambda *a: calls.append(1) or manifold(*a))
    reference = metrics.Reference('mem', features=real)
    result = metrics.compute_metrics(['PR', 'DC'], {'pool': fake}, reference)
    assert len(calls) == 1 and set(result) == {'precision', 'recall', 'density', 'coverage'}


def test_metrics_needing_features_fail_early_on_a_moments_file(tmp_path):
    path = str(tmp_path / 'fid_stats.npz')
    np.savez(path, mu=np.zeros(4), sigma=np.eye(4))
    reference = metrics.load_reference(path)
    assert metrics.check_metrics('IS,FID', reference) == ['IS', 'FID']
    for name in ('KID', 'PR', 'DC', 'iFID'):
        with pytest.raises(ValueError, match=f'{name} needs a reference with .*fid_stats.npz'):
            metrics.check_metrics(['FID', name], reference)
    with pytest.raises(ValueError, match='use a comma-separated selection of IS,FID,KID'):
        metrics.check_metrics('FID,LPIPS')
    with pytest.raises(ValueError, match='unknown metric options kid_subset;'):
        metrics.compute_metrics('FID', {'pool': np.ones((3, 4))}, reference, kid_subset=5)
    with pytest.raises(ValueError, match='need reference statistics'):
        metrics.compute_metrics('IS,FID', {'pool': np.ones((3, 4))})
    with pytest.raises(ValueError, match='FID needs the generated pool'):
        metrics.compute_metrics('FID', {'logits': np.ones((3, 4))}, reference)


@pytest.mark.parametrize('which_best, expected', [
    ('IS', ('IS_mean', 'higher')), ('FID', ('FID', 'lower')), ('KID', ('KID_mean', 'lower')),
    ('precision', ('precision', 'higher')), ('recall', ('recall', 'higher')),
    ('density', ('density', 'higher')), ('coverage', ('coverage', 'higher')),
    ('iFID', ('iFID', 'lower'))])
def test_which_best_ranks_each_metric_in_its_direction(which_best, expected):
    assert metrics.ranking(which_best) == expected


def test_which_best_refuses_ambiguous_or_unranked_names():
    for name in ('PR', 'KID_std', 'LPIPS'):
        with pytest.raises(ValueError, match=f'--which_best {name}: use one of .*KID'):
            metrics.ranking(name)
