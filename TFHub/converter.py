"""Port the TF Hub BigGAN generators to this repository's BigGAN / BigGAN-deep G.

Covers deepmind/biggan-128/256/512 (v2) and deepmind/biggan-deep-128/256/512 (v1).
Two steps, each skipped when its output is already there:

1. dump (needs TensorFlow and tensorflow_hub, imported only here): every TF
   variable of the hub module goes to `<weights_dir>/biggan[-deep]-<res>.h5`
   under its full TF name, e.g. `module/Generator/GBlock/conv0/w/ema_b999900:0`.
   For biggan-deep the graph also holds the BN statistics as constants, one set
   per truncation value; they are stored as `bn_stats/<TF BN scope>/{mean,var}`
   (each (51, C), row k for truncation k / 50, e.g.
   `bn_stats/Generator/GBlock_3/BatchNorm_2/mean`) and `bn_stats/truncation` (51,).
2. convert (h5py and torch only): the h5 becomes `<weights_dir>/biggan[-deep]-<res>.pth`,
   a G state dict that loads with strict=True into the Generator built from the
   flags this script prints. Use G in eval mode: BN then uses the converted statistics.

Usage, from the repository root:
    python TFHub/converter.py -r 128 --weights_dir pretrained_weights --generate_samples
    python TFHub/converter.py -r 256 --deep --truncation 0.5 --generate_samples
"""
import argparse
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import layers  # noqa: E402
import utils  # noqa: E402

RESOLUTIONS = (128, 256, 512)
MODULE_URLS = {False: 'https://tfhub.dev/deepmind/biggan-{}/2',
               True: 'https://tfhub.dev/deepmind/biggan-deep-{}/1'}
# z sizes of the non-deep modules: (number of GBlocks + 1) chunks of 20, 20 and 16.
Z_DIMS = {128: 120, 256: 140, 512: 128}
# Output resolution of the stage after which the non-deep modules attend.
G_ATTN = {128: '64', 256: '128', 512: '64'}
EMA_SUFFIX = {False: 'ema_b999900', True: 'ema_0.9999'}
SHARED_DIM = 128
BN_STATS_ROOT = 'bn_stats'
N_TRUNCATIONS = 51
# The deep graph names its per-truncation statistics module_apply_default/stack_N:
# per group of ten N, the mean and var of two BNs sit at 10i+1, +3, +6 and +8.
STACK_OFFSETS = (1, 3, 6, 8)


class ConversionError(RuntimeError):
    """The h5 file does not hold what the requested hub module should."""


class TensorFlowMissing(ConversionError):
    """The dump step was needed but TensorFlow / tensorflow_hub are not installed."""


def module_name(resolution, deep=False):
    """'biggan-128' or 'biggan-deep-128': the hub module and the file stem."""
    return f"biggan{'-deep' if deep else ''}-{resolution}"


def pth_name(resolution, deep=False, truncation=1.0):
    """File name of the converted state dict; deep stats other than at 1.0 get a suffix."""
    suffix = f'-trunc{truncation:g}' if deep and truncation != 1.0 else ''
    return f'{module_name(resolution, deep)}{suffix}.pth'


def generator_flags(resolution, deep=False, ch=None):
    """Parser flags that build the Generator matching the hub module (list of str).

    ch defaults to the hub width (96, or 128 for deep); tests pass a small one.
    """
    common = ['--dataset', f'I{resolution}_hdf5', '--G_shared', '--shared_dim', str(SHARED_DIM),
              '--hier', '--BN_eps', '1e-4', '--SN_eps', '1e-4']
    if deep:
        return (['--model', 'BigGANdeep', '--G_ch', str(ch or 128), '--G_depth', '2',
                 '--dim_z', '128', '--G_attn', '64'] + common)
    return (['--model', 'BigGAN', '--G_ch', str(ch or 96), '--dim_z', str(Z_DIMS[resolution]),
             '--G_attn', G_ATTN[resolution]] + common)


