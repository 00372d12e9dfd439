"""Checkpoint files, and every other output that must survive a crash.

- Atomic writes: `atomic_write(path)`, how every single file is written.
- The journal: `save_weights` writes a checkpoint set crash-safely,
  `recover_checkpoints` finishes or discards an interrupted one;
  `load_checkpoint_set` and `checkpoint_exists` read the last committed set without
  changing anything; `ExperimentLock`, one writer per experiment.
- Reading torch files: `torch_load`, weights-only, allowing only what legacy files need.
- The training state in state_dict.pth: `check_training_state` (train_fns.new_training_state
  makes one).
- Loading a set into models: `load_weights`, which checks every file before touching
  any model and maps the original's layouts in memory.
- Output checks before training: `check_writable`, `check_outputs`, `WRITE_ERRNOS`.

utils keeps the original's names (utils.save_weights, utils.load_weights, ...) as
aliases of these.
"""
import contextlib
import errno
import fcntl
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import time
import warnings

import torch
import torch.nn as nn


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------
def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(paths):
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def partial_path(path):
    """A fresh temporary name beside `path`: same folder, so os.replace onto `path` is atomic."""
    return f'{path}.{secrets.token_hex(4)}.part'


# A temporary this young may belong to a writer that has not locked it yet.
_STALE_AGE_S = 10.0


