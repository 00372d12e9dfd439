"""Small-data training wired in: --data_subset, augmentation of what D sees, ADA, LeCam,
consistency regularisation, and their exact resume."""
import pytest
import torch
from test_train import _assert_identical, _config, _weights

import BigGAN
import datasets
import train
import train_fns
import utils
from conftest import tiny_config

ALL_ON = ['--DiffAugment', 'color,translation,cutout', '--ADA_target', '0.01',
          '--ADA_interval', '1', '--ADA_kimg', '0.02', '--LeCam_lambda', '0.1',
          '--bCR_real', '10', '--bCR_fake', '10', '--zCR_D', '5', '--zCR_G', '0.5',
          '--data_subset', '200']


def test_resume_with_every_small_data_option_is_bit_exact(tmp_path):
    extra = [*ALL_ON, '--ema', '--save_every', '3']
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    train.run(_config(straight, '--num_iters', '6', *extra), log=lambda m: None)
    train.run(_config(split, '--num_iters', '3', *extra), log=lambda m: None)
    train.run(_config(split, '--num_iters', '6', '--resume', *extra), log=lambda m: None)
    _assert_identical(_weights(straight), _weights(split))
    a, b = (utils.torch_load(str(root / 'weights' / 'exp' / 'state_dict.pth'))
            for root in (straight, split))
    for key in ('ADA', 'LeCam'):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[key][name])), (key, name)
    assert a['ADA']['steps'] == 6 and a['LeCam']['num_updates'] == 6
    # p moved (so the resumed half really continued it) and its log continues too.
    lines = (split / 'logs' / 'exp' / 'ADA_p.log').read_text().splitlines()
    assert [int(line.split(':')[0]) for line in lines] == [1, 2, 3, 4, 5, 6]
    logged = [float(line.split(':')[1]) for line in lines]
    assert len(set(logged)) > 1
    assert logged[-1] == pytest.approx(float(a['ADA']['p']), abs=1e-3)


def _train_fn(*argv):
    torch.manual_seed(0)
    config = tiny_config('--batch_size', '4', '--num_D_steps', '2', *argv)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    z_, y_ = utils.prepare_z_y(4, G.dim_z, config['n_classes'], device='cpu')
    state = {'itr': 1, 'ADA': None, 'LeCam': None}
    sd = train_fns.SmallData(config, 'cpu')
    train = train_fns.GAN_training_function(G, D, BigGAN.G_D(G, D), z_, y_, None, state, config,
                                            small_data=sd)
    x = torch.rand(8, 3, 32, 32) * 1.8 - 0.9  # no exact zeros
    y = torch.randint(0, 10, (8,))
    return train, D, sd, state, x, y


def _record_D_inputs(D):
    seen = []
    D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize('policy', ['', 'cutout'])
def test_every_image_D_sees_is_augmented_with_its_own_draw(policy):
    train, D, _, _, x, y = _train_fn('--DiffAugment', policy)
    seen = _record_D_inputs(D)
    train(x, y)
    # Two D steps (4 fakes + 4 reals each), then the G step (4 fakes).
    assert [batch.shape[0] for batch in seen] == [8, 8, 4]
    zeros = [(batch == 0).all(1) for batch in seen]   # (N, H, W) pixels zeroed in all channels
    images = torch.cat(zeros)
    if not policy:
        assert not images.any()
        return
    # Cutout zeroes a 16x16 square centred in the image: at least its 8x8 corner is inside.
    assert (images.flatten(1).sum(1) >= 64).all()
    # Reals and fakes, D steps and G step: each micro-batch drew its own squares.
    assert not torch.equal(zeros[0][4:], zeros[1][4:])
    assert not torch.equal(zeros[0][:4], zeros[1][:4])
    assert not torch.equal(zeros[0][:4], zeros[2])


