"""Every metric, as pure functions of Inception features: IS, FID, KID, precision and recall,
density and coverage, intra-class FID; moments and reference files; a table of all metrics;
one evaluation with its protocol. No project module is imported here: inception_utils (the
networks and the one feature pass) builds on this module.

Every function takes real and generated features as torch tensors or numpy arrays, (N, D), in
that order (real, fake), and computes on the device of the first tensor among them (the CPU for
numpy). By default (`dtype` float64) everything is float64, so the results are the
definitions' values to float64 rounding even for float32 features. With dtype=torch.float32 the
products (Gram and distance tiles) run in float32, about twice as fast on a CPU; all sums and
counts stay float64. KID's default is float32 (products and kernels; its sums float64): within
about 1e-7 of its float64 value, relative, at torch-fidelity's speed, whose float32 sums are off
by about 1e-6; KID with dtype=torch.float64 is exact to float64 rounding.

Statistics are streamed: activations never accumulate in memory for IS and FID.
``RunningMoments`` keeps float64 sums for the mean and covariance; ``InceptionScore`` keeps, per
split, the sum of p log p and the sum of p, from which each split's mean KL divergence follows
exactly. The Frechet distance is exact in float64: trace(sqrt(S1 S2)) is the sum of the square
roots of the eigenvalues of L^T S2 L, with S1 = L L^T (one generalised symmetric eigenproblem),
instead of a general matrix square root (scipy's sqrtm, over 10x slower) or a fixed number of
Newton-Schulz iterations (which can return NaN or a biased trace in float32).

Nothing allocates an N x N matrix: pairwise distances and kernels are built in tiles of
`chunk_size` x `chunk_size`, reduced tile by tile (k-NN radii by a running top-k, counts by
running sums); a set against itself computes each tile pair once (symmetry). Features are
converted to `dtype` a tile at a time, never as a whole: beyond the features themselves and
O(N) vectors, peak memory is a few tiles, about 3 * chunk_size**2 * 8 bytes (100 MB at the
default 2048), whatever N is.

- KID (Binkowski et al. 2018): the unbiased MMD^2 between real and generated features with the
  kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets; subsets are drawn as
  torch-fidelity draws them, so the same seed gives torch-fidelity's number.
- Precision and recall (Kynkaanniemi et al. 2019), k = 3: a sample lies in the other set's
  manifold when it is within (<=) the k-NN radius of one of its samples.
- Density and coverage (Naeem et al. 2020), k = 5, with strict (<) balls as in their code (prdc).
- Intra-class FID: the FID between the generated and the real features of each class, averaged
  over the generated classes, with the exact Frechet distance.

METRICS lists every metric with the inputs it needs, the keys it returns and which direction
is better; `compute_metrics` computes any of them from one set of features, and `Evaluation`
does so for one pass of outputs, with the protocol that produced them.
"""
import hashlib
import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.linalg
import torch

CHUNK_SIZE = 2048
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
# torch-fidelity's default rng_seed: with it, KID equals torch-fidelity's default KID.
KID_SEED = 2020
PR_K = 3
DC_K = 5


class ReferenceFileError(ValueError):
    """A reference file cannot be read or holds no statistics we know; the message names it."""


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
def _device_of(*arrays):
    """The device of the first torch tensor among `arrays`, else the CPU."""
    for array in arrays:
        if isinstance(array, torch.Tensor):
            return array.device
    return torch.device('cpu')


def _features(x, name, device, dim=None):
    """x as a (N, D) floating tensor on `device`, in its own dtype (the computations convert it
    tile by tile, so no converted copy of all features is made); ValueError naming `name`."""
    x = torch.as_tensor(x).detach()
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f'{name} has shape {tuple(x.shape)}; expected features (N, D)')
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f'{name} has {x.shape[1]}-d features, the other side {dim}-d: both '
                         'must come from the same network layer')
    x = x.to(device=device, dtype=None if x.is_floating_point() else torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f'{name} has non-finite entries (NaN or inf): the features behind it '
                         'are broken (check the generator output)')
    return x


def _labels(y, name, count, device):
    """y as a (count,) int64 tensor on `device`."""
    y = torch.as_tensor(y).detach()
    if y.shape != (count,) or y.is_floating_point() or y.is_complex():
        raise ValueError(f'{name} has shape {tuple(y.shape)} and dtype {y.dtype}; expected '
                         f'integer class labels ({count},)')
    return y.to(device=device, dtype=torch.long)


def _pair(real, fake):
    device = _device_of(real, fake)
    real = _features(real, 'real features', device)
    return real, _features(fake, 'generated features', device, dim=real.shape[1])


