"""sample.py from a tiny trained checkpoint, and the released checkpoints' legacy format."""
import functools
import os
import re
import shutil

import numpy as np
import pytest
import torch
from fixtures.random_inception import random_inception_state_dict
from PIL import Image

import BigGAN
import inception_utils
import sample
import train
import utils

TRAIN = ['--dataset', 'Digits32', '--G_ch', '8', '--D_ch', '8', '--batch_size', '8',
         '--num_D_steps', '1', '--G_attn', '0', '--D_attn', '0', '--num_workers', '0',
         '--experiment_name', 'exp', '--ema']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 3-iteration run with EMA, random Inception weights and fake Digits32 moments."""
    root = tmp_path_factory.mktemp('run')
    config = utils.parse_config(utils.prepare_parser(),
                                TRAIN + ['--base_root', str(root), '--num_iters', '3'])
    train.run(config, log=lambda m: None)
    weights = root / 'tf_inception.pth'
    torch.save(random_inception_state_dict('tf', 0), weights)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 64))
    inception_utils.save_moments(
        inception_utils.moments_filename('Digits32', str(root / 'data'), 'tf'),
        rng.standard_normal(2048), a @ a.T / 64 + np.eye(2048))
    return root, weights


def _sample_config(root, *argv):
    parser = utils.add_sample_parser(utils.prepare_parser())
    return utils.parse_config(parser, TRAIN + ['--base_root', str(root), *argv])


def test_every_sampling_output_is_written(trained):
    root, weights = trained
    config = _sample_config(
        root, '--use_ema', '--G_eval_mode', '--sample_npz', '--sample_num_npz', '25',
        '--sample_sheets', '--sample_interps', '--sample_random', '--sample_sheet_folder_num', '7',
        '--sample_inception_metrics', '--sample_trunc_curves', '0.5_0.25_1.0',
        '--num_inception_images', '12', '--inception_network', 'tf',
        '--inception_weights', str(weights), '--G_batch_size', '6')
    said = []
    with pytest.warns(UserWarning, match='FID is biased'):  # 12 samples of 2048-d features
        results = sample.run(config, log=said.append)
    out = root / 'samples' / 'exp' / 'sample_7'
    with np.load(out / 'samples.npz') as f:
        x, y = f['x'], f['y']
    assert x.shape == (25, 3, 32, 32) and x.dtype == np.uint8
    assert y.shape == (25,) and 0 <= y.min() and y.max() < 10
    for name in ('samples0.jpg', 'interpZY0.jpg', 'interpY0.jpg', 'interpZ0.jpg',
                 'random_samples.jpg'):
        with Image.open(out / name) as im:
            assert im.size[0] > 32 and im.getextrema() != ((0, 0),) * 3
    metrics = results['metrics']
    assert 1.0 <= metrics['IS_mean'] <= 1008 and np.isfinite(metrics['FID'])
    curve = results['trunc_curve']  # z's standard deviation, as in the original
    assert [(p['mode'], round(p['z_var'], 3)) for p in curve] == [('std', 0.5), ('std', 0.75),
                                                                    ('std', 1.0)]
    assert all(np.isfinite(p['FID']) for p in curve)
    # Each number travels with its protocol, in the results and in what is printed.
    import metrics as metrics_module
    moments = inception_utils.moments_filename('Digits32', str(root / 'data'), 'tf')
    protocol = metrics['protocol']
    assert {k: protocol[k] for k in ('metrics', 'network', 'resize', 'num_generated',
                                     'reference', 'use_ema', 'G_eval_mode', 'truncation')} == {
        'metrics': 'IS,FID', 'network': 'tf', 'resize': 'tf1_resize_bilinear_299',
        'num_generated': 12, 'reference': moments, 'use_ema': True, 'G_eval_mode': True,
        'truncation': 0.0}
    assert protocol['reference_sha256'] == metrics_module.file_hash(moments)
    assert [p['protocol']['z_var'] for p in curve] == [p['z_var'] for p in curve]
    printed = [line for line in said if '12 images, batch' in line]
    assert len(printed) == 4 and all(
        f"sha256 {protocol['reference_sha256'][:16]}" in line and 'tf Inception' in line
        for line in printed)


def test_use_ema_loads_G_ema_and_eval_mode_is_deterministic(trained):
    root, _ = trained
    G_ema, _, _ = sample.load_generator(_sample_config(root, '--use_ema'), 'cpu')
    G, _, _ = sample.load_generator(_sample_config(root), 'cpu')
    saved = utils.torch_load(str(root / 'weights' / 'exp' / 'G_ema.pth'))
    assert all(torch.equal(v, saved[k]) for k, v in G_ema.state_dict().items())
    assert not torch.equal(G.linear.weight, G_ema.linear.weight)


class _LabelPainter(torch.nn.Module):
    """A G whose every pixel encodes its class: y -> the grey level y / 5 - 1."""
    dim_z = 4

    def __init__(self):
        super().__init__()
        self.shared = torch.nn.Identity()

    def forward(self, z, y):
        return (y.float() / 5 - 1).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)


def test_npz_labels_are_the_classes_each_image_was_drawn_for(tmp_path, capsys):
    # On CPU, y_ is redrawn in place each batch: labels stored as views of it would all
    # become the last batch's. 37 samples from batches of 8: the last batch is cut.
    G = _LabelPainter()
    z_, y_ = utils.prepare_z_y(8, G.dim_z, 10, device='cpu',
                               generator=torch.Generator().manual_seed(0))
    draw = functools.partial(utils.sample, G=G, z_=z_, y_=y_, config={})
    sample.write_npz(draw, 37, str(tmp_path / 'samples.npz'))
    with np.load(tmp_path / 'samples.npz') as f:
        x, y = f['x'], f['y']
    assert x.shape == (37, 3, 2, 2) and y.shape == (37,)
    assert np.array_equal(np.round(x[:, 0, 0, 0] / 25.5), y)
    assert len(set(y[:8].tolist())) > 1 and not np.array_equal(y[:8], y[8:16])
    # The progress bar ends at 37 of 37, not at the 40 images drawn.
    assert '37/37' in capsys.readouterr().err


def test_truncated_z_stays_inside_the_threshold():
    z, _ = utils.prepare_z_y(4000, 16, 10, device='cpu', truncation=0.5,
                             generator=torch.Generator().manual_seed(0))
    assert z.abs().max() <= 0.5
    assert z.std().item() == pytest.approx(0.2838, abs=0.01)  # std of N(0,1) cut at +-0.5
    z.sample_()
    assert z.abs().max() <= 0.5


def test_missing_checkpoint_and_bad_trunc_flags_exit_2(tmp_path, capsys):
    # The library functions raise; the entry points (run, main) exit with one line.
    with pytest.raises(utils.CheckpointError, match='no checkpoint G.pth'):
        sample.load_generator(_sample_config(tmp_path), 'cpu')
    with pytest.raises(SystemExit) as err:
        sample.run(_sample_config(tmp_path, '--sample_random'), log=lambda m: None)
    assert err.value.code == 2 and 'no checkpoint G.pth' in capsys.readouterr().err
    with pytest.raises(utils.ConfigError, match='--sample_trunc_curves'):
        sample.check_sample_flags(_sample_config(tmp_path, '--sample_trunc_curves', '1_0.1'))
    with pytest.raises(SystemExit) as err:
        sample.main(TRAIN + ['--base_root', str(tmp_path), '--sample_trunc_curves', '1_0.1'])
    assert err.value.code == 2 and '--sample_trunc_curves' in capsys.readouterr().err


def _legacy_folder(root, config):
    """A folder shaped like the original's released checkpoints, at a tiny width."""
    torch.manual_seed(1)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    folder = root / 'weights' / 'released'
    folder.mkdir(parents=True)
    for name, obj in (('G', G.state_dict()), ('G_ema', G.state_dict()), ('D', D.state_dict()),
                      ('G_optim', G.optim.state_dict()), ('D_optim', D.optim.state_dict())):
        torch.save(obj, folder / f'{name}.pth')
    legacy_config = {k: v for k, v in config.items() if k != 'data_root'}
    legacy_config.update(dataset_root='data', model='model', BN_sync=False,
                         experiment_name='Jade_BigGAN_B1_bs256x8_fp32',
                         G_activation=torch.nn.ReLU(inplace=True),
                         D_activation=torch.nn.ReLU(inplace=True))
    torch.save({'itr': 137500, 'epoch': 2, 'save_num': 0, 'save_best_num': 1,
                'best_IS': 91.509384, 'best_FID': torch.tensor(9.7711),
                'config': legacy_config}, folder / 'state_dict.pth')
    return G