def remove_stale_partials(path):
    """Remove temporaries `<path>.<hex>.part` left by writers of `path` that died.

    A live writer holds an flock on its temporary (atomic_write), so only the
    leftovers of killed or crashed writers are removed.
    """
    folder, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r'\.[0-9a-f]{8}\.part')
    try:
        names = [n for n in os.listdir(folder or '.') if pattern.fullmatch(n)]
    except OSError:
        return
    for name in names:
        tmp = os.path.join(folder, name)
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime > _STALE_AGE_S:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
                os.remove(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path, durable=False):
    """Write `path` atomically: yields a fresh temporary path beside it, which replaces
    `path` when the block succeeds and is removed when it fails; every single-file
    writer of this code uses it (sheets, logs cut on resume, moments, npz samples,
    HDF5 files, index caches, commit records).

    The temporary is flock'ed while it is written, and stale temporaries of `path`
    (a writer killed with -9) are removed first, so leftovers do not pile up.
    durable: fsync the data before the rename, and the folder after it (commit records).
    Writers that name the file themselves (np.savez adds '.npz') write to open(tmp, 'wb').
    """
    remove_stale_partials(path)
    tmp = partial_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
        if durable:
            os.fsync(fd)
        os.replace(tmp, path)
        if durable:
            _fsync_dir(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    finally:
        os.close(fd)



# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------
# A checkpoint set is G, G_optim, D, D_optim, state_dict (+ G_ema), written in
# the original's flat layout: weights_root/<experiment>/G.pth, G_copy0.pth, ...
#
# One writer per experiment: a training run holds the experiment's lock
# (ExperimentLock: an flock on weights_root/<exp>/.lock, which the OS drops when the
# process dies) for its whole life; save_weights takes it for one save when its
# caller does not hold it.
#
# A set is written journal-style so a crash at any moment leaves either the
# previous complete set or the new complete set, never a mix:
#   1. every file goes to a temporary name and is fsynced;
#   2. once every temporary is on disk, a commit record (.commit_<suffix>.json)
#      naming the renames is written atomically;
#   3. the temporaries are renamed over the old files and the record removed.
# Only the lock holder repairs: `recover_checkpoints` rolls a committed set forward
# and deletes uncommitted temporaries. Readers (`load_checkpoint_set`, and through it
# load_weights, sample.py, checkpoint_exists) never rename or delete anything: while a
# record is there, a part's committed file is its temporary if that still exists,
# else its final name.
SET_PARTS = ('G', 'G_optim', 'D', 'D_optim', 'state_dict', 'G_ema')
_TMP_TAG = '.partial'
LOCK_NAME = '.lock'


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class ExperimentBusy(CheckpointError):
    """Another process holds the experiment's lock; the message names it."""


class OutputError(RuntimeError):
    """An output folder that cannot be written, or too little room for a checkpoint set."""


def join_strings(base_string, strings):
    """Join the non-empty strings with base_string (the original's helper)."""
    return base_string.join(item for item in strings if item)


def checkpoint_path(root, part, name_suffix=None):
    """weights_root/<exp>/<part>[_<suffix>].pth."""
    return os.path.join(root, f"{join_strings('_', [part, name_suffix])}.pth")


def _makedirs(path):
    """os.makedirs(path, exist_ok=True); returns the folders it created, outermost first."""
    created, head = [], os.path.abspath(path)
    while not os.path.isdir(head):
        created.append(head)
        head = os.path.dirname(head)
    os.makedirs(path, exist_ok=True)
    return created[::-1]


_held_locks = {}


class ExperimentLock:
    """The one-writer lock of an experiment folder root = weights_root/<exp>.

    An flock on root/.lock, which holds the holder's pid and host. acquire() raises
    ExperimentBusy naming them when another process holds it, CheckpointError when the
    folder cannot be created. The OS releases an flock when its process exits or is
    killed, so a crashed run never leaves the experiment locked. release() removes the
    lock file and the folders acquire() created, so a refused run leaves nothing behind.
    Use as a context manager, or acquire()/release().
    """

    def __init__(self, root):
        self.root = root
        self.path = os.path.join(root, LOCK_NAME)
        self.fd = None
        self._created = []

    def acquire(self):
        """Take the lock (without waiting); returns self."""
        try:
            self._created = _makedirs(self.root)
            self.fd = self._lock_file()
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f'{os.getpid()} {socket.gethostname()}\n'.encode())
        except BaseException as err:
            self.release()
            if isinstance(err, OSError):
                raise CheckpointError(
                    f'{self.root}: cannot create the experiment lock ({err.strerror or err}); '
                    'check --weights_root') from None
            raise
        _held_locks[os.path.realpath(self.root)] = self
        return self

    def _lock_file(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors='replace').split()
                os.close(fd)
                pid = holder[0] if holder else 'unknown'
                host = f' on {holder[1]}' if len(holder) > 1 else ''
                raise ExperimentBusy(
                    f'{self.root} is in use by another training run (pid {pid}{host}): one run '
                    'writes an experiment at a time; wait for it to finish, or pass another '
                    '--experiment_name') from None
            # A holder that released in the meantime unlinked the file we opened: a
            # lock on it guards nothing, so start over on the current file.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self):
        """Drop the lock, remove the lock file and any empty folders acquire() created."""
        _held_locks.pop(os.path.realpath(self.root), None)
        if self.fd is not None:
            # Unlinked while still locked; see _lock_file for how a waiter copes.
            _remove_quietly([self.path])
            os.close(self.fd)
            self.fd = None
        for folder in reversed(self._created):
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._created = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def _writing(root):
    """Hold root's lock for one write, unless this process holds it already."""
    if os.path.realpath(root) in _held_locks:
        yield
    else:
        with ExperimentLock(root):
            yield


def _record_path(root, name_suffix):
    return os.path.join(root, f".commit_{name_suffix or 'latest'}.json")


def _write_record(root, name_suffix, renames):
    with atomic_write(_record_path(root, name_suffix), durable=True) as tmp, \
            open(tmp, 'wb') as f:
        f.write(json.dumps(renames).encode())


def _is_record(name):
    return name.startswith('.commit_') and name.endswith('.json')


def _valid_renames(renames):
    def valid(pair):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(n, str) and n and os.path.basename(n) == n for n in pair)):
            return False
        src, dst = pair
        return not dst.startswith('.') and src.startswith(dst + _TMP_TAG)
    return isinstance(renames, list) and all(valid(pair) for pair in renames)


