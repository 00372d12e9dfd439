"""logs/plot_logs.py on logs written in train.py's formats."""
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

SCRIPT = ROOT / 'logs' / 'plot_logs.py'


def _write_metric_log(folder, metric, itrs, values, logstyle='%3.3e'):
    with open(folder / f'{metric}.log', 'a') as f:
        for itr, value in zip(itrs, values):
            f.write('%d: %s\n' % (itr, logstyle % value))


def _write_run(root, name, rows=None, folder=True, seed=0):
    """A short synthetic run: metric rows (jsonl) and loss / singular value logs."""
    rng = np.random.default_rng(seed)
    if rows is not None:
        with open(root / f'{name}_log.jsonl', 'w') as f:
            for row in rows:
                f.write(json.dumps(row) + '\n')
    if folder:
        exp = root / name
        exp.mkdir(parents=True)
        itrs = list(range(1, 301))
        for metric in ('G_loss', 'D_loss_real', 'D_loss_fake'):
            _write_metric_log(exp, metric, itrs, rng.normal(1.0, 0.3, len(itrs)))
        sv_itrs = list(range(10, 301, 10))
        for net, keys in (('G', [f'blocks_{i}_0_conv{j}' for i in range(4) for j in (1, 2)]
                           + ['linear', 'output_layer_2']),
                          ('D', [f'blocks_{i}_0_conv1' for i in range(5)] + ['linear'])):
            for key in keys:
                start = rng.uniform(0.5, 5.0)
                _write_metric_log(exp, f'{net}_{key}_sv0', sv_itrs,
                                  start * np.exp(np.linspace(0, 1, len(sv_itrs))))
        (exp / 'metalog.txt').write_text('datetime: 2024-01-01\nconfig: {}\n')


def _rows(seed, with_fid=True, nan_at=None):
    rng = np.random.default_rng(seed)
    rows = []
    for k, itr in enumerate(range(500, 4001, 500)):
        row = {'itr': itr, 'IS_mean': float(rng.uniform(2, 9)), 'IS_std': float(rng.uniform(0, .3)),
               '_stamp': 1.7e9 + 60 * k}
        if with_fid:
            row['FID'] = math.nan if k == nan_at else float(rng.uniform(20, 200))
        rows.append(row)
    return rows


def _best(rows, key, lower):
    finite = [(r[key], r['itr']) for r in rows if key in r and math.isfinite(r[key])]
    value = min(finite)[0] if lower else max(finite)[0]
    return value, min(itr for v, itr in finite if v == value)


def _run(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], cwd=ROOT,
                          capture_output=True, text=True)


