"""Augmentations and regularisers for small datasets (augment.py) and datasets.balanced_subset."""
import os
import subprocess
import sys

import pytest
import torch

import augment
import datasets
from conftest import ROOT

N, H, W = 4, 16, 16


def _images(n=N, seed=0):
    return torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# DiffAugment
# ---------------------------------------------------------------------------
def test_diffaugment_translation_moves_exactly_the_expected_pixels():
    x = _images()
    shifts = torch.tensor([[2, -1], [-2, 2], [0, 0], [1, 0]])
    out = augment.DiffAugment(x, 'translation', params={'translation': shifts})
    for n, (dy, dx) in enumerate(shifts.tolist()):
        for i in range(H):
            for j in range(W):
                src_i, src_j = i - dy, j - dx
                inside = 0 <= src_i < H and 0 <= src_j < W
                want = x[n, :, src_i, src_j] if inside else torch.zeros(3)
                assert torch.equal(out[n, :, i, j], want), (n, i, j)


def test_diffaugment_cutout_zeroes_exactly_the_expected_square():
    x = _images()
    # The square is 8x8 at 16x16; centres near the border clip it.
    centres = torch.tensor([[8, 8], [0, 0], [16, 3], [5, 12]])
    out = augment.DiffAugment(x, 'cutout', params={'cutout': centres})
    for n, (cy, cx) in enumerate(centres.tolist()):
        rows = range(max(cy - 4, 0), min(cy + 4, H))
        cols = range(max(cx - 4, 0), min(cx + 4, W))
        mask = torch.ones(H, W, dtype=torch.bool)
        mask[rows.start:rows.stop, cols.start:cols.stop] = False
        assert (out[n][:, ~mask] == 0).all()
        assert torch.equal(out[n][:, mask], x[n][:, mask])
        assert (~mask).sum() == len(rows) * len(cols)


def test_diffaugment_color_ops_are_the_papers():
    x = _images()
    b, s, c = torch.tensor([0.4, -0.3, 0.0, 0.1]), torch.tensor([0.0, 1.5, 1.0, 0.3]), \
        torch.tensor([0.5, 1.2, 1.0, 1.4])
    out = augment.DiffAugment(x, 'color', params={'brightness': b, 'saturation': s,
                                                  'contrast': c})
    want = x + b.view(-1, 1, 1, 1)
    m = want.mean(1, keepdim=True)
    want = (want - m) * s.view(-1, 1, 1, 1) + m
    m = want.mean((1, 2, 3), keepdim=True)
    want = (want - m) * c.view(-1, 1, 1, 1) + m
    torch.testing.assert_close(out, want)
    # What each op guarantees: brightness shifts every pixel by b; saturation and
    # contrast keep the per-image mean, so the mean moves by b exactly.
    torch.testing.assert_close(out.mean((1, 2, 3)), x.mean((1, 2, 3)) + b)
    # Saturation 0 leaves grey pixels (equal channels).
    assert torch.allclose(out[0], out[0].mean(0, keepdim=True).expand(3, H, W), atol=1e-6)


def test_diffaugment_params_ranges_and_fresh_draws():
    n = 2000
    p = augment.diffaugment_params(n, 'color,translation,cutout', 32, 32, _gen())
    assert -0.5 <= p['brightness'].min() and p['brightness'].max() < 0.5
    assert 0 <= p['saturation'].min() and p['saturation'].max() < 2
    assert 0.5 <= p['contrast'].min() and p['contrast'].max() < 1.5
    # 1/8 of 32 = 4 pixels each way, all reached; cutout centres anywhere in [0, 32].
    assert set(p['translation'].flatten().tolist()) == set(range(-4, 5))
    assert p['cutout'].min() == 0 and p['cutout'].max() == 32
    g = _gen()
    first = augment.DiffAugment(_images(), generator=g)
    second = augment.DiffAugment(_images(), generator=g)
    assert not torch.equal(first, second)          # every call (micro-batch) draws its own
    assert torch.equal(first, augment.DiffAugment(_images(), generator=_gen()))


def test_diffaugment_applies_the_papers_order_whatever_the_order_given():
    x = _images()
    a = augment.DiffAugment(x, 'cutout,translation,color', generator=_gen())
    b = augment.DiffAugment(x, 'color,translation,cutout', generator=_gen())
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match='--DiffAugment'):
        augment.DiffAugment(x, 'colour')
    assert augment.DiffAugment(x, '') is x