# ---------------------------------------------------------------------------
# Moments and Inception Score, streamed
# ---------------------------------------------------------------------------
class RunningMoments:
    """Streaming mean and covariance of feature rows, in float64.

    Keeps sums of (x - K) and (x - K)(x - K)^T with K the first batch's mean (a shift that
    keeps the float64 sums free of cancellation), on the device of the first batch.
    """

    def __init__(self):
        self.n = 0
        self.shift = self.sum = self.sum_outer = None

    def update(self, acts):
        """acts: (B, D) tensor or array of features."""
        acts = torch.as_tensor(acts).detach().to(torch.float64)
        if acts.ndim != 2:
            raise ValueError(f'expected activations (B, D), got shape {tuple(acts.shape)}')
        if self.shift is None:
            self.shift = acts.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.sum_outer = acts.new_zeros(acts.shape[1], acts.shape[1])
        centred = acts.to(self.shift.device) - self.shift
        self.sum += centred.sum(0)
        self.sum_outer.addmm_(centred.T, centred)
        self.n += acts.shape[0]

    @property
    def mu(self):
        """Mean, (D,) float64 numpy."""
        if self.n == 0:
            raise ValueError('no activations were accumulated')
        return (self.shift + self.sum / self.n).cpu().numpy()

    @property
    def sigma(self):
        """Unbiased covariance (as np.cov), (D, D) float64 numpy. Warns when n <= D."""
        if self.n < 2:
            raise ValueError(f'a covariance needs at least 2 samples, got {self.n}')
        dim = self.sum.shape[0]
        if self.n <= dim:
            warnings.warn(f'moments from {self.n} samples of {dim}-d features: the covariance is '
                          f'singular and FID is biased upward; use more than {dim} samples '
                          '(50000 is standard)', stacklevel=2)
        mean = self.sum / self.n
        cov = (self.sum_outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return cov.cpu().numpy()


class InceptionScore:
    """Streaming Inception Score over `num_images` predictions in `num_splits` splits.

    Split k holds predictions k*S .. (k+1)*S - 1 in arrival order, S = num_images // num_splits
    (the remainder is left out, as in the original), or, with `seed`, a seeded random
    assignment (for data that arrives sorted by class). Per split it keeps sum(p log p) and
    sum(p), which give the mean KL(p(y|x) || p(y)) exactly.
    """

    def __init__(self, num_images, num_splits=10, seed=None):
        if num_splits < 1 or num_images < num_splits:
            raise ValueError(f'the Inception Score needs at least num_splits ({num_splits}) '
                             f'images, got {num_images}')
        self.num_images, self.num_splits = num_images, num_splits
        self.split_size = num_images // num_splits
        self.order = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
            self.order = torch.randperm(num_images, generator=gen)
        self.count = 0
        self.neg_entropy = self.marginal = None

    def update(self, logits):
        """logits: (B, C); softmax is taken in float64."""
        logp = torch.log_softmax(torch.as_tensor(logits).detach().to(torch.float64), dim=1)
        probs = logp.exp()
        self._add(probs, (probs * logp).sum(1))

    def update_probs(self, probs):
        """probs: (B, C) softmax probabilities."""
        probs = torch.as_tensor(probs).detach().to(torch.float64)
        self._add(probs, torch.xlogy(probs, probs).sum(1))

    def _add(self, probs, p_log_p):
        if probs.shape[0] == 0:
            return
        if self.marginal is None:
            self.neg_entropy = probs.new_zeros(self.num_splits)
            self.marginal = probs.new_zeros(self.num_splits, probs.shape[1])
        index = torch.arange(self.count, self.count + probs.shape[0])
        if index[-1] >= self.num_images:
            raise ValueError(f'more than the announced {self.num_images} predictions')
        if self.order is not None:
            index = self.order[index]
        split = (index // self.split_size).to(probs.device)
        keep = split < self.num_splits
        self.neg_entropy.index_add_(0, split[keep], p_log_p[keep])
        self.marginal.index_add_(0, split[keep], probs[keep])
        self.count += probs.shape[0]

    def result(self):
        """(IS mean, IS std) over the splits, as Python floats."""
        if self.count < self.num_images:
            raise ValueError(f'only {self.count} of the announced {self.num_images} predictions '
                             'arrived')
        p_y = self.marginal / self.split_size
        kl = self.neg_entropy / self.split_size - torch.xlogy(p_y, p_y).sum(1)
        scores = torch.exp(kl).cpu().numpy()
        return float(np.mean(scores)), float(np.std(scores))


def calculate_inception_score(pred, num_splits=10):
    """IS of softmax probabilities pred: (N, C): mean and std over `num_splits` consecutive
    splits of exp(mean KL(p(y|x) || p(y))). Zero probabilities count 0 log 0 = 0."""
    scorer = InceptionScore(len(pred), num_splits)
    scorer.update_probs(pred)
    return scorer.result()


# ---------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------
def _trace_sqrt_product(sigma1, sigma2):
    # trace(sqrt(S1 S2)) = sum sqrt(eig(L^T S2 L)) with S1 = L L^T: LAPACK's generalised
    # symmetric eigensolver of type 2 (A B x = lambda x) does exactly that Cholesky reduction.
    try:
        eig = scipy.linalg.eigh(sigma2, sigma1, type=2, eigvals_only=True, driver='gv',
                                check_finite=False)
    except np.linalg.LinAlgError:
        # S1 is singular (e.g. fewer samples than dimensions): a pivoted Cholesky gives
        # S1 = A A^T with A (D, rank) on its numerical range, and S1 S2 = A (A^T S2) has the
        # nonzero spectrum of A^T S2 A (rank x rank).
        factor, piv, rank, _ = scipy.linalg.lapack.dpstrf(sigma1, lower=1)
        if rank == 0:
            return 0.0
        a = np.zeros((len(sigma1), rank))
        a[piv - 1] = np.tril(factor)[:, :rank]
        eig = scipy.linalg.eigh(a.T @ sigma2 @ a, eigvals_only=True, check_finite=False)
    # A singular product has zero eigenvalues that come back as +-eps-sized noise, whose square
    # roots limit the accuracy to ~sqrt(eps) relative there (any float64 method shares this).
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def _as_float64(value, name):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().to(torch.float64).numpy()
    value = np.asarray(value, dtype=np.float64)
    if not np.isfinite(value).all():
        raise ValueError(f'{name} has non-finite entries (NaN or inf): the Inception '
                         'activations behind it are broken (check the generator output)')
    return value


def numpy_calculate_frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), exact in float64.

    mu: (D,), sigma: (D, D) numpy arrays (or tensors). Returns a Python float:
    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2)).
    """
    mu1, mu2 = _as_float64(mu1, 'mu1'), _as_float64(mu2, 'mu2')
    sigma1, sigma2 = _as_float64(sigma1, 'sigma1'), _as_float64(sigma2, 'sigma2')
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f'mean vectors have shapes {mu1.shape} and {mu2.shape}; expected (D,)')
    if sigma1.shape != (len(mu1), len(mu1)) or sigma2.shape != sigma1.shape:
        raise ValueError(f'covariances have shapes {sigma1.shape} and {sigma2.shape}; '
                         f'expected ({len(mu1)}, {len(mu1)})')
    # LAPACK reads one triangle: symmetrise so both triangles count.
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                 - 2.0 * _trace_sqrt_product(sigma1, sigma2))


def torch_calculate_frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet distance for torch tensors (any device) or arrays: mu (D,), sigma (D, D).

    Computed exactly in float64 on the CPU, where the eigensolve takes about a second at
    D=2048 (many GPUs run float64 slowly); returns a Python float.
    """
    return numpy_calculate_frechet_distance(mu1, sigma1, mu2, sigma2)


# ---------------------------------------------------------------------------
# Moments files
# ---------------------------------------------------------------------------
def _npz_reason(err):
    text = str(err)
    # numpy's own text suggests allow_pickle=True, which would run code from the file.
    if 'pickle' in text:
        return 'not an npz of plain arrays; pickled objects are never loaded'
    return text.splitlines()[0] if text else type(err).__name__


