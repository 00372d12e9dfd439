"""A table of bad inputs through the command lines of every script.

Each must exit with status 2 and one 'error:' line naming the flag or file, print no
traceback (nor advice to unpickle), and leave every file and folder that existed before
unchanged and add none.

Most cases call the script's main(argv) in this process: that is the command line minus
the interpreter's start-up, and an exception escaping main() is exactly what would print a
traceback there. Cases marked 'sub' run as real subprocesses (at least one per script), and
so do the 'unpriv' cases, which need a process that file permissions apply to (see
conftest.run_unprivileged); a subprocess costs 2-3 s here, the in-process cases far less.
"""
import hashlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import h5py
import numpy as np
import pytest
import torch
from fixtures.fake_data import write_png
from PIL import Image

import calculate_inception_moments
import inception_utils
import make_hdf5
import sample
import train
import utils
from conftest import ROOT, run_unprivileged

sys.path.insert(0, str(ROOT / 'TFHub'))
sys.path.insert(0, str(ROOT / 'logs'))
import converter  # noqa: E402
import plot_logs  # noqa: E402

SCRIPTS = {'train.py': train, 'sample.py': sample, 'make_hdf5.py': make_hdf5,
           'calculate_inception_moments.py': calculate_inception_moments,
           'inception_utils.py': inception_utils, 'logs/plot_logs.py': plot_logs,
           'TFHub/converter.py': converter}
MODEL = ['--dataset', 'Digits32', '--G_ch', '8', '--D_ch', '8', '--batch_size', '8',
         '--num_D_steps', '1', '--G_attn', '0', '--D_attn', '0', '--num_workers', '0',
         '--experiment_name', 'exp', '--ema']
# Nothing a refusal prints may look like a crash or advise an unsafe load.
FORBIDDEN = ('Traceback', 'weights_only=False', 'allow_pickle')


@dataclass
class Case:
    id: str
    script: str
    setup: object          # (world folder, trained run folder) -> argv
    needles: tuple         # each must appear in the one error line
    mode: str = 'in'       # 'in' (main(argv) here), 'sub' or 'unpriv' (subprocesses)
    deny: tuple = ()       # (path under the world, mode) set for the run only
    stub_inception: bool = False  # the Inception weights are not the input under test
    hold_lock: bool = False       # another writer holds the experiment


def do(*steps):
    """The last argument (the argv), after the others were evaluated for their effects."""
    return steps[-1]


def T(w, *extra):
    return MODEL + ['--base_root', str(w), '--num_iters', '2', *extra]


def S(w, *extra):
    return MODEL + ['--base_root', str(w), '--sample_random', *extra]


def C(w, *extra):
    return ['--dataset', 'Digits32', '--data_root', str(w / 'data'), '--num_workers', '0',
            *extra]


def M(w, *extra):
    return ['--data_root', str(w / 'data'), '--num_workers', '0', '--batch_size', '4', *extra]


def P(w, *extra):
    write(w / 'logs' / 'exp' / 'G_loss.log', b'1: 0.5\n2: 0.4\n')
    return ['exp', '--logs_root', str(w / 'logs'), '--out', str(w / 'plots'), *extra]


def I(w, *extra):  # noqa: E743
    np.savez(w / 'ok.npz', x=np.zeros((2, 8, 8, 3), np.uint8))
    return ['--samples', str(w / 'ok.npz'), *extra]


def run_copy(w, t):
    """A copy of the trained run in `w`; returns its weights folder."""
    shutil.copytree(t, w, dirs_exist_ok=True)
    return w / 'weights' / 'exp'


def folder(w, bad=None, data=b''):
    """w/data/ImageNet/c/<i>.png, three good images, plus `bad` holding `data`."""
    for i in range(3):
        write_png(str(w / 'data' / 'ImageNet' / 'c' / f'{i}.png'), 40, 36, seed=i)
    if bad:
        write(w / 'data' / 'ImageNet' / 'c' / bad, data)


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def image_bytes(kind, cut=None):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, kind)
    return buf.getvalue()[:cut]


