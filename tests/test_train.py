"""train.py end to end at tiny widths: outputs, exact resume, and refusals of bad input."""
import errno
import io
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
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


@pytest.mark.parametrize('multiepoch', [False, True])
def test_num_epochs_bounds_num_iters_and_says_so(tmp_path, multiepoch):
    # 40 images in batches of 8: 5 iterations an epoch, so --num_epochs 2 ends at iteration 10.
    extra = ['--data_subset', '40', '--save_every', '100', '--sv_log_interval', '0']
    if multiepoch:
        extra.append('--use_multiepoch_sampler')
    said = []
    state = train.run(_config(tmp_path, '--num_epochs', '2', '--num_iters', '20', *extra),
                      log=said.append)
    assert state['itr'] == 10
    assert [m for m in said if '--num_iters 20 is past the end of --num_epochs 2' in m
            and 'stops at iteration 10' in m]
    # Stopped by --num_iters on an epoch boundary, then resumed with more iterations: the
    # epochs still bound it (the resumed run used to train one epoch past --num_epochs).
    train.run(_config(tmp_path, '--num_epochs', '3', '--num_iters', '15', *extra, '--resume'),
              log=lambda m: None)
    state = train.run(_config(tmp_path, '--num_epochs', '3', '--num_iters', '40', *extra,
                              '--resume'), log=lambda m: None)
    assert state['itr'] == 15
    saved = utils.torch_load(str(tmp_path / 'weights' / 'exp' / 'state_dict.pth'))
    assert saved['itr'] == 15


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
    assert f"exp: no metric log {tmp_path / 'logs' / 'exp_log.jsonl'}; IS/FID not plotted" \
        in proc.stdout


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
    folder = tmp_path / 'data' / 'n01'
    folder.mkdir(parents=True)
    from PIL import Image
    for i in range(3):
        Image.new('RGB', (40, 36), (i * 40, 0, 0)).save(folder / f'{i}.png')
    _expect_refusal(capsys, tmp_path, ['--dataset', 'folder', '--resolution', '32',
                                       '--num_iters', '1'], '--batch_size')


def test_training_bar_keeps_the_losses_in_80_columns():
    out = io.StringIO()
    pbar = train.progress_bar(100000, 0, 'BigGAN_I128_hdf5_seed0_Gch96_Dch96_bs256', file=out,
                              ncols=80, dynamic_ncols=False, mininterval=0)
    train.show_losses(pbar, {'G_loss': 1.23456, 'D_loss_real': -0.4567, 'D_loss_fake': 12.5})
    pbar.update(900)
    pbar.close()
    line = out.getvalue().split('\r')[-1].strip()
    assert len(line) <= 80 and 'G +1.23 Dr -0.46 Df +12.50' in line, line


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