def build_generator(flags, device=None):
    """(G, config) for parser flags, without init or optimizer; device='meta' allocates nothing."""
    config = utils.prepare_config(vars(utils.prepare_parser().parse_args(flags)))
    config.update(skip_init=True, no_optim=True)
    module = utils.load_model_module(config['model'])
    with torch.device(device or 'cpu'):
        G = module.Generator(**config)
    return G, config


# ---------------------------------------------------------------------------
# The mapping: our state-dict key -> (normalised TF name, transform)
# ---------------------------------------------------------------------------
def normalise_tf_name(name):
    """'module/Generator/x:0' -> 'Generator/x' (the hub scope and the output index dropped)."""
    name = name.removeprefix('/').removeprefix('module/')
    head, sep, tail = name.rpartition(':')
    return head if sep and tail.isdigit() else name


def _tf_scope(base, index):
    return base if index == 0 else f'{base}_{index}'


def _attention_index(G):
    for index, blocklist in enumerate(G.blocks):
        if len(blocklist) > 1:
            return index
    return None


class _Plan(dict):
    """key -> (tf_name, kind); the helpers name EMA leaves consistently."""

    def __init__(self, ema, deep):
        super().__init__()
        self.suffix = EMA_SUFFIX[deep] if ema else None

    def leaf(self, name):
        """The EMA copy of a trained variable (w, b, gamma, beta, scale, offset) when asked."""
        return f'{name}/{self.suffix}' if self.suffix else name

    def sn(self, key, scope, kind, bias=False, u_kind='u'):
        """An SN layer: weight, u0, (bias) from the TF scope; sv0 computed later."""
        self[f'{key}.weight'] = (self.leaf(f'{scope}/w'), kind)
        self[f'{key}.u0'] = (f'{scope}/u0', u_kind)
        self[f'{key}.sv0'] = (None, 'sv')
        if bias:
            self[f'{key}.bias'] = (self.leaf(f'{scope}/b'), 'first_linear_vector'
                                   if kind == 'first_linear' else 'vector')

    def attention(self, key, scope):
        """The self-attention block (TF's o_conv is our o)."""
        for ours, theirs in (('theta', 'theta'), ('phi', 'phi'), ('g', 'g'), ('o', 'o_conv')):
            self.sn(f'{key}.{ours}', f'{scope}/{theirs}', 'conv')
        self[f'{key}.gamma'] = (self.leaf(f'{scope}/gamma'), 'scalar')


