"""Model construction, layouts, forward/backward at every resolution."""
import json

import pytest
import torch

import BigGAN
import BigGANdeep
import utils
from conftest import tiny_config

RESOLUTION_DATASETS = {32: 'C10', 64: 'I64', 128: 'I128', 256: 'I256', 512: 'I512'}


def _build(model, res, *extra):
    argv = ['--model', model, '--dataset', RESOLUTION_DATASETS[res], '--G_shared', '--hier',
            '--dim_z', '32', '--shared_dim', '8', '--G_attn', '32', '--D_attn', '16']
    if res == 32:
        argv[-3:] = ['32', '--D_attn', '8']
    if model == 'BigGANdeep':
        argv += ['--G_depth', '2', '--D_depth', '2']
    config = tiny_config(*argv, *extra)
    module = utils.load_model_module(model)
    G, D = module.Generator(**config), module.Discriminator(**config)
    return config, G, D, module.G_D(G, D)


@pytest.mark.parametrize('model', ['BigGAN', 'BigGANdeep'])
@pytest.mark.parametrize('res', [32, 64, 128, 256, 512])
def test_forward_backward_every_resolution(model, res):
    torch.manual_seed(0)
    config, G, D, GD = _build(model, res)
    z, y = utils.prepare_z_y(2, G.dim_z, config['n_classes'], device='cpu')
    z.sample_(), y.sample_()
    x = torch.rand(2, 3, res, res) * 2 - 1
    D_fake, D_real = GD(z, y, x, y, train_G=True)
    assert D_fake.shape == D_real.shape == (2, 1)
    (D_real.mean() - D_fake.mean()).backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    img = G(z, G.shared(y))
    assert img.shape == (2, 3, res, res)
    assert img.abs().max() <= 1
    assert sum(isinstance(m, BigGAN.layers.Attention) for m in G.modules()) == 1
    assert sum(isinstance(m, BigGAN.layers.Attention) for m in D.modules()) >= 1


@pytest.mark.parametrize('spec_name', ['BigGAN_I128_ch96_bs256x8', 'BigGAN_C10_cifar_ema',
                                       'BigGAN_I256_ch96_mybn'])
def test_state_dict_layout_equals_original(shared_spec, spec_name):
    spec = json.loads((shared_spec / 'checkpoints' / f'{spec_name}.json').read_text())
    config = utils.parse_config(utils.prepare_parser(), spec['flags'].split() + ['--skip_init'])
    assert (config['resolution'], config['n_classes']) == (spec['resolution'], spec['n_classes'])
    module = utils.load_model_module(config['model'])
    for name, net in (('G', module.Generator(**config)), ('D', module.Discriminator(**config))):
        layout = [[k, list(v.shape), str(v.dtype).removeprefix('torch.')]
                  for k, v in net.state_dict().items()]
        assert layout == spec[name]['state_dict']
        assert [k for k, _ in net.named_parameters()] == spec[name]['parameter_order']
        assert sum(p.numel() for p in net.parameters()) == spec[name]['num_parameters']
        # A checkpoint with exactly that layout loads strictly.
        fake = {k: torch.zeros(shape) for k, shape, _ in spec[name]['state_dict']}
        net.load_state_dict(fake, strict=True)


@pytest.mark.parametrize('res, dim_z, attn, chunk', [(128, 120, '64', 20), (256, 140, '128', 20),
                                                     (512, 128, '64', 16)])