def _assert_png(path):
    with Image.open(path) as image:
        assert image.format == 'PNG'
        image.load()
        pixels = np.asarray(image.convert('L'), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # Not a blank canvas: a good share of the pixels carry ink.
    assert (pixels < 200).mean() > 0.01


def test_plots_and_summary(tmp_path):
    logs, other, out = tmp_path / 'logs', tmp_path / 'elsewhere', tmp_path / 'plots'
    logs.mkdir()
    other.mkdir()
    rows_a = _rows(1, nan_at=3)
    rows_b = _rows(2, with_fid=False)
    # Resumed runs may append out of order; the best must still be found.
    rows_a = rows_a[4:] + rows_a[:4]
    _write_run(logs, 'runA', rows_a, seed=1)
    _write_run(other, 'runB', rows_b, folder=False)
    _write_run(other, 'runC', None, seed=3)
    proc = _run('runA', other / 'runB_log.jsonl', other / 'runC', '--logs_root', logs,
                '--out', out, '--smooth', '0.8', '--top_sv', '6')
    assert proc.returncode == 0, proc.stderr

    expected = {'IS_FID.png', 'runA_losses.png', 'runA_G_svs.png', 'runA_D_svs.png',
                'runC_losses.png', 'runC_G_svs.png', 'runC_D_svs.png'}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        _assert_png(out / name)

    lines = {line.split(':')[0]: line for line in proc.stdout.splitlines()}
    for name, rows in (('runA', rows_a), ('runB', rows_b)):
        is_value, is_itr = _best(rows, 'IS_mean', lower=False)
        match = re.search(r'best IS ([\d.]+) at itr (\d+)', lines[name])
        assert match, lines[name]
        assert float(match.group(1)) == pytest.approx(is_value, abs=5e-4)
        assert int(match.group(2)) == is_itr
    fid_value, fid_itr = _best(rows_a, 'FID', lower=True)
    match = re.search(r'best FID ([\d.]+) at itr (\d+)', lines['runA'])
    assert float(match.group(1)) == pytest.approx(fid_value, abs=5e-4)
    assert int(match.group(2)) == fid_itr
    assert 'best FID n/a' in lines['runB']
    assert 'no metric log' in lines['runC']
    # The parts that are missing are named once, not silently skipped.
    assert 'runB: no log folder' in proc.stderr
    assert f"runC: no metric log {other / 'runC_log.jsonl'}; IS/FID not plotted" in lines['runC']
    assert (proc.stdout + proc.stderr).count('runC_log.jsonl') == 1


def test_metrics_beyond_is_and_fid_are_plotted_and_summarised(tmp_path):
    rng = np.random.default_rng(4)
    rows = _rows(4)
    for row in rows:
        row.update(KID_mean=float(rng.uniform(0.01, 0.1)), KID_std=0.001,
                   precision=float(rng.uniform()), recall=float(rng.uniform()),
                   iFID=float(rng.uniform(30, 90)), iFID_per_class={'0': 1.0},
                   protocol={'network': 'tf', 'num_generated': 50000})
    rows[2]['KID_mean'] = math.nan
    _write_run(tmp_path, 'runK', rows, folder=False)
    out = tmp_path / 'plots'
    proc = _run(tmp_path / 'runK_log.jsonl', '--out', out)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {'IS_FID.png', 'more_metrics.png'}
    _assert_png(out / 'more_metrics.png')
    line = next(line for line in proc.stdout.splitlines() if line.startswith('runK:'))
    for key, title, lower in (('KID_mean', 'KID', True), ('precision', 'precision', False),
                              ('recall', 'recall', False), ('iFID', 'intra-class FID', True)):
        value, itr = _best(rows, key, lower)
        match = re.search(rf'best {title} ([\d.e+-]+) at itr (\d+)', line)
        assert match, line
        assert float(match.group(1)) == pytest.approx(value, rel=1e-3)
        assert int(match.group(2)) == itr
    assert 'density' not in line and 'coverage' not in line  # not logged, not claimed
    plot_logs = _plot_logs()
    exp = plot_logs.load(plot_logs.Experiment('runK', str(tmp_path / 'runK_log.jsonl')))
    assert [row[0] for row in plot_logs.logged_more_metrics([exp])] == [
        'KID_mean', 'precision', 'recall', 'iFID']


def test_ada_p_gets_its_own_plot_and_stays_out_of_the_losses(tmp_path):
    logs, out = tmp_path / 'logs', tmp_path / 'plots'
    logs.mkdir()
    _write_run(logs, 'ada', None, seed=4)
    _write_metric_log(logs / 'ada', 'ADA_p', range(1, 301), np.linspace(0, 0.4, 300))
    proc = _run('ada', '--logs_root', logs, '--out', out)
    assert proc.returncode == 0, proc.stderr
    assert {'ada_losses.png', 'ada_ADA_p.png'} <= {p.name for p in out.iterdir()}
    _assert_png(out / 'ada_ADA_p.png')
    sys.path.insert(0, str(SCRIPT.parent))
    import plot_logs
    exp = plot_logs.load(plot_logs.resolve('ada', str(logs)))
    assert exp.ada_p[1][-1] == pytest.approx(0.4, abs=1e-3) and 'ADA_p' not in exp.losses


def test_missing_experiment_names_the_paths(tmp_path):
    proc = _run('nope', '--logs_root', tmp_path, '--out', tmp_path / 'plots')
    assert proc.returncode == 2
    assert str(tmp_path / 'nope_log.jsonl') in proc.stderr
    assert str(tmp_path / 'nope') in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not (tmp_path / 'plots').exists()


def _plot_logs():
    sys.path.insert(0, str(ROOT / 'logs'))
    try:
        import plot_logs
    finally:
        sys.path.remove(str(ROOT / 'logs'))
    return plot_logs


def test_many_singular_value_curves_stay_distinguishable(tmp_path):
    plot_logs = _plot_logs()
    exp = plot_logs.Experiment('run')
    itrs = list(range(10, 101, 10))
    exp.svs['G'] = {f'G_blocks_{i}_0_conv1_sv0': (itrs, [1.0 + i + 0.01 * t for t in itrs])
                    for i in range(25)}
    drawn = plot_logs.plot_svs(exp, 'G', str(tmp_path / 'svs.png'), top=0)
    assert len(drawn) == 25
    assert len({(color, style) for _, color, style in drawn}) == 25
    assert drawn[0][0] == 'blocks_24_0_conv1_sv0'  # largest final value first
    _assert_png(tmp_path / 'svs.png')


def test_metric_log_parsing_and_smoothing(tmp_path):
    plot_logs = _plot_logs()
    (tmp_path / 'G_loss.log').write_text('20: 3.000e+00\n10: 1.000e+00\ngarbage\n\n30: nan\n')
    notes = []
    itrs, values = plot_logs.read_metric_log(str(tmp_path / 'G_loss.log'), notes)
    assert itrs == [10, 20, 30] and values[:2] == [1.0, 3.0] and math.isnan(values[2])
    assert len(notes) == 1 and 'skipped 1' in notes[0]
    # s_t = a s_{t-1} + (1 - a) x_t from the first value; a NaN holds the last state.
    assert plot_logs.ema([1.0, 3.0, math.nan, 5.0], 0.5) == [1.0, 2.0, 2.0, 3.5]
    assert plot_logs.SV_RE.match('G_blocks_0_0_conv1_sv0')
    assert plot_logs.SV_RE.match('D_linear_sv2')
    assert not plot_logs.SV_RE.match('D_loss_real')