def conversion_plan(G, deep, ema=True):
    """{our state-dict key: (normalised TF name or None, transform kind)} for every key of G.

    Kinds: conv (HWIO -> OIHW), linear ((in, out) -> (out, in)), hyper_linear (also
    [z, y] -> [y, z] columns), first_linear / first_linear_vector / first_linear_u
    (output rows NHWC -> NCHW), u, vector, scalar, embed (as is), stats (deep BN
    statistics at a truncation), sv (computed from the converted weight and u).
    """
    plan = _Plan(ema, deep)
    plan['shared.weight'] = (plan.leaf('linear/w'), 'embed')
    attention = _attention_index(G)
    if deep:
        plan.sn('linear', 'Generator/GenZ/G_linear', 'first_linear', bias=True,
                u_kind='first_linear_u')
        for i in range(len(G.blocks)):
            scope, key = _tf_scope('Generator/GBlock', i), f'blocks.{i}.0'
            for k in range(4):
                plan.sn(f'{key}.conv{k + 1}', f'{scope}/conv{k}', 'conv', bias=True)
                bn_scope = _tf_scope(f'{scope}/BatchNorm', k)
                plan.sn(f'{key}.bn{k + 1}.gain', f'{bn_scope}/scale', 'linear')
                plan.sn(f'{key}.bn{k + 1}.bias', f'{bn_scope}/offset', 'linear')
                plan[f'{key}.bn{k + 1}.stored_mean'] = (f'{BN_STATS_ROOT}/{bn_scope}/mean', 'stats')
                plan[f'{key}.bn{k + 1}.stored_var'] = (f'{BN_STATS_ROOT}/{bn_scope}/var', 'stats')
        plan['output_layer.0.gain'] = (plan.leaf('Generator/BatchNorm/scale'), 'vector')
        plan['output_layer.0.bias'] = (plan.leaf('Generator/BatchNorm/offset'), 'vector')
        for stat in ('mean', 'var'):
            plan[f'output_layer.0.stored_{stat}'] = (
                f'{BN_STATS_ROOT}/Generator/BatchNorm/{stat}', 'stats')
        plan.sn('output_layer.2', 'Generator/conv_to_rgb', 'conv', bias=True)
    else:
        plan.sn('linear', 'Generator/G_Z/G_linear', 'first_linear', bias=True,
                u_kind='first_linear_u')
        for i in range(len(G.blocks)):
            scope, key = _tf_scope('Generator/GBlock', i), f'blocks.{i}.0'
            for ours, theirs in (('conv1', 'conv0'), ('conv2', 'conv1'), ('conv_sc', 'conv_sc')):
                plan.sn(f'{key}.{ours}', f'{scope}/{theirs}', 'conv', bias=True)
            for k in range(2):
                hyper = _tf_scope(f'{scope}/HyperBN', k)
                cross = _tf_scope(f'{scope}/CrossReplicaBN', k)
                plan.sn(f'{key}.bn{k + 1}.gain', f'{hyper}/gamma', 'hyper_linear')
                plan.sn(f'{key}.bn{k + 1}.bias', f'{hyper}/beta', 'hyper_linear')
                # Used as they are, not divided by accumulation_counter: the original's
                # port and a TF re-implementation of the hub graph read them that way.
                plan[f'{key}.bn{k + 1}.stored_mean'] = (f'{cross}/accumulated_mean', 'vector')
                plan[f'{key}.bn{k + 1}.stored_var'] = (f'{cross}/accumulated_var', 'vector')
        scope = 'Generator/ScaledCrossReplicaBN'
        plan['output_layer.0.gain'] = (plan.leaf(f'{scope}/gamma'), 'vector')
        plan['output_layer.0.bias'] = (plan.leaf(f'{scope}/beta'), 'vector')
        plan['output_layer.0.stored_mean'] = (f'{scope}bn/accumulated_mean', 'vector')
        plan['output_layer.0.stored_var'] = (f'{scope}bn/accumulated_var', 'vector')
        plan.sn('output_layer.2', 'Generator/conv_2d', 'conv', bias=True)
    if attention is not None:
        plan.attention(f'blocks.{attention}.1', 'Generator/attention')
    missing = set(G.state_dict()) - set(plan)
    if missing:
        raise ConversionError(f'no TF source for {sorted(missing)}: the Generator was not '
                              'built from the flags generator_flags() gives')
    return dict(plan)


# ---------------------------------------------------------------------------
# Array transforms (TF layout -> ours)
# ---------------------------------------------------------------------------
def nhwc_to_nchw_rows(a, bottom_width=4):
    """Reorder the leading axis of a (H*W*C, ...) array from TF's (h, w, c) to our (c, h, w)."""
    rest = a.shape[1:]
    channels = a.shape[0] // bottom_width ** 2
    a = a.reshape(bottom_width, bottom_width, channels, *rest)
    return np.moveaxis(a, 2, 0).reshape(-1, *rest)


def swap_condition_rows(a, y_dim=SHARED_DIM):
    """TF HyperBN weight (z + y, out), rows [z, y] -> rows [y, z] (our BigGAN's order)."""
    z_dim = a.shape[0] - y_dim
    return np.concatenate([a[z_dim:], a[:z_dim]], 0)


def interpolate_stats(stack, truncation, grid=None):
    """Row of a (T, C) per-truncation stack at `truncation`, linear between neighbours.

    grid: the increasing truncation of each row (default: T values evenly from 0 to 1).
    Returns (C,).
    """
    rows = np.arange(stack.shape[0])
    grid = np.linspace(0.0, 1.0, stack.shape[0]) if grid is None else np.asarray(grid)
    position = float(np.interp(truncation, grid, rows))
    low = int(math.floor(position))
    high = min(low + 1, stack.shape[0] - 1)
    frac = position - low
    return ((1.0 - frac) * stack[low] + frac * stack[high]).astype(stack.dtype)