@pytest.mark.parametrize('target', [0.0001, 0.9999])
def test_ada_p_follows_the_sign_of_D_on_the_reals_every_interval(target):
    interval, kimg = 3, 0.1
    train, _, sd, state, x, y = _train_fn('--ADA_target', str(target), '--ADA_interval',
                                          str(interval), '--ADA_kimg', str(kimg))
    D_reals = []
    sd.ada.p = torch.tensor(0.5)  # mid-way, so that p moves whichever way D leans
    accumulate = sd.ada.accumulate
    sd.ada.accumulate = lambda D_real: (D_reals.append(D_real.detach().clone()),
                                        accumulate(D_real))
    logged = [float(train(x, y)['ADA_p']) for _ in range(4)]
    # 4 iterations x 2 D steps; an update after D steps 3 and 6 from 3 batches of 4 reals.
    assert len(D_reals) == 8 and state['ADA']['steps'] == 8
    p, expected = 0.5, []
    for step in range(1, 9):
        if step % interval == 0:
            rt = torch.cat(D_reals[step - interval:step]).sign().mean().item()
            p = min(max(p + (1 if rt > target else -1) * 4 * interval / (kimg * 1000), 0), 1)
        if step % 2 == 0:
            expected.append(p)
    assert logged == pytest.approx(expected, abs=1e-6)
    assert float(state['ADA']['p']) == pytest.approx(expected[-1], abs=1e-6)
    assert expected[-1] != 0.5


def test_lecam_anchors_follow_D_and_are_in_the_state():
    train, D, sd, state, x, y = _train_fn('--LeCam_lambda', '0.5', '--LeCam_decay', '0.9')
    outputs = []
    D.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))
    train(x, y)
    (d1, d2) = outputs[0], outputs[1]   # the two D steps: 4 fakes then 4 reals each
    real = 0.9 * d1[4:].mean() + 0.1 * d2[4:].mean()
    fake = 0.9 * d1[:4].mean() + 0.1 * d2[:4].mean()
    assert float(state['LeCam']['anchor_real']) == pytest.approx(float(real), abs=1e-5)
    assert float(state['LeCam']['anchor_fake']) == pytest.approx(float(fake), abs=1e-5)
    assert state['LeCam']['num_updates'] == 2


def test_training_state_holds_ADA_and_LeCam_exactly_when_they_are_on():
    """new_training_state has the keys (so --resume copies them back) only for an option
    that is on: a run without them saves the original's keys."""
    keys = {'ADA', 'LeCam'}
    assert not keys & train_fns.new_training_state(tiny_config()).keys()
    for argv, on in ((['--ADA_target', '0.6'], {'ADA'}), (['--LeCam_lambda', '0.1'], {'LeCam'}),
                     (['--DiffAugment', 'color'], set())):
        state = train_fns.new_training_state(tiny_config(*argv))
        assert keys & state.keys() == on and all(state[k] is None for k in on), argv


def test_consistency_views_reach_D_in_one_call_per_micro_batch():
    train, D, _, _, x, y = _train_fn('--bCR_real', '10', '--bCR_fake', '10', '--zCR_D', '5',
                                     '--zCR_G', '0.5')
    seen = _record_D_inputs(D)
    out = train(x, y)
    # D step: fakes, T(fakes), G(z + dz); reals, T(reals). G step: the fakes alone.
    assert [batch.shape[0] for batch in seen] == [20, 20, 4]
    assert torch.isfinite(out['G_loss'])
    # T is a flip and a shift of the same images: same values, moved about.
    fakes, fakes_T, reals, reals_T = (seen[0][k * 4:(k + 1) * 4] for k in (0, 1, 3, 4))
    assert not torch.equal(reals, reals_T) and torch.equal(reals, x[:4])
    assert not torch.equal(fakes, fakes_T)


def test_data_subset_trains_on_the_balanced_subset():
    loader = datasets.get_data_loaders('Digits32', batch_size=10, num_workers=0, seed=3,
                                       data_subset=50, augment=True)[0]
    labels = torch.cat([y for _, y in loader])
    assert torch.bincount(labels, minlength=10).tolist() == [5] * 10
    full = datasets.Digits32()
    chosen = datasets.balanced_subset(datasets.dataset_labels(full), 50, seed=3)
    images = torch.cat([x for x, _ in datasets.get_data_loaders(
        'Digits32', batch_size=10, num_workers=0, seed=3, data_subset=50)[0]])
    expected = torch.stack([full[int(i)][0] for i in chosen])
    # The same 50 images, in the loader's shuffled order.
    assert torch.equal(images.flatten(1).sort(0).values, expected.flatten(1).sort(0).values)
    with pytest.raises(datasets.DataError, match='--data_subset 6000'):
        datasets.get_data_loaders('Digits32', batch_size=10, num_workers=0, data_subset=6000)