def read_npz(path, keys, what):
    """{key: array} for `keys` from an npz of plain arrays at `path` (`what` names its
    contents in messages); ValueError naming the path otherwise. Never unpickles."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f'{path}: cannot read it as an npz of {what} ({_npz_reason(err)})') \
            from None
    if not hasattr(data, 'files'):
        raise ValueError(f'{path}: holds a single array, not an npz of {what}')
    with data:
        missing = [key for key in keys if key not in data.files]
        if missing:
            raise ValueError(f'{path}: an npz of {what} needs the keys {", ".join(keys)}; it '
                             f'has {", ".join(data.files) or "none"}')
        try:
            return {key: data[key] for key in keys}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f'{path}: cannot read {what} from it ({_npz_reason(err)})') \
                from None


def load_moments(path):
    """(mu (D,), sigma (D, D)) float64 from a moments npz (keys mu, sigma)."""
    arrays = read_npz(path, ('mu', 'sigma'), 'moments (mu, sigma)')
    mu, sigma = arrays['mu'].astype(np.float64), arrays['sigma'].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f'{path}: mu has shape {mu.shape} and sigma {sigma.shape}; expected '
                         '(D,) and (D, D)')
    return mu, sigma


# ---------------------------------------------------------------------------
# Tiled distances
# ---------------------------------------------------------------------------
def _tiles(n, chunk_size):
    if chunk_size < 1:
        raise ValueError(f'chunk_size {chunk_size}: must be at least 1')
    return [slice(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def _gram(a, b=None):
    """a @ b.T, or a @ a.T when b is None: (n, m). On the CPU a @ a.T goes through numpy, whose
    matmul runs BLAS syrk (half the flops) for a matrix times its own transpose; torch's runs
    a full gemm."""
    if b is not None:
        return a @ b.T
    if a.device.type == 'cpu':
        a = a.contiguous().numpy()
        return torch.from_numpy(a @ a.T)
    return a @ a.T


def _squared_norms(x, tiles, dtype):
    """(N,) squared norms of the rows of x converted to `dtype`, tile by tile."""
    return torch.cat([(t * t).sum(1) for t in (x[rows].to(dtype) for rows in tiles)])


def _squared_distances(a, a_sq, b=None, b_sq=None):
    """||a_i - b_j||^2 for a: (n, D), b: (m, D) with their squared norms -> (n, m), >= 0.
    With b None, a against itself: its diagonal (each row to itself) is exactly 0."""
    d = _gram(a, b)
    d.mul_(-2.0).add_(a_sq[:, None]).add_((a_sq if b is None else b_sq)[None, :]).clamp_(min=0.0)
    if b is None:
        d.diagonal().zero_()
    return d


def _kth_neighbour_sq(x, ks, chunk_size, dtype):
    """Squared distance of each row of x: (N, D), in `dtype`, to its k-th nearest other row,
    for each k in `ks` -> (len(ks), N). A row's own distance is not counted; a duplicate's (0) is.

    Keeps a running top-(max k + 1) per row. The distance matrix is symmetric: each off-diagonal
    tile is computed once and serves its rows and, transposed, its columns. Memory: a few
    chunk_size**2 tiles and N * (max k + 1) values."""
    n = x.shape[0]
    if max(ks) >= n:
        raise ValueError(f'k-NN radii with k = {max(ks)} need more than {max(ks)} samples, '
                         f'got {n}')
    keep = max(ks) + 1
    tiles = _tiles(n, chunk_size)
    x_sq = _squared_norms(x, tiles, dtype)
    best = [None] * len(tiles)

    def merge(i, d):
        merged = d if best[i] is None else torch.cat([best[i], d], 1)
        best[i] = merged.topk(min(keep, merged.shape[1]), dim=1, largest=False).values

    for i, rows in enumerate(tiles):
        a = x[rows].to(dtype)
        merge(i, _squared_distances(a, x_sq[rows]))
        for j in range(i + 1, len(tiles)):
            d = _squared_distances(a, x_sq[rows], x[tiles[j]].to(dtype), x_sq[tiles[j]])
            merge(i, d)
            merge(j, d.T)
    return torch.cat(best)[:, list(ks)].T


def knn_radii(x, k, chunk_size=CHUNK_SIZE, dtype=torch.float64):
    """Distance of each sample to its k-th nearest neighbour among the others.

    x: (N, D) features. Returns (N,) `dtype` on x's device. Memory O(chunk_size**2), not N**2.
    """
    x = _features(x, 'features', _device_of(x))
    return _kth_neighbour_sq(x, (k,), chunk_size, dtype)[0].sqrt()


# ---------------------------------------------------------------------------
# Precision, recall, density, coverage
# ---------------------------------------------------------------------------
def manifold_metrics(real, fake, pr_k=PR_K, dc_k=DC_K, chunk_size=CHUNK_SIZE,
                     dtype=torch.float64):
    """Precision and recall (k = pr_k) and density and coverage (k = dc_k), in one pass.

    real: (N, D), fake: (M, D) features. With r_k(x) the distance from x to its k-th nearest
    neighbour in its own set (itself excluded) and d the Euclidean distance:
      precision = fraction of fake y with d(x, y) <= r_pr_k(x) for some real x;
      recall    = fraction of real x with d(x, y) <= r_pr_k(y) for some fake y;
      density   = 1 / (dc_k M) * sum over fake y of #{real x : d(x, y) < r_dc_k(x)};
      coverage  = fraction of real x with d(x, y) < r_dc_k(x) for some fake y.
    Squared distances are compared (no square roots), computed as |x|^2 + |y|^2 - 2 x.y per
    tile in `dtype`, so they agree with the differences' norms to that dtype's rounding.

    Memory: beyond the features, about 3 * chunk_size**2 * 8 bytes (the tiles) plus O(N + M).
    Returns {'precision', 'recall', 'density', 'coverage'} as Python floats.
    """
    real, fake = _pair(real, fake)
    real_tiles, fake_tiles = _tiles(len(real), chunk_size), _tiles(len(fake), chunk_size)
    r_real = _kth_neighbour_sq(real, (pr_k, dc_k), chunk_size, dtype)  # (2, N), squared
    r_fake = _kth_neighbour_sq(fake, (pr_k,), chunk_size, dtype)[0]
    real_sq = _squared_norms(real, real_tiles, dtype)
    fake_sq = _squared_norms(fake, fake_tiles, dtype)
    device = real.device
    precise = torch.zeros(len(fake), dtype=torch.bool, device=device)
    recalled = torch.zeros(len(real), dtype=torch.bool, device=device)
    density_count = torch.zeros(len(fake), dtype=torch.long, device=device)
    covered = torch.zeros(len(real), dtype=torch.bool, device=device)
    for rows in real_tiles:
        a = real[rows].to(dtype)
        pr_radius, dc_radius = r_real[0, rows, None], r_real[1, rows, None]
        for cols in fake_tiles:
            d = _squared_distances(a, real_sq[rows], fake[cols].to(dtype), fake_sq[cols])
            precise[cols] |= (d <= pr_radius).any(0)
            recalled[rows] |= (d <= r_fake[None, cols]).any(1)
            inside = d < dc_radius
            density_count[cols] += inside.sum(0)
            covered[rows] |= inside.any(1)
    return {'precision': precise.double().mean().item(),
            'recall': recalled.double().mean().item(),
            'density': density_count.sum().item() / (dc_k * len(fake)),
            'coverage': covered.double().mean().item()}


def precision_recall(real, fake, k=PR_K, chunk_size=CHUNK_SIZE, dtype=torch.float64):
    """Precision and recall (Kynkaanniemi et al. 2019) of fake (M, D) against real (N, D)
    features: see manifold_metrics. Returns {'precision', 'recall'}."""
    result = manifold_metrics(real, fake, k, k, chunk_size, dtype)
    return {key: result[key] for key in ('precision', 'recall')}


def density_coverage(real, fake, k=DC_K, chunk_size=CHUNK_SIZE, dtype=torch.float64):
    """Density and coverage (Naeem et al. 2020) of fake (M, D) against real (N, D) features:
    see manifold_metrics. Returns {'density', 'coverage'}."""
    result = manifold_metrics(real, fake, k, k, chunk_size, dtype)
    return {key: result[key] for key in ('density', 'coverage')}


# ---------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------
def _kernel_cube_sum(gram, dim, skip_diagonal=False):
    """Sum of the kernels (g / D + 1)^3 over a Gram tile (which it overwrites), accumulated in
    float64 whatever the tile's dtype; skip_diagonal leaves out its diagonal. A float64 0-d
    tensor on the tile's device.

    A float64 tile: scale and shift in place, then dot(k * k, k). A float32 tile stays float32
    (scale, shift, k * k, times k: four passes over 4-byte data, each value rounded to float32
    once per step) and only the sum is float64 (numpy's pairwise sum casting each block): the
    sums are where float32 loses digits (an MMD^2 is a small difference of sums of ~10^6 kernels
    of about 1), the kernels' own rounding averages out. On the CPU they run in numpy: a tile is
    too small for torch's thread pool to pay (its per-operation barriers cost more than the
    arithmetic on a busy machine)."""
    if gram.device.type == 'cpu':
        k = gram.numpy()
        k *= k.dtype.type(1.0 / dim)
        k += k.dtype.type(1.0)
        diagonal = np.diagonal(k).astype(np.float64) if skip_diagonal else None
        if k.dtype == np.float64:
            flat = k.reshape(-1)
            total = float(np.dot(flat * flat, flat))
        else:
            cube = k * k
            cube *= k
            total = float(np.add.reduce(cube.reshape(-1), dtype=np.float64))
        if skip_diagonal:
            total -= float(np.dot(diagonal * diagonal, diagonal))
        return torch.tensor(total, dtype=torch.float64)
    k = gram.mul_(1.0 / dim).add_(1.0)
    diagonal = k.diagonal().to(torch.float64) if skip_diagonal else None
    if k.dtype == torch.float64:
        flat = k.reshape(-1)
        total = torch.dot(flat * flat, flat)
    else:
        total = (k * k).mul_(k).sum(dtype=torch.float64)
    if skip_diagonal:
        total = total - torch.dot(diagonal * diagonal, diagonal)
    return total


def _cross_gram(a, b):
    """a @ b.T; on the CPU through numpy, whose BLAS the symmetric tiles use too (mixing two
    BLAS thread pools in one loop makes each wait on the other)."""
    if a.device.type == 'cpu':
        return torch.from_numpy(a.contiguous().numpy() @ b.contiguous().numpy().T)
    return a @ b.T


def _kernel_sum(a, b=None, chunk_size=CHUNK_SIZE):
    """Sum of k(a_i, b_j) over all i, j; with b None, over the pairs i != j of a (each tile
    above the diagonal once, doubled). Tile by tile; a float64 0-d tensor."""
    dim = a.shape[1]
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    rows_tiles = _tiles(len(a), chunk_size)
    for i, rows in enumerate(rows_tiles):
        if b is not None:
            for cols in _tiles(len(b), chunk_size):
                total += _kernel_cube_sum(_cross_gram(a[rows], b[cols]), dim)
            continue
        total += _kernel_cube_sum(_gram(a[rows]), dim, skip_diagonal=True)
        for cols in rows_tiles[i + 1:]:
            total += 2.0 * _kernel_cube_sum(_cross_gram(a[rows], a[cols]), dim)
    return total


def mmd2_unbiased(x, y, chunk_size=CHUNK_SIZE):
    """Unbiased MMD^2 of x, y: (m, D) tensors of one dtype and device, with the cubic kernel
    k(a, b) = (a.b / D + 1)^3: sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1))
    - 2 sum_{i, j} k(x_i, y_j) / m^2. Products and kernels in x's dtype, sums in float64.
    Returns a float64 0-d tensor."""
    m = x.shape[0]
    same_sums = _kernel_sum(x, chunk_size=chunk_size) + _kernel_sum(y, chunk_size=chunk_size)
    return same_sums / (m * (m - 1)) - 2.0 * _kernel_sum(x, y, chunk_size) / (m * m)


_NUMPY_FLOATS = {torch.float64: np.float64, torch.float32: np.float32}


def _take(x, index, dtype):
    """The rows `index` (a numpy array) of x, converted to dtype. On the CPU through numpy: a
    torch gather there wakes torch's thread pool between numpy's BLAS calls, each pool then
    waiting on the other (a subset's products ran 15% slower)."""
    if x.device.type == 'cpu' and dtype in _NUMPY_FLOATS:
        return torch.from_numpy(x.numpy()[index].astype(_NUMPY_FLOATS[dtype], copy=False))
    return x[torch.from_numpy(index).to(x.device)].to(dtype)


def kid(real, fake, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=KID_SEED,
        chunk_size=CHUNK_SIZE, dtype=torch.float32):
    """Kernel Inception Distance of fake (M, D) against real (N, D) features.

    The unbiased MMD^2 (see mmd2_unbiased) between `subset_size` generated and `subset_size` real
    features, drawn without replacement, averaged over `num_subsets` draws. A subset cannot be
    larger than either side: the size used is min(subset_size, N, M), and returned.

    Draws: per subset, first the generated then the real indices, each
    np.random.RandomState(seed).choice(count, size, replace=False) in sequence, exactly as
    torch-fidelity's kid_features_to_metric(fake, real) draws them; with the same seed and
    subset size the result is torch-fidelity's (its default seed is 2020, ours too).
    dtype is the Gram products' and kernels' (see the module docstring); the sums are float64.
    The default float32 runs at torch-fidelity's speed (the same BLAS products) within about
    1e-7 of the float64 value, relative (torch-fidelity's float32 sums: about 1e-6);
    dtype=torch.float64 gives the definition's value to float64 rounding.

    Returns {'KID_mean', 'KID_std' (over subsets, ddof 0), 'KID_subset_size', 'KID_subsets'}.
    """
    real, fake = _pair(real, fake)
    size = min(subset_size, len(real), len(fake))
    if size < 2 or num_subsets < 1:
        raise ValueError(f'KID needs subsets of at least 2 samples and at least 1 subset; got '
                         f'subset size {size} ({len(real)} real, {len(fake)} generated samples) '
                         f'and {num_subsets} subsets')
    rng = np.random.RandomState(seed)
    mmd = []
    for _ in range(num_subsets):
        fake_index = rng.choice(len(fake), size, replace=False)
        real_index = rng.choice(len(real), size, replace=False)
        mmd.append(mmd2_unbiased(_take(fake, fake_index, dtype), _take(real, real_index, dtype),
                                 chunk_size).item())
    mmd = np.array(mmd)
    return {'KID_mean': float(mmd.mean()), 'KID_std': float(mmd.std()),
            'KID_subset_size': size, 'KID_subsets': num_subsets}


# ---------------------------------------------------------------------------
# Intra-class FID
# ---------------------------------------------------------------------------
def _class_groups(features, labels):
    """{class: features of that class} (views, grouped by one sort)."""
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    groups = torch.split(features[order], counts.tolist())
    return dict(zip(classes.tolist(), groups))


def _moments(features):
    moments = RunningMoments()
    moments.update(features)
    return moments.mu, moments.sigma


def intra_class_fid(real, real_labels, fake, fake_labels):
    """Intra-class FID: the FID between the generated and the real features of each class,
    averaged over the classes present among the generated labels.

    real: (N, D) features with real_labels (N,), or per-class reference moments
    {class: (mu (D,), sigma (D, D))} with real_labels None. fake: (M, D), fake_labels (M,).
    Each FID is numpy_calculate_frechet_distance (exact, float64). Every
    generated class needs at least 2 samples on each side; with no more samples than D the
    per-class covariances are singular and the values biased upward (one warning).
    Returns {'iFID': mean over classes, 'iFID_per_class': {class: FID}}.
    """
    device = _device_of(fake, real)
    fake = _features(fake, 'generated features', device)
    fake_groups = _class_groups(fake, _labels(fake_labels, 'generated labels', len(fake), device))
    if isinstance(real, Mapping):
        if real_labels is not None:
            raise ValueError('per-class reference moments come without real labels')
        reference = real
    else:
        real = _features(real, 'real features', device, dim=fake.shape[1])
        if real_labels is None:
            raise ValueError('intra-class FID from real features needs their labels')
        groups = _class_groups(real, _labels(real_labels, 'real labels', len(real), device))
        reference = {c: groups[c] for c in fake_groups if c in groups}
    missing = [c for c in fake_groups if c not in reference]
    if missing:
        more = ' ...' if len(missing) > 10 else ''
        raise ValueError(f'the reference has no samples of generated classes '
                         f'{", ".join(map(str, missing[:10]))}{more}')
    counts = [len(group) for group in fake_groups.values()]
    counts += [len(group) for group in reference.values() if isinstance(group, torch.Tensor)]
    if min(counts) < 2:
        raise ValueError(f'intra-class FID needs at least 2 samples of each class on each side, '
                         f'the smallest class has {min(counts)}')
    if min(counts) <= fake.shape[1]:
        warnings.warn(f'intra-class FID from as few as {min(counts)} samples of a class of '
                      f'{fake.shape[1]}-d features: its covariances are singular and the '
                      'per-class FIDs biased upward', stacklevel=2)
    per_class = {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # RunningMoments' singular-covariance warning, per class
        for c, group in fake_groups.items():
            ref = reference[c]
            ref_mu, ref_sigma = _moments(ref) if isinstance(ref, torch.Tensor) else ref
            per_class[c] = numpy_calculate_frechet_distance(
                *_moments(group), ref_mu, ref_sigma)
    return {'iFID': float(np.mean(list(per_class.values()))), 'iFID_per_class': per_class}


# ---------------------------------------------------------------------------
# Reference statistics
# ---------------------------------------------------------------------------
@dataclass
class Reference:
    """Real-data statistics read by load_reference; absent parts are None.

    mu (D,), sigma (D, D): the moments, for FID. features (N, D) and labels (N,): real features,
    for KID, precision/recall, density/coverage and (with labels) intra-class FID.
    class_moments {class: (mu (D,), sigma (D, D))}: per-class moments, for intra-class FID.
    num_images, split, network: how the statistics were made, when the file says so
    (calculate_inception_moments writes them; other tools' files do not).
    """
    path: str
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    features: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_moments: dict | None = field(default=None, repr=False)
    num_images: int | None = None
    split: str | None = None
    network: str | None = None

    @property
    def sha256(self):
        """sha256 of the file (hex), computed once per file version (file_hash caches it)."""
        return file_hash(self.path) if os.path.isfile(self.path) else None

    @property
    def num_real(self):
        """How many real images the statistics come from: as the file says, else the number of
        real features, else None (unknown: moments files of other tools do not say)."""
        if self.num_images is not None:
            return self.num_images
        return None if self.features is None else len(self.features)

    @property
    def dim(self):
        """The feature dimension."""
        for value in (self.mu, self.features):
            if value is not None:
                return value.shape[-1]
        return next(iter(self.class_moments.values()))[0].shape[0]

    def moments(self):
        """(mu (D,), sigma (D, D)): as stored, else from the real features."""
        if self.mu is not None:
            return self.mu, self.sigma
        if self.features is None:
            raise ValueError(f'{self.path}: holds neither moments (mu, sigma) nor real features')
        return _moments(self.features)


_HASHES = {}


def file_hash(path):
    """sha256 (hex) of the file at `path`, read once per (path, size, mtime): a run that
    records the hash of its reference with every result hashes it once."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _read_array(data, key, path, ndim, shape=None):
    value = data[key]
    if value.ndim != ndim or (shape is not None and value.shape != shape):
        expected = shape if shape is not None else f'{ndim} dimensions'
        raise ReferenceFileError(f'{path}: {key} has shape {value.shape}, expected {expected}')
    return value


def load_reference(path, extra=True):
    """Read real-data statistics from an npz and return a Reference.

    Recognised keys (any combination, all of one feature dimension D):
      mu (D,), sigma (D, D): moments, as ours (inception_utils.save_moments), the TF TTUR
        fid_stats_*.npz, pytorch-fid's --save-stats and clean-fid's .npz all store them;
      features (N, D) float, with optional labels (N,) int: real features;
      class_mu (C, D), class_sigma (C, D, D), with optional classes (C,) int (default
        0..C-1): per-class moments (C * D**2 * 8 bytes: 335 MB for 10 classes at D = 2048;
        for many classes keep labelled features instead).
      num_images (), split (), network (): how they were made (0-d; what
        calculate_inception_moments writes beside them, for the protocol).
    Files written with these keys keep mu and sigma readable by those tools.
    extra=False reads the moments and those notes only (for IS and FID: not the features).
    Raises ReferenceFileError, naming the file, for anything else.
    """
    if not os.path.isfile(path):
        raise ReferenceFileError(f'{path}: no such reference file')
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ReferenceFileError(f'{path}: cannot read it as an npz of reference statistics '
                                 f'({err})') from None
    if not hasattr(data, 'files'):
        raise ReferenceFileError(f'{path}: holds a single array, not an npz of reference '
                                 'statistics (mu and sigma, features, or class_mu and '
                                 'class_sigma)')
    with data:
        try:
            return _read_reference(data, path, extra)
        except ReferenceFileError:
            raise
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # pickles, bad zip
            raise ReferenceFileError(f'{path}: cannot read it as an npz of reference '
                                     f'statistics ({err})') from None


def _read_reference(data, path, extra=True):
    """The Reference in the open npz `data` (see load_reference)."""
    reference = Reference(path)
    keys = set(data.files)
    if not extra and keys & {'mu', 'sigma'}:
        keys -= {'features', 'labels', 'class_mu', 'class_sigma', 'classes'}
    if keys & {'mu', 'sigma'}:
        try:
            reference.mu, reference.sigma = load_moments(path)
        except ValueError as err:
            raise ReferenceFileError(str(err)) from None
    if 'features' in keys:
        reference.features = _read_array(data, 'features', path, 2)
        if not np.issubdtype(reference.features.dtype, np.floating):
            raise ReferenceFileError(f'{path}: features have dtype '
                                     f'{reference.features.dtype}, expected floats')
        if 'labels' in keys:
            labels = _read_array(data, 'labels', path, 1, (len(reference.features),))
            if not np.issubdtype(labels.dtype, np.integer):
                raise ReferenceFileError(f'{path}: labels have dtype {labels.dtype}, '
                                         'expected integers')
            reference.labels = labels.astype(np.int64)
    if keys & {'class_mu', 'class_sigma'}:
        if not {'class_mu', 'class_sigma'} <= keys:
            raise ReferenceFileError(f'{path}: per-class moments need both class_mu and '
                                     'class_sigma')
        class_mu = _read_array(data, 'class_mu', path, 2).astype(np.float64)
        count, dim = class_mu.shape
        class_sigma = _read_array(data, 'class_sigma', path, 3, (count, dim, dim))
        classes = (_read_array(data, 'classes', path, 1, (count,)) if 'classes' in keys
                   else np.arange(count))
        reference.class_moments = {
            int(c): (mu, sigma.astype(np.float64))
            for c, mu, sigma in zip(classes, class_mu, class_sigma)}
    if 'num_images' in keys:
        reference.num_images = int(_read_array(data, 'num_images', path, 0))
    for key in ('split', 'network'):
        if key in keys:
            setattr(reference, key, str(_read_array(data, key, path, 0)))
    if reference.mu is None and reference.features is None and reference.class_moments is None:
        raise ReferenceFileError(f'{path}: holds {", ".join(sorted(keys)) or "nothing"}; a '
                                 'reference needs mu and sigma (moments: ours, TF TTUR, '
                                 'pytorch-fid, clean-fid), features, or class_mu and class_sigma')
    dims = {value.shape[-1] for value in (reference.mu, reference.features) if value is not None}
    if reference.class_moments is not None:
        dims.add(class_mu.shape[1])
    if len(dims) > 1:
        raise ReferenceFileError(f'{path}: its statistics have different feature dimensions '
                                 f'({", ".join(map(str, sorted(dims)))})')
    return reference


# ---------------------------------------------------------------------------
# The table of metrics
# ---------------------------------------------------------------------------
def _inception_score(fake, reference, options):
    scorer = fake.get('scorer')
    if scorer is None:
        logits = fake['logits']
        scorer = InceptionScore(len(logits), options.get('num_splits', 10))
        scorer.update(logits)
    IS_mean, IS_std = scorer.result()
    return {'IS_mean': IS_mean, 'IS_std': IS_std}


def _fid(fake, reference, options):
    moments = fake.get('moments')
    mu, sigma = (moments.mu, moments.sigma) if moments is not None else _moments(fake['pool'])
    return {'FID': numpy_calculate_frechet_distance(
        mu, sigma, *reference.moments())}


def _kid(fake, reference, options):
    return kid(reference.features, fake['pool'], options.get('kid_subsets', KID_SUBSETS),
               options.get('kid_subset_size', KID_SUBSET_SIZE),
               options.get('kid_seed', KID_SEED), options.get('chunk_size', CHUNK_SIZE),
               options.get('dtype', torch.float32))


def _manifold(fake, reference, options):
    return manifold_metrics(reference.features, fake['pool'], options.get('pr_k', PR_K),
                            options.get('dc_k', DC_K), options.get('chunk_size', CHUNK_SIZE),
                            options.get('dtype', torch.float64))


def _intra_class_fid(fake, reference, options):
    if reference.class_moments is not None:
        return intra_class_fid(reference.class_moments, None, fake['pool'], fake['labels'])
    return intra_class_fid(reference.features, reference.labels, fake['pool'], fake['labels'])


@dataclass(frozen=True)
class Metric:
    """One row of METRICS.

    compute(fake, reference, options) -> dict: fake is a dict of the generated 'pool' (M, D)
    features, 'logits' (M, C) and 'labels' (M,), or of what streams them: 'moments' (an
    RunningMoments of the pool features) and 'scorer' (an InceptionScore fed
    the logits); reference a Reference; options a dict of settings (num_splits, kid_subsets,
    kid_subset_size, kid_seed, pr_k, dc_k, chunk_size, dtype).
    needs: the keys of fake it reads. streamed: {need: the streamed key that can stand in for
    it}. reference: alternative sets of Reference fields it can work from (any one suffices;
    empty: none needed). keys: returned key -> 'higher' or 'lower' (which is better, for
    --which_best) or None (not a ranking: a spread or a setting).
    """
    compute: Callable
    needs: tuple
    reference: tuple
    keys: dict
    streamed: dict = field(default_factory=dict)


METRICS = {
    'IS': Metric(_inception_score, ('logits',), (), {'IS_mean': 'higher', 'IS_std': None},
                 {'logits': 'scorer'}),
    'FID': Metric(_fid, ('pool',), (('mu', 'sigma'), ('features',)), {'FID': 'lower'},
                  {'pool': 'moments'}),
    'KID': Metric(_kid, ('pool',), (('features',),),
                  {'KID_mean': 'lower', 'KID_std': None, 'KID_subset_size': None,
                   'KID_subsets': None}),
    # PR and DC share one pass over the distances (compute_metrics runs it once for both).
    'PR': Metric(_manifold, ('pool',), (('features',),),
                 {'precision': 'higher', 'recall': 'higher'}),
    'DC': Metric(_manifold, ('pool',), (('features',),),
                 {'density': 'higher', 'coverage': 'higher'}),
    'iFID': Metric(_intra_class_fid, ('pool', 'labels'),
                   (('class_moments',), ('features', 'labels')),
                   {'iFID': 'lower', 'iFID_per_class': None}),
}


OPTIONS = ('num_splits', 'kid_subsets', 'kid_subset_size', 'kid_seed', 'pr_k', 'dc_k',
           'chunk_size', 'dtype')


def parse_metrics(names):
    """A list of METRICS names from 'IS,FID,KID' or a sequence; ValueError on an unknown one."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(',') if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(f'metrics {",".join(unknown) or "(none)"}: use a comma-separated '
                         f'selection of {",".join(METRICS)}')
    return list(dict.fromkeys(names))


def check_metrics(names, reference=None):
    """Parse `names` and, given a Reference, check it holds what each metric needs, so a run
    fails before sampling. Returns the list of names; ValueError naming metric and file."""
    names = parse_metrics(names)
    for name in names:
        options = METRICS[name].reference
        if reference is None or not options:
            continue
        if not any(all(getattr(reference, part) is not None for part in option)
                   for option in options):
            wanted = ' or '.join(' and '.join(option) for option in options)
            raise ValueError(f'{name} needs a reference with {wanted}; {reference.path} has '
                             'none of them')
    return names


def _rankings():
    """{--which_best name: (result key, 'higher' | 'lower')}: every ranked key, and each metric
    with exactly one ranked key under its own name (IS -> IS_mean, KID -> KID_mean)."""
    rankings = {}
    for name, metric in METRICS.items():
        ranked = [(key, direction) for key, direction in metric.keys.items() if direction]
        rankings.update({key: (key, direction) for key, direction in ranked})
        if len(ranked) == 1:
            rankings[name] = ranked[0]
    return rankings


def ranking(which_best):
    """(result key, 'higher' | 'lower') that `which_best` ranks by (FID -> lower FID, KID ->
    lower KID_mean, precision -> higher precision, ...); ValueError listing the choices."""
    rankings = _rankings()
    if which_best not in rankings:
        raise ValueError(f'--which_best {which_best}: use one of {", ".join(rankings)}')
    return rankings[which_best]


def compute_metrics(names, fake, reference=None, strict=True, **options):
    """Compute the metrics `names` ('IS,FID,...' or a list) of generated outputs `fake` (a dict of
    'pool' (M, D), 'logits' (M, C), 'labels' (M,), as each metric needs) against `reference` (a
    Reference). Options as Metric describes. Returns one flat dict of the metrics' keys.

    strict=False (a training run, which must not die hours in for one number): a metric whose
    inputs do not allow it (ValueError: e.g. a class with a single generated sample for iFID)
    warns why and returns NaN for each of its keys instead of raising."""
    names = check_metrics(names, reference)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f'unknown metric options {", ".join(unknown)}; use {", ".join(OPTIONS)}')
    if reference is None and any(METRICS[name].reference for name in names):
        raise ValueError(f'{",".join(names)}: all but IS need reference statistics')
    results, done = {}, {}
    for name in names:
        metric = METRICS[name]
        missing = [part for part in metric.needs if fake.get(part) is None
                   and fake.get(metric.streamed.get(part)) is None]
        if missing:
            raise ValueError(f'{name} needs the generated {" and ".join(missing)}')
        if metric.compute not in done:
            try:
                done[metric.compute] = metric.compute(fake, reference, options)
            except ValueError as err:
                if strict:
                    raise
                warnings.warn(f'{name} is not computed (NaN) this time: {err}', stacklevel=2)
                done[metric.compute] = {key: float('nan') for metric_ in METRICS.values()
                                        if metric_.compute is metric.compute
                                        for key in metric_.keys}
        results.update({key: done[metric.compute][key] for key in metric.keys})
    return results


