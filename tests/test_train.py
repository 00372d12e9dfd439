"""train.py end to end at tiny widths: outputs, exact resume, and refusals of bad input."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import train
import utils
from conftest import ROOT

BASE = ['--dataset', 'Digits32', '--G_ch', '8', '--D_ch', '8', '--batch_size', '8',
        '--num_D_steps', '1', '--G_attn', '0', '--D_attn', '0', '--num_workers', '0',
        '--shuffle', '--sv_log_interval', '2', '--experiment_name', 'exp']


def _config(tmp_path, *argv):
    return utils.parse_config(utils.prepare_parser(),
                              BASE + ['--base_root', str(tmp_path), *argv])


def _snapshot(root):
    """Every file under root with its size and modification time."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            out[path] = (st.st_size, st.st_mtime_ns)
    return out


def _weights(tmp_path, experiment='exp'):
    root = tmp_path / 'weights' / experiment
    return {part: utils.torch_load(str(root / f'{part}.pth'))
            for part in ('G', 'D', 'G_ema', 'G_optim', 'D_optim')}


def _assert_identical(a, b):
    for part in a:
        if part.endswith('optim'):
            sa, sb = a[part]['state'], b[part]['state']
            assert sa.keys() == sb.keys()
            for k in sa:
                for name in sa[k]:
                    assert torch.equal(sa[k][name], sb[k][name]), (part, k, name)
        else:
            for k in a[part]:
                assert torch.equal(a[part][k], b[part][k]), (part, k)


@pytest.mark.parametrize('multiepoch', [False, True])
def test_resume_is_bit_exact(tmp_path, multiepoch):
    extra = ['--ema', '--ema_start', '2', '--save_every', '3', '--G_eval_mode']
    if multiepoch:
        extra.append('--use_multiepoch_sampler')
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    train.run(_config(straight, '--num_iters', '6', *extra), log=lambda m: None)
    train.run(_config(split, '--num_iters', '3', *extra), log=lambda m: None)
    train.run(_config(split, '--num_iters', '6', '--resume', *extra), log=lambda m: None)
    a, b = _weights(straight), _weights(split)
    _assert_identical(a, b)
    state = utils.torch_load(str(split / 'weights' / 'exp' / 'state_dict.pth'))
    assert state['itr'] == 6
    # The split run's logs continue the first half's rather than restarting.
    lines = (split / 'logs' / 'exp' / 'G_loss.log').read_text().splitlines()
    assert [int(line.split(':')[0]) for line in lines] == [1, 2, 3, 4, 5, 6]


