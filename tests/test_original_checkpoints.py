"""The original's checkpoint layouts where ours differs: its BigGAN-deep G, its --cross_replica
batch norms. Each loads through utils.load_weights, mapped in memory."""
import json

import pytest
import torch

import BigGAN
import BigGANdeep
import utils
from conftest import tiny_config

pytestmark = pytest.mark.usefixtures('one_thread')


def _write_set(root, G, D, G_ema=None, G_optim=None):
    """A checkpoint folder as the original writes it, from the state dicts given."""
    folder = root / 'exp'
    folder.mkdir(parents=True)
    parts = {'G': G, 'D': D, 'G_ema': G_ema, 'G_optim': G_optim,
             'state_dict': {'itr': 5, 'epoch': 0, 'save_num': 0, 'save_best_num': 0,
                            'best_IS': 0, 'best_FID': 999999, 'config': {}}}
    for name, obj in parts.items():
        if obj is not None:
            torch.save(obj, folder / f'{name}.pth')


def _original_deep_G_forward(ref, z, y):
    """The original's BigGAN-deep G: latent [y, z] into the linear layer and every BN, a
    3-channel output conv, all of whose channels are the image. ref: our Generator whose
    output conv was replaced by a 3-channel one and which holds the original's tensors."""
    cond = torch.cat([ref.shared(y), z], 1)
    h = ref.linear(cond).view(z.shape[0], -1, ref.bottom_width, ref.bottom_width)
    for blocklist in ref.blocks:
        for block in blocklist:
            h = block(h, cond)
    return torch.tanh(ref.output_layer(h))