# ---------------------------------------------------------------------------
# One evaluation: the metrics of one pass of generated outputs, with their protocol
# ---------------------------------------------------------------------------
def keeps_features(names):
    """Whether the metrics `names` need the generated pool features and labels themselves
    (KID, PR, DC, iFID), not only the streamed moments and Inception Score (IS, FID)."""
    return any(part not in METRICS[name].streamed
               for name in parse_metrics(names) for part in METRICS[name].needs)


def needs_reference_data(names):
    """Whether the metrics `names` need more of the reference than its moments mu, sigma."""
    return any(METRICS[name].reference and ('mu', 'sigma') not in METRICS[name].reference
               for name in parse_metrics(names))


def check_reference(names, reference, remedy=''):
    """check_metrics, with `remedy` (how to make a file that has what is missing) appended to
    the message; raises ReferenceFileError naming the metric and the file."""
    try:
        return check_metrics(names, reference)
    except ValueError as err:
        raise ReferenceFileError(f'{err}{"; " + remedy if remedy else ""}') from None


def options_from_config(config):
    """The metric options (compute_metrics' keywords) of the flags --kid_subsets,
    --kid_subset_size and --metrics_chunk (their defaults where a config lacks them)."""
    return {'kid_subsets': config.get('kid_subsets', KID_SUBSETS),
            'kid_subset_size': config.get('kid_subset_size', KID_SUBSET_SIZE),
            'chunk_size': config.get('metrics_chunk', CHUNK_SIZE)}


