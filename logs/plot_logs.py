"""Plot BigGAN training logs: IS/FID, smoothed losses and singular values.

    python logs/plot_logs.py EXP_OR_LOG [EXP_OR_LOG ...] --logs_root logs --out plots

Each argument is an experiment name (looked up as <logs_root>/<name>_log.jsonl and
<logs_root>/<name>/), a path to a `<name>_log.jsonl` file, or a path to an
experiment's log folder; the other half is looked for beside it. It reads the
formats train.py writes:

- `<name>_log.jsonl`: one JSON object per line with itr, IS_mean, IS_std, FID, _stamp
  (FID absent or NaN with --no_fid), and whatever else --test_metrics computed (KID_mean,
  KID_std, precision, recall, density, coverage, iFID) with the protocol of the numbers;
- `<name>/<metric>.log`: lines `"<itr>: <value>"` for the losses (G_loss,
  D_loss_real, D_loss_fake, ...), ADA's augmentation probability (ADA_p) and the
  singular values (G_..._sv<k>, D_..._sv<k>); `metalog.txt` is ignored;
- with --from_tensorboard, instead of both: `<name>/tensorboard/`, the event files of
  `train.py --tensorboard` (tags `train/<metric>`, `G_svs/<metric>`, `D_svs/<metric>`,
  `metrics/<key>`, read with TensorBoard's event reader, which drops what a resumed
  run superseded), so the plots show what TensorBoard shows.

Writes into --out: IS_FID.png (all experiments overlaid), more_metrics.png (one panel per
other metric logged: KID, precision, recall, density, coverage, intra-class FID; all
experiments overlaid) when any was logged, and per experiment <name>_losses.png,
<name>_ADA_p.png, <name>_G_svs.png, <name>_D_svs.png when it has such logs. Prints each
experiment's best IS and best FID, and the best of every other metric it logged, with their
iterations. Replaces the original's MATLAB scripts (logs/process_training.m and friends).
"""
import argparse
import importlib.util
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

SV_RE = re.compile(r'^([GD])_.+_sv\d+$')
JSONL_SUFFIX = '_log.jsonl'
TENSORBOARD_FOLDER = 'tensorboard'
# The metrics beyond IS and FID: (key, key of its spread or None, title, lower is better).
MORE_METRICS = (('KID_mean', 'KID_std', 'KID', True),
                ('precision', None, 'precision', False), ('recall', None, 'recall', False),
                ('density', None, 'density', False), ('coverage', None, 'coverage', False),
                ('iFID', None, 'intra-class FID', True))
ADA_P = 'ADA_p'


@dataclass
class Experiment:
    """What was found for one argument: metric rows and per-metric series."""
    name: str
    jsonl: str | None = None
    folder: str | None = None
    wanted_jsonl: str = ''                          # where the metric log was looked for
    rows: list = field(default_factory=list)        # dicts from the jsonl, sorted by itr
    losses: dict = field(default_factory=dict)      # metric -> (itrs, values)
    ada_p: tuple | None = None                      # (itrs, values) of ADA's p
    svs: dict = field(default_factory=dict)         # 'G' / 'D' -> {metric: (itrs, values)}
    notes: list = field(default_factory=list)


