"""TensorBoard event files for a training run (`--tensorboard`), written by rank 0.

`TensorBoardLogger` writes into logs/<exp>/tensorboard/, with the tags:

- `train/<name>`: every per-iteration value the training step returns
  (`G_loss`, `D_loss_real`, `D_loss_fake`, an ADA `p`, ...);
- `G_svs/<name>`, `D_svs/<name>`: the singular values (`G_..._sv<k>`), every
  `--sv_log_interval` iterations;
- `metrics/<name>`: every number of a test's metrics row (`IS_mean`,
  `IS_std`, `FID`, and whatever else it holds);
- `speed/sec_per_itr`, `speed/img_per_sec` (real images D sees per second):
  training time per iteration between two writes of the losses, saves and
  tests excluded;
- `lr/G_lr`, `lr/D_lr`: the optimizers' learning rates;
- `samples/fixed_z`, `samples/classes<i>`: the fixed-z sheet and the class
  sheets of every save, the very JPEG bytes of the files in samples/<exp>/;
- `config` (text): the run's flags, once per start.

`<name>` is the metric's text-log name (logs/<exp>/<name>.log), so
logs/plot_logs.py reads either source into the same series. Values arrive
as host numbers when the text logs write them (train.py's buffered flush):
the writer never syncs with the device. On --resume the writer purges the
events past the checkpoint's iteration, as the text logs are cut, so a
resumed run continues one curve.
"""
import glob
import os
import re
import time

from PIL import Image

# The singular values' text-log names: G_<layer>_sv<k>, D_<layer>_sv<k>.
SV_RE = re.compile(r'^([GD])_.+_sv\d+$')


def tag_of(name):
    """The scalar tag of a text-log metric name: 'train/G_loss', 'G_svs/G_linear_sv0'."""
    match = SV_RE.match(name)
    return f'{match.group(1)}_svs/{name}' if match else f'train/{name}'


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def config_markdown(config):
    """The config as a two-column markdown table, one row per key (sorted)."""
    rows = [f'| {key} | `{config[key]!r}` |' for key in sorted(config)
            if not key.startswith('_')]
    return '\n'.join(['| flag | value |', '|---|---|', *rows])