def transform(a, kind, truncation=1.0, grid=None):
    """Apply one transform kind (see conversion_plan) to a TF array; returns a numpy array."""
    if kind == 'conv':
        return a.transpose(3, 2, 0, 1)
    if kind == 'linear':
        return a.T
    if kind == 'hyper_linear':
        return swap_condition_rows(a).T
    if kind == 'first_linear':
        return nhwc_to_nchw_rows(a.T)
    if kind == 'first_linear_vector':
        return nhwc_to_nchw_rows(a.reshape(-1))
    if kind == 'first_linear_u':
        return nhwc_to_nchw_rows(a.reshape(-1)).reshape(1, -1)
    if kind == 'u':
        return a.reshape(1, -1)
    if kind == 'vector':
        return a.reshape(-1)
    if kind == 'scalar':
        return a.reshape(())
    if kind == 'embed':
        return a
    if kind == 'stats':
        return interpolate_stats(a, truncation, grid)
    raise ValueError(f'unknown transform kind {kind!r}')


# Kinds whose TF array is only reshaped: any TF shape with the right size is accepted.
RESHAPE_KINDS = ('first_linear_vector', 'first_linear_u', 'u', 'vector', 'scalar')


def expected_tf_shapes(G, deep, ema=True):
    """{normalised TF name: shape the converter expects} for G's plan (G may live on 'meta').

    For RESHAPE_KINDS only the size matters; the shape given is the flat one.
    """
    sd = G.state_dict()
    shapes = {}
    for key, (name, kind) in conversion_plan(G, deep, ema).items():
        if name is None:
            continue
        shape = tuple(sd[key].shape)
        if kind == 'conv':
            shape = (shape[2], shape[3], shape[1], shape[0])
        elif kind in ('linear', 'hyper_linear', 'first_linear'):
            shape = shape[::-1]
        elif kind == 'stats':
            shape = (N_TRUNCATIONS, shape[0])
        elif kind in RESHAPE_KINDS:
            shape = (math.prod(shape),)
        shapes[name] = shape
    return shapes


# ---------------------------------------------------------------------------
# Reading the h5 dump
# ---------------------------------------------------------------------------
class TFVariables:
    """The datasets of an h5 dump, looked up by normalised TF name."""

    def __init__(self, h5file):
        self.file = h5file
        self.path = h5file.filename
        self.names = {}

        def visit(path, obj):
            if isinstance(obj, h5py.Dataset):
                self.names.setdefault(normalise_tf_name(path), path)
        h5file.visititems(visit)

    def __contains__(self, name):
        return name in self.names

    def shape(self, name):
        return self.file[self.names[name]].shape

    def __getitem__(self, name):
        if name not in self.names:
            raise KeyError(name)
        return np.asarray(self.file[self.names[name]][()])