def test_released_checkpoint_layout_samples_and_resumes(tmp_path):
    config = utils.parse_config(utils.prepare_parser(), TRAIN + ['--base_root', str(tmp_path)])
    G = _legacy_folder(tmp_path, config)
    flags = ['released' if f == 'exp' else f for f in TRAIN]
    parser = utils.add_sample_parser(utils.prepare_parser())
    sconfig = utils.parse_config(parser, flags + ['--base_root', str(tmp_path), '--use_ema',
                                                  '--sample_random', '--G_batch_size', '4'])
    sample.run(sconfig, log=lambda m: None)
    assert (tmp_path / 'samples' / 'released' / 'sample_137500' / 'random_samples.jpg').is_file()
    loaded, state, _ = sample.load_generator(sconfig, 'cpu')
    assert state['itr'] == 137500
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in loaded.state_dict().items())
    tconfig = utils.parse_config(utils.prepare_parser(), flags + [
        '--base_root', str(tmp_path), '--resume', '--num_iters', '137501'])
    final = train.run(tconfig, log=lambda m: None)
    assert final['itr'] == 137501
    resumed = utils.torch_load(str(tmp_path / 'weights' / 'released' / 'state_dict.pth'))
    assert resumed['itr'] == 137501 and resumed['best_IS'] == pytest.approx(91.509384)
    assert os.path.isfile(tmp_path / 'weights' / 'released' / 'G_copy0.pth')