def test_small_data_flags_enter_the_experiment_name():
    config = tiny_config(*ALL_ON)
    name = utils.name_from_config(config)
    for part in ('_sub200_', '_DiffAug-color-translation-cutout_', '_ADA0.01-bgc_', '_ADAi1_',
                 '_ADAk0.02_', '_LeCam0.1_', '_bCR10-10_', '_zCR5-0.5'):
        assert part in name, part
    assert 'sub' not in utils.name_from_config(tiny_config()).split('_seed')[1]


@pytest.mark.parametrize('argv, message', [
    (['--data_subset', '-1'], '--data_subset -1: give a number of images'),
    (['--data_subset', '1.5'], '--data_subset 1.5: give a number of images'),
    (['--DiffAugment', 'color,flip'], "--DiffAugment color,flip: unknown augmentation 'flip'"),
    (['--ADA_policy', 'bgx'], "--ADA_policy bgx: unknown 'bgx'"),
    (['--ADA_target', '1.5'], '--ADA_target 1.5: must lie in'),
    (['--ADA_interval', '0'], '--ADA_interval 0: must be at least 1'),
    (['--ADA_kimg', '0'], '--ADA_kimg 0: must be positive'),
    (['--LeCam_decay', '1.5'], '--LeCam_decay 1.5: must lie in'),
    (['--LeCam_lambda', '-1'], '--LeCam_lambda -1: must not be negative'),
    (['--bCR_fake', '-1'], '--bCR_fake -1: must not be negative'),
    (['--zCR_sigma', '0'], '--zCR_sigma 0: must be positive'),
])
def test_bad_small_data_flags_are_refused_naming_the_flag(argv, message):
    with pytest.raises(utils.ConfigError, match=message.replace('-', r'\-')):
        tiny_config(*argv)


@pytest.mark.parametrize('argv', [['--DiffAugment', 'translation,cutout'],
                                  ['--ADA_target', '0.6']])
def test_augmentation_keeps_the_memory_format_D_runs_in(argv):
    sd = train_fns.SmallData(tiny_config(*argv), 'cpu')
    if sd.ada is not None:
        sd.ada.p = torch.tensor(1.0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert sd.augment(x).is_contiguous()
    out = sd.augment(x.to(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


@pytest.mark.parametrize('split_D', [False, True])
def test_G_D_shows_D_the_augmented_views_of_the_fakes(split_D):
    """augment goes through BigGAN.D_on_fake_and_real: D sees the k views of the fakes, each
    with G's classes, whether on the concatenation or split; return_G_z gives G's own output."""
    config = tiny_config()
    torch.manual_seed(0)
    G, D = BigGAN.Generator(**config).eval(), BigGAN.Discriminator(**config)
    GD = BigGAN.G_D(G, D)
    z, y = torch.randn(3, G.dim_z), torch.tensor([0, 1, 2])
    x, dy = torch.rand(3, 3, 32, 32) * 2 - 1, torch.tensor([3, 4, 5])

    def views(G_z):  # a deterministic two-view augmentation: the image and its mirror
        return torch.cat([G_z, G_z.flip(3)])
    with torch.no_grad():
        G_z = G(z, G.shared(y))
        D_fake, D_real = GD(z, y, x, dy, split_D=split_D, augment=views)
        torch.testing.assert_close(D_fake, D(views(G_z), y.repeat(2)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(D_real, D(x, dy), atol=1e-5, rtol=1e-5)
        D_out, G_z_out = GD(z, y, split_D=split_D, augment=views, return_G_z=True)
        assert D_out.shape == (6, 1) and torch.equal(G_z_out, G_z)