def infer_architecture(variables, resolution, deep):
    """Check the dump against the requested module and return its channel width."""
    rgb = 'Generator/conv_to_rgb' if deep else 'Generator/conv_2d'
    candidates = [n for n in variables.names if n.startswith(f'{rgb}/w')]
    if not candidates:
        other = 'Generator/conv_2d' if deep else 'Generator/conv_to_rgb'
        hint = (f' It looks like a {"non-deep" if deep else "deep"} module: '
                f'{"drop" if deep else "add"} --deep.'
                if any(n.startswith(other) for n in variables.names) else '')
        raise ConversionError(f'{variables.path} has no {rgb}/w variable, so it is not a '
                              f'{module_name(resolution, deep)} dump.{hint}')
    ch = variables.shape(candidates[0])[2]
    blocks = {n.split('/')[1] for n in variables.names
              if n.startswith('Generator/GBlock') and len(n.split('/')) > 2}
    expected = (2 if deep else 1) * ({128: 5, 256: 6, 512: 7}[resolution])
    if len(blocks) != expected:
        found = {v: k for k, v in {128: 5, 256: 6, 512: 7}.items()}.get(
            len(blocks) // (2 if deep else 1))
        hint = f'; it looks like the {found}x{found} module: pass -r {found}' if found else ''
        raise ConversionError(f'{variables.path} holds {len(blocks)} GBlocks but '
                              f'{module_name(resolution, deep)} has {expected}{hint}')
    return ch


def _missing_message(variables, name, ema, deep):
    message = f'{variables.path} has no TF variable {name!r}'
    suffix = f'/{EMA_SUFFIX[deep]}'
    if name.startswith(BN_STATS_ROOT):
        return message + (': the dump lacks the per-truncation BN statistics, which only the '
                          'dump step extracts; rerun it with --redownload (needs TensorFlow)')
    if ema and name.endswith(suffix) and name.removesuffix(suffix) in variables:
        return message + ' (EMA copy); pass --no_ema to convert the raw weights it does hold'
    if not ema and f'{name}{suffix}' in variables:
        return message + ' (raw weight): this dump holds only the EMA copies; drop --no_ema'
    return message + ('; the dump is incomplete or of another module: check -r/--deep, or '
                      'dump it again with --redownload')


def convert_state_dict(variables, G, deep, ema=True, truncation=1.0, verbose=False):
    """Build G's state dict (same keys, shapes, dtypes) from TF variables.

    variables: TFVariables (or any mapping by normalised TF name with .shape/.path).
    truncation: selects the deep BN statistics (ignored for non-deep modules).
    """
    target = G.state_dict()
    plan = conversion_plan(G, deep, ema)
    grid = variables[f'{BN_STATS_ROOT}/truncation'] if (
        deep and f'{BN_STATS_ROOT}/truncation' in variables) else None
    out = {}
    for key, (name, kind) in plan.items():
        if kind == 'sv':
            continue
        if name not in variables:
            raise ConversionError(_missing_message(variables, name, ema, deep))
        raw = variables[name]
        if kind in ('first_linear', 'hyper_linear', 'linear', 'conv', 'embed', 'stats') and (
                raw.ndim != {'conv': 4, 'stats': 2}.get(kind, 2)):
            raise ConversionError(f'{variables.path}: {name} has shape {raw.shape}, '
                                  f'expected a {kind} array for {key} {tuple(target[key].shape)}')
        value = transform(raw, kind, truncation, grid)
        if tuple(value.shape) != tuple(target[key].shape):
            raise ConversionError(f'{variables.path}: {name} has shape {raw.shape}, which does '
                                  f'not give {key} {tuple(target[key].shape)}; is -r right?')
        out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(target[key].dtype)
        if verbose:
            print(f'{key:40s} <- {name} {tuple(raw.shape)} ({kind})')
    for key, (_, kind) in plan.items():
        if kind == 'sv':
            prefix = key.removesuffix('.sv0')
            W = out[f'{prefix}.weight'].float().flatten(1)
            svs, _, _ = layers.power_iteration(W, [out[f'{prefix}.u0'].clone()], update=False,
                                               eps=G.SN_eps, grad=False)
            out[key] = svs[0].reshape(1).to(target[key].dtype)
    return {key: out[key] for key in target}


def convert_h5(hdf5_path, resolution, deep=False, ema=True, truncation=1.0, verbose=False):
    """(G in eval mode with the converted weights, state dict, flags) from an h5 dump."""
    if not 0.0 <= truncation <= 1.0:
        raise ConversionError(f'--truncation {truncation}: must lie in [0, 1]')
    try:
        h5file = h5py.File(hdf5_path, 'r')
    except OSError as err:
        raise ConversionError(f'{hdf5_path} is not a readable HDF5 dump ({err}); dump it again '
                              'with --redownload') from None
    with h5file:
        variables = TFVariables(h5file)
        ch = infer_architecture(variables, resolution, deep)
        flags = generator_flags(resolution, deep, ch)
        # Built on 'meta' (no memory, no init): every tensor is then replaced by the dump's.
        G, _ = build_generator(flags, device='meta')
        state_dict = convert_state_dict(variables, G, deep, ema, truncation, verbose)
    G = G.to_empty(device='cpu')
    G.load_state_dict(state_dict, strict=True)
    uncovered = {name for name, _ in G.named_buffers()} - set(state_dict)
    if uncovered:  # a non-persistent buffer would be left uninitialised by to_empty
        raise ConversionError(f'the Generator has buffers outside its state dict: {uncovered}')
    return G.eval(), state_dict, flags


# ---------------------------------------------------------------------------
# Step 1: TF Hub -> h5 (the only part that needs TensorFlow)
# ---------------------------------------------------------------------------
def bn_stats_names(variable_shapes):
    """Deep BN statistic names in the graph's stack order, with their channel counts.

    variable_shapes: {normalised TF name: shape} of the deep module's variables.
    Returns [(h5 name, channels)]: per GBlock in order, BatchNorm .. BatchNorm_3
    (mean, then var), then the output BatchNorm.
    """
    def channels(name):
        for candidate in (f'{name}/w/{EMA_SUFFIX[True]}', f'{name}/w', f'{name}/{EMA_SUFFIX[True]}',
                          name):
            if candidate in variable_shapes:
                return variable_shapes[candidate][-1]
        raise ConversionError(f'the deep module has no variable {name}')

    num_blocks = len({n.split('/')[1] for n in variable_shapes
                      if n.startswith('Generator/GBlock') and len(n.split('/')) > 2})
    names = []
    for i in range(num_blocks):
        for k in range(4):
            scope = _tf_scope(f"{_tf_scope('Generator/GBlock', i)}/BatchNorm", k)
            c = channels(f'{scope}/scale')
            names += [(f'{BN_STATS_ROOT}/{scope}/mean', c), (f'{BN_STATS_ROOT}/{scope}/var', c)]
    c = channels('Generator/BatchNorm/scale')
    names += [(f'{BN_STATS_ROOT}/Generator/BatchNorm/mean', c),
              (f'{BN_STATS_ROOT}/Generator/BatchNorm/var', c)]
    return names


def stack_tensor_names(count):
    """The first `count` graph tensors that hold deep BN statistics, in order."""
    names = []
    group = 0
    while len(names) < count:
        names += [f'module_apply_default/stack_{10 * group + k}:0' for k in STACK_OFFSETS]
        group += 1
    return names[:count]


def _import_tensorflow(hdf5_path):
    try:
        import tensorflow as tf
        import tensorflow_hub as hub
    except ImportError as err:
        raise TensorFlowMissing(
            f'{hdf5_path} does not exist, and creating it (the dump step) needs TensorFlow and '
            f'tensorflow_hub ({err}). Either `pip install tensorflow tensorflow-hub` and rerun, '
            f'or copy an existing dump to {hdf5_path}; the conversion itself needs only h5py '
            'and torch.') from None
    return getattr(getattr(tf, 'compat', tf), 'v1', tf), hub


def dump_tfhub_to_hdf5(module_path, hdf5_path, redownload=False, deep=False):
    """Write every variable of the hub module (and the deep BN statistics) to hdf5_path.

    Skipped when the file exists, unless redownload. The file is written under a
    temporary name and renamed at the end, so a failed dump leaves no partial file.
    """
    if os.path.exists(hdf5_path) and not redownload:
        print(f'Using the existing dump {hdf5_path}')
        return hdf5_path
    tf, hub = _import_tensorflow(hdf5_path)
    if hasattr(tf, 'disable_eager_execution'):
        tf.disable_eager_execution()  # hub.Module is a TF1 graph-mode API
    print(f'Loading the TF Hub module {module_path}')
    graph = tf.Graph()
    with graph.as_default():
        module = hub.Module(module_path)
        if deep:
            # Applying the module builds module_apply_default/*, where the statistics live.
            inputs = {k: tf.placeholder(v.dtype, v.get_shape().as_list(), k)
                      for k, v in module.get_input_info_dict().items()}
            module(inputs)
        with tf.Session(graph=graph) as sess:
            sess.run(tf.global_variables_initializer())
            variables = tf.global_variables()
            values = dict(zip([v.name for v in variables], sess.run(variables)))
            stats = {}
            if deep:
                shapes = {normalise_tf_name(k): v.shape for k, v in values.items()}
                names = bn_stats_names(shapes)
                tensors = stack_tensor_names(len(names))
                for (name, channels), tensor_name in zip(names, tensors):
                    try:
                        tensor = graph.get_tensor_by_name(tensor_name)
                    except KeyError:
                        raise ConversionError(f'{module_path}: the graph has no {tensor_name}; '
                                              'cannot extract the BN statistics') from None
                    value = np.asarray(sess.run(tensor))
                    if value.shape != (N_TRUNCATIONS, channels):
                        raise ConversionError(
                            f'{module_path}: {tensor_name} has shape {value.shape}, expected '
                            f'{(N_TRUNCATIONS, channels)} for {name}')
                    stats[name] = (value, tensor_name)
    os.makedirs(os.path.dirname(os.path.abspath(hdf5_path)), exist_ok=True)
    with utils.atomic_write(hdf5_path) as partial, \
            h5py.File(partial, 'w', locking=False) as h5file:
        for name, value in values.items():
            h5file.create_dataset(name, data=value)
        for name, (value, source) in stats.items():
            h5file.create_dataset(name, data=value).attrs['source'] = source
        if stats:
            h5file.create_dataset(f'{BN_STATS_ROOT}/truncation',
                                  data=np.linspace(0, 1, N_TRUNCATIONS, dtype=np.float32))
    print(f'Wrote {len(values)} variables and {len(stats)} BN statistics to {hdf5_path}')
    return hdf5_path


# ---------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------
def truncated_z(batch_size, dim_z, truncation=1.0, threshold=2.0, generator=None):
    """z: (batch_size, dim_z), standard normal redrawn where |z| > threshold, times truncation."""
    z = torch.randn(batch_size, dim_z, generator=generator)
    outside = z.abs() > threshold
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=generator)
        outside = z.abs() > threshold
    return z * truncation