def test_sampling_writes_its_own_folder_and_leaves_training_sheets_alone(trained):
    root, _ = trained
    training = root / 'samples' / 'exp' / '3'
    before = {p.name: p.read_bytes() for p in training.iterdir()}
    assert 'samples0.jpg' in before and 'interpZY0.jpg' in before
    sample.run(_sample_config(root, '--sample_sheets', '--sample_random', '--sample_npz',
                              '--sample_num_npz', '8', '--G_batch_size', '4'), log=lambda m: None)
    assert {p.name: p.read_bytes() for p in training.iterdir()} == before
    own = root / 'samples' / 'exp' / 'sample_3'
    assert {'samples0.jpg', 'random_samples.jpg', 'samples.npz'} <= set(os.listdir(own))


def test_sample_takes_the_model_flags_from_the_checkpoint(trained, capsys):
    root, _ = trained
    sample.main(['--experiment_name', 'exp', '--base_root', str(root), '--use_ema',
                 '--sample_random', '--G_batch_size', '4', '--sample_sheet_folder_num', '11'])
    assert (root / 'samples' / 'exp' / 'sample_11' / 'random_samples.jpg').is_file()
    parser = utils.add_sample_parser(utils.prepare_parser())
    config = utils.parse_config(parser, ['--experiment_name', 'exp', '--base_root', str(root)],
                                from_checkpoint='arch')
    assert (config['dataset'], config['G_ch'], config['D_ch'], config['G_attn']) == (
        'Digits32', 8, 8, '0')
    assert capsys.readouterr().err.count('saved') == 0
    # A typed flag wins, and a change of architecture is named in one line.
    config = utils.parse_config(parser, ['--experiment_name', 'exp', '--base_root', str(root),
                                         '--G_ch', '16', '--D_ch', '8'], from_checkpoint='arch')
    assert config['G_ch'] == 16
    lines = [line for line in capsys.readouterr().err.splitlines() if 'saved' in line]
    assert len(lines) == 1 and '--G_ch 16 (saved: 8)' in lines[0] and 'D_ch' not in lines[0]


