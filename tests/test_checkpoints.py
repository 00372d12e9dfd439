"""Checkpoint sets: round trip, crash safety, the weights-only loader, best copies,
validation of what is loaded, one writer per experiment, readers that change nothing."""
import errno
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

import BigGAN
import checkpoints
import train_fns
import utils
from conftest import ROOT, tiny_config


def _models(seed=0, **kw):
    torch.manual_seed(seed)
    config = tiny_config('--ema')
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    G_ema = BigGAN.Generator(**{**config, 'no_optim': True})
    return config, G, D, G_ema


def _state(config, itr):
    return {'itr': itr, 'epoch': 1, 'save_num': 0, 'save_best_num': 0, 'best_IS': 1.5,
            'best_FID': 99.0, 'best_copies': [], 'rng': utils.get_rng_state(), 'config': config}


def _take_optimizer_step(G, D):
    for net in (G, D):
        net.optim.zero_grad()
        sum(p.sum() for p in net.parameters()).backward()
        net.optim.step()


def test_round_trip_restores_models_optimizers_state_and_rng(tmp_path):
    config, G, D, G_ema = _models()
    _take_optimizer_step(G, D)
    state = _state(config, 7)
    utils.save_weights(G, D, state, str(tmp_path), 'exp', None, G_ema)
    expected_draw = torch.rand(3)
    _, G2, D2, G_ema2 = _models(seed=1)
    fresh = {k: None for k in state}
    loaded = utils.load_weights(G2, D2, fresh, str(tmp_path), 'exp', None, G_ema2)
    for a, b in ((G, G2), (D, D2), (G_ema, G_ema2)):
        for (k, v), v2 in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, v2), k
    assert str(G.optim.state_dict()) == str(G2.optim.state_dict())
    assert fresh['itr'] == 7 and fresh['best_FID'] == 99.0
    assert 'G_activation' not in loaded['config'] and loaded['config']['G_ch'] == 8
    utils.set_rng_state(fresh['rng'])
    assert torch.equal(torch.rand(3), expected_draw)
    assert sorted(os.listdir(tmp_path / 'exp')) == sorted(
        f'{p}.pth' for p in ('G', 'G_optim', 'D', 'D_optim', 'state_dict', 'G_ema'))


class _FullDisk:
    """utils' open(), on a disk with `room` bytes left: writes beyond it raise ENOSPC."""

    def __init__(self, room):
        self.room = room

    def __call__(self, path, mode='r', *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _LimitedFile(f, self) if ('w' in mode or 'x' in mode) else f


class _LimitedFile:
    def __init__(self, f, disk):
        self.f, self.disk = f, disk

    def write(self, data):
        if len(data) > self.disk.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.disk.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_during_a_save_removes_the_temporaries_and_keeps_the_previous_set(
        tmp_path, monkeypatch):
    config, G, D, G_ema = _models()
    utils.save_weights(G, D, _state(config, 1), str(tmp_path), 'exp', None, G_ema)
    root = tmp_path / 'exp'
    files = sorted(os.listdir(root))
    old_G = {k: v.clone() for k, v in G.state_dict().items()}
    _take_optimizer_step(G, D)
    # Room for about two of the six files: the third write fails inside torch.save.
    monkeypatch.setattr(checkpoints, 'open', _FullDisk(2 * os.path.getsize(root / 'G.pth')),
                        raising=False)
    with pytest.raises(utils.CheckpointError, match='No space left on device'):
        utils.save_weights(G, D, _state(config, 2), str(tmp_path), 'exp', None, G_ema)
    monkeypatch.undo()
    # Cleaned by the failed save itself, before any reader or recovery ran.
    assert sorted(os.listdir(root)) == files
    _, G2, D2, G_ema2 = _models(seed=3)
    state = {'itr': None}
    utils.load_weights(G2, D2, state, str(tmp_path), 'exp', None, G_ema2)
    assert state['itr'] == 1
    assert all(torch.equal(v, G2.state_dict()[k]) for k, v in old_G.items())


_KILL_LOOP = r'''
import sys, torch
sys.path.insert(0, sys.argv[2])
import utils
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(256, 256))
        self.optim = torch.optim.SGD(self.parameters(), lr=1.0)
G, D = Net(), Net()
itr = 0
print('ready', flush=True)
while True:
    itr += 1
    with torch.no_grad():
        G.w.fill_(itr)
        D.w.fill_(itr)
    utils.save_weights(G, D, {'itr': itr, 'config': {}}, sys.argv[1], 'exp', None, G)
'''


def test_kill_9_during_saves_never_leaves_a_mixed_set(tmp_path):
    script = tmp_path / 'loop.py'
    script.write_text(_KILL_LOOP)
    for delay in (0.05, 0.2, 0.4):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(ROOT)],
                                stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b'ready'
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        root = str(tmp_path / 'exp')
        if not utils.checkpoint_exists(str(tmp_path), 'exp'):
            continue  # killed before the first commit
        # A reader sees one complete set whatever state the kill left; so does the
        # next writer, after it has repaired the folder.
        for repaired in (False, True):
            if repaired:
                with utils.ExperimentLock(root):
                    utils.recover_checkpoints(root)
            loaded = utils.load_checkpoint_set(str(tmp_path), 'exp', parts=('state_dict', 'G',
                                                                            'D', 'G_ema'))
            itr = loaded['state_dict']['itr']
            for part in ('G', 'D', 'G_ema'):
                assert torch.all(loaded[part]['w'] == itr), (part, delay, repaired)
        assert not [n for n in os.listdir(root) if 'partial' in n or n.startswith('.')]
    assert itr > 0