def generate_sample(G, batch_size, filename, truncation=1.0, threshold=2.0, parallel=False,
                    seed=0):
    """Write a sheet of batch_size samples of G (random classes) to filename."""
    from torchvision.utils import save_image
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    G = G.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    z = truncated_z(batch_size, G.dim_z, truncation, threshold, generator).to(device)
    y = torch.randint(0, G.n_classes, (batch_size,), generator=generator).to(device)
    net = torch.nn.DataParallel(G) if parallel and torch.cuda.device_count() > 1 else G
    with torch.no_grad():
        images = net(z, G.shared(y))
    os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
    save_image(images.float().cpu(), filename, nrow=max(1, int(math.sqrt(batch_size))),
               normalize=True, value_range=(-1, 1))
    return filename


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def convert_biggan(resolution, weights_dir, redownload=False, no_ema=False, verbose=False,
                   deep=False, truncation=1.0, module_path=None):
    """Dump (if needed) and convert one hub module; returns (G, pth path, flags)."""
    name = module_name(resolution, deep)
    hdf5_path = os.path.join(weights_dir, f'{name}.h5')
    dump_tfhub_to_hdf5(module_path or MODULE_URLS[deep].format(resolution), hdf5_path,
                       redownload=redownload, deep=deep)
    G, state_dict, flags = convert_h5(hdf5_path, resolution, deep, ema=not no_ema,
                                      truncation=truncation, verbose=verbose)
    pth_path = os.path.join(weights_dir, pth_name(resolution, deep, truncation))
    with utils.atomic_write(pth_path) as partial:
        torch.save(state_dict, partial)
    return G, pth_path, flags