def test_diffaugment_draws_from_the_generator_not_the_global_rng():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    augment.DiffAugment(_images(), generator=_gen())
    assert torch.equal(torch.get_rng_state(), before)


def test_diffaugment_translation_and_cutout_keep_range_and_are_differentiable():
    x = _images().double().requires_grad_()
    params = augment.diffaugment_params(N, 'color,translation,cutout', H, W, _gen())
    out = augment.DiffAugment(x, 'translation,cutout', params=params)
    assert out.min() >= -1 and out.max() <= 1
    assert torch.autograd.gradcheck(
        lambda t: augment.DiffAugment(t, 'color,translation,cutout', params=params), (x,),
        fast_mode=True)


# ---------------------------------------------------------------------------
# ADA pipeline
# ---------------------------------------------------------------------------
def test_ada_policy_groups():
    assert augment.ada_policy('bgc') == augment.ADA_OPS
    assert augment.ada_policy('b') == ('xflip', 'rotate90', 'xint')
    assert augment.ada_policy('c,xflip') == ('xflip',) + augment.ADA_GROUPS['c']
    with pytest.raises(ValueError, match='--ADA_policy'):
        augment.ada_policy('bgx')


@pytest.mark.parametrize('p', [0.0, torch.tensor(0.0)])
def test_ada_at_p0_is_the_identity(p):
    x = _images(8)
    assert torch.equal(augment.AugmentPipe('bgc')(x, p, generator=_gen()), x)


@pytest.mark.parametrize('op', augment.ADA_OPS)
def test_ada_each_op_at_p1_changes_images_and_only_those_it_transforms(op):
    x = _images(8)
    pipe = augment.AugmentPipe(op)
    params = pipe.params(8, 1.0, H, W, _gen())
    out = pipe.apply(x, params)
    transformed = ((params['geom'] != torch.eye(3)).flatten(1).any(1)
                   | (params['color'] != torch.eye(4)).flatten(1).any(1))
    changed = (out != x).flatten(1).any(1)
    assert changed.any()
    assert torch.equal(changed, transformed)


def test_ada_pixel_blits_are_exact_flips_rotations_and_shifts():
    x = _images(8)
    pipe = augment.AugmentPipe('xflip')
    params = pipe.params(8, 1.0, H, W, _gen())
    out = pipe.apply(x, params)
    flipped = params['geom'][:, 0, 0] < 0
    assert flipped.any() and (~flipped).any()
    torch.testing.assert_close(out[flipped], x[flipped].flip(-1), atol=1e-5, rtol=0)

    pipe = augment.AugmentPipe('rotate90')
    params = pipe.params(8, 1.0, H, W, _gen(2))
    out = pipe.apply(x, params)
    for n in range(8):
        errors = [(out[n] - torch.rot90(x[n], k, dims=(1, 2))).abs().max() for k in range(4)]
        assert min(errors) < 1e-5

    # Integer translation by (tx, ty) pixels with reflection (edge pixels repeated).
    pipe = augment.AugmentPipe('xint')
    params = pipe.params(8, 1.0, H, W, _gen(3))
    out = pipe.apply(x, params)
    for n in range(8):
        tx, ty = (-params['geom'][n, :2, 2]).round().long().tolist()
        assert abs(tx) <= 2 and abs(ty) <= 2          # 1/8 of 16
        row = x[n:n + 1]
        padded = torch.cat([row.flip(-1)[..., -2:], row, row.flip(-1)[..., :2]], dim=-1)
        padded = torch.cat([padded.flip(-2)[..., -2:, :], padded, padded.flip(-2)[..., :2, :]],
                           dim=-2)
        want = padded[0, :, 2 - ty:2 - ty + H, 2 - tx:2 - tx + W]
        torch.testing.assert_close(out[n], want, atol=1e-5, rtol=0)