def _read_record(path):
    """[(temporary, final), ...] of a commit record; None when there is none."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise CheckpointError(f'{path}: cannot read this commit record ({err.strerror})') from None
    try:
        renames = json.loads(raw)
    except ValueError:
        renames = None
    # Renames name plain files of this folder only: a crafted record moves nothing elsewhere.
    if not _valid_renames(renames):
        raise CheckpointError(
            f'{path}: not a commit record of this code (a JSON list of [<file>{_TMP_TAG}<id>, '
            '<file>] pairs); move it out of the folder and check the checkpoint set by hand')
    return [tuple(pair) for pair in renames]


def recover_checkpoints(root):
    """Finish committed set writes and drop uncommitted temporaries under `root`.

    Renames and deletes: only for the holder of the experiment's lock (train.py's
    rank 0, save_weights). Raises CheckpointError for a malformed commit record.
    """
    if not os.path.isdir(root):
        return
    for name in sorted(n for n in os.listdir(root) if _is_record(n)):
        record = os.path.join(root, name)
        for src, dst in _read_record(record):
            src_path = os.path.join(root, src)
            if os.path.exists(src_path):
                os.replace(src_path, os.path.join(root, dst))
        _fsync_dir(root)
        os.remove(record)
    # The lock holder alone writes here: every temporary (of a set, or of a commit record
    # being written) is a dead writer's.
    _remove_quietly(os.path.join(root, name) for name in os.listdir(root)
                    if _TMP_TAG in name or (name.startswith('.commit_') and name.endswith('.part')))


def _signature(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _committed_view(root, name_suffix, parts):
    """(record, {part: (path of its committed file or None, its stat signature)})."""
    renames = _read_record(_record_path(root, name_suffix)) or []
    pending = {dst: src for src, dst in renames}
    view = {}
    for part in parts:
        final = os.path.basename(checkpoint_path(root, part, name_suffix))
        view[part] = (None, None)
        for name in ([pending[final]] if final in pending else []) + [final]:
            path = os.path.join(root, name)
            signature = _signature(path)
            if signature is not None:
                view[part] = (path, signature)
                break
    return tuple(renames), view


def _open_part(path):
    try:
        return open(path, 'rb')
    except (FileNotFoundError, IsADirectoryError) as err:
        if isinstance(err, IsADirectoryError):
            raise CheckpointError(f'{path}: a folder, not a checkpoint file') from None
        raise
    except OSError as err:
        raise CheckpointError(f'{path}: cannot read it ({err.strerror})') from None


def load_checkpoint_set(weights_root, experiment_name, name_suffix=None, parts=SET_PARTS):
    """Read the last committed checkpoint set without changing the folder.

    Returns {part: loaded object, or None when the set has no such file}. Safe while a
    writer saves: the files are opened from one view of the folder that did not change
    while they were opened (else it tries again), so they all come from one save.
    """
    root = os.path.join(weights_root, experiment_name)
    for attempt in range(200):
        view = _committed_view(root, name_suffix, parts)
        files = {}
        try:
            for part, (path, _) in view[1].items():
                files[part] = _open_part(path) if path else None
            if _committed_view(root, name_suffix, parts) == view:
                return {part: torch_load(f, name=view[1][part][0]) if f else None
                        for part, f in files.items()}
        except FileNotFoundError:
            pass  # renamed between the look and the open: look again
        finally:
            for f in files.values():
                if f is not None:
                    f.close()
        time.sleep(min(0.005 * (attempt + 1), 0.1))
    raise CheckpointError(f'{root}: the checkpoint set kept changing while it was read; '
                          'try again')


def plain_config(config):
    """The config without the module objects derived from it (they are rebuilt on load)."""
    return {k: v for k, v in config.items()
            if isinstance(v, (str, int, float, bool, type(None), list, tuple))}


class _SaveSink:
    """A file wrapper that keeps the OSError of a failed write: torch.save reports a
    failed write (ENOSPC, EIO) as a bare RuntimeError."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.f.flush()