def parse_args(argv=None):
    """The original's flags plus --deep, --truncation, --z_threshold, --seed, --module_path."""
    parser = argparse.ArgumentParser(description='Convert the TF Hub BigGAN generators.')
    parser.add_argument('--resolution', '-r', type=int, default=None, choices=RESOLUTIONS,
                        help='Resolution of the hub module; all three if omitted')
    parser.add_argument('--deep', action='store_true', default=False,
                        help='Convert biggan-deep instead of biggan')
    parser.add_argument('--redownload', action='store_true', default=False,
                        help='Dump the hub module again, overwriting the existing .h5')
    parser.add_argument('--weights_dir', type=str, default='pretrained_weights',
                        help='Where the .h5 dump and the converted .pth go (default: %(default)s)')
    parser.add_argument('--samples_dir', type=str, default='pretrained_samples',
                        help='Where --generate_samples writes (default: %(default)s)')
    parser.add_argument('--module_path', type=str, default=None,
                        help='Hub module URL or local folder instead of the tfhub.dev one '
                             '(needs -r)')
    parser.add_argument('--no_ema', action='store_true', default=False,
                        help='Convert the raw weights instead of their EMA copies')
    parser.add_argument('--truncation', type=float, default=1.0,
                        help='Truncation for the samples; for --deep it also selects the BN '
                             'statistics baked into the .pth (default: %(default)s)')
    parser.add_argument('--z_threshold', type=float, default=2.0,
                        help='Redraw sample z entries beyond this magnitude (default: %(default)s)')
    parser.add_argument('--verbose', action='store_true', default=False,
                        help='Print every converted tensor')
    parser.add_argument('--generate_samples', action='store_true', default=False,
                        help='Write a sample sheet of each converted model')
    parser.add_argument('--batch_size', type=int, default=16,
                        help='Samples on the sheet (default: %(default)s)')
    parser.add_argument('--parallel', action='store_true', default=False,
                        help='Sample with nn.DataParallel over the visible GPUs')
    parser.add_argument('--seed', type=int, default=0, help='Seed of the samples')
    args = parser.parse_args(argv)
    if args.module_path and args.resolution is None:
        parser.error('--module_path needs -r/--resolution: it names one module')
    if not 0.0 < args.truncation <= 1.0:
        parser.error(f'--truncation {args.truncation}: must lie in (0, 1]')
    if args.z_threshold <= 0:
        parser.error(f'--z_threshold {args.z_threshold}: must be positive')
    if args.batch_size < 1:
        parser.error(f'--batch_size {args.batch_size}: must be at least 1')
    return args