def test_ada_geometric_ops_keep_the_range_and_all_ops_are_differentiable():
    x = _images(8)
    pipe = augment.AugmentPipe('bg')
    out = pipe(x, 1.0, generator=_gen())
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    xd = _images(2).double().requires_grad_()
    pipe = augment.AugmentPipe('bgc')
    params = pipe.params(2, 1.0, H, W, _gen())
    params = {k: v.double() for k, v in params.items()}
    assert torch.autograd.gradcheck(lambda t: pipe.apply(t, params), (xd,), fast_mode=True)


def test_ada_color_ops_are_what_they_say():
    x = _images(8)
    luma = x.mean(1, keepdim=True)                # grey component per pixel

    def run(op):
        pipe = augment.AugmentPipe(op)
        return pipe.apply(x, pipe.params(8, 1.0, H, W, _gen()))

    out = run('brightness')                       # adds one value per image
    diff = (out - x).flatten(1)
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), atol=1e-6, rtol=0)
    out = run('contrast')                         # scales around 0 by one factor per image
    ratio = (out / x).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4, rtol=1e-4)
    out = run('lumaflip')                         # negates the grey component, keeps chroma
    flipped = (out - x).flatten(1).abs().amax(1) > 0
    torch.testing.assert_close(out[flipped] - out[flipped].mean(1, keepdim=True),
                               x[flipped] - luma[flipped], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[flipped].mean(1), -luma[flipped][:, 0], atol=1e-5, rtol=0)
    for op in ('hue', 'saturation'):              # keep the grey component
        torch.testing.assert_close(run(op).mean(1, keepdim=True), luma, atol=1e-5, rtol=0)
    out = run('hue')                              # a rotation: chroma keeps its length
    torch.testing.assert_close((out - luma).norm(dim=1), (x - luma).norm(dim=1), atol=1e-5,
                               rtol=0)


def test_ada_probabilities_follow_p():
    n, p = 20000, 0.3
    for op, moved in [('brightness', lambda q: q['color'][:, 0, 3] != 0),
                      ('rotate', lambda q: q['geom'][:, 0, 1] != 0),
                      ('xfrac', lambda q: q['geom'][:, 0, 2] != 0)]:
        frac = moved(augment.AugmentPipe(op).params(n, p, H, W, _gen())).float().mean()
        assert abs(frac - p) < 0.015, (op, frac)    # rotate: pre OR post, P = p


