"""TFHub/converter.py on synthetic dumps with the hub modules' exact names and shapes."""
import contextlib
import json
import math
import re
import subprocess
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from make_tfhub_fixture import tfhub_layout, write_fixture
from PIL import Image

import utils
from conftest import ROOT

sys.path.insert(0, str(ROOT / 'TFHub'))
import converter  # noqa: E402

CH = 8


def _h5(path, name):
    with h5py.File(path, 'r') as f:
        return np.asarray(f[name][()])


def _tf_sigma(w, u):
    """TF-style spectral norm of w reshaped to (-1, out) from the left vector u: (1, out)."""
    W = w.reshape(-1, w.shape[-1]).astype(np.float64)
    u = u.reshape(1, -1).astype(np.float64)
    v = u @ W.T
    v /= np.linalg.norm(v)
    u_new = v @ W
    u_new /= np.linalg.norm(u_new)
    return float((v @ W @ u_new.T).squeeze())


@pytest.fixture(scope='module')
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp('tfhub')
    return {'biggan': write_fixture(str(root / 'biggan-128.h5'), 128, ch=CH, seed=1),
            'deep': write_fixture(str(root / 'biggan-deep-128.h5'), 128, deep=True, ch=CH,
                                  seed=2)}


@pytest.fixture(scope='module')
def biggan(dumps):
    return converter.convert_h5(dumps['biggan'], 128)


@pytest.fixture(scope='module')
def deep(dumps):
    return converter.convert_h5(dumps['deep'], 128, deep=True, truncation=0.5)


# ---------------------------------------------------------------------------
# Layout at the real widths (nothing allocated: the target G lives on 'meta')
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('deep_module', [False, True])
@pytest.mark.parametrize('resolution', [128, 256, 512])
def test_real_size_layout_is_what_the_converter_reads(resolution, deep_module):
    flags = converter.generator_flags(resolution, deep_module)
    G, _ = converter.build_generator(flags, device='meta')
    expected = converter.expected_tf_shapes(G, deep_module)
    layout = {converter.normalise_tf_name(k): v
              for k, v in tfhub_layout(resolution, deep_module).items()}
    plan = converter.conversion_plan(G, deep_module)
    kinds = {name: kind for name, kind in plan.values() if name}
    for name, shape in expected.items():
        assert name in layout, name
        if kinds[name] in converter.RESHAPE_KINDS:
            assert math.prod(layout[name]) == math.prod(shape), name
        else:
            assert tuple(layout[name]) == shape, name
    # Every variable of the module is read (by the EMA or the --no_ema conversion), except
    # the second SN vectors u1 and the accumulation counters, which our G has no use for.
    used = set(expected) | set(converter.expected_tf_shapes(G, deep_module, ema=False))
    unused = {re.sub(r'.*/', '', name) for name in set(layout) - used}
    assert unused == ({'truncation'} if deep_module else {'u1', 'accumulation_counter'})
    ch = 128 if deep_module else 96
    assert f'--G_ch {ch}' in ' '.join(flags)


def test_128_target_layout_equals_the_originals_checkpoint(shared_spec):
    spec = json.loads((shared_spec / 'checkpoints' / 'BigGAN_I128_ch96_bs256x8.json').read_text())
    G, _ = converter.build_generator(converter.generator_flags(128), device='meta')
    layout = [[k, list(v.shape)] for k, v in G.state_dict().items()]
    assert layout == [[k, shape] for k, shape, _ in spec['G']['state_dict']]


# ---------------------------------------------------------------------------
# Equivalences on a width-8 dump
# ---------------------------------------------------------------------------
def test_converted_generator_loads_strictly_and_runs(biggan, dumps):
    G, state_dict, flags = biggan
    G2, _ = converter.build_generator(flags)
    G2.load_state_dict(state_dict, strict=True)
    torch.manual_seed(0)
    z = converter.truncated_z(3, G2.dim_z, 0.5)
    with torch.no_grad():
        x = G2.eval()(z, G2.shared(torch.tensor([0, 1, 999])))
    assert x.shape == (3, 3, 128, 128)
    assert torch.isfinite(x).all() and x.std() > 0
    # The sv buffers hold the weight's top singular value, not the init's ones.
    W = state_dict['blocks.0.0.conv1.weight'].flatten(1).double()
    top = torch.linalg.matrix_norm(W, ord=2)
    assert 0.5 * top < state_dict['blocks.0.0.conv1.sv0'].item() <= top * (1 + 1e-5)