# ---------------------------------------------------------------------------
# One writer per experiment; readers change nothing
# ---------------------------------------------------------------------------
# train.py with every fsync slowed down, so that each save's in-flight window is wide.
_SLOW_FSYNC = '''
import os, runpy, sys, time
real_fsync = os.fsync
def slow_fsync(fd):
    time.sleep(float(os.environ['FSYNC_DELAY']))
    real_fsync(fd)
os.fsync = slow_fsync
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_a_polling_reader_and_a_second_trainer_leave_a_running_experiment_alone(
        tmp_path, capsys, monkeypatch):
    flags = BASE + ['--base_root', str(tmp_path), '--ema', '--save_every', '1',
                    '--num_save_copies', '10']
    writer = subprocess.Popen(
        [sys.executable, '-c', _SLOW_FSYNC, 'train.py', *flags, '--num_iters', '4'], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'FSYNC_DELAY': '0.03', 'OMP_NUM_THREADS': '1'})
    root = tmp_path / 'weights' / 'exp'
    lock_file = root / '.lock'
    while not (lock_file.is_file() and lock_file.read_text().split()[:1] == [str(writer.pid)]):
        assert writer.poll() is None, writer.communicate()
        time.sleep(0.05)
    # A second trainer on the same experiment is refused, naming the folder and the holder.
    with pytest.raises(SystemExit) as err:
        train.main(flags + ['--num_iters', '4', '--resume'])
    message = capsys.readouterr().err
    assert err.value.code == 2 and str(root) in message and f'pid {writer.pid}' in message
    # A reader polls the experiment while it trains: every set it reads is one save's.
    seen = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in ('remove', 'unlink', 'replace', 'rename', 'rmdir'):
            mp.setattr(os, name, lambda *a, **k: pytest.fail(f'a reader changed {a}'))
        while writer.poll() is None:
            if utils.checkpoint_exists(str(tmp_path / 'weights'), 'exp'):
                loaded = utils.load_checkpoint_set(str(tmp_path / 'weights'), 'exp')
                seen.setdefault(loaded['state_dict']['itr'], []).append(loaded)
            time.sleep(0.02)
    out, errors = writer.communicate()
    assert writer.returncode == 0, errors[-2000:]
    assert len(seen) >= 2, sorted(seen)  # the reader did meet the run at work
    # Copy k-1 holds iteration k: each read equals the set committed at its iteration.
    for itr, reads in seen.items():
        committed = utils.load_checkpoint_set(str(tmp_path / 'weights'), 'exp', f'copy{itr - 1}')
        assert committed['state_dict']['itr'] == itr
        parts = ('G', 'D', 'G_ema', 'G_optim', 'D_optim')
        for loaded in reads:
            _assert_identical({p: loaded[p] for p in parts}, {p: committed[p] for p in parts})
    # The trainer finished with one consistent set and nothing in flight.
    final = utils.load_checkpoint_set(str(tmp_path / 'weights'), 'exp')
    assert final['state_dict']['itr'] == 4
    assert not [n for n in os.listdir(root) if n.startswith('.') or 'partial' in n]


# ---------------------------------------------------------------------------
# Outputs checked before training; a full disk during a save
# ---------------------------------------------------------------------------
def test_too_little_space_for_a_checkpoint_set_is_refused_before_training(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checkpoints.shutil, 'disk_usage',
                        lambda path: SimpleNamespace(total=10**12, used=10**12, free=50_000))
    _expect_refusal(capsys, tmp_path, ['--num_iters', '2'], 'one checkpoint set needs')


class _Killed(BaseException):
    """Stands for a kill -9 at that point: nothing may catch it."""


def test_full_disk_during_a_save_exits_in_one_line_and_keeps_the_previous_set(
        tmp_path, capsys, monkeypatch):
    flags = BASE + ['--base_root', str(tmp_path), '--save_every', '1']
    train.main(flags + ['--num_iters', '1'])
    root = tmp_path / 'weights' / 'exp'
    files = {name: (root / name).read_bytes() for name in os.listdir(root)}
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and 'itr' in obj and obj['itr'] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', full_disk)
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        train.main(flags + ['--num_iters', '3', '--resume'])
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and 'No space left on device' in lines[-1]
    assert 'previous set is intact' in lines[-1]
    assert {name: (root / name).read_bytes() for name in os.listdir(root)} == files


# ---------------------------------------------------------------------------
# What a crash leaves: logs, temporaries, copy slots, sheets
# ---------------------------------------------------------------------------
def _kill_at_save(monkeypatch, itr, suffix='any'):
    """Make the save of iteration `itr` die (for suffix 'any', before anything is saved;
    else when utils.save_weights is called with that suffix)."""
    import train_fns
    real_save_and_sample, real_save_weights = train_fns.save_and_sample, utils.save_weights

    def save_and_sample(G, D, G_ema, z_, y_, fz, fy, state_dict, *args, **kwargs):
        if state_dict['itr'] == itr and suffix == 'any':
            raise _Killed()
        return real_save_and_sample(G, D, G_ema, z_, y_, fz, fy, state_dict, *args, **kwargs)

    def save_weights(G, D, state_dict, root, name, name_suffix=None, *args, **kwargs):
        if state_dict['itr'] == itr and name_suffix == suffix:
            raise _Killed()
        return real_save_weights(G, D, state_dict, root, name, name_suffix, *args, **kwargs)
    monkeypatch.setattr(train_fns, 'save_and_sample', save_and_sample)
    monkeypatch.setattr(utils, 'save_weights', save_weights)


def test_resume_after_a_crash_cuts_the_logs_and_removes_stale_temporaries(
        tmp_path, monkeypatch):
    with monkeypatch.context() as mp:
        _kill_at_save(mp, 4)
        with pytest.raises(_Killed):
            train.run(_config(tmp_path, '--num_iters', '4', '--save_every', '2'),
                      log=lambda m: None)
    logs = tmp_path / 'logs' / 'exp'
    # The dead run logged iterations 3 and 4, past its last checkpoint (2).
    assert _itrs(logs / 'G_loss.log') == [1, 2, 3, 4]
    root = tmp_path / 'weights' / 'exp'
    stale = root / 'G.pth.partial4242_1'
    stale.write_bytes(b'left by a killed save')
    train.run(_config(tmp_path, '--num_iters', '4', '--save_every', '2', '--resume'),
              log=lambda m: None)
    for name in ('G_loss.log', 'D_loss_real.log', 'G_linear_sv0.log'):
        expected = [1, 2, 3, 4] if 'loss' in name else [2, 4]
        assert _itrs(logs / name) == expected, name
    assert not stale.exists()


def _itrs(path):
    return [int(line.split(':')[0]) for line in path.read_text().splitlines()]


def test_metrics_log_is_cut_back_to_the_resumed_iteration(tmp_path):
    path = tmp_path / 'exp_log.jsonl'
    log = utils.MetricsLogger(str(path))
    for itr in (2, 4, 6):
        log.log(itr=itr, IS_mean=1.0)
    utils.MetricsLogger(str(path), start_itr=4)
    assert [json.loads(line)['itr'] for line in path.read_text().splitlines()] == [2, 4]


def test_a_kill_between_the_copy_and_the_latest_commit_skips_no_copy_slot(
        tmp_path, monkeypatch):
    flags = ['--save_every', '1', '--num_save_copies', '2']
    with monkeypatch.context() as mp:
        _kill_at_save(mp, 2, suffix=None)  # copy1 of iteration 2 is committed, latest is not
        with pytest.raises(_Killed):
            train.run(_config(tmp_path, '--num_iters', '3', *flags), log=lambda m: None)
    train.run(_config(tmp_path, '--num_iters', '3', '--resume', *flags), log=lambda m: None)
    weights = str(tmp_path / 'weights')
    itrs = {suffix: utils.load_checkpoint_set(weights, 'exp', suffix, ('state_dict',))[
        'state_dict']['itr'] for suffix in (None, 'copy0', 'copy1')}
    assert itrs == {None: 3, 'copy0': 3, 'copy1': 2}


def test_sample_sheets_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / 'samples' / 'fixed_samples1.jpg'
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    utils.save_sheet(images, str(path), nrow=2)
    good = path.read_bytes()
    real = utils.torchvision.utils.save_image

    def dies_half_way(tensor, fp, **kwargs):
        real(tensor, fp, **kwargs)
        with open(fp, 'r+b') as f:
            f.truncate(0)  # a torn write ...
        raise _Killed()    # ... and the process dies
    monkeypatch.setattr(utils.torchvision.utils, 'save_image', dies_half_way)
    with pytest.raises(_Killed):
        utils.save_sheet(-images, str(path), nrow=2)
    assert path.read_bytes() == good
    assert os.listdir(path.parent) == ['fixed_samples1.jpg']


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