def test_ada_params_rows_apply_to_a_slice_of_the_batch():
    """A rank can draw the global batch's transforms and apply its rows to its slice."""
    x = _images(8)
    pipe = augment.AugmentPipe('bgc')
    params = pipe.params(8, 0.7, H, W, _gen())
    full = pipe.apply(x, params)
    part = pipe.apply(x[4:], {k: v[4:] for k, v in params.items()})
    torch.testing.assert_close(part, full[4:], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------
# ADAController
# ---------------------------------------------------------------------------
def _logits(step, n=6):
    # Deterministic real logits whose sign mean varies from step to step.
    return torch.linspace(-1, 1, n).unsqueeze(1) + 0.3 * ((step % 5) - 2)


def test_ada_controller_update_equals_the_formula():
    ctl = augment.ADAController(target=0.6, interval=3, kimg=0.5, batch_size=6, p=0.2)
    p = torch.tensor(0.2)
    for step in range(12):
        ctl.accumulate(_logits(step)[:3])        # two micro-batches per D step
        ctl.accumulate(_logits(step)[3:])
        ctl.step()
        if step % 3 == 2:
            signs = torch.cat([torch.sign(_logits(s)) for s in range(step - 2, step + 1)])
            rt = signs.mean()
            p = (p + torch.sign(rt - 0.6) * (6 * 3) / (0.5 * 1000)).clamp(0, 1)
            torch.testing.assert_close(ctl.rt, rt)
        assert torch.equal(ctl.p, p), step        # unchanged between updates
    assert ctl.p != 0.2


def test_ada_controller_p_stays_in_unit_interval():
    ctl = augment.ADAController(target=0.6, interval=1, kimg=0.001, batch_size=1)
    for _ in range(3):
        ctl.accumulate(torch.ones(4, 1))          # r_t = 1 > target: p rises, capped at 1
        ctl.step()
    assert ctl.p == 1
    for _ in range(3):
        ctl.accumulate(-torch.ones(4, 1))
        ctl.step()
    assert ctl.p == 0


def test_ada_controller_state_dict_round_trip_continues_identically(tmp_path):
    ref = augment.ADAController(target=0.5, interval=4, kimg=0.2, batch_size=6)
    for step in range(6):                         # stop mid-interval: pending statistics
        ref.accumulate(_logits(step))
        ref.step()
    torch.save(ref.state_dict(), tmp_path / 'ada.pth')
    resumed = augment.ADAController(target=0.5, interval=4, kimg=0.2, batch_size=6)
    resumed.load_state_dict(torch.load(tmp_path / 'ada.pth', weights_only=True))
    for step in range(6, 20):
        for ctl in (ref, resumed):
            ctl.accumulate(_logits(step))
            ctl.step()
        assert torch.equal(ref.p, resumed.p)
        assert torch.equal(ref.sign_sum, resumed.sign_sum)
    assert ref.steps == resumed.steps == 20


def test_ada_controller_sums_statistics_over_ranks():
    """Two ranks, each seeing half of every batch, reach one process's p with a sum hook."""
    def controller():
        return augment.ADAController(target=-0.3, interval=2, kimg=0.1, batch_size=6)
    single, ranks = controller(), [controller(), controller()]
    for step in range(8):
        x = _logits(step)
        single.accumulate(x)
        ranks[0].accumulate(x[:3])
        ranks[1].accumulate(x[3:])
        single.step()
        if step % 2 == 1:
            # Each rank's hook adds the other's pending statistics, as all_reduce sums them.
            pending = [torch.stack([c.sign_sum, c.count]) for c in ranks]
            for r, ctl in enumerate(ranks):
                ctl.all_reduce = lambda t, other=pending[1 - r]: t.add_(other)
        for ctl in ranks:
            ctl.step()
        assert torch.equal(ranks[0].p, single.p) and torch.equal(ranks[1].p, single.p)
    assert single.p > 0


# ---------------------------------------------------------------------------
# LeCam and consistency regularisation
# ---------------------------------------------------------------------------
def test_lecam_anchors_and_loss_equal_the_formula(tmp_path):
    gen = _gen()
    batches = [(torch.randn(5, 1, generator=gen), torch.randn(5, 1, generator=gen))
               for _ in range(6)]
    lecam = augment.LeCam(weight=0.3, decay=0.9)
    a_real = a_fake = None
    for D_real, D_fake in batches[:4]:
        lecam.update(D_real, D_fake)
        if a_real is None:                        # the first update sets the anchors
            a_real, a_fake = D_real.mean(), D_fake.mean()
        else:
            a_real = 0.9 * a_real + 0.1 * D_real.mean()
            a_fake = 0.9 * a_fake + 0.1 * D_fake.mean()
        torch.testing.assert_close(lecam.anchor_real, a_real)
        torch.testing.assert_close(lecam.anchor_fake, a_fake)
        want = 0.3 * (torch.clamp(D_real - a_fake, min=0).pow(2).mean()
                      + torch.clamp(a_real - D_fake, min=0).pow(2).mean())
        torch.testing.assert_close(lecam.loss(D_real, D_fake), want)
    assert lecam.loss(*batches[0]) > 0
    # The anchors are constants: the gradient reaches only D's outputs.
    D_real = batches[0][0].clone().requires_grad_()
    lecam.loss(D_real, batches[0][1]).backward()
    torch.testing.assert_close(D_real.grad, 0.3 * 2 * (D_real - a_fake).clamp(min=0) / 5)
    # state_dict round trip (through a weights_only load) continues identically.
    torch.save(lecam.state_dict(), tmp_path / 'lecam.pth')
    resumed = augment.LeCam(weight=0.3, decay=0.9)
    resumed.load_state_dict(torch.load(tmp_path / 'lecam.pth', weights_only=True))
    for D_real, D_fake in batches[4:]:
        for obj in (lecam, resumed):
            obj.update(D_real, D_fake)
        assert torch.equal(lecam.loss(D_real, D_fake), resumed.loss(D_real, D_fake))


def test_lecam_start_itr_pegs_the_anchors_and_switches_the_loss_off():
    lecam = augment.LeCam(weight=1.0, decay=0.99, start_itr=10)
    lecam.update(torch.zeros(3, 1), torch.zeros(3, 1), itr=1)
    lecam.update(torch.full((3, 1), 2.0), torch.full((3, 1), -2.0), itr=9)
    assert lecam.anchor_real == 2 and lecam.anchor_fake == -2     # followed, not averaged
    assert lecam.loss(torch.full((3, 1), 5.0), torch.zeros(3, 1), itr=10) == 0
    assert lecam.loss(torch.full((3, 1), 5.0), torch.zeros(3, 1), itr=11) == 49 + 4


def test_consistency_losses_equal_their_formulas():
    gen = _gen()
    D_real, D_real_aug, D_fake, D_fake_aug = (torch.randn(6, 1, generator=gen) for _ in range(4))
    want = (10 * ((D_real - D_real_aug) ** 2).mean() + 3 * ((D_fake - D_fake_aug) ** 2).mean())
    torch.testing.assert_close(augment.bcr_loss(D_real, D_real_aug, D_fake, D_fake_aug,
                                                lambda_real=10, lambda_fake=3), want)
    torch.testing.assert_close(augment.zcr_D_loss(D_fake, D_fake_aug, lambda_dis=5),
                               5 * ((D_fake - D_fake_aug) ** 2).mean())
    G_z, G_zp = _images(), _images(seed=1)
    torch.testing.assert_close(augment.zcr_G_loss(G_z, G_zp, lambda_gen=0.5),
                               -0.5 * ((G_z - G_zp) ** 2).sum((1, 2, 3)).mean() / (3 * H * W))
    z = torch.zeros(20000, 4)
    dz = augment.perturb_latents(z, sigma=0.03, generator=_gen())
    assert abs(dz.std() - 0.03) < 0.001 and abs(dz.mean()) < 0.001


# ---------------------------------------------------------------------------
# datasets.balanced_subset
# ---------------------------------------------------------------------------
def test_balanced_subset_is_balanced_and_valid():
    labels = torch.arange(1000) % 10
    idx = datasets.balanced_subset(labels, 500, seed=0)
    assert idx.numel() == 500 and idx.unique().numel() == 500
    assert torch.equal(torch.bincount(labels[idx]), torch.full((10,), 50))
    assert torch.equal(idx, idx.sort().values)
    # A fraction, and a size that does not divide: shares differ by at most one.
    assert torch.equal(torch.bincount(labels[datasets.balanced_subset(labels, 0.1, 0)]),
                       torch.full((10,), 10))
    counts = torch.bincount(labels[datasets.balanced_subset(labels, 25, 0)])
    assert counts.sum() == 25 and counts.max() - counts.min() == 1
    # A small class gives all it has; the others share its shortfall.
    uneven = torch.cat([torch.zeros(3), torch.ones(50), torch.full((20,), 2)]).long()
    assert torch.bincount(uneven[datasets.balanced_subset(uneven, 40, 0)]).tolist() == [3, 19, 18]
    for bad in (0, 1.5, 1001, -0.2):
        with pytest.raises(datasets.DataError, match='--data_subset'):
            datasets.balanced_subset(labels, bad, 0)


def test_balanced_subset_depends_only_on_the_seed_and_is_nested():
    labels = torch.randint(0, 7, (700,), generator=_gen())
    a = datasets.balanced_subset(labels, 100, seed=3)
    torch.manual_seed(123)                                   # the global RNG plays no part
    assert torch.equal(a, datasets.balanced_subset(labels, 100, seed=3))
    assert not torch.equal(a, datasets.balanced_subset(labels, 100, seed=4))
    previous = set()
    for n in (7, 50, 100, 333, 700):
        chosen = set(datasets.balanced_subset(labels, n, seed=3).tolist())
        assert previous <= chosen
        previous = chosen


def test_balanced_subset_is_the_same_in_every_process():
    """Other processes (other hash seeds, other global seeds, any rank) pick the same images."""
    labels = (torch.arange(300) * 7) % 10
    want = datasets.balanced_subset(labels, 60, seed=11).tolist()
    code = ('import torch, datasets; torch.manual_seed(99); '
            'print(datasets.balanced_subset((torch.arange(300) * 7) % 10, 60, seed=11).tolist())')
    env = {**os.environ, 'PYTHONHASHSEED': '12345', 'RANK': '1', 'WORLD_SIZE': '2'}
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == str(want)