def test_conv_kernels_land_transposed(biggan, dumps):
    _, sd, _ = biggan
    w = _h5(dumps['biggan'], 'module/Generator/GBlock_1/conv0/w/ema_b999900:0')  # HWIO
    ours = sd['blocks.1.0.conv1.weight'].numpy()  # OIHW
    assert ours.shape == (w.shape[3], w.shape[2], w.shape[0], w.shape[1])
    for kh, kw, i, o in [(0, 2, 3, 5), (2, 0, 0, 1), (1, 1, 7, 4)]:
        assert ours[o, i, kh, kw] == w[kh, kw, i, o]
    np.testing.assert_array_equal(ours, w.transpose(3, 2, 0, 1))


def test_first_linear_nhwc_to_nchw(biggan, dumps):
    G, _, _ = biggan
    path, scope = dumps['biggan'], 'module/Generator/G_Z/G_linear'
    w = _h5(path, f'{scope}/w/ema_b999900:0')
    b = _h5(path, f'{scope}/b/ema_b999900:0')
    sigma = _tf_sigma(w, _h5(path, f'{scope}/u0:0'))
    z = np.random.default_rng(0).normal(size=(4, w.shape[0])).astype(np.float32)
    tf_out = (z @ (w / sigma) + b).reshape(4, 4, 4, -1).transpose(0, 3, 1, 2)
    with torch.no_grad():
        ours = G.linear(torch.from_numpy(z)).view(4, -1, 4, 4).numpy()
    np.testing.assert_allclose(ours, tf_out, rtol=1e-4, atol=1e-5)


def _tf_hyperbn(path, scope, cross, x, cond, ema_suffix, gain_name, bias_name, stats=None):
    """TF's conditional BN on NCHW x with cond in TF's order, from the raw h5 arrays."""
    params = []
    for name in (gain_name, bias_name):
        w = _h5(path, f'{scope}/{name}/w/{ema_suffix}:0')
        params.append(cond @ (w / _tf_sigma(w, _h5(path, f'{scope}/{name}/u0:0'))))
    if stats is None:
        mean = _h5(path, f'{cross}/accumulated_mean:0')
        var = _h5(path, f'{cross}/accumulated_var:0')
    else:
        mean, var = stats
    norm = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-4)
    return norm * (1 + params[0][:, :, None, None]) + params[1][:, :, None, None]


def test_hyperbn_condition_columns_swapped(biggan, dumps):
    G, _, _ = biggan
    path = dumps['biggan']
    rng = np.random.default_rng(1)
    bn = G.blocks[2][0].bn2
    z = rng.normal(size=(3, 20)).astype(np.float32)
    y = rng.normal(size=(3, 128)).astype(np.float32)
    x = rng.normal(size=(3, bn.output_size, 4, 4)).astype(np.float32)
    tf_out = _tf_hyperbn(path, 'module/Generator/GBlock_2/HyperBN_1',
                         'module/Generator/GBlock_2/CrossReplicaBN_1', x,
                         np.concatenate([z, y], 1), 'ema_b999900', 'gamma', 'beta')
    with torch.no_grad():
        ours = bn(torch.from_numpy(x), torch.from_numpy(np.concatenate([y, z], 1))).numpy()
    np.testing.assert_allclose(ours, tf_out, rtol=1e-4, atol=1e-4)
    # And the y block really is what moved: feeding TF's order to our layer differs.
    with torch.no_grad():
        wrong = bn(torch.from_numpy(x), torch.from_numpy(np.concatenate([z, y], 1))).numpy()
    assert np.abs(wrong - tf_out).max() > 1e-2


def test_shared_embedding_and_attention_gamma(biggan, dumps):
    G, _, _ = biggan
    np.testing.assert_array_equal(G.shared.weight.detach().numpy(),
                                  _h5(dumps['biggan'], 'module/linear/w/ema_b999900:0'))
    assert G.blocks[3][1].gamma.item() == pytest.approx(
        float(_h5(dumps['biggan'], 'module/Generator/attention/gamma/ema_b999900:0')[0]))