def test_generator_expresses_tfhub_biggan(res, dim_z, attn, chunk):
    config = utils.parse_config(utils.prepare_parser(), [
        '--dataset', RESOLUTION_DATASETS[res], '--G_ch', '96', '--G_shared', '--shared_dim', '128',
        '--hier', '--dim_z', str(dim_z), '--BN_eps', '1e-4', '--SN_eps', '1e-4',
        '--G_attn', attn, '--D_attn', '0', '--skip_init'])
    G = BigGAN.Generator(**config, no_optim=True)
    assert G.z_chunk_size == chunk and G.dim_z == dim_z
    assert G.linear.weight.shape == (16 * 96 * 16, chunk)
    assert G.blocks[0][0].bn1.gain.weight.shape == (16 * 96, 128 + chunk)
    assert G.shared.weight.shape == (1000, 128)
    assert G.output_layer[0].eps == 1e-4 and G.blocks[0][0].bn1.eps == 1e-4
    assert G.linear.eps == 1e-4
    attn_stage = G.arch['resolution'].index(int(attn))
    assert isinstance(G.blocks[attn_stage][1], BigGAN.layers.Attention)


@pytest.mark.parametrize('res', [128, 256, 512])
def test_deep_generator_matches_tfhub_layout(res):
    config = utils.parse_config(utils.prepare_parser(), [
        '--model', 'BigGANdeep', '--dataset', RESOLUTION_DATASETS[res], '--G_ch', '128',
        '--G_depth', '2', '--G_shared', '--hier', '--dim_z', '128', '--shared_dim', '128',
        '--BN_eps', '1e-4', '--G_attn', '64', '--D_attn', '0', '--skip_init'])
    G = BigGANdeep.Generator(**config, no_optim=True)
    assert G.linear.weight.shape == (4 * 4 * 16 * 128, 256)
    assert G.blocks[0][0].bn1.gain.weight.shape == (16 * 128, 256)
    assert G.blocks[0][0].bn1.gain.bias is None
    assert G.output_layer[2].weight.shape == (128, 128, 3, 3)
    num_blocks = sum(isinstance(m, BigGANdeep.GBlock) for m in G.modules())
    assert num_blocks == 2 * len(G.arch['out_channels'])
    # The skip path drops channels: the 16ch -> 8ch block keeps x's first 8ch channels.
    block = next(m for m in G.modules()
                 if isinstance(m, BigGANdeep.GBlock) and m.out_channels < m.in_channels)
    assert block.conv4.out_channels == block.out_channels
    assert all(isinstance(m, BigGAN.layers.SNConv2d)
               for m in G.modules() if isinstance(m, torch.nn.Conv2d))


def test_deep_generator_conditions_on_z_then_y():
    torch.manual_seed(0)
    config = tiny_config('--model', 'BigGANdeep', '--G_depth', '1', '--D_depth', '1',
                         '--G_shared', '--hier', '--dim_z', '6', '--shared_dim', '4')
    G = BigGANdeep.Generator(**config)
    seen = {}
    G.linear.register_forward_hook(lambda m, inp, out: seen.update(cond=inp[0]))
    z, y = torch.randn(2, 6), torch.tensor([1, 2])
    G(z, G.shared(y))
    torch.testing.assert_close(seen['cond'], torch.cat([z, G.shared(y)], 1))


def test_deep_discriminator_concatenates_channels_in_shortcut():
    block = BigGANdeep.DBlock(8, 16, activation=torch.nn.ReLU())
    x = torch.randn(1, 8, 4, 4)
    assert block.conv_sc.out_channels == 8
    torch.testing.assert_close(block.shortcut(x)[:, :8], x)


def test_one_G_D_definition_shared_by_both_models():
    assert BigGANdeep.G_D is BigGAN.G_D


def test_split_D_equals_concatenated_D():
    torch.manual_seed(0)
    config = tiny_config()
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    GD = BigGAN.G_D(G, D)
    G.eval(), D.eval()
    z, y = torch.randn(3, G.dim_z), torch.tensor([0, 1, 2])
    x = torch.randn(3, 3, 32, 32)
    joint = GD(z, y, x, y)
    split = GD(z, y, x, y, split_D=True)
    for a, b in zip(joint, split):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    D_out, G_z = GD(z, y, return_G_z=True)
    assert G_z.shape == (3, 3, 32, 32) and D_out.shape == (3, 1)