def _random_state(layout, seed):
    """Random tensors for [key, shape, dtype] rows: weights, positive variances, SN vectors."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, _ in layout:
        if key.endswith('stored_var'):
            value = torch.rand(shape, generator=g) + 0.5
        elif key.endswith('stored_mean'):
            value = torch.randn(shape, generator=g) * 0.1
        elif key.endswith(('sv0', 'gamma')):
            value = torch.rand(shape, generator=g) + 0.5
        else:
            value = torch.randn(shape, generator=g) * 0.05
        state[key] = value
    return state


def test_original_deep_G_loads_and_computes_the_originals_function(shared_spec, tmp_path):
    spec = json.loads((shared_spec / 'checkpoints' / 'original_BigGANdeep_I128_ch128.json')
                      .read_text())
    config = utils.parse_config(utils.prepare_parser(), spec['flags'].split() + ['--skip_init'])
    original = _random_state(spec['G']['state_dict'], seed=0)
    _write_set(tmp_path, original, None)
    G = BigGANdeep.Generator(**config, no_optim=True)
    said = []
    utils.load_weights(G, None, {}, str(tmp_path), 'exp', load_optim=False, log=said.append)
    assert len(said) == 1 and "the original's BigGAN-deep G" in said[0]
    # The reference: the original's tensors as they are, in the original's computation.
    ref = BigGANdeep.Generator(**config, no_optim=True)
    ref.output_layer[2] = ref.which_conv(ref.arch['out_channels'][-1], 3)
    ref.load_state_dict(original, strict=True)
    G.eval(), ref.eval()
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(2, G.dim_z, generator=g), torch.tensor([3, 997])
    with torch.no_grad():
        out, expected = G(z, G.shared(y)), _original_deep_G_forward(ref, z, y)
    assert expected.std() > 1e-2 and (expected.abs() < 0.99).all()  # neither flat nor saturated
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_original_deep_G_resumes_with_its_optimizer_state_mapped(tmp_path):
    torch.manual_seed(0)
    config = tiny_config('--model', 'BigGANdeep', '--G_depth', '2', '--D_depth', '1',
                         '--G_shared', '--hier', '--dim_z', '6', '--shared_dim', '4')
    G = BigGANdeep.Generator(**config)
    D = BigGANdeep.Discriminator(**config)
    # An original-layout G: latent columns [y, z], a 3-channel output conv, and its Adam state.
    ours = G.state_dict()
    original = dict(ours)
    readers = ['linear.weight'] + [f'{n}.{p}.weight' for n, m in G.named_modules()
                                   if isinstance(m, BigGAN.layers.ccbn) for p in ('gain', 'bias')]
    for key in readers:
        original[key] = torch.cat([ours[key][:, 6:], ours[key][:, :6]], 1)
    for key in ('output_layer.2.weight', 'output_layer.2.bias'):
        original[key] = ours[key][:3].clone()
    original['output_layer.2.u0'] = ours['output_layer.2.u0'][:, :3].clone()
    names = [n for n, _ in G.named_parameters()]
    optim = {'state': {i: {'step': torch.tensor(4.0), 'exp_avg': original[n] * 0 + i,
                           'exp_avg_sq': original[n].abs()}
                       for i, n in enumerate(names)},
             'param_groups': G.optim.state_dict()['param_groups']}
    _write_set(tmp_path, original, D.state_dict(), G_optim=optim)
    torch.save(D.optim.state_dict(), tmp_path / 'exp' / 'D_optim.pth')
    G2 = BigGANdeep.Generator(**{**config, 'skip_init': True})
    D2 = BigGANdeep.Discriminator(**{**config, 'skip_init': True})
    state = {'itr': 0}
    utils.load_weights(G2, D2, state, str(tmp_path), 'exp', log=lambda m: None)
    assert state['itr'] == 5
    # Our layout back, except the output conv's extra channels, which are zero.
    mapped = G2.state_dict()
    for key, value in ours.items():
        if key in ('output_layer.2.weight', 'output_layer.2.bias', 'output_layer.2.u0'):
            dim = 1 if key.endswith('u0') else 0
            kept, extra = mapped[key].split([3, value.shape[dim] - 3], dim)
            assert torch.equal(kept, value.narrow(dim, 0, 3)) and not extra.any(), key
        else:
            assert torch.equal(mapped[key], value), key
    # The optimizer's moments line up with the parameters, mapped like them.
    loaded = G2.optim.state_dict()['state']
    for i, (name, p) in enumerate(G2.named_parameters()):
        assert loaded[i]['exp_avg'].shape == p.shape, name
        if name in readers:
            torch.testing.assert_close(loaded[i]['exp_avg_sq'], ours[name].abs())
    out_index = names.index('output_layer.2.weight')
    assert loaded[out_index]['exp_avg'][3:].abs().sum() == 0
    # One training step runs with the mapped state.
    G2.optim.zero_grad()
    G2(torch.randn(2, G2.dim_z), G2.shared(torch.tensor([0, 1]))).mean().backward()
    G2.optim.step()


def _sync_bn_layout(state):
    """Our state dict under the original's --cross_replica names: each BN's statistics in
    a SyncBN child `bn` (running_mean, running_var, num_batches_tracked)."""
    out = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition('.')
        if leaf in ('stored_mean', 'stored_var'):
            base = head.removesuffix('.bn')
            out[f"{base}.bn.{leaf.replace('stored', 'running')}"] = value
            if leaf == 'stored_mean':
                out[f'{base}.bn.num_batches_tracked'] = torch.tensor(17)
        elif leaf != 'accumulation_counter':
            out[key] = value
    return out


@pytest.mark.parametrize('mybn', [False, True])
@pytest.mark.parametrize('source_cr, target_cr', [(True, False), (False, True), (True, True)])
def test_cross_replica_checkpoints_load_either_way(tmp_path, mybn, source_cr, target_cr):
    extra = ('--mybn',) if mybn else ()
    torch.manual_seed(0)
    source = BigGAN.Generator(**tiny_config('--G_shared', *extra,
                                            *(('--cross_replica',) if source_cr else ())))
    source.train()
    for _ in range(3):  # running statistics away from their initial values
        source(torch.randn(4, source.dim_z), source.shared(torch.arange(4)))
    state = source.state_dict()
    if source_cr:
        state = _sync_bn_layout(state)  # the original's keys under --cross_replica
        assert any(k.endswith('.bn.running_var') for k in state)
    _write_set(tmp_path, state, None)
    target = BigGAN.Generator(**tiny_config('--G_shared', '--skip_init', *extra,
                                            *(('--cross_replica',) if target_cr else ())))
    said = []
    utils.load_weights(target, None, {}, str(tmp_path), 'exp', load_optim=False,
                       log=said.append)
    assert (len(said) == 1 and '--cross_replica BN keys' in said[0]) == source_cr
    for key, value in source.state_dict().items():
        if not key.endswith('accumulation_counter'):
            assert torch.equal(target.state_dict()[key], value), key
    source.eval(), target.eval()
    z, y = torch.randn(3, source.dim_z), torch.tensor([0, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(target(z, target.shared(y)), source(z, source.shared(y)))