def test_ema_and_raw_weights(dumps, biggan):
    _, ema_sd, _ = biggan
    _, raw_sd, _ = converter.convert_h5(dumps['biggan'], 128, ema=False)
    path = dumps['biggan']
    for key, scope in (('blocks.0.0.conv2.weight', 'GBlock/conv1/w'),
                       ('output_layer.2.weight', 'conv_2d/w')):
        ema = _h5(path, f'module/Generator/{scope}/ema_b999900:0').transpose(3, 2, 0, 1)
        raw = _h5(path, f'module/Generator/{scope}:0').transpose(3, 2, 0, 1)
        assert not np.array_equal(ema, raw)
        np.testing.assert_array_equal(ema_sd[key].numpy(), ema)
        np.testing.assert_array_equal(raw_sd[key].numpy(), raw)
    np.testing.assert_array_equal(raw_sd['output_layer.0.gain'].numpy(), _h5(
        path, 'module/Generator/ScaledCrossReplicaBN/gamma:0').reshape(-1))
    # u vectors and BN statistics have no EMA copy: the same in both.
    for key in ('blocks.0.0.conv1.u0', 'blocks.1.0.bn1.stored_var', 'output_layer.0.stored_mean'):
        torch.testing.assert_close(ema_sd[key], raw_sd[key], rtol=0, atol=0)


def test_deep_converts_with_interpolated_stats(deep, dumps):
    G, sd, flags = deep
    assert G.__class__.__module__ == 'BigGANdeep'
    path = dumps['deep']
    stack = _h5(path, 'bn_stats/Generator/GBlock_3/BatchNorm_2/mean')
    np.testing.assert_array_equal(sd['blocks.3.0.bn3.stored_mean'].numpy(), stack[25])
    _, sd_mid, _ = converter.convert_h5(path, 128, deep=True, truncation=0.51)
    np.testing.assert_allclose(sd_mid['blocks.3.0.bn3.stored_mean'].numpy(),
                               0.5 * (stack[25] + stack[26]), rtol=1e-5, atol=1e-7)
    var = _h5(path, 'bn_stats/Generator/BatchNorm/var')
    _, sd_one, _ = converter.convert_h5(path, 128, deep=True, truncation=1.0)
    np.testing.assert_array_equal(sd_one['output_layer.0.stored_var'].numpy(), var[50])
    with torch.no_grad():
        x = G(converter.truncated_z(2, 128, 0.5), G.shared(torch.tensor([3, 4])))
    assert x.shape == (2, 3, 128, 128) and torch.isfinite(x).all()


def test_deep_first_linear_and_bn_follow_tf(deep, dumps):
    G, _, _ = deep
    path = dumps['deep']
    rng = np.random.default_rng(2)
    cond = rng.normal(size=(2, 256)).astype(np.float32)  # TF's [z, y]
    scope = 'module/Generator/GenZ/G_linear'
    w, b = _h5(path, f'{scope}/w/ema_0.9999:0'), _h5(path, f'{scope}/b/ema_0.9999:0')
    tf_out = (cond @ (w / _tf_sigma(w, _h5(path, f'{scope}/u0:0'))) + b)
    tf_out = tf_out.reshape(2, 4, 4, -1).transpose(0, 3, 1, 2)
    with torch.no_grad():
        ours = G.linear(torch.from_numpy(cond)).view(2, -1, 4, 4).numpy()
    np.testing.assert_allclose(ours, tf_out, rtol=1e-4, atol=1e-5)

    bn = G.blocks[1][0].bn1
    x = rng.normal(size=(2, bn.output_size, 4, 4)).astype(np.float32)
    stats = [_h5(path, f'bn_stats/Generator/GBlock_1/BatchNorm/{s}')[25] for s in ('mean', 'var')]
    tf_bn = _tf_hyperbn(path, 'module/Generator/GBlock_1/BatchNorm', None, x, cond,
                        'ema_0.9999', 'scale', 'offset', stats)
    with torch.no_grad():
        ours = bn(torch.from_numpy(x), torch.from_numpy(cond)).numpy()
    np.testing.assert_allclose(ours, tf_bn, rtol=1e-4, atol=1e-4)