class TensorBoardLogger:
    """Rank 0's TensorBoard writer for one run; see the module docstring for its tags.

    config: the run's config; experiment_name: <exp>; start_itr: the resumed
    checkpoint's iteration (None for a new run, whose earlier event files are
    removed as its text logs are); optimizers: {'G': G.optim, 'D': D.optim},
    whose learning rates are logged.
    """

    def __init__(self, config, experiment_name, start_itr=None, optimizers=None):
        # Imported here, not at the top: not for speed (about 0.07 s, against torch's
        # seconds) but because tensorboard is an optional dependency, needed only with
        # --tensorboard; a run without the flag works where the package is missing
        # (utils.prepare_config refuses the flag there, naming the fix).
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
        self._Summary = Summary
        self.root = os.path.join(config['logs_root'], experiment_name, 'tensorboard')
        self.samples = os.path.join(config['samples_root'], experiment_name)
        os.makedirs(self.root, exist_ok=True)
        if start_itr is None:
            for path in glob.glob(os.path.join(self.root, 'events.out.tfevents.*')):
                os.remove(path)
        start = start_itr or 0
        # A resumed run hides every event from step start + 1 on that an earlier run
        # (killed after its last checkpoint) wrote: TensorBoard's readers honour it.
        # A queue long enough that adding a flush's rows never waits for the file.
        self.writer = SummaryWriter(self.root, purge_step=None if start_itr is None else start + 1,
                                    max_queue=1000)
        # SummaryWriter's add_scalar/add_image write one event per value (and add_image
        # re-encodes as PNG); the events here carry every value of an iteration at once.
        self._events = self.writer._get_file_writer()
        self.optimizers = optimizers or {}
        self.images_per_itr = (config['batch_size'] * config['num_D_steps']
                               * config['num_D_accumulations'])
        self._clock = (start, time.monotonic())
        self.writer.add_text('config', config_markdown(config), start + 1)
        self.writer.flush()

    def _scalars(self, itr, tagged):
        """One event holding the scalars {tag: value} of iteration itr."""
        Value = self._Summary.Value
        self._events.add_summary(self._Summary(value=[
            Value(tag=tag, simple_value=float(value)) for tag, value in tagged.items()]), itr)

    def log(self, itr, **values):
        """One row of values at iteration itr (the singular values); not flushed yet."""
        self._scalars(itr, {tag_of(name): value for name, value in values.items()})

    def sink(self, itr, rows):
        """A utils.MyLogger sink: one flush's rows [(itr, {name: value}), ...]."""
        itrs = [row_itr for row_itr, _ in rows]
        names = rows[-1][1] if rows else {}
        self.log_many(itrs, {name: [values[name] for _, values in rows] for name in names})

    def log_many(self, itrs, columns):
        """One flush of the buffered training rows: columns = {name: [value per itr]}.

        Also writes the learning rates and the speed at the last iteration, timed
        since the previous flush (or the end of the last save or test), and flushes
        the event file, so TensorBoard shows what the text logs show.
        """
        if not itrs:
            return
        rows = [{} for _ in itrs]
        for name, values in columns.items():
            tag = tag_of(name)
            for row, value in zip(rows, values):
                row[tag] = value
        last, now = itrs[-1], time.monotonic()
        since_itr, since = self._clock
        if last > since_itr:
            seconds = (now - since) / (last - since_itr)
            rows[-1]['speed/sec_per_itr'] = seconds
            if seconds > 0:
                rows[-1]['speed/img_per_sec'] = self.images_per_itr / seconds
        for net, optim in self.optimizers.items():
            rows[-1][f'lr/{net}_lr'] = optim.param_groups[0]['lr']
        for itr, row in zip(itrs, rows):
            self._scalars(itr, row)
        self.writer.flush()
        self._clock = (last, time.monotonic())

    def log_metrics(self, record):
        """A test's metrics row {'itr': .., name: value, ...}: every number but itr/_stamp."""
        itr = int(record['itr'])
        self._scalars(itr, {f'metrics/{name}': value for name, value in record.items()
                            if name not in ('itr', '_stamp') and _is_number(value)})
        self.writer.flush()
        self._clock = (itr, time.monotonic())  # the test's time is not training time

    def add_sheets(self, itr):
        """The sheets the save of iteration itr wrote: the fixed-z sheet and the class sheets.

        The JPEG files' bytes go into the events unchanged (no decoding or PNG
        re-encoding: a 128x128 ImageNet run's 20 class sheets would take seconds).
        """
        sheets = [('samples/fixed_z', os.path.join(self.samples, f'fixed_samples{itr}.jpg'))]
        folder = os.path.join(self.samples, str(itr))
        numbers = [int(m.group(1)) for m in map(_CLASS_SHEET.match, _listdir(folder)) if m]
        sheets += [(f'samples/classes{i}', os.path.join(folder, f'samples{i}.jpg'))
                   for i in sorted(numbers)]
        images = [self._encoded_image(tag, path) for tag, path in sheets if os.path.isfile(path)]
        if images:
            self._events.add_summary(self._Summary(value=images), itr)
        self.writer.flush()
        self._clock = (itr, time.monotonic())  # the save's time is not training time

    def _encoded_image(self, tag, path):
        with open(path, 'rb') as f:
            data = f.read()
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
        return self._Summary.Value(tag=tag, image=self._Summary.Image(
            height=height, width=width, colorspace=3, encoded_image_string=data))

    def close(self):
        """Flush and close the event file."""
        self.writer.close()


_CLASS_SHEET = re.compile(r'^samples(\d+)\.jpg$')


def _listdir(folder):
    return os.listdir(folder) if os.path.isdir(folder) else []