def _write_durably(path, obj):
    """torch.save `obj` (or write bytes) to the new file `path`, fsynced; OSError on failure."""
    with open(path, 'xb') as f:
        sink = _SaveSink(f)
        try:
            if isinstance(obj, bytes):
                sink.write(obj)
            else:
                torch.save(obj, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None
        f.flush()
        os.fsync(f.fileno())


def checkpoint_set_bytes(G, D, G_ema=None):
    """Bytes one checkpoint set takes: every tensor of the models' state dicts, plus
    Adam's two moments per parameter of G and D (file overhead aside)."""
    def size(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)
    total = sum(size(net.state_dict().values()) for net in (G, D, G_ema) if net is not None)
    return total + sum(2 * size(net.parameters()) for net in (G, D))


def save_weights(G, D, state_dict, weights_root, experiment_name, name_suffix=None,
                 G_ema=None, extra_files=None):
    """Write one checkpoint set, crash-safely (see the journal notes above).

    state_dict: the training state (itr, epoch, ..., config). extra_files:
    optional {file name: bytes} committed together with the set. On a failed
    write (a full disk, say) the temporaries are removed, the previous set stays,
    and CheckpointError says what happened.
    """
    root = os.path.join(weights_root, experiment_name)
    objects = {'G': G.state_dict(), 'G_optim': G.optim.state_dict(),
               'D': D.state_dict(), 'D_optim': D.optim.state_dict(),
               'state_dict': {**state_dict, 'config': plain_config(state_dict['config'])}}
    if G_ema is not None:
        objects['G_ema'] = G_ema.state_dict()
    files = {os.path.basename(checkpoint_path(root, part, name_suffix)): obj
             for part, obj in objects.items()}
    files.update(extra_files or {})
    token = f'{os.getpid()}_{time.monotonic_ns()}'
    renames = [(f'{name}{_TMP_TAG}{token}', name) for name in files]
    with _writing(root):
        recover_checkpoints(root)
        temporaries = [os.path.join(root, tmp) for tmp, _ in renames]
        try:
            for path, obj in zip(temporaries, files.values()):
                _write_durably(path, obj)
            _fsync_dir(root)
            # Never commit a set partly: every temporary must still be there.
            missing = [path for path in temporaries if not os.path.isfile(path)]
            if missing:
                raise CheckpointError(f"{', '.join(missing)} vanished before the set was "
                                      f'committed; the previous set in {root} is intact')
            _write_record(root, name_suffix, renames)
        except BaseException as err:
            _remove_quietly(temporaries)
            if isinstance(err, OSError):
                raise CheckpointError(
                    f'{root}: could not write the checkpoint set ({err.strerror or err}); the '
                    'temporaries were removed and the previous set is intact') from None
            raise
        _fsync_dir(root)
        recover_checkpoints(root)


def _legacy_safe_globals():
    # The original's state_dict.pth pickles its config's activation modules
    # (torch.nn.ReLU); that one class is all a weights_only load needs to allow.
    return [torch.nn.ReLU]


def unpickling_refusal(err):
    """Why a weights-only load refused a file, without torch's advice to load it unsafely."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch's text around the reason suggests weights_only=False, which would run the file's code.
    reasons = [line for line in lines if 'weights_only' not in line.replace(' ', '_').lower()
               and not line.startswith(('Weights only load failed', 'Check the documentation'))]
    return reasons[0] if reasons else 'it needs objects outside the allow-list'


def torch_load(path, map_location='cpu', name=None):
    """torch.load with weights_only=True, allowing only what legacy files need.

    path: a file name or an open binary file (then `name` names it in messages).
    Anything else that needs unpickling is refused (CheckpointError), without
    running its code; so is a file torch cannot parse.
    """
    name = name or path
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()), warnings.catch_warnings():
            # Plain pickles make torch warn about their protocol before refusing them.
            warnings.filterwarnings('ignore', message='Detected pickle protocol')
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f'{name} does not exist') from None
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f'{name} holds objects that a weights-only load does not allow, so it was not '
            f'loaded ({unpickling_refusal(err)}); this code never unpickles other '
            'objects') from None
    except Exception as err:  # garbage makes torch's parser raise anything (KeyError, ...)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f'{name} is not a readable checkpoint ({reason})') from None


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value):
    if isinstance(value, torch.Tensor):  # the released files hold best_FID as a 0-d tensor
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_STATE_CHECKS = {
    'itr': (_is_count, 'a non-negative int'),
    'epoch': (_is_count, 'a non-negative int'),
    'save_num': (_is_count, 'a non-negative int'),
    'save_best_num': (_is_count, 'a non-negative int'),
    'best_IS': (_is_number, 'a number'),
    'best_FID': (_is_number, 'a number'),
    'config': (lambda v: isinstance(v, dict), 'a dict'),
}
# Written by this code only; optional, so the original's files load.
_OPTIONAL_STATE_CHECKS = {
    'rng': (lambda v: v is None or (isinstance(v, dict)
                                    and {'torch', 'numpy', 'python'} <= set(v)), 'RNG states'),
    'best_copies': (lambda v: isinstance(v, list) and all(
        isinstance(e, dict) and {'slot', 'itr', 'IS_mean', 'FID'} <= set(e) for e in v),
        'a list of best-copy records'),
    'grad_scalers': (lambda v: v is None or (isinstance(v, dict) and {'G', 'D'} <= set(v)),
                     'GradScaler states'),
    'ADA': (lambda v: v is None or (isinstance(v, dict)
                                    and {'p', 'rt', 'sign_sum', 'count', 'steps'} <= set(v)),
            "ADA's state"),
    'LeCam': (lambda v: v is None or (isinstance(v, dict) and {
        'anchor_real', 'anchor_fake', 'num_updates'} <= set(v)), "LeCam's anchors"),
}


def check_training_state(state, path):
    """Refuse (CheckpointError naming `path`) a state_dict.pth without the training state's
    keys and types: itr, epoch, save_num, save_best_num ints; best_IS, best_FID numbers;
    config a dict (plus, when present, this code's rng, best_copies, grad_scalers, ADA,
    LeCam)."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f'{path}: holds a {type(state).__name__}, not the training state (a dict with '
            f"{', '.join(_STATE_CHECKS)}); restore the experiment's own state_dict.pth")
    problems = [f'no {key}' for key in _STATE_CHECKS if key not in state]
    for checks in (_STATE_CHECKS, _OPTIONAL_STATE_CHECKS):
        problems += [f'{key} is not {what}' for key, (ok, what) in checks.items()
                     if key in state and not ok(state[key])]
    if problems:
        raise CheckpointError(f"{path}: not a training state ({'; '.join(problems[:4])}); "
                              "restore the experiment's own state_dict.pth")
    return state