def check_metric_flags(flag, selection, settings):
    """(names, problems): the metrics of `selection` given with `flag` (--test_metrics,
    --metrics) and the problems, each naming its flag, of it and of the settings
    kid_subsets, kid_subset_size and metrics_chunk (a config or vars(args)). The one check
    of these flags, for train.py, sample.py and inception_utils.py."""
    problems, names = [], []
    try:
        names = parse_metrics(selection)
    except ValueError:
        problems.append(f'{flag} {selection}: use a comma-separated selection of '
                        f'{", ".join(METRICS)}')
    for key in ('kid_subsets', 'metrics_chunk'):
        if settings[key] < 1:
            problems.append(f'--{key} {settings[key]}: must be at least 1')
    if settings['kid_subset_size'] < 2:
        problems.append(f"--kid_subset_size {settings['kid_subset_size']}: must be at least 2 "
                        '(an unbiased MMD needs pairs)')
    return names, problems


def sampling_protocol(config, use_ema=None):
    """How the generated images were drawn, from train.py's or sample.py's config: truncation
    (0: none), z_var, use_ema (by default --ema and --use_ema, as training samples) and
    G_eval_mode."""
    if use_ema is None:
        use_ema = config.get('ema') and config.get('use_ema')
    return {'truncation': config.get('truncation', 0.0), 'z_var': config.get('z_var', 1.0),
            'use_ema': bool(use_ema), 'G_eval_mode': bool(config.get('G_eval_mode'))}