def resolve(arg, logs_root):
    """Experiment for one command-line argument; raises FileNotFoundError naming the paths tried."""
    if arg.endswith(JSONL_SUFFIX) and os.path.isfile(arg):
        name = os.path.basename(arg)[:-len(JSONL_SUFFIX)]
        folder = os.path.join(os.path.dirname(arg), name)
        return Experiment(name, arg, folder if os.path.isdir(folder) else None, arg)
    if os.path.isdir(arg) and os.path.basename(os.path.normpath(arg)):
        path = os.path.normpath(arg)
        name = os.path.basename(path)
        jsonl = os.path.join(os.path.dirname(path), name + JSONL_SUFFIX)
        return Experiment(name, jsonl if os.path.isfile(jsonl) else None, path, jsonl)
    jsonl = os.path.join(logs_root, arg + JSONL_SUFFIX)
    folder = os.path.join(logs_root, arg)
    found = Experiment(arg, jsonl if os.path.isfile(jsonl) else None,
                       folder if os.path.isdir(folder) else None, jsonl)
    if found.jsonl is None and found.folder is None:
        raise FileNotFoundError(f'{arg}: no logs found; looked for the metric log {jsonl} and '
                                f'the log folder {folder} (give an experiment name under '
                                '--logs_root, a *_log.jsonl file or a log folder)')
    return found


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def read_jsonl(path, notes):
    """Rows of a metric log, sorted by itr; malformed lines are skipped with a note."""
    rows, bad = [], 0
    with open(path, errors='replace') as f:  # bytes that are not text: malformed lines
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row['itr'] = int(row['itr'])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            rows.append(row)
    if bad:
        notes.append(f'{path}: skipped {bad} malformed line(s)')
    return sorted(rows, key=lambda row: row['itr'])


def read_metric_log(path, notes):
    """(itrs, values) of one `<itr>: <value>` log, sorted by itr."""
    points, bad = [], 0
    with open(path, errors='replace') as f:  # bytes that are not text: malformed lines
        for line in f:
            if not line.strip():
                continue
            itr, _, value = line.partition(':')
            try:
                points.append((int(itr), float(value)))
            except ValueError:
                bad += 1
    if bad:
        notes.append(f'{path}: skipped {bad} malformed line(s)')
    points.sort(key=lambda point: point[0])
    return [p[0] for p in points], [p[1] for p in points]


def read_events(folder, notes):
    """{tag: (steps, values)} of every scalar in a TensorBoard event folder, sorted by step."""
    import logging

    from tensorboard.backend.event_processing import event_accumulator
    # The reader warns, on stderr, about every purge a resumed run asked for.
    logging.getLogger('tensorboard').setLevel(logging.ERROR)
    acc = event_accumulator.EventAccumulator(
        folder, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 1,
                               event_accumulator.TENSORS: 1})
    acc.Reload()
    series = {}
    for tag in acc.Tags()['scalars']:
        events = sorted(acc.Scalars(tag), key=lambda e: e.step)
        series[tag] = [e.step for e in events], [e.value for e in events]
    if not series:
        notes.append(f'{folder}: no scalars in its event files')
    return series


def load_events(experiment):
    """Fill the experiment's rows, losses, ADA_p and singular values from its TensorBoard
    events."""
    # The metric rows come from here too: the summary line names this folder.
    folder = os.path.join(experiment.folder or experiment.name, TENSORBOARD_FOLDER)
    experiment.wanted_jsonl = folder
    experiment.jsonl = folder if os.path.isdir(folder) else None
    if experiment.jsonl is None:
        return experiment
    rows = {}
    for tag, (itrs, values) in read_events(folder, experiment.notes).items():
        group, _, metric = tag.partition('/')
        if group == 'train' and metric == ADA_P:
            experiment.ada_p = itrs, values
        elif group == 'train':
            experiment.losses[metric] = itrs, values
        elif group in ('G_svs', 'D_svs'):
            experiment.svs.setdefault(group[0], {})[metric] = itrs, values
        elif group == 'metrics':
            for itr, value in zip(itrs, values):
                rows.setdefault(itr, {'itr': itr})[metric] = value
    experiment.rows = [rows[itr] for itr in sorted(rows)]
    return experiment


def load(experiment, from_tensorboard=False):
    """Fill the experiment's rows, losses, ADA_p and singular values from its files (its
    text logs, or with from_tensorboard its event files)."""
    if from_tensorboard:
        return load_events(experiment)
    if experiment.jsonl:
        experiment.rows = read_jsonl(experiment.jsonl, experiment.notes)
    if experiment.folder:
        for filename in sorted(os.listdir(experiment.folder)):
            if not filename.endswith('.log'):
                continue
            metric = filename[:-len('.log')]
            series = read_metric_log(os.path.join(experiment.folder, filename), experiment.notes)
            if not series[0]:
                continue
            match = SV_RE.match(metric)
            if metric == ADA_P:
                experiment.ada_p = series
            elif match:
                experiment.svs.setdefault(match.group(1), {})[metric] = series
            else:
                experiment.losses[metric] = series
    return experiment