_SYNC_BN_NAMES = {'running_mean': 'stored_mean', 'running_var': 'stored_var'}


def _map_sync_bn_keys(own, state):
    """The original's --cross_replica batch-norm buffers under our names.

    With --cross_replica the original's BNs hold SyncBN buffers
    (<bn>.bn.running_mean, .running_var, .num_batches_tracked); ours hold
    stored_mean/stored_var (bn.stored_* with --mybn) whatever --cross_replica
    is, with the same statistics (momentum averages, unbiased variance).
    Returns (state, whether anything was renamed).
    """
    out, renamed = {}, False
    for key, value in state.items():
        head, _, leaf = key.rpartition('.')
        if key in own or not head.endswith('.bn') or leaf not in (*_SYNC_BN_NAMES,
                                                                 'num_batches_tracked'):
            out[key] = value
            continue
        renamed = True
        if leaf == 'num_batches_tracked':
            continue  # momentum BN never reads it
        base, name = head[:-len('.bn')], _SYNC_BN_NAMES[leaf]
        target = next((t for t in (f'{base}.{name}', f'{base}.bn.{name}') if t in own), key)
        out[target] = value
    if renamed:
        # myBN's standing-statistics counter has no SyncBN counterpart: it starts empty.
        for key, value in own.items():
            if key.endswith('.bn.accumulation_counter') and key not in out:
                out[key] = torch.zeros_like(value)
    return out, renamed


def state_dict_mismatch(own, state, optional=()):
    """(missing, unexpected, wrong_shape): the keys of `own` (a module's state dict) that
    `state` lacks (but for keys ending in one of `optional`), the keys of `state` that
    `own` lacks, and the shared keys whose shapes differ. The one check of a loaded
    state dict against a module, before anything is copied into it."""
    missing = [k for k in own if k not in state and not k.endswith(tuple(optional))]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state
             and tuple(getattr(state[k], 'shape', ())) != tuple(own[k].shape)]
    return missing, unexpected, wrong


