"""Checkpoint sets: round trip, crash safety, the weights-only loader, best copies."""
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

import BigGAN
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


def test_interrupted_save_leaves_the_earlier_set_loadable(tmp_path, monkeypatch):
    config, G, D, G_ema = _models()
    utils.save_weights(G, D, _state(config, 1), str(tmp_path), 'exp', None, G_ema)
    old_G = {k: v.clone() for k, v in G.state_dict().items()}
    _take_optimizer_step(G, D)
    calls, real_save = [], torch.save

    def failing_save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError('disk full')
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, 'save', failing_save)
    with pytest.raises(OSError):
        utils.save_weights(G, D, _state(config, 2), str(tmp_path), 'exp', None, G_ema)
    monkeypatch.setattr(torch, 'save', real_save)
    _, G2, D2, G_ema2 = _models(seed=3)
    state = {'itr': None}
    utils.load_weights(G2, D2, state, str(tmp_path), 'exp', None, G_ema2)
    assert state['itr'] == 1
    assert all(torch.equal(v, G2.state_dict()[k]) for k, v in old_G.items())
    assert not [n for n in os.listdir(tmp_path / 'exp') if n.startswith('.') or 'partial' in n]


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
        state = utils.torch_load(utils.checkpoint_path(root, 'state_dict'))
        for part in ('G', 'D', 'G_ema'):
            w = utils.torch_load(utils.checkpoint_path(root, part))['w']
            assert torch.all(w == state['itr']), (part, delay)
    assert state['itr'] > 0


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
    with pytest.raises(utils.CheckpointError, match='weights-only'):
        utils.torch_load(str(path))
    assert not _Evil.marker.exists()
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