def main(argv=None):
    """Dump, convert and optionally sample each requested module; exits 2 on bad input."""
    args = parse_args(argv)
    for flag, folder in (('--weights_dir', args.weights_dir),
                         ('--samples_dir', args.samples_dir if args.generate_samples else None)):
        if folder:
            try:
                utils.check_writable(folder, flag)
            except utils.USER_ERRORS as err:
                utils.fail(str(err))
    os.makedirs(args.weights_dir, exist_ok=True)
    for resolution in ([args.resolution] if args.resolution else RESOLUTIONS):
        try:
            G, pth_path, flags = convert_biggan(
                resolution, args.weights_dir, redownload=args.redownload, no_ema=args.no_ema,
                verbose=args.verbose, deep=args.deep, truncation=args.truncation,
                module_path=args.module_path)
        except (ConversionError, OSError, *utils.USER_ERRORS) as err:
            utils.fail(str(err))
        weights = 'raw' if args.no_ema else 'EMA'
        stats = (f', BN statistics at truncation {args.truncation:g}' if args.deep else '')
        print(f'Wrote {pth_path} ({weights} weights{stats})')
        print(f'Generator flags: {" ".join(flags)}')
        print('Load it with G.load_state_dict(torch.load(path, weights_only=True)) and sample '
              'with G in eval mode (--G_eval_mode), which uses the converted BN statistics.')
        if not args.deep and args.truncation != 1.0:
            print('Note: the non-deep modules hold one set of BN statistics (untruncated z); '
                  'for truncated samples consider standing statistics (--accumulate_stats).')
        if args.generate_samples:
            filename = os.path.join(args.samples_dir,
                                    f'{module_name(resolution, args.deep)}_samples.jpg')
            generate_sample(G, args.batch_size, filename, args.truncation, args.z_threshold,
                            args.parallel, args.seed)
            print(f'Wrote samples to {filename}')


if __name__ == '__main__':
    main()