def test_resume_takes_the_run_flags_from_the_checkpoint(trained, tmp_path, capsys):
    root, _ = trained
    shutil.copytree(root / 'weights', tmp_path / 'weights')
    train.main(['--experiment_name', 'exp', '--base_root', str(tmp_path), '--resume',
                '--num_iters', '4', '--num_workers', '0'])
    assert 'resumed from iteration 3' in capsys.readouterr().out
    state = utils.torch_load(str(tmp_path / 'weights' / 'exp' / 'state_dict.pth'))
    assert state['itr'] == 4
    assert (state['config']['G_ch'], state['config']['batch_size'], state['config']['ema']) == (
        8, 8, True)


def test_released_checkpoint_samples_without_its_flags(tmp_path):
    # Its config predates the parser: 'model': 'model' means BigGAN, dataset_root and
    # BN_sync are not flags, and the activations are pickled modules.
    config = utils.parse_config(utils.prepare_parser(), TRAIN + ['--base_root', str(tmp_path)])
    G = _legacy_folder(tmp_path, config)
    sample.main(['--experiment_name', 'released', '--base_root', str(tmp_path), '--use_ema',
                 '--sample_random', '--G_batch_size', '4'])
    assert (tmp_path / 'samples' / 'released' / 'sample_137500' / 'random_samples.jpg').is_file()
    parser = utils.add_sample_parser(utils.prepare_parser())
    sconfig = utils.parse_config(parser, ['--experiment_name', 'released', '--base_root',
                                          str(tmp_path), '--use_ema'], from_checkpoint='arch')
    assert sconfig['model'] == 'BigGAN' and sconfig['data_root'] == str(tmp_path / 'data')
    loaded, _, _ = sample.load_generator(sconfig, 'cpu')
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in loaded.state_dict().items())


def _recording_latents(monkeypatch):
    """Make sample.load_generator's G record every z it is called with."""
    seen = []
    load = sample.load_generator

    def load_and_record(config, device):
        G, state, name = load(config, device)
        G.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
        return G, state, name
    monkeypatch.setattr(sample, 'load_generator', load_and_record)
    return seen


def _endpoints(z):
    """The z a sheet drew: all of a class or random sheet's, an interpolation's end points."""
    if z.shape[0] == 16 * 10:  # 16 rows of 8 midpoints plus 2 ends
        return z.view(16, 10, -1)[:, [0, -1]].flatten(0, 1)
    return z


def test_every_sheet_draws_z_from_the_configured_distribution(trained, monkeypatch):
    root, _ = trained
    jobs = ['--sample_sheets', '--sample_interps', '--sample_random', '--G_batch_size', '20',
            '--sample_sheet_folder_num', '91']
    seen = _recording_latents(monkeypatch)
    sample.run(_sample_config(root, *jobs, '--truncation', '0.5'), log=lambda m: None)
    assert len(seen) == 10 + 3 + 1  # 10 rows of class sheets, 3 interpolation sheets, random
    assert all(z.abs().max() <= 0.5 for z in seen)
    seen.clear()
    sample.run(_sample_config(root, *jobs, '--z_var', '0.1'), log=lambda m: None)
    assert len(seen) == 14
    for z in seen:
        assert _endpoints(z).std().item() == pytest.approx(0.1, rel=0.15), z.shape


def test_training_sheets_draw_z_with_z_var(tmp_path):
    import train_fns
    config = utils.parse_config(utils.prepare_parser(), TRAIN + [
        '--base_root', str(tmp_path), '--z_var', '0.1', '--num_save_copies', '0'])
    torch.manual_seed(0)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    G_ema = BigGAN.Generator(**{**config, 'no_optim': True})
    draws = [utils.prepare_z_y(20, G.dim_z, 10, device='cpu', z_var=config['z_var'],
                               generator=utils.private_generator(seed, 'cpu'))
             for seed in (0, 1)]
    seen = []
    G.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    state = {'itr': 1, 'epoch': 0, 'save_num': 0, 'config': config}
    train_fns.save_and_sample(G, D, G_ema, *draws[0], *draws[1], state,
                              {**config, 'use_ema': False}, 'exp',
                              generator=utils.private_generator(2, 'cpu'))
    assert len(seen) == 1 + 10 + 3  # fixed sheet, 10 class-sheet rows, 3 interpolations
    for z in seen:
        assert _endpoints(z).std().item() == pytest.approx(0.1, rel=0.15), z.shape