def h5_without_imgs(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, 'w') as f:
        f.create_dataset('images', data=np.zeros((4, 3, 32, 32), np.uint8))


class _Evil:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def evil_file(path):
    torch.save({'itr': 1, 'payload': _Evil()}, path)


def resume_with(change):
    """The trained run with one of its files changed by change(weights folder), resumed."""
    return lambda w, t: do(change(run_copy(w, t)), T(w, '--resume'))


GARBAGE_PNG = b'\x89PNG\r\n\x1a\n garbage'
EXP = 'weights/exp'

CASES = [
    # train.py: flags
    Case('train-save_every', 'train.py', lambda w, t: T(w, '--save_every', '0'),
         ('--save_every',)),
    Case('train-num_workers', 'train.py', lambda w, t: T(w, '--num_workers', '-1'),
         ('--num_workers',)),
    Case('train-G_lr', 'train.py', lambda w, t: T(w, '--G_lr', '-1e-4'), ('--G_lr',)),
    Case('train-D_lr', 'train.py', lambda w, t: T(w, '--D_lr', '-1'), ('--D_lr',)),
    Case('train-seed', 'train.py', lambda w, t: T(w, '--seed', '-1'), ('--seed',)),
    Case('train-nothing-to-train', 'train.py',
         lambda w, t: T(w, '--num_epochs', '0', '--num_iters', '0'), ('--num_epochs',)),
    Case('train-dataset', 'train.py', lambda w, t: T(w, '--dataset', 'NOPE'), ('--dataset',)),
    Case('train-G_attn', 'train.py', lambda w, t: T(w, '--G_attn', '7'), ('--G_attn',)),
    # train.py: checkpoints and the experiment folder
    Case('train-resume-nothing', 'train.py', lambda w, t: T(w, '--resume'),
         ('no checkpoint G.pth',)),
    Case('train-state-list', 'train.py',
         resume_with(lambda e: torch.save([1, 2, 3], e / 'state_dict.pth')),
         ('state_dict.pth', 'holds a list')),
    Case('train-state-is-G', 'train.py',
         resume_with(lambda e: shutil.copy(e / 'G.pth', e / 'state_dict.pth')),
         ('state_dict.pth', 'no itr')),
    Case('train-state-pickle', 'train.py', resume_with(lambda e: evil_file(e / 'state_dict.pth')),
         ('state_dict.pth', 'weights-only')),
    Case('train-optim-misfit', 'train.py',
         resume_with(lambda e: shutil.copy(e / 'D_optim.pth', e / 'G_optim.pth')),
         ('G_optim.pth', 'does not fit')),
    Case('train-G-truncated', 'train.py',
         resume_with(lambda e: write(e / 'G.pth', (e / 'G.pth').read_bytes()[:3000])),
         ('G.pth', 'not a readable checkpoint')),
    Case('train-record-shape', 'train.py',
         resume_with(lambda e: write(e / '.commit_latest.json', b'[["../../G.pth", "x"]]')),
         ('.commit_latest.json', 'not a commit record')),
    Case('train-other-architecture', 'train.py',
         lambda w, t: do(run_copy(w, t), T(w, '--resume', '--G_ch', '16')),
         ('G.pth does not fit',)),
    Case('train-fresh-over-run', 'train.py', lambda w, t: do(run_copy(w, t), T(w)),
         ('already holds checkpoints',)),
    Case('train-missing-copy', 'train.py',
         lambda w, t: do(run_copy(w, t), T(w, '--load_weights', 'copy7')), ('G_copy7.pth',)),
    Case('train-second-writer', 'train.py', lambda w, t: do(run_copy(w, t), T(w, '--resume')),
         ('in use by another training run', f'pid {os.getpid()}'), hold_lock=True),
    Case('train-weights_root-file', 'train.py',
         lambda w, t: do(write(w / 'wfile', b''), MODEL + [
             '--weights_root', str(w / 'wfile'), '--logs_root', str(w / 'logs'),
             '--samples_root', str(w / 'samples'), '--num_iters', '1']),
         ('--weights_root', 'not a folder')),
    Case('train-readonly-samples', 'train.py', lambda w, t: do((w / 'samples').mkdir(), T(w)),
         ('--samples_root', 'not writable'), mode='unpriv', deny=(('samples', 0o555),)),
    # train.py: data
    Case('train-no-data_root', 'train.py', lambda w, t: T(w, '--dataset', 'I32'),
         ('--data_root', 'no such folder')),
    Case('train-truncated-jpeg', 'train.py',
         lambda w, t: do(folder(w, 'bad.jpg', image_bytes('JPEG', 400)), T(w, '--dataset', 'I32')),
         ('bad.jpg', 'cannot read this image')),
    Case('train-not-an-image', 'train.py',
         lambda w, t: do(folder(w, 'notes.txt', b'hello'), T(w, '--dataset', 'I32')),
         ('notes.txt',)),
    Case('train-hdf5-layout', 'train.py',
         lambda w, t: do(h5_without_imgs(w / 'data' / 'Digits32.hdf5'),
                         T(w, '--dataset', 'Digits32_hdf5')), ('Digits32.hdf5', "no 'imgs'")),
    Case('train-image-permission', 'train.py',
         lambda w, t: do(folder(w, 'x.png', image_bytes('PNG')), T(w, '--dataset', 'I32')),
         ('x.png', 'permission denied'), mode='unpriv', deny=(('data/ImageNet/c/x.png', 0),)),
    Case('train-class-permission', 'train.py',
         lambda w, t: do(folder(w), T(w, '--dataset', 'I32')),
         ('ImageNet/c', 'permission denied'), mode='unpriv', deny=(('data/ImageNet/c', 0),)),
    Case('train-data-permission', 'train.py', lambda w, t: do(folder(w), T(w, '--dataset', 'I32')),
         ('ImageNet', 'permission denied'), mode='unpriv', deny=(('data', 0),)),
    # sample.py
    Case('sample-nothing', 'sample.py', lambda w, t: S(w), ('no checkpoint G.pth',), mode='sub'),
    Case('sample-trunc-curves', 'sample.py', lambda w, t: S(w, '--sample_trunc_curves', '1_0.1'),
         ('--sample_trunc_curves',)),
    Case('sample-truncation', 'sample.py', lambda w, t: S(w, '--truncation', '-1'),
         ('--truncation',)),
    Case('sample-num-npz', 'sample.py',
         lambda w, t: S(w, '--sample_npz', '--sample_num_npz', '0'), ('--sample_num_npz',)),
    Case('sample-state-garbage', 'sample.py',
         lambda w, t: do(write(run_copy(w, t) / 'state_dict.pth', b'garbage'), S(w)),
         ('state_dict.pth',)),
    Case('sample-no-G_ema', 'sample.py',
         lambda w, t: do(os.remove(run_copy(w, t) / 'G_ema.pth'), S(w, '--use_ema')),
         ('G_ema.pth',)),
    # make_hdf5.py
    Case('hdf5-no-data_root', 'make_hdf5.py', lambda w, t: M(w, '--dataset', 'I32'),
         ('--data_root',)),
    Case('hdf5-chunk_size', 'make_hdf5.py',
         lambda w, t: M(w, '--dataset', 'Digits32', '--chunk_size', '0'), ('--chunk_size',)),
    Case('hdf5-exists', 'make_hdf5.py',
         lambda w, t: do(write(w / 'data' / 'Digits32.hdf5', b'mine'),
                         M(w, '--dataset', 'Digits32')), ('Digits32.hdf5', '--overwrite')),
    Case('hdf5-already-hdf5', 'make_hdf5.py', lambda w, t: M(w, '--dataset', 'I32_hdf5'),
         ('--dataset',)),
    Case('hdf5-corrupt-image', 'make_hdf5.py',
         lambda w, t: do(folder(w, 'bad.png', GARBAGE_PNG), M(w, '--dataset', 'I32')),
         ('bad.png',)),
    Case('hdf5-image-permission', 'make_hdf5.py',
         lambda w, t: do(folder(w, 'x.png', image_bytes('PNG')), M(w, '--dataset', 'I32')),
         ('x.png', 'permission denied'), mode='unpriv', deny=(('data/ImageNet/c/x.png', 0),)),
    # calculate_inception_moments.py
    Case('moments-no-weights', 'calculate_inception_moments.py',
         lambda w, t: C(w, '--inception_weights', str(w / 'missing.pth')), ('missing.pth',),
         mode='sub'),
    Case('moments-garbage-weights', 'calculate_inception_moments.py',
         lambda w, t: do(write(w / 'garbage.pth', b'garbage'),
                         C(w, '--inception_weights', str(w / 'garbage.pth'))), ('garbage.pth',)),
    Case('moments-pickle-weights', 'calculate_inception_moments.py',
         lambda w, t: do(evil_file(w / 'evil.pth'),
                         C(w, '--inception_weights', str(w / 'evil.pth'))),
         ('evil.pth', 'weights-only')),
    Case('moments-corrupt-image', 'calculate_inception_moments.py',
         lambda w, t: do(folder(w, 'bad.png', GARBAGE_PNG), C(w, '--dataset', 'I32')),
         ('bad.png',), stub_inception=True),
    Case('moments-dataset', 'calculate_inception_moments.py',
         lambda w, t: C(w, '--dataset', 'NOPE'), ('--dataset',)),
    # inception_utils.py
    Case('iu-missing', 'inception_utils.py', lambda w, t: ['--samples', str(w / 'none.npz')],
         ('none.npz',)),
    Case('iu-not-npz', 'inception_utils.py',
         lambda w, t: do(write(w / 'text.npz', b'hello'), ['--samples', str(w / 'text.npz')]),
         ('text.npz',)),
    Case('iu-pickled', 'inception_utils.py',
         lambda w, t: do(np.savez(w / 'obj.npz', x=np.array([{'a': 1}], dtype=object)),
                         ['--samples', str(w / 'obj.npz')]),
         ('obj.npz', 'never loaded'), mode='sub'),
    Case('iu-keys', 'inception_utils.py',
         lambda w, t: do(np.savez(w / 'keys.npz', y=np.zeros(3)),
                         ['--samples', str(w / 'keys.npz')]), ('keys.npz',)),
    Case('iu-dtype', 'inception_utils.py',
         lambda w, t: do(np.savez(w / 'float.npz', x=np.zeros((2, 8, 8, 3), np.float32)),
                         ['--samples', str(w / 'float.npz')]), ('float.npz',)),
    Case('iu-batch_size', 'inception_utils.py', lambda w, t: I(w, '--batch_size', '0'),
         ('--batch_size',)),
    Case('iu-device', 'inception_utils.py', lambda w, t: I(w, '--device', 'toaster'),
         ('--device',)),
    Case('iu-bad-reference', 'inception_utils.py',
         lambda w, t: do(np.savez(w / 'ref.npz', mu=np.zeros(3), sigma=np.eye(4)),
                         I(w, '--reference', str(w / 'ref.npz'))), ('ref.npz',)),
    Case('iu-corrupt-image', 'inception_utils.py',
         lambda w, t: do(write(w / 'imgs' / 'a_bad.png', GARBAGE_PNG),
                         write_png(str(w / 'imgs' / 'b.png'), 8, 8, 0),
                         ['--samples', str(w / 'imgs'), '--num_splits', '2']),
         ('a_bad.png',), stub_inception=True),
    # logs/plot_logs.py
    Case('plot-unknown', 'logs/plot_logs.py',
         lambda w, t: ['nope', '--logs_root', str(w / 'logs')], ('nope',), mode='sub'),
    Case('plot-smooth', 'logs/plot_logs.py', lambda w, t: P(w, '--smooth', '1.5'),
         ('--smooth',)),
    Case('plot-top_sv', 'logs/plot_logs.py', lambda w, t: P(w, '--top_sv', '-1'),
         ('--top_sv',)),
    Case('plot-out-file', 'logs/plot_logs.py', lambda w, t: do(write(w / 'plots', b''), P(w)),
         ('--out',)),
    # TFHub/converter.py
    Case('tfhub-truncation', 'TFHub/converter.py', lambda w, t: ['--truncation', '2'],
         ('--truncation',)),
    Case('tfhub-module_path', 'TFHub/converter.py', lambda w, t: ['--module_path', 'x'],
         ('--module_path',)),
    Case('tfhub-garbage-h5', 'TFHub/converter.py',
         lambda w, t: do(write(w / 'pw' / 'biggan-128.h5', b'garbage'),
                         ['-r', '128', '--weights_dir', str(w / 'pw')]),
         ('biggan-128.h5',), mode='sub'),
    Case('tfhub-no-variables', 'TFHub/converter.py',
         lambda w, t: do(h5_without_imgs(w / 'pw' / 'biggan-128.h5'),
                         ['-r', '128', '--weights_dir', str(w / 'pw')]), ('biggan-128.h5',)),
    Case('tfhub-weights_dir-file', 'TFHub/converter.py',
         lambda w, t: do(write(w / 'pw', b''), ['-r', '128', '--weights_dir', str(w / 'pw')]),
         ('--weights_dir',)),
]