def test_deep_no_ema_names_the_missing_raw_weights(dumps):
    with pytest.raises(converter.ConversionError, match='drop --no_ema'):
        converter.convert_h5(dumps['deep'], 128, deep=True, ema=False)


def test_dump_without_ema_copies_suggests_no_ema(tmp_path):
    path = write_fixture(str(tmp_path / 'biggan-128.h5'), 128, ch=CH, ema=False)
    with pytest.raises(converter.ConversionError, match='pass --no_ema'):
        converter.convert_h5(path, 128)
    _, sd, _ = converter.convert_h5(path, 128, ema=False)
    np.testing.assert_array_equal(sd['shared.weight'].numpy(), _h5(path, 'module/linear/w:0'))


def test_wrong_resolution_or_family_is_named(tmp_path, dumps):
    with pytest.raises(converter.ConversionError, match='pass -r 128'):
        converter.convert_h5(dumps['biggan'], 256)
    with pytest.raises(converter.ConversionError, match='drop --deep'):
        converter.convert_h5(dumps['biggan'], 128, deep=True)
    with pytest.raises(converter.ConversionError, match='add --deep'):
        converter.convert_h5(dumps['deep'], 128)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def _run(*argv):
    return subprocess.run([sys.executable, 'TFHub/converter.py', *argv], cwd=ROOT,
                          capture_output=True, text=True)


def _flags_from(stdout):
    match = re.search(r'^Generator flags: (.*)$', stdout, re.M)
    assert match, stdout
    return match.group(1).split()


@pytest.mark.parametrize('deep_module', [False, True])
def test_cli_end_to_end(tmp_path, deep_module):
    name = converter.module_name(128, deep_module)
    h5_path = write_fixture(str(tmp_path / 'w' / f'{name}.h5'), 128, deep=deep_module, ch=CH)
    # Sampling is the same code for both families; the deep run skips it to save time.
    extra = (['--deep', '--truncation', '0.4'] if deep_module else
             ['--generate_samples', '--samples_dir', str(tmp_path / 's'), '--batch_size', '4'])
    proc = _run('-r', '128', '--weights_dir', str(tmp_path / 'w'), *extra)
    assert proc.returncode == 0, proc.stderr
    flags = _flags_from(proc.stdout)
    assert flags == converter.generator_flags(128, deep_module, CH)
    config = utils.prepare_config(vars(utils.prepare_parser().parse_args(flags)))
    assert config['model'] == ('BigGANdeep' if deep_module else 'BigGAN')
    assert config['resolution'] == 128
    module = utils.load_model_module(config['model'])
    G = module.Generator(**{**config, 'skip_init': True, 'no_optim': True})
    pth = tmp_path / 'w' / (f'{name}-trunc0.4.pth' if deep_module else f'{name}.pth')
    G.load_state_dict(torch.load(pth, weights_only=True), strict=True)
    with h5py.File(h5_path, 'r') as f:
        w = f['module/Generator/GBlock/conv0/w/' + converter.EMA_SUFFIX[deep_module] + ':0'][()]
    np.testing.assert_array_equal(G.blocks[0][0].conv1.weight.detach().numpy(),
                                  w.transpose(3, 2, 0, 1))
    assert not list((tmp_path / 'w').glob('*.partial'))
    if deep_module:
        assert 'BN statistics at truncation 0.4' in proc.stdout
        return
    with Image.open(tmp_path / 's' / f'{name}_samples.jpg') as image:
        image.load()
        pixels = np.asarray(image)
    # 4 samples on a 2x2 grid with torchvision's 2-pixel padding.
    assert image.size == (2 * 128 + 3 * 2, 2 * 128 + 3 * 2)
    assert pixels.std() > 0