@dataclass
class Evaluation:
    """The metrics `names` against `reference`, with `options` (compute_metrics' keywords),
    and the protocol that goes with every number they produce.

    Called on one pass of generated outputs (a dict as compute_metrics takes, or an object
    with .fake() -> such a dict and .count), it returns {metric key: value, ...,
    'protocol': {...}}. The protocol: metrics, network and its `resize`, num_generated,
    num_real (None where the reference file does not say), reference (the file) and
    reference_sha256, split, the sampling settings given (truncation, use_ema, G_eval_mode,
    ...) and, with KID, kid_subsets and kid_subset_size (the size asked; KID_subset_size
    in the results is the size used). strict: see compute_metrics.
    """
    names: list
    reference: Reference | None = None
    options: dict = field(default_factory=dict)
    network: str | None = None
    sampling: dict | None = None
    strict: bool = True
    resize: str | None = None

    def __post_init__(self):
        self.names = check_metrics(self.names, self.reference)
        self._protocol = None

    @property
    def keeps_features(self):
        """Whether the pass must keep the pool features and labels (see keeps_features)."""
        return keeps_features(self.names)

    def protocol(self, num_generated):
        """The protocol of a result computed from `num_generated` generated images."""
        if self._protocol is None:  # the reference is hashed once
            reference = self.reference
            self._protocol = {
                'metrics': ','.join(self.names), 'network': self.network,
                'resize': self.resize,
                'num_real': reference.num_real if reference is not None else None,
                'reference': reference.path if reference is not None else None,
                'reference_sha256': reference.sha256 if reference is not None else None,
                'split': reference.split if reference is not None else None,
                **(self.sampling or {})}
            if 'KID' in self.names:
                self._protocol.update(
                    kid_subsets=self.options.get('kid_subsets', KID_SUBSETS),
                    kid_subset_size=self.options.get('kid_subset_size', KID_SUBSET_SIZE))
        return {**self._protocol, 'num_generated': int(num_generated)}

    def __call__(self, outputs):
        fake = outputs if isinstance(outputs, Mapping) else outputs.fake()
        count = outputs.count if hasattr(outputs, 'count') else len(
            next(fake[key] for key in ('pool', 'logits') if fake.get(key) is not None))
        results = compute_metrics(self.names, fake, self.reference, self.strict, **self.options)
        results['protocol'] = self.protocol(count)
        return results