def test_init_styles_and_skip_init():
    for style, check in [('N02', lambda w: abs(w.std().item() - 0.02) < 0.005),
                         ('ortho', lambda w: torch.allclose(
                             w.flatten(1) @ w.flatten(1).t(), torch.eye(w.shape[0]), atol=1e-4)),
                         ('xavier', lambda w: w.abs().max().item() <= (6 / sum(w.shape)) ** 0.5)]:
        torch.manual_seed(0)
        G = BigGAN.Generator(**tiny_config('--G_init', style))
        assert check(G.blocks[0][0].conv_sc.weight.flatten(1)[:8].detach()), style
    torch.manual_seed(0)
    a = BigGAN.Generator(**tiny_config('--skip_init'))
    torch.manual_seed(0)
    b = BigGAN.Generator(**tiny_config())
    assert not torch.equal(a.linear.weight, b.linear.weight)


def test_optimizers_take_the_flags():
    config = tiny_config('--G_lr', '1e-3', '--G_B1', '0.5', '--D_B2', '0.9', '--adam_eps', '1e-6')
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    g, d = G.optim.param_groups[0], D.optim.param_groups[0]
    assert (g['lr'], g['betas'], g['eps']) == (1e-3, (0.5, 0.999), 1e-6)
    assert d['betas'] == (0.0, 0.9)
    assert not hasattr(BigGAN.Generator(**config, no_optim=True), 'optim')


def test_discriminator_without_labels_is_unconditional():
    D = BigGAN.Discriminator(**tiny_config())
    x = torch.randn(2, 3, 32, 32)
    assert D(x).shape == (2, 1)


def test_non_hier_unshared_generator_uses_class_embeddings():
    config = tiny_config()
    G = BigGAN.Generator(**config)
    assert isinstance(G.blocks[0][0].bn1.gain, torch.nn.Embedding)
    out = G(torch.randn(2, G.dim_z), G.shared(torch.tensor([3, 4])))
    assert out.shape == (2, 3, 32, 32)


def _layout(net):
    return [[k, list(v.shape), str(v.dtype).removeprefix('torch.')]
            for k, v in net.state_dict().items()]


def test_deep_D_has_the_originals_layout_and_G_differs_only_in_its_output_conv(shared_spec):
    spec = json.loads((shared_spec / 'checkpoints' / 'original_BigGANdeep_I128_ch128.json')
                      .read_text())
    config = utils.parse_config(utils.prepare_parser(), spec['flags'].split() + ['--skip_init'])
    D = BigGANdeep.Discriminator(**config)
    # One list per stage: blocks.<stage>.<depth>, the stage's attention at blocks.<stage>.2.
    assert _layout(D) == spec['D']['state_dict']
    assert [k for k, _ in D.named_parameters()] == spec['D']['parameter_order']
    assert sum(p.numel() for p in D.parameters()) == spec['D']['num_parameters']
    # Our deep G follows TF Hub: a final conv to G_ch channels (the original's has 3).
    G = BigGANdeep.Generator(**config, no_optim=True)
    assert [k for k, _ in G.named_parameters()] == spec['G']['parameter_order']
    differ = [(a, b) for a, b in zip(_layout(G), spec['G']['state_dict']) if a != b]
    assert [a[0] for a, _ in differ] == ['output_layer.2.weight', 'output_layer.2.bias',
                                         'output_layer.2.u0']
    assert all(b[1][0 if b[0].endswith(('weight', 'bias')) else 1] == 3 for _, b in differ)
    assert len(_layout(G)) == len(spec['G']['state_dict'])


def test_deep_D_with_depth_keeps_each_stage_in_one_list():
    config = tiny_config('--model', 'BigGANdeep', '--G_depth', '1', '--D_depth', '3',
                         '--D_attn', '8')
    D = BigGANdeep.Discriminator(**config)
    stages = [[type(m).__name__ for m in stage] for stage in D.blocks]
    assert len(stages) == len(D.arch['out_channels'])
    assert stages[1] == ['DBlock'] * 3 + ['Attention'] and stages[0] == ['DBlock'] * 3
    assert D(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape == (2, 1)