def test_weights_only_loader_allows_legacy_relu_config_and_tensor_fid(tmp_path):
    path = tmp_path / 'state_dict.pth'
    legacy = {'itr': 137500, 'epoch': 2, 'save_num': 0, 'save_best_num': 1,
              'best_IS': 91.509384, 'best_FID': torch.tensor(9.7711),
              'config': {'G_activation': torch.nn.ReLU(inplace=True), 'dataset_root': 'data'}}
    torch.save(legacy, path)
    loaded = utils.torch_load(str(path))
    assert isinstance(loaded['config']['G_activation'], torch.nn.ReLU)
    assert loaded['config']['G_activation'].inplace and loaded['itr'] == 137500
    assert float(loaded['best_FID']) == pytest.approx(9.7711)


class _Evil:
    def __reduce__(self):
        return (os.system, (f'touch {_Evil.marker}',))


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')  # the crafted file's protocol
def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    _Evil.marker = tmp_path / 'pwned'
    path = tmp_path / 'state_dict.pth'
    torch.save({'itr': 1, 'payload': _Evil()}, path)
    with pytest.raises(utils.CheckpointError, match='weights-only') as err:
        utils.torch_load(str(path))
    assert not _Evil.marker.exists()
    # The refusal names what was refused, not torch's advice to load it unsafely.
    assert 'posix.system' in str(err.value) and 'weights_only' not in str(err.value)
    with open(tmp_path / 'plain.pkl', 'wb') as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(utils.CheckpointError):
        utils.torch_load(str(tmp_path / 'plain.pkl'))
    assert not _Evil.marker.exists()


def test_missing_and_mismatched_checkpoints_name_the_file(tmp_path):
    config, G, D, G_ema = _models()
    with pytest.raises(utils.CheckpointError, match='no checkpoint G.pth'):
        utils.load_weights(G, D, {}, str(tmp_path), 'exp')
    utils.save_weights(G, D, _state(config, 1), str(tmp_path), 'exp')
    other = tiny_config('--G_ch', '16')
    G16 = BigGAN.Generator(**other)
    before = {k: v.clone() for k, v in G16.state_dict().items()}
    with pytest.raises(utils.CheckpointError, match=r'G\.pth does not fit'):
        utils.load_weights(G16, D, {}, str(tmp_path), 'exp')
    assert all(torch.equal(v, G16.state_dict()[k]) for k, v in before.items())