class _TinyInception(torch.nn.Module):
    """images (B, 3, H, W) -> (pool (B, 8), logits (B, 5)): Inception's interface, cheaply."""

    def __init__(self):
        super().__init__()
        self.pool, self.logits = torch.nn.Linear(12, 8), torch.nn.Linear(12, 5)

    def forward(self, x):
        f = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return self.pool(f), self.logits(f)


def test_trunc_curves_vary_the_std_of_z_by_default_or_truncate(trained, monkeypatch):
    root, _ = trained
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *a, **k: _TinyInception())
    metric_flags = ['--num_inception_images', '10', '--G_batch_size', '10', '--no_fid']
    seen = _recording_latents(monkeypatch)
    for mode, check in (('std', lambda z, v: z.std().item() == pytest.approx(v, rel=0.1)),
                        ('truncate', lambda z, v: z.abs().max() <= v)):
        seen.clear()
        said = []
        argv = ['--sample_trunc_curves', '0.25_0.25_0.5', *metric_flags]
        if mode == 'truncate':
            argv += ['--sample_trunc_curves_mode', 'truncate']
        curve = sample.run(_sample_config(root, *argv), log=said.append)['trunc_curve']
        key, label = ('z_var', 'z std') if mode == 'std' else ('truncation', 'truncation')
        assert [(p['mode'], p[key]) for p in curve] == [(mode, 0.25), (mode, 0.5)]
        # Each line says which curve it is on.
        assert [re.search(rf'{label} (0\.\d+),', line).group(1) for line in said] == [
            '0.250', '0.500']
        # One batch per point (10 images, G batch 10): the z of that point's images.
        assert len(seen) == 2
        for z, point in zip(seen, curve):
            assert check(z, point[key]), (mode, point)
    assert utils.add_sample_parser(utils.prepare_parser()).parse_args(
        []).sample_trunc_curves_mode == 'std'


def test_offline_metrics_fail_before_sampling_naming_what_is_missing(tmp_path, trained,
                                                                     monkeypatch, capsys):
    root, weights = trained
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
    seen = _recording_latents(monkeypatch)
    nowhere = str(tmp_path / 'nowhere')
    for argv, expected in (
            # No moments and no weights: both, with how to get each.
            (['--data_root', nowhere], ['calculate_inception_moments.py --dataset Digits32',
                                        inception_utils.TORCHVISION_WEIGHTS_FILE,
                                        '--inception_weights']),
            # Moments there (tf), the weights file not: the weights, and where they go.
            (['--inception_network', 'tf', '--inception_weights', nowhere],
             [f'--inception_weights {nowhere}: no such file']),
            # A corrupt moments file is named too.
            (['--data_root', str(tmp_path), '--inception_network', 'tf', '--inception_weights',
              str(weights)], ['Digits32_inception_moments_tf.npz: cannot read it'])):
        (tmp_path / 'Digits32_inception_moments_tf.npz').write_bytes(b'not an npz')
        data_root = argv[1] if argv[0] == '--data_root' else None
        config = _sample_config(root, '--sample_npz', '--sample_num_npz', '5',
                                '--sample_inception_metrics', '--sample_sheet_folder_num', '92',
                                *(argv[2:] if data_root else argv))
        if data_root:
            config['data_root'] = data_root  # --base_root would peg a typed one
        with pytest.raises(SystemExit) as err:
            sample.run(config, log=lambda m: None)
        message = capsys.readouterr().err
        assert err.value.code == 2 and message.count('\n') == 1, message
        assert '--sample_inception_metrics: IS/FID cannot be computed' in message
        for part in expected:
            assert part in message, (part, message)
        assert seen == []  # G never ran: no image was sampled