def _check_module_state(net, state, path, strict, what, notes):
    """The state dict `state` (read from `path`), mapped onto `net`'s layout and checked to fit.

    The original's layouts that differ from ours (its --cross_replica BN keys, its
    BigGAN-deep G) are mapped in memory, each appended to `notes`. Returns
    (state, convert): convert(name, tensor) maps per-parameter tensors such as the
    optimizer's moments the same way, or is None.
    """
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f'{path}: not a {what} state dict (a dict of tensors)')
    own = net.state_dict()
    state, renamed = _map_sync_bn_keys(own, state)
    if renamed:
        notes.append(f"{os.path.basename(path)} (the original's --cross_replica BN keys)")
    convert = None
    if hasattr(net, 'adapt_original_state'):
        state, convert = net.adapt_original_state(state)
        if convert is not None:
            notes.append(f"{os.path.basename(path)} (the original's BigGAN-deep G: [y, z] "
                         'latent, 3-channel output conv)')
    missing, unexpected, wrong = state_dict_mismatch(own, state)
    wrong = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in wrong]
    # Checked up front: load_state_dict copies the fitting tensors before it
    # complains, and a refused checkpoint must leave the model untouched.
    if wrong or (strict and (missing or unexpected)):
        detail = '; '.join(part for part in (
            f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})" if missing else '',
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})"
            if unexpected else '',
            f"{len(wrong)} shape mismatches (e.g. {', '.join(wrong[:2])})" if wrong else '')
            if part)
        raise CheckpointError(
            f'{path} does not fit the {what} built from these flags: {detail}. Use the flags '
            'the checkpoint was trained with (model, widths, attention, hier, shared_dim, '
            'dim_z, mybn, ...)')
    return state, convert


def _convert_optim_state(net, optim_state, convert):
    """Map the per-parameter tensors of an Adam state dict of `net` with convert(name, t)."""
    names = [name for name, _ in net.named_parameters()]
    if not (isinstance(optim_state, dict) and isinstance(optim_state.get('state'), dict)):
        return optim_state  # _check_optimizer_state refuses it
    state = {index: {k: convert(names[index], v) if torch.is_tensor(v) and v.ndim else v
                     for k, v in entry.items()}
             if isinstance(index, int) and 0 <= index < len(names) and isinstance(entry, dict)
             else entry
             for index, entry in optim_state['state'].items()}
    return {**optim_state, 'state': state}


def _check_optimizer_state(optim, state, path):
    """Refuse an optimizer state whose groups or moment shapes do not fit `optim`'s parameters."""
    if not (isinstance(state, dict) and isinstance(state.get('state'), dict)
            and isinstance(state.get('param_groups'), list)
            and all(isinstance(g, dict) and isinstance(g.get('params'), list)
                    for g in state['param_groups'])):
        raise CheckpointError(f'{path}: not an optimizer state (a dict with state and '
                              'param_groups)')
    own = [len(g['params']) for g in optim.param_groups]
    saved = [len(g['params']) for g in state['param_groups']]
    problems = [] if own == saved else [f'parameter groups of {saved} parameters, expected {own}']
    params = {pid: p for g, own_g in zip(state['param_groups'], optim.param_groups)
              for pid, p in zip(g['params'], own_g['params'])}
    for pid, entry in state['state'].items():
        if pid not in params or not isinstance(entry, dict):
            problems.append(f'state for an unknown parameter {pid!r}')
            continue
        for key, value in entry.items():
            shape = tuple(params[pid].shape)
            if isinstance(value, torch.Tensor) and value.ndim and tuple(value.shape) != shape:
                problems.append(f'{key} of parameter {pid} is {tuple(value.shape)}, not {shape}')
    if problems:
        raise CheckpointError(f"{path} does not fit the optimizer built from these flags "
                              f"({'; '.join(problems[:2])}); use the flags the checkpoint was "
                              'trained with')
    return state


def checkpoint_exists(weights_root, experiment_name, name_suffix=None):
    """Whether the last committed set has its G and state_dict files (reads only)."""
    root = os.path.join(weights_root, experiment_name)
    _, view = _committed_view(root, name_suffix, ('G', 'state_dict'))
    return all(path is not None for path, _ in view.values())