def test_best_copies_are_truly_the_best_n(tmp_path):
    config, G, D, G_ema = _models()
    config = {**config, 'num_best_copies': 3, 'which_best': 'FID',
              'weights_root': str(tmp_path)}
    state = _state(config, 0)
    fids = [50.0, 40.0, 60.0, 45.0, 70.0, 30.0, 41.0]
    for itr, fid in enumerate(fids, 1):
        state['itr'] = itr
        train_fns.update_best_copies(G, D, G_ema, state, config, 'exp', 1.0, fid)
    kept = state['best_copies']
    assert [e['FID'] for e in kept] == sorted(fids)[:3]
    assert sorted(e['slot'] for e in kept) == [0, 1, 2]
    for e in kept:
        saved = utils.torch_load(str(tmp_path / 'exp' / f"state_dict_best{e['slot']}.pth"))
        assert saved['itr'] == e['itr'] and fids[saved['itr'] - 1] == e['FID']
    index = (tmp_path / 'exp' / 'best_copies.json').read_text()
    assert '"which_best": "FID"' in index and '"FID": 30.0' in index


# ---------------------------------------------------------------------------
# Readers never change the folder; the lock holder repairs it
# ---------------------------------------------------------------------------
class _Net(torch.nn.Module):
    """A model whose weight holds the iteration, so a mixed set shows at once."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(8, 8))
        self.optim = torch.optim.Adam(self.parameters())


def _nets(itr):
    G, D, G_ema = _Net(), _Net(), _Net()
    for net in (G, D, G_ema):
        with torch.no_grad():
            net.w.fill_(itr)
    return G, D, G_ema


def _save(root, itr, suffix=None):
    G, D, G_ema = _nets(itr)
    utils.save_weights(G, D, {'itr': itr, 'epoch': 0, 'save_num': 0, 'save_best_num': 0,
                              'best_IS': 0.0, 'best_FID': 0.0, 'config': {}},
                       str(root), 'exp', suffix, G_ema)


class _Killed(BaseException):
    """Stands for a kill -9: no cleanup code may catch it."""


def _read_everything(root):
    """Every reader entry point; returns the itr each saw in all parts, checking no mix."""
    G, D, G_ema = _nets(-1)
    state = {'itr': None}
    utils.load_weights(G, D, state, str(root), 'exp', None, G_ema)
    assert utils.checkpoint_exists(str(root), 'exp')
    for net in (G, D, G_ema):
        assert torch.all(net.w == state['itr'])
    return state['itr']


def forbid_renames_and_deletes(monkeypatch):
    """Make any rename or delete fail the test (only readers run while it is in force)."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f'a reader changed the folder: {args}')
    for name in ('remove', 'unlink', 'replace', 'rename', 'rmdir'):
        monkeypatch.setattr(os, name, forbidden)


def _readers_see(tmp_path, itr):
    """Every reader reads set `itr` in full, and leaves the folder exactly as it was."""
    listing = sorted(os.listdir(tmp_path / 'exp'))
    with pytest.MonkeyPatch.context() as mp:
        forbid_renames_and_deletes(mp)
        assert _read_everything(tmp_path) == itr
    assert sorted(os.listdir(tmp_path / 'exp')) == listing