def test_missing_tensorflow_without_dump(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'tensorflow', None)  # import tensorflow -> ImportError
    with pytest.raises(SystemExit) as exit_info:
        converter.main(['-r', '128', '--weights_dir', str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / 'biggan-128.h5') in err
    assert 'pip install tensorflow tensorflow-hub' in err
    assert 'Traceback' not in err
    assert list(tmp_path.iterdir()) == []


def test_unreadable_dump_is_named_and_kept(tmp_path, capsys):
    path = tmp_path / 'biggan-128.h5'
    path.write_bytes(b'not an hdf5 file')
    with pytest.raises(SystemExit) as exit_info:
        converter.main(['-r', '128', '--weights_dir', str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f'{path} is not a readable HDF5 dump' in err and '--redownload' in err
    assert path.read_bytes() == b'not an hdf5 file'


# ---------------------------------------------------------------------------
# The dump step, against a stand-in for TensorFlow's TF1 API
# ---------------------------------------------------------------------------
def _fake_tensorflow(values, tensors):
    """(tf, hub) stand-ins: global variables `values`, graph tensors `tensors` once applied."""
    state = {'applied': False}

    class Graph:
        def as_default(self):
            return contextlib.nullcontext()

        def get_tensor_by_name(self, name):
            if not state['applied']:
                raise KeyError(name)
            return tensors[name]

    class Session:
        def __init__(self, graph=None):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def run(self, fetch):
            if isinstance(fetch, list):
                return [item.value for item in fetch]
            return None if fetch == 'init' else fetch.value

    class Module:
        def __init__(self, path):
            state['path'] = path

        def get_input_info_dict(self):
            info = SimpleNamespace(dtype='float32', get_shape=lambda: SimpleNamespace(
                as_list=lambda: [None, 128]))
            return {'z': info, 'y': info, 'truncation': info}

        def __call__(self, inputs):
            state['applied'] = True

    variables = [SimpleNamespace(name=k, value=v) for k, v in values.items()]
    tf1 = SimpleNamespace(Graph=Graph, Session=Session, placeholder=lambda *a: object(),
                          global_variables_initializer=lambda: 'init',
                          global_variables=lambda: variables, disable_eager_execution=lambda: None)
    return SimpleNamespace(compat=SimpleNamespace(v1=tf1)), SimpleNamespace(Module=Module), state


def test_dump_step_names_variables_and_deep_stats(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    shapes = tfhub_layout(128, deep=True, ch=CH, stats=False)
    values = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    order = converter.bn_stats_names({converter.normalise_tf_name(k): v.shape
                                      for k, v in values.items()})
    assert len(order) == 2 * (4 * 10 + 1)
    # The graph also holds other stack_N tensors; only the documented ones are statistics.
    tensors = {f'module_apply_default/stack_{n}:0': SimpleNamespace(value=np.zeros(3))
               for n in range(0, 220)}
    stats = {}
    for (name, channels), tensor in zip(order, converter.stack_tensor_names(len(order))):
        stats[name] = rng.uniform(0.5, 1.5, (51, channels)).astype(np.float32)
        tensors[tensor] = SimpleNamespace(value=stats[name])
    tf, hub, state = _fake_tensorflow(values, tensors)
    monkeypatch.setitem(sys.modules, 'tensorflow', tf)
    monkeypatch.setitem(sys.modules, 'tensorflow_hub', hub)
    path = str(tmp_path / 'biggan-deep-128.h5')
    converter.dump_tfhub_to_hdf5('https://tfhub.dev/deepmind/biggan-deep-128/1', path, deep=True)
    assert state['applied']
    with h5py.File(path, 'r') as f:
        for name, value in values.items():
            np.testing.assert_array_equal(f[name][()], value)
        for name, value in stats.items():
            np.testing.assert_array_equal(f[name][()], value)
        assert f['bn_stats/Generator/GBlock_9/BatchNorm_3/mean'].attrs['source'] == (
            'module_apply_default/stack_196:0')
    _, sd, _ = converter.convert_h5(path, 128, deep=True)
    np.testing.assert_array_equal(sd['blocks.9.0.bn4.stored_mean'].numpy(),
                                  stats['bn_stats/Generator/GBlock_9/BatchNorm_3/mean'][50])
    # An existing dump is kept unless --redownload.
    tensors.clear()
    converter.dump_tfhub_to_hdf5('unused', path, deep=True)
    with pytest.raises(converter.ConversionError, match='stack_1:0'):
        converter.dump_tfhub_to_hdf5('unused', path, redownload=True, deep=True)
    with h5py.File(path, 'r') as f:  # the failed redump left the earlier file intact
        assert 'bn_stats/truncation' in f