def best(rows, key, lower_is_better):
    """(value, itr) of the best finite `key` in rows, the earliest on ties; None if none."""
    candidates = [(row[key], row['itr']) for row in rows if _finite(row.get(key))]
    if not candidates:
        return None
    pick = min if lower_is_better else max
    value = pick(c[0] for c in candidates)
    return value, next(itr for v, itr in candidates if v == value)


def ema(values, smooth):
    """Exponential moving average of a list: s_t = smooth * s_{t-1} + (1 - smooth) * x_t."""
    out, state = [], None
    for value in values:
        if not math.isfinite(value):
            out.append(state if state is not None else value)
            continue
        state = value if state is None else smooth * state + (1 - smooth) * value
        out.append(state)
    return out


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_metrics(experiments, path):
    """IS (mean +- std) and FID against iteration, every experiment with a metric log."""
    plt = _pyplot()
    fig, (ax_is, ax_fid) = plt.subplots(1, 2, figsize=(12, 4.5))
    any_fid = False
    for exp in experiments:
        rows = [r for r in exp.rows if _finite(r.get('IS_mean'))]
        if rows:
            itrs = [r['itr'] for r in rows]
            mean = [r['IS_mean'] for r in rows]
            std = [r['IS_std'] if _finite(r.get('IS_std')) else 0.0 for r in rows]
            line, = ax_is.plot(itrs, mean, marker='.', label=exp.name)
            ax_is.fill_between(itrs, [m - s for m, s in zip(mean, std)],
                               [m + s for m, s in zip(mean, std)], color=line.get_color(),
                               alpha=0.2)
        fid = [(r['itr'], r['FID']) for r in exp.rows if _finite(r.get('FID'))]
        if fid:
            any_fid = True
            ax_fid.plot([f[0] for f in fid], [f[1] for f in fid], marker='.', label=exp.name)
    ax_is.set(title='Inception Score', xlabel='iteration', ylabel='IS')
    ax_fid.set(title='FID', xlabel='iteration', ylabel='FID')
    ax_is.legend(fontsize='small')
    if any_fid:
        ax_fid.legend(fontsize='small')
    else:
        ax_fid.text(0.5, 0.5, 'no FID logged', ha='center', va='center',
                    transform=ax_fid.transAxes)
    for ax in (ax_is, ax_fid):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def logged_more_metrics(experiments):
    """The rows of MORE_METRICS that some experiment logged a finite value of."""
    return [row for row in MORE_METRICS
            if any(_finite(r.get(row[0])) for exp in experiments for r in exp.rows)]