def test_command_line_run_writes_checkpoints_logs_and_sheets(tmp_path):
    cmd = [sys.executable, 'train.py', *BASE, '--base_root', str(tmp_path), '--num_iters', '4',
           '--save_every', '2', '--ema', '--use_ema', '--num_save_copies', '2']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights = sorted(os.listdir(tmp_path / 'weights' / 'exp'))
    for part in ('G', 'G_optim', 'D', 'D_optim', 'state_dict', 'G_ema'):
        assert {f'{part}.pth', f'{part}_copy0.pth', f'{part}_copy1.pth'} <= set(weights)
    assert not [n for n in weights if 'partial' in n or n.startswith('.commit')]
    logs = tmp_path / 'logs' / 'exp'
    for metric in ('G_loss', 'D_loss_real', 'D_loss_fake', 'G_linear_sv0', 'D_embed_sv0'):
        assert (logs / f'{metric}.log').is_file(), metric
    g_loss = (logs / 'G_loss.log').read_text().splitlines()
    assert [line.split(':')[0] for line in g_loss] == ['1', '2', '3', '4']
    assert np.isfinite([float(line.split(': ')[1]) for line in g_loss]).all()
    assert 'config:' in (logs / 'metalog.txt').read_text()
    samples = tmp_path / 'samples' / 'exp'
    for itr in (2, 4):
        assert (samples / f'fixed_samples{itr}.jpg').is_file()
        names = set(os.listdir(samples / str(itr)))
        assert {'samples0.jpg', 'interpZY0.jpg', 'interpY0.jpg', 'interpZ0.jpg'} <= names
    state = utils.torch_load(str(tmp_path / 'weights' / 'exp' / 'state_dict.pth'))
    assert state['itr'] == 4 and state['save_num'] == 0
    assert 'IS/FID are off' in proc.stderr + proc.stdout
    # The log plotter reads this real run's logs.
    plots = tmp_path / 'plots'
    proc = subprocess.run([sys.executable, 'logs/plot_logs.py', 'exp', '--logs_root',
                           str(tmp_path / 'logs'), '--out', str(plots)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(plots)) == ['exp_D_svs.png', 'exp_G_svs.png', 'exp_losses.png']
    for name in os.listdir(plots):
        with Image.open(plots / name) as im:
            assert im.size[0] > 100 and len(np.unique(np.asarray(im.convert('L')))) > 2
    assert 'exp: no metric log (IS/FID)' in proc.stdout


@pytest.mark.parametrize('script', ['train.py', 'sample.py', 'make_hdf5.py',
                                    'calculate_inception_moments.py'])
def test_entry_points_print_help(script):
    proc = subprocess.run([sys.executable, script, '--help'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and '--dataset' in proc.stdout, proc.stderr


def test_finishing_saves_once_more_and_sampling_leaves_training_state_alone(tmp_path):
    train.run(_config(tmp_path, '--num_iters', '3', '--save_every', '100'), log=lambda m: None)
    state = utils.torch_load(str(tmp_path / 'weights' / 'exp' / 'state_dict.pth'))
    assert state['itr'] == 3  # saved at the end although save_every was never reached


def _expect_refusal(capsys, tmp_path, argv, message, watch=None):
    watch = watch or tmp_path
    before = _snapshot(watch)
    with pytest.raises(SystemExit) as err:
        train.run(_config(tmp_path, *argv), log=lambda m: None)
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    after = _snapshot(watch)
    # Nothing that existed is changed or deleted (a new index cache may appear).
    assert {path: after.get(path) for path in before} == before
    assert not [p for p in after if p not in before and not p.endswith('_imgs.npz')]


def test_missing_or_empty_data_root_is_refused(tmp_path, capsys):
    _expect_refusal(capsys, tmp_path, ['--dataset', 'I32', '--num_iters', '1'],
                    os.path.join(str(tmp_path), 'data'))
    (tmp_path / 'data' / 'ImageNet').mkdir(parents=True)
    _expect_refusal(capsys, tmp_path, ['--dataset', 'I32', '--num_iters', '1'], 'ImageNet')


def test_hdf5_without_expected_datasets_is_refused(tmp_path, capsys):
    (tmp_path / 'data').mkdir()
    with h5py.File(tmp_path / 'data' / 'Digits32.hdf5', 'w') as f:
        f.create_dataset('images', data=np.zeros((4, 3, 32, 32), np.uint8))
    _expect_refusal(capsys, tmp_path, ['--dataset', 'Digits32_hdf5', '--num_iters', '1'],
                    'Digits32.hdf5')


def test_folder_with_non_image_files_is_refused(tmp_path, capsys):
    folder = tmp_path / 'data' / 'ImageNet' / 'n01'
    folder.mkdir(parents=True)
    (folder / 'notes.txt').write_text('not an image')
    _expect_refusal(capsys, tmp_path, ['--dataset', 'I32', '--num_iters', '1'], 'notes.txt')


def test_resume_without_checkpoint_is_refused(tmp_path, capsys):
    _expect_refusal(capsys, tmp_path, ['--resume', '--num_iters', '2'], 'no checkpoint')


def test_resume_with_another_architecture_is_refused_and_changes_nothing(tmp_path, capsys):
    train.run(_config(tmp_path, '--num_iters', '1'), log=lambda m: None)
    _expect_refusal(capsys, tmp_path, ['--resume', '--num_iters', '2', '--G_ch', '16'],
                    'does not fit the G built from these flags')


def test_batch_that_does_not_fit_the_dataset_is_refused(tmp_path, capsys):
    folder = tmp_path / 'data' / 'ImageNet' / 'n01'
    folder.mkdir(parents=True)
    from PIL import Image
    for i in range(3):
        Image.new('RGB', (40, 36), (i * 40, 0, 0)).save(folder / f'{i}.png')
    _expect_refusal(capsys, tmp_path, ['--dataset', 'I32', '--num_iters', '1'], '--batch_size')


def test_starting_over_an_existing_run_is_refused(tmp_path, capsys):
    train.run(_config(tmp_path, '--num_iters', '1'), log=lambda m: None)
    _expect_refusal(capsys, tmp_path, ['--num_iters', '2'], 'already holds checkpoints')


def test_saving_more_often_changes_neither_the_trajectory_nor_the_sheets(tmp_path):
    often, rarely = tmp_path / 'often', tmp_path / 'rarely'
    train.run(_config(often, '--num_iters', '4', '--save_every', '1', '--ema'),
              log=lambda m: None)
    train.run(_config(rarely, '--num_iters', '4', '--save_every', '4', '--ema'),
              log=lambda m: None)
    _assert_identical(_weights(often), _weights(rarely))
    for name in ('fixed_samples4.jpg', '4/samples0.jpg', '4/interpY0.jpg'):
        assert (often / 'samples' / 'exp' / name).read_bytes() == \
            (rarely / 'samples' / 'exp' / name).read_bytes(), name


def test_an_unusable_moments_file_refuses_training_before_anything_is_written(tmp_path,
                                                                              capsys):
    (tmp_path / 'data').mkdir()
    moments = tmp_path / 'data' / 'Digits32_inception_moments.npz'
    moments.write_bytes(b'not an npz')
    argv = ['--num_iters', '1', '--test_every', '1']
    _expect_refusal(capsys, tmp_path, argv, 'Digits32_inception_moments.npz: cannot read it')
    np.savez(moments, mu=np.zeros(3), sigma=np.eye(3))
    _expect_refusal(capsys, tmp_path, argv, '3-d moments, not the 2048-d')


def test_missing_metric_inputs_are_said_once_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))  # no Inception weights there
    said = []
    train.run(_config(tmp_path, '--num_iters', '1', '--test_every', '1'), log=said.append)
    off = [line for line in said if 'IS/FID are off' in line]
    assert len(off) == 1, said
    # Both what is missing and how to get each.
    assert 'calculate_inception_moments.py --dataset Digits32' in off[0]
    assert 'inception_v3_google-0cc3c7bd.pth' in off[0] and '--inception_weights' in off[0]
    assert utils.torch_load(str(tmp_path / 'weights' / 'exp' / 'state_dict.pth'))['itr'] == 1