def test_readers_use_the_last_committed_set_and_never_change_the_folder(tmp_path, monkeypatch):
    root = tmp_path / 'exp'
    _save(tmp_path, 1)
    # A writer killed before its commit record: its temporaries lie beside the set.
    monkeypatch.setattr(checkpoints, '_remove_quietly', lambda paths: None)
    monkeypatch.setattr(checkpoints, '_write_record', lambda *a: (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert any('.partial' in n for n in os.listdir(root))
    _readers_see(tmp_path, 1)
    # A writer killed after its commit, with one rename done: the record's set is read,
    # G from its final name and the rest from their temporaries.
    with utils.ExperimentLock(str(root)):
        utils.recover_checkpoints(str(root))
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # the record, then G.pth, then the kill
            raise _Killed()
        real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', replace_then_die)
    with pytest.raises(_Killed):
        _save(tmp_path, 3)
    monkeypatch.undo()
    in_flight = os.listdir(root)
    assert '.commit_latest.json' in in_flight and any('.partial' in n for n in in_flight)
    _readers_see(tmp_path, 3)
    # Only the lock holder repairs: afterwards the folder holds the plain set.
    with utils.ExperimentLock(str(root)):
        utils.recover_checkpoints(str(root))
    assert _read_everything(tmp_path) == 3
    assert sorted(os.listdir(root)) == sorted(
        f'{p}.pth' for p in ('G', 'G_optim', 'D', 'D_optim', 'state_dict', 'G_ema'))


def test_a_set_is_never_committed_with_a_file_missing(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    real_fsync_dir = checkpoints._fsync_dir

    def lose_a_file(path):
        for name in os.listdir(path):
            if name.startswith('D_optim.pth.partial'):
                os.remove(os.path.join(path, name))
        real_fsync_dir(path)
    monkeypatch.setattr(checkpoints, '_fsync_dir', lose_a_file)
    with pytest.raises(utils.CheckpointError, match='D_optim.pth.partial.* vanished'):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert not [n for n in os.listdir(tmp_path / 'exp') if n.startswith('.') or 'partial' in n]
    assert _read_everything(tmp_path) == 1


def test_a_malformed_commit_record_is_refused_and_moves_nothing(tmp_path):
    _save(tmp_path, 1)
    outside = tmp_path / 'precious.txt'
    outside.write_text('keep me')
    record = tmp_path / 'exp' / '.commit_latest.json'
    for text in ('{"G.pth": 1}', '[["../precious.txt", "G.pth"]]', '[["G.pth.partialx", '
                 '"../precious.txt"]]', 'not json'):
        record.write_text(text)
        with pytest.raises(utils.CheckpointError, match=r'\.commit_latest\.json: not a commit'):
            utils.load_weights(*_nets(0)[:2], {}, str(tmp_path), 'exp')
        with pytest.raises(utils.CheckpointError, match='not a commit record'):
            utils.recover_checkpoints(str(tmp_path / 'exp'))
        assert outside.read_text() == 'keep me' and record.exists()


def test_state_dict_that_is_not_a_training_state_is_refused_before_any_model_changes(tmp_path):
    config, G, D, G_ema = _models()
    utils.save_weights(G, D, _state(config, 4), str(tmp_path), 'exp', None, G_ema)
    path = tmp_path / 'exp' / 'state_dict.pth'
    good = utils.torch_load(str(path))
    _, G2, D2, G_ema2 = _models(seed=5)
    before = {k: v.clone() for k, v in G2.state_dict().items()}
    for bad, message in (([1, 2, 3], 'holds a list'),
                         (utils.torch_load(str(tmp_path / 'exp' / 'G.pth')), 'no itr'),
                         ({**good, 'itr': 'four'}, 'itr is not a non-negative int'),
                         ({**good, 'epoch': True}, 'epoch is not'),
                         ({**good, 'best_FID': 'low'}, 'best_FID is not a number'),
                         ({**good, 'config': [1]}, 'config is not a dict'),
                         ({**good, 'rng': 7}, 'rng is not RNG states')):
        torch.save(bad, path)
        state = {'itr': 0}
        with pytest.raises(utils.CheckpointError, match=message):
            utils.load_weights(G2, D2, state, str(tmp_path), 'exp', None, G_ema2)
        assert state == {'itr': 0}
        assert all(torch.equal(v, G2.state_dict()[k]) for k, v in before.items())
    # The released files' layout (tensor best_FID, extra config keys, a ReLU) loads.
    torch.save({'itr': 137500, 'epoch': 2, 'save_num': 0, 'save_best_num': 1,
                'best_IS': 91.5, 'best_FID': torch.tensor(9.77),
                'config': {'dataset_root': 'data', 'G_activation': torch.nn.ReLU()}}, path)
    state = {'itr': 0}
    utils.load_weights(G2, D2, state, str(tmp_path), 'exp', None, G_ema2)
    assert state['itr'] == 137500


def test_optimizer_state_that_does_not_fit_is_refused_before_any_model_changes(tmp_path):
    config, G, D, G_ema = _models()
    _take_optimizer_step(G, D)
    utils.save_weights(G, D, _state(config, 1), str(tmp_path), 'exp', None, G_ema)
    root = tmp_path / 'exp'
    good = utils.torch_load(str(root / 'G_optim.pth'))
    _, G2, D2, G_ema2 = _models(seed=5)
    before = {k: v.clone() for k, v in G2.state_dict().items()}
    moment = next(iter(good['state'].values()))
    wrong_shape = {**good, 'state': {**good['state'], 0: {**moment, 'exp_avg': torch.zeros(3)}}}
    for bad, message in ((utils.torch_load(str(root / 'D_optim.pth')), 'parameter groups'),
                         ({'state': {}}, 'not an optimizer state'),
                         (wrong_shape, r'exp_avg of parameter 0 is \(3,\)')):
        torch.save(bad, root / 'G_optim.pth')
        with pytest.raises(utils.CheckpointError, match=f'G_optim.pth.*{message}'):
            utils.load_weights(G2, D2, {}, str(tmp_path), 'exp', None, G_ema2)
        assert all(torch.equal(v, G2.state_dict()[k]) for k, v in before.items())
        assert not G2.optim.state


_HOLD_LOCK = r'''
import sys, time
sys.path.insert(0, sys.argv[2])
import utils
lock = utils.ExperimentLock(sys.argv[1]).acquire()
print('locked', flush=True)
time.sleep(600)
'''


def test_one_writer_per_experiment_and_a_killed_holder_frees_it(tmp_path):
    root = str(tmp_path / 'weights' / 'exp')
    script = tmp_path / 'hold.py'
    script.write_text(_HOLD_LOCK)
    holder = subprocess.Popen([sys.executable, str(script), root, str(ROOT)],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b'locked'
        with pytest.raises(utils.ExperimentBusy, match=f'{root} is in use .*pid {holder.pid}'):
            utils.ExperimentLock(root).acquire()
        # A writer that is not the holder is refused too, and writes nothing.
        G, D, G_ema = _nets(1)
        with pytest.raises(utils.ExperimentBusy):
            _save(tmp_path / 'weights', 1)
        assert os.listdir(root) == ['.lock']
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The OS dropped the killed holder's lock: the experiment is free again.
    with utils.ExperimentLock(root):
        assert (tmp_path / 'weights' / 'exp' / '.lock').read_text().split()[0] == str(os.getpid())
    # Released: no lock file; the folder stays because it existed before.
    assert os.listdir(root) == []
    with utils.ExperimentLock(str(tmp_path / 'new' / 'exp')):
        pass
    assert not (tmp_path / 'new').exists()  # folders the lock created are removed again


def test_checkpoint_set_size_is_known_from_the_models(tmp_path):
    config, G, D, G_ema = _models()
    _take_optimizer_step(G, D)  # Adam's moments exist from the first step on
    utils.save_weights(G, D, _state(config, 1), str(tmp_path), 'exp', None, G_ema)
    on_disk = sum(os.path.getsize(tmp_path / 'exp' / f'{part}.pth')
                  for part in ('G', 'G_optim', 'D', 'D_optim', 'G_ema'))
    estimate = utils.checkpoint_set_bytes(G, D, G_ema)
    assert estimate <= on_disk <= 1.1 * estimate


@pytest.mark.parametrize('which_best', ['IS', 'FID'])
def test_nan_results_never_rank_as_best(tmp_path, which_best):
    config, G, D, G_ema = _models()
    config = {**config, 'num_best_copies': 2, 'which_best': which_best,
              'weights_root': str(tmp_path)}
    state = _state(config, 0)
    nan = float('nan')
    # (IS, FID) per test: NaN in the ranking metric saves nothing, even into free slots.
    results = {'IS': [(nan, 50.0), (2.0, 60.0), (nan, 40.0), (3.0, 70.0), (1.0, 30.0)],
               'FID': [(2.0, nan), (3.0, 60.0), (4.0, nan), (1.0, 50.0), (5.0, 70.0)]}
    for itr, (IS, FID) in enumerate(results[which_best], 1):
        state['itr'] = itr
        slot = train_fns.update_best_copies(G, D, G_ema, state, config, 'exp', IS, FID)
        assert (slot is None) == (itr in (1, 3, 5))
    assert [e['itr'] for e in state['best_copies']] == [4, 2]
    for e in state['best_copies']:
        saved = utils.torch_load(str(tmp_path / 'exp' / f"state_dict_best{e['slot']}.pth"))
        assert saved['itr'] == e['itr']
    ranked = train_fns.rank_best([{'IS_mean': nan, 'FID': nan}, {'IS_mean': 1.0, 'FID': 9.0}],
                                 which_best)
    assert ranked[0]['IS_mean'] == 1.0