def plot_more_metrics(experiments, path):
    """One panel per metric beyond IS/FID that was logged (KID with its std as a band),
    against iteration, every experiment overlaid."""
    plt = _pyplot()
    shown = logged_more_metrics(experiments)
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 4.5), squeeze=False)
    for ax, (key, spread, title, lower) in zip(axes[0], shown):
        for exp in experiments:
            rows = [r for r in exp.rows if _finite(r.get(key))]
            if not rows:
                continue
            itrs, values = [r['itr'] for r in rows], [r[key] for r in rows]
            line, = ax.plot(itrs, values, marker='.', label=exp.name)
            if spread:
                std = [r[spread] if _finite(r.get(spread)) else 0.0 for r in rows]
                ax.fill_between(itrs, [v - s for v, s in zip(values, std)],
                                [v + s for v, s in zip(values, std)], color=line.get_color(),
                                alpha=0.2)
        ax.set(title=f"{title} ({'lower' if lower else 'higher'} is better)",
               xlabel='iteration', ylabel=title)
        ax.legend(fontsize='small')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_losses(exp, path, smooth):
    """One panel per loss metric: the raw series faint, its moving average on top."""
    plt = _pyplot()
    names = sorted(exp.losses)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        itrs, values = exp.losses[name]
        line, = ax.plot(itrs, values, linewidth=0.6, alpha=0.3)
        ax.plot(itrs, ema(values, smooth), color=line.get_color(), linewidth=1.5,
                label=f'EMA {smooth:g}')
        ax.set(title=f'{exp.name}: {name}', xlabel='iteration')
        ax.legend(fontsize='small', loc='upper right')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ada_p(exp, path):
    """ADA's augmentation probability p against iteration (as logged, unsmoothed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    itrs, values = exp.ada_p
    ax.plot(itrs, values, linewidth=1.2)
    ax.set(title=f'{exp.name}: ADA augmentation probability p', xlabel='iteration',
           ylabel='p', ylim=(-0.02, max(1.02 * max(values), 0.1)))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# More than 10 curves: tab10's colours repeat, so each block of 10 gets its own line style.
_SV_STYLES = ('-', '--', ':', '-.')
_SV_LEGEND_MAX = 40


def plot_svs(exp, net, path, top):
    """Singular values of one network on a log scale; only the `top` largest final values.

    Every curve gets its own (colour, line style) and, up to 40 curves, a legend entry
    beside the axes. Returns the [(label, colour, style)] drawn.
    """
    plt = _pyplot()
    series = exp.svs[net]

    def final(name):
        value = series[name][1][-1]
        return (0, -abs(value)) if math.isfinite(value) else (1, 0.0)  # NaN/inf last
    ranked = sorted(series, key=final)
    shown = ranked[:top] if top > 0 else ranked
    fig, ax = plt.subplots(figsize=(12, 5.5))
    palette, drawn = plt.get_cmap('tab10').colors, []
    for i, name in enumerate(shown):
        itrs, values = series[name]
        color, style = palette[i % 10], _SV_STYLES[(i // 10) % len(_SV_STYLES)]
        drawn.append((name[len(net) + 1:], color, style))
        ax.plot(itrs, values, linewidth=1.0, color=color, linestyle=style, label=drawn[-1][0])
    ax.set_yscale('log')
    count = (f'all {len(ranked)}' if len(shown) == len(ranked)
             else f'{len(shown)} of {len(ranked)}, largest final values')
    ax.set(title=f'{exp.name}: {net} singular values ({count})', xlabel='iteration',
           ylabel='singular value')
    if len(shown) <= _SV_LEGEND_MAX:
        ax.legend(fontsize='x-small', ncol=1 if len(shown) <= 20 else 2, loc='upper left',
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3, which='both')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


# ---------------------------------------------------------------------------
# Summary and command line
# ---------------------------------------------------------------------------
def summary_line(exp):
    """'name: best IS 12.345 at itr 600; best FID 45.678 at itr 800' (or why not)."""
    if exp.jsonl is None:
        return f'{exp.name}: no metric log {exp.wanted_jsonl}; IS/FID not plotted'
    if not exp.rows:
        return f'{exp.name}: no IS/FID rows in {exp.jsonl}'
    parts = []
    for key, label, lower in (('IS_mean', 'IS', False), ('FID', 'FID', True)):
        found = best(exp.rows, key, lower)
        parts.append(f'best {label} {found[0]:.3f} at itr {found[1]}' if found
                     else f'best {label} n/a (not logged)')
    for key, _, title, lower in MORE_METRICS:
        found = best(exp.rows, key, lower)
        if found:
            parts.append(f'best {title} {found[0]:.4g} at itr {found[1]}')
    return f"{exp.name}: {'; '.join(parts)}"


def _unique_names(experiments):
    seen = {}
    for exp in experiments:
        count = seen.get(exp.name, 0)
        seen[exp.name] = count + 1
        if count:
            exp.name = f'{exp.name}_{count + 1}'


def parse_args(argv=None):
    """The command line: experiments, --logs_root, --out, --smooth, --top_sv."""
    parser = argparse.ArgumentParser(description='Plot BigGAN training logs.')
    parser.add_argument('experiments', nargs='+', metavar='EXP_OR_LOG',
                        help='experiment name, *_log.jsonl file or experiment log folder')
    parser.add_argument('--logs_root', default='logs',
                        help='where experiment names are looked up (default: %(default)s)')
    parser.add_argument('--out', default='plots', help='output folder (default: %(default)s)')
    parser.add_argument('--smooth', type=float, default=0.9,
                        help='EMA factor for the losses, in [0, 1) (default: %(default)s)')
    parser.add_argument('--top_sv', type=int, default=20,
                        help='singular value curves per plot, largest final values first; '
                             '0 for all (default: %(default)s)')
    parser.add_argument('--from_tensorboard', action='store_true',
                        help='read <EXP>/tensorboard/ (train.py --tensorboard) instead of the '
                             'text logs (default: %(default)s)')
    args = parser.parse_args(argv)
    if not 0.0 <= args.smooth < 1.0:
        parser.error(f'--smooth {args.smooth}: must lie in [0, 1)')
    if args.top_sv < 0:
        parser.error(f'--top_sv {args.top_sv}: must not be negative')
    return args


def main(argv=None):
    """Resolve, load, plot and summarise; returns the exit status (2 if an argument has no logs)."""
    args = parse_args(argv)
    experiments, errors = [], []
    for arg in args.experiments:
        try:
            experiments.append(resolve(arg, args.logs_root))
        except FileNotFoundError as err:
            errors.append(str(err))
    if args.from_tensorboard and importlib.util.find_spec('tensorboard') is None:
        errors.append('--from_tensorboard: the tensorboard package is not installed; '
                      'pip install tensorboard, or plot the text logs')
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        errors.append(f'--out {args.out}: a file, not a folder; give a folder for the plots')
    if errors:
        for error in errors:
            print(f'error: {error}', file=sys.stderr)
        return 2
    _unique_names(experiments)
    for exp in experiments:
        try:
            load(exp, args.from_tensorboard)
        except OSError as err:
            print(f'error: {err.filename}: cannot read this log ({err.strerror})',
                  file=sys.stderr)
            return 2
        # A missing metric log is said once, in the summary line.
        if exp.folder is None:
            exp.notes.append(f'{exp.name}: no log folder {exp.name}/; losses and singular '
                             'values not plotted')
        elif not exp.losses and not exp.svs and exp.ada_p is None:
            what = (f'{TENSORBOARD_FOLDER}/ event files (train with --tensorboard)'
                    if args.from_tensorboard else '<metric>.log files')
            exp.notes.append(f'{exp.name}: {exp.folder} holds no {what}')
        for note in exp.notes:
            print(f'note: {note}', file=sys.stderr)

    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        print(f'error: --out {args.out}: cannot create it ({err.strerror})', file=sys.stderr)
        return 2
    written = []
    if any(exp.rows for exp in experiments):
        written.append(os.path.join(args.out, 'IS_FID.png'))
        plot_metrics([exp for exp in experiments if exp.rows], written[-1])
    if logged_more_metrics(experiments):
        written.append(os.path.join(args.out, 'more_metrics.png'))
        plot_more_metrics([exp for exp in experiments if exp.rows], written[-1])
    for exp in experiments:
        if exp.losses:
            written.append(os.path.join(args.out, f'{exp.name}_losses.png'))
            plot_losses(exp, written[-1], args.smooth)
        if exp.ada_p is not None:
            written.append(os.path.join(args.out, f'{exp.name}_ADA_p.png'))
            plot_ada_p(exp, written[-1])
        for net in ('G', 'D'):
            if exp.svs.get(net):
                written.append(os.path.join(args.out, f'{exp.name}_{net}_svs.png'))
                plot_svs(exp, net, written[-1], args.top_sv)
    for exp in experiments:
        print(summary_line(exp))
    print(f'Wrote {len(written)} plot(s) to {args.out}: '
          f"{', '.join(os.path.basename(p) for p in written) or 'none'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