def load_weights(G, D, state_dict, weights_root, experiment_name, name_suffix=None,
                 G_ema=None, strict=True, load_optim=True, log=print):
    """Load a checkpoint set into G, D (and their optimizers), G_ema and state_dict.

    Keys of the saved state dict that `state_dict` also has are copied into it;
    itr, epoch and the like therefore resume. Any of G, D, G_ema may be None.
    Reads the last committed set and changes nothing on disk. Every file is
    checked before any model is touched; CheckpointError names the file that is
    missing or does not fit. Files in the original's layouts where ours differs
    (its --cross_replica BN keys, its BigGAN-deep G) are mapped in memory, said in
    one `log` line.
    """
    root = os.path.join(weights_root, experiment_name)
    nets = [(net, part) for net, part in ((G, 'G'), (D, 'D'), (G_ema, 'G_ema')) if net is not None]
    parts = ['state_dict'] + [part for _, part in nets]
    if load_optim:
        parts += [f'{part}_optim' for _, part in nets if part != 'G_ema']
    loaded = load_checkpoint_set(weights_root, experiment_name, name_suffix, parts)
    path = {part: checkpoint_path(root, part, name_suffix) for part in parts}
    first = parts[1] if len(parts) > 1 else 'G'
    if loaded['state_dict'] is None or loaded.get(first, True) is None:
        raise CheckpointError(
            f"no checkpoint {join_strings('_', [first, name_suffix])}.pth with its state_dict "
            f'in {root}: check --weights_root, --experiment_name and --load_weights')
    for part in parts:
        if loaded[part] is None:
            raise CheckpointError(f'{path[part]} does not exist: the checkpoint set in {root} '
                                  'is incomplete')
    saved = check_training_state(loaded['state_dict'], path['state_dict'])
    updates, notes = [], []
    for net, part in nets:
        state, convert = _check_module_state(net, loaded[part], path[part], strict, part, notes)
        updates.append((net, state))
        if load_optim and part != 'G_ema':
            optim_state = loaded[f'{part}_optim']
            if convert is not None:
                optim_state = _convert_optim_state(net, optim_state, convert)
            updates.append((net.optim, _check_optimizer_state(
                net.optim, optim_state, path[f'{part}_optim'])))
    if notes:
        log(f"{root}: mapped onto this model's layout in memory (the files are unchanged): "
            f"{', '.join(notes)}")
    for target, state in updates:
        if isinstance(target, nn.Module):
            target.load_state_dict(state, strict=strict)
        else:
            target.load_state_dict(state)
    for key in state_dict:
        if key in saved and key != 'config':
            state_dict[key] = saved[key]
    return saved


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_writable(path, flag):
    """Refuse (OutputError naming `flag`) a folder that cannot be created or written:
    `path` if it exists, else the nearest folder above it (where it would be made)."""
    folder = _nearest_existing(path)
    if not os.path.isdir(folder):
        raise OutputError(f'{flag} {path}: {folder} is a file, not a folder')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f'{flag} {path}: {folder} is not writable (permission denied or a '
                          f'read-only file system); fix its permissions or choose another {flag}')
    return folder


def check_outputs(config, experiment_name, set_bytes):
    """Refuse, before training, output folders that cannot be written and a weights folder
    whose file system has no room for one more checkpoint set of `set_bytes`."""
    weights = check_writable(os.path.join(config['weights_root'], experiment_name),
                             '--weights_root')
    check_writable(config['logs_root'], '--logs_root')
    check_writable(config['samples_root'], '--samples_root')
    # Room for the new set's temporaries beside the old set, with a margin for file overhead.
    need = int(set_bytes * 1.05) + (1 << 20)
    free = shutil.disk_usage(weights).free
    if free < need:
        raise OutputError(f"--weights_root {config['weights_root']}: {free / 2**20:.1f} MiB free "
                          f'on its file system, but one checkpoint set needs {need / 2**20:.1f} '
                          'MiB; free some space or choose another --weights_root')


# Errors of a full or read-only disk, met while writing outputs during training.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
