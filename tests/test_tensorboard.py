"""--tensorboard: the event files of a tiny CPU run killed after a checkpoint and resumed,
read back with TensorBoard's own reader, agree with the text logs and the sheets on disk."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from test_train import _config, _kill_at_save, _Killed

import tensorboard_logs
import train
import utils
from conftest import ROOT

LOSSES = ('G_loss', 'D_loss_real', 'D_loss_fake')
FLAGS = ['--save_every', '2', '--test_every', '2', '--tensorboard']


def _fake_metrics(config, log, ctx=None):
    """IS/FID stand-ins (no Inception weights here): each call of a run gives new values."""
    calls = []

    def get_metrics(sample, num_images, num_splits=10, prints=True, as_dict=False):
        calls.append(None)
        IS_mean, IS_std, FID = 2.0 + 0.25 * len(calls), 0.125, 80.0 - 3.5 * len(calls)
        if as_dict:
            return {'IS_mean': IS_mean, 'IS_std': IS_std, 'FID': FID}
        return IS_mean, IS_std, FID
    return get_metrics


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """Iterations 1-4 (checkpoint at 2, killed while saving 4), then --resume to 6."""
    root = tmp_path_factory.mktemp('tb')
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, 'prepare_inception', _fake_metrics)
        with mp.context() as killing:
            _kill_at_save(killing, 4)
            with pytest.raises(_Killed):
                train.run(_config(root, '--num_iters', '4', *FLAGS), log=lambda m: None)
        dead = _read(root)
        train.run(_config(root, '--num_iters', '6', '--resume', *FLAGS), log=lambda m: None)
    return root, dead


def _read(root):
    acc = event_accumulator.EventAccumulator(
        str(root / 'logs' / 'exp' / 'tensorboard'),
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0,
                       event_accumulator.TENSORS: 0})
    return acc.Reload()


def _steps(acc, tag):
    return [e.step for e in acc.Scalars(tag)]


def _text_log(path):
    itrs, values = [], []
    for line in path.read_text().splitlines():
        itr, value = line.split(':')
        itrs.append(int(itr))
        values.append(float(value))
    return itrs, values


def test_the_dead_run_wrote_past_its_checkpoint(run):
    _, dead = run
    # What the resume must hide: iterations 3 and 4 and the test at 4.
    assert _steps(dead, 'train/G_loss') == [1, 2, 3, 4]
    assert _steps(dead, 'metrics/IS_mean') == [2, 4]


def test_every_scalar_continues_across_the_resume_without_gap_or_repeat(run):
    root, _ = run
    acc = _read(root)
    logs = root / 'logs' / 'exp'
    svs = sorted(p.stem for p in logs.glob('*_sv*.log'))
    assert svs and any(s.startswith('G_') for s in svs) and any(s.startswith('D_') for s in svs)
    expected = ({f'train/{k}' for k in LOSSES} | {f'{s[0]}_svs/{s}' for s in svs}
                | {f'metrics/{k}' for k in ('IS_mean', 'IS_std', 'FID')}
                | {'speed/sec_per_itr', 'speed/img_per_sec', 'lr/G_lr', 'lr/D_lr'})
    assert set(acc.Tags()['scalars']) == expected
    for name in LOSSES:
        assert _steps(acc, f'train/{name}') == [1, 2, 3, 4, 5, 6], name
    for name in svs:
        assert _steps(acc, tensorboard_logs.tag_of(name)) == [2, 4, 6], name
    for tag in ('speed/sec_per_itr', 'speed/img_per_sec', 'lr/G_lr', 'lr/D_lr'):
        steps = _steps(acc, tag)
        assert steps == sorted(set(steps)) and steps[-1] == 6 and min(steps) >= 1, tag
    assert all(e.value > 0 for e in acc.Scalars('speed/sec_per_itr'))
    config = utils.torch_load(str(root / 'weights' / 'exp' / 'state_dict.pth'))['config']
    for net in ('G', 'D'):
        values = [e.value for e in acc.Scalars(f'lr/{net}_lr')]
        assert values == pytest.approx([config[f'{net}_lr']] * len(values), rel=1e-6)
    # Real images per second = images per iteration / seconds per iteration (8 * 1 * 1).
    speed = {e.step: e.value for e in acc.Scalars('speed/sec_per_itr')}
    for e in acc.Scalars('speed/img_per_sec'):
        assert e.value == pytest.approx(8 / speed[e.step], rel=1e-5)


def test_scalars_equal_the_text_logs(run):
    root, _ = run
    acc = _read(root)
    logs = root / 'logs' / 'exp'
    for path in logs.glob('*.log'):
        itrs, values = _text_log(path)
        events = acc.Scalars(tensorboard_logs.tag_of(path.stem))
        assert [e.step for e in events] == itrs, path.name
        # The text logs keep 4 significant digits (%3.3e); the events float32.
        np.testing.assert_allclose([e.value for e in events], values, rtol=6e-4, atol=1e-12)
    rows = [json.loads(line)
            for line in (root / 'logs' / 'exp_log.jsonl').read_text().splitlines()]
    assert [r['itr'] for r in rows] == [2, 4, 6]
    for key in ('IS_mean', 'IS_std', 'FID'):
        events = acc.Scalars(f'metrics/{key}')
        assert [e.step for e in events] == [2, 4, 6]
        np.testing.assert_allclose([e.value for e in events], [r[key] for r in rows], rtol=1e-6)


def test_sheets_are_the_files_of_every_save(run):
    root, _ = run
    acc = _read(root)
    samples = root / 'samples' / 'exp'
    assert set(acc.Tags()['images']) == {'samples/fixed_z', 'samples/classes0'}
    for tag, name in (('samples/fixed_z', 'fixed_samples{}.jpg'),
                      ('samples/classes0', '{}/samples0.jpg')):
        events = acc.Images(tag)
        assert [e.step for e in events] == [2, 4, 6], tag
        for e in events:
            path = samples / name.format(e.step)
            assert e.encoded_image_string == path.read_bytes()
            with Image.open(io.BytesIO(e.encoded_image_string)) as image, \
                    Image.open(path) as on_disk:
                pixels = np.asarray(image.convert('RGB'))
                assert pixels.shape == (e.height, e.width, 3)
                assert np.array_equal(pixels, np.asarray(on_disk.convert('RGB')))
    # The fixed sheet: 8 samples of 32x32, 2 per row, 2-pixel padding.
    assert (acc.Images('samples/fixed_z')[0].width, acc.Images('samples/fixed_z')[0].height) \
        == (2 * 34 + 2, 4 * 34 + 2)


def test_config_text_once_per_start(run):
    root, _ = run
    acc = _read(root)
    texts = acc.Tensors('config/text_summary')
    # Written at the first iteration of each start: 1, and 3 after the resume from 2.
    assert [t.step for t in texts] == [1, 3]
    text = texts[-1].tensor_proto.string_val[0].decode()
    assert '| G_ch | `8` |' in text and '| tensorboard | `True` |' in text


def test_tensorboard_is_local_to_an_invocation(run):
    root, _ = run
    # The run was saved with --tensorboard; resuming it without the flag turns it off,
    # and the experiment's name does not depend on it.
    base = ['--dataset', 'Digits32', '--G_ch', '8', '--D_ch', '8', '--base_root', str(root)]
    parser = utils.prepare_parser()
    named = utils.parse_config(parser, base + ['--experiment_name', 'exp', '--resume'],
                               from_checkpoint='resume')
    assert named['tensorboard'] is False and named['G_ch'] == 8
    on = utils.parse_config(parser, base + ['--tensorboard'])
    off = utils.parse_config(parser, base)
    assert utils.name_from_config(on) == utils.name_from_config(off)


def test_plot_logs_reads_the_events_into_the_same_series(run):
    root, _ = run
    from test_plot_logs import _plot_logs
    plot_logs = _plot_logs()
    logs = str(root / 'logs')
    text = plot_logs.load(plot_logs.resolve('exp', logs))
    events = plot_logs.load(plot_logs.resolve('exp', logs), from_tensorboard=True)
    assert events.losses.keys() == text.losses.keys() == set(LOSSES)
    for name in LOSSES:
        assert events.losses[name][0] == text.losses[name][0]
        np.testing.assert_allclose(events.losses[name][1], text.losses[name][1], rtol=6e-4)
    for net in ('G', 'D'):
        assert events.svs[net].keys() == text.svs[net].keys()
        for name, (itrs, values) in text.svs[net].items():
            assert events.svs[net][name][0] == itrs
            np.testing.assert_allclose(events.svs[net][name][1], values, rtol=6e-4)
    assert [r['itr'] for r in events.rows] == [r['itr'] for r in text.rows] == [2, 4, 6]
    for a, b in zip(events.rows, text.rows):
        for key in ('IS_mean', 'IS_std', 'FID'):
            assert a[key] == pytest.approx(b[key], rel=1e-6)


def test_plot_logs_command_line_from_tensorboard(run, tmp_path):
    import subprocess
    import sys
    root, _ = run
    out = {}
    for source, flags in (('text', []), ('events', ['--from_tensorboard'])):
        proc = subprocess.run([sys.executable, 'logs/plot_logs.py', 'exp', '--logs_root',
                               str(root / 'logs'), '--out', str(tmp_path / source), *flags],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and not proc.stderr, proc.stderr
        assert sorted(os.listdir(tmp_path / source)) == [
            'IS_FID.png', 'exp_D_svs.png', 'exp_G_svs.png', 'exp_losses.png']
        out[source] = proc.stdout.splitlines()[0]
    # The same best results, read from either source.
    assert out['events'] == out['text'] == 'exp: best IS 2.500 at itr 6; best FID 73.000 at itr 6'


def test_a_new_run_replaces_earlier_event_files(tmp_path):
    config = {'logs_root': str(tmp_path / 'logs'), 'samples_root': str(tmp_path / 'samples'),
              'batch_size': 4, 'num_D_steps': 2, 'num_D_accumulations': 1}
    for _ in range(2):
        board = tensorboard_logs.TensorBoardLogger(config, 'exp')
        board.log_many([1, 2], {'G_loss': [0.5, 0.25]})
        board.close()
    files = os.listdir(tmp_path / 'logs' / 'exp' / 'tensorboard')
    assert len(files) == 1 and files[0].startswith('events.out.tfevents.')
    acc = event_accumulator.EventAccumulator(str(tmp_path / 'logs' / 'exp' / 'tensorboard'))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars('train/G_loss')] == [(1, 0.5), (2, 0.25)]


def test_tensorboard_without_the_package_is_refused_naming_the_fix(monkeypatch, capsys):
    real = utils.importlib.util.find_spec
    monkeypatch.setattr(utils.importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'tensorboard' else real(name, *a))
    with pytest.raises(SystemExit) as err:
        utils.parse_config(utils.prepare_parser(), ['--dataset', 'C10', '--tensorboard'])
    assert err.value.code == 2
    assert '--tensorboard: the tensorboard package is not installed; pip install tensorboard' \
        in capsys.readouterr().err


def test_plot_logs_from_tensorboard_without_the_package_names_the_fix(tmp_path, monkeypatch,
                                                                      capsys):
    from test_plot_logs import _plot_logs
    plot_logs = _plot_logs()
    (tmp_path / 'exp' / 'tensorboard').mkdir(parents=True)
    real = plot_logs.importlib.util.find_spec
    monkeypatch.setattr(plot_logs.importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'tensorboard' else real(name, *a))
    status = plot_logs.main(['exp', '--logs_root', str(tmp_path), '--out',
                             str(tmp_path / 'plots'), '--from_tensorboard'])
    assert status == 2
    assert 'the tensorboard package is not installed; pip install tensorboard' \
        in capsys.readouterr().err
    assert not (tmp_path / 'plots').exists()


def test_ADA_p_reaches_the_board_and_plot_logs_reads_it_from_either_source(tmp_path):
    """ADA_p, logged with the losses, is a train/ scalar like them; plot_logs gives it its own
    series (not a loss) from the text log and from the events alike."""
    train.run(_config(tmp_path, '--num_iters', '3', '--tensorboard', '--ADA_target', '0.01',
                      '--ADA_interval', '1', '--ADA_kimg', '0.02'), log=lambda m: None)
    itrs, values = _text_log(tmp_path / 'logs' / 'exp' / 'ADA_p.log')
    events = _read(tmp_path).Scalars('train/ADA_p')
    assert [e.step for e in events] == itrs == [1, 2, 3]
    np.testing.assert_allclose([e.value for e in events], values, rtol=6e-4, atol=1e-12)
    from test_plot_logs import _plot_logs
    plot_logs = _plot_logs()
    for from_tensorboard in (False, True):
        exp = plot_logs.load(plot_logs.resolve('exp', str(tmp_path / 'logs')), from_tensorboard)
        assert 'ADA_p' not in exp.losses and exp.ada_p[0] == itrs, from_tensorboard
        np.testing.assert_allclose(exp.ada_p[1], values, rtol=6e-4, atol=1e-12)