def protocol_line(protocol):
    """One line for people: 'tf Inception (tf1_bilinear_299), 50000 generated vs 50000 real
    (train split) of data/I128_inception_moments_tf.npz sha256 0123abcd..., truncation none,
    EMA G in eval mode, KID 100 subsets of 1000'."""
    parts = [f"{protocol.get('network')} Inception ({protocol.get('resize')})",
             f"{protocol['num_generated']} generated vs {protocol.get('num_real') or 'unknown'}"
             ' real']
    if protocol.get('reference'):
        parts[-1] += (f" ({protocol.get('split') or 'unknown'} split) of "
                      f"{protocol['reference']} sha256 {protocol['reference_sha256'][:16]}")
    if 'truncation' in protocol:
        parts.append(f"truncation {protocol['truncation'] or 'none'}, z_var {protocol['z_var']}")
        parts.append(f"{'EMA' if protocol['use_ema'] else 'non-EMA'} G in "
                     f"{'eval' if protocol['G_eval_mode'] else 'training'} mode")
    if 'kid_subsets' in protocol:
        parts.append(f"KID {protocol['kid_subsets']} subsets of {protocol['kid_subset_size']}")
    return ', '.join(parts)


_FORMATS = {'IS_mean': 'IS {:.4f}', 'IS_std': '+/- {:.4f}', 'FID': 'FID {:.4f}',
            'KID_mean': 'KID {:.6f}', 'KID_std': '+/- {:.6f}', 'precision': 'precision {:.4f}',
            'recall': 'recall {:.4f}', 'density': 'density {:.4f}',
            'coverage': 'coverage {:.4f}', 'iFID': 'iFID {:.4f}'}


def results_line(results):
    """'IS 12.3456 +/- 0.1234, FID 23.4567, KID 0.012345 +/- 0.000456, ...' of the keys
    present (per-class values, settings and the protocol left out)."""
    line = ''
    for key, form in _FORMATS.items():
        if key in results:
            text = form.format(results[key])
            line += (' ' if key.endswith('_std') else ', ' if line else '') + text
    return line