class _StubInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # it has a device

    def forward(self, x):
        return x.new_zeros(len(x), 2048), x.new_zeros(len(x), 1008)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A one-iteration run (with EMA) whose folders the checkpoint cases copy."""
    root = tmp_path_factory.mktemp('trained')
    config = utils.parse_config(utils.prepare_parser(),
                                MODEL + ['--base_root', str(root), '--num_iters', '1'])
    train.run(config, log=lambda m: None)
    return root


def _tree(root):
    """{relative path: content hash} of every file and folder under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = 'dir'
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, 'rb') as f:
                    out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
            except PermissionError:
                st = os.stat(path)
                out[os.path.relpath(path, root)] = ('unreadable', st.st_size, st.st_mtime_ns)
    return out


def _run_in_process(script, argv, capsys):
    capsys.readouterr()
    try:
        status = SCRIPTS[script].main(argv)
    except SystemExit as err:
        status = err.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize('case', CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(case, trained, tmp_path,
                                                              monkeypatch, capsys):
    w = tmp_path / 'w'
    w.mkdir()
    monkeypatch.chdir(w)
    argv = case.setup(w, trained)
    lock = utils.ExperimentLock(str(w / EXP)).acquire() if case.hold_lock else None
    try:
        before = _tree(w)
        modes = [(w / path, os.stat(w / path).st_mode) for path, _ in case.deny]
        for path, mode in case.deny:
            os.chmod(w / path, mode)
        try:
            if case.mode == 'in':
                if case.stub_inception:
                    monkeypatch.setattr(inception_utils, 'load_inception_net',
                                        lambda *a, **k: _StubInception())
                status, err = _run_in_process(case.script, argv, capsys)
            else:
                runner = run_unprivileged if case.mode == 'unpriv' else subprocess.run
                proc = runner([sys.executable, str(ROOT / case.script), *argv], cwd=w,
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, 'OMP_NUM_THREADS': '1'})
                status, err = proc.returncode, proc.stderr
        finally:
            for path, mode in reversed(modes):
                os.chmod(path, mode)
        after = _tree(w)
    finally:
        if lock is not None:
            lock.release()
    assert status == 2, err
    assert not [word for word in FORBIDDEN if word in err], err
    errors = [line for line in err.splitlines() if 'error:' in line]
    assert len(errors) == 1, err
    assert all(needle in errors[0] for needle in case.needles), errors[0]
    assert after == before, 'files changed'
    assert not (w / 'pwned').exists()


def test_the_table_covers_every_script_with_enough_cases():
    assert len(CASES) >= 30
    assert {case.script for case in CASES} == set(SCRIPTS)
    assert {case.script for case in CASES if case.mode != 'in'} == set(SCRIPTS)
