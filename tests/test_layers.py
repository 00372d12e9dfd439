"""Spectral norm, normalisation, attention and block equivalences."""
import functools

import pytest
import torch
import torch.nn.functional as F

import BigGAN
import layers
from conftest import tiny_config


def _well_separated(out, inp, seed=0):
    """A random (out, inp) matrix with singular values 10, 7, 5, 3.5, ... (well separated)."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(out, out, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(inp, inp, generator=g, dtype=torch.float64))
    k = min(out, inp)
    s = 10 * 0.7 ** torch.arange(k, dtype=torch.float64)
    return (U[:, :k] * s) @ V[:, :k].t()


@pytest.mark.parametrize('num_svs', [1, 2, 3, 4])
def test_sn_singular_values_match_svdvals(num_svs):
    torch.manual_seed(0)
    lin = layers.SNLinear(24, 16, num_svs=num_svs, num_itrs=1, eps=1e-12)
    with torch.no_grad():
        lin.weight.copy_(_well_separated(16, 24).float())
    lin.train()
    for _ in range(200):
        lin(torch.randn(2, 24))
    expected = torch.linalg.svdvals(lin.weight.double())[:num_svs]
    got = torch.cat(lin.sv).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # The normalised weight has unit spectral norm.
    assert torch.linalg.matrix_norm(lin.W_().double(), ord=2).item() == pytest.approx(1.0, rel=1e-4)
    # The kept singular vectors stay orthonormal.
    U = torch.cat(lin.u)
    torch.testing.assert_close(U @ U.t(), torch.eye(num_svs), atol=1e-4, rtol=0)


def test_sn_conv_and_embedding_normalise_the_reshaped_weight():
    torch.manual_seed(0)
    conv = layers.SNConv2d(6, 5, 3, padding=1, num_itrs=50)
    emb = layers.SNEmbedding(7, 4, num_itrs=50)
    for module in (conv, emb):
        module.train()
        W = module.W_()
        sigma = torch.linalg.matrix_norm(module.weight.flatten(1), ord=2)
        torch.testing.assert_close(W, module.weight / sigma, rtol=1e-4, atol=1e-6)
        assert module.u0.shape == (1, module.weight.shape[0]) and module.sv0.shape == (1,)


def test_sn_u_unchanged_in_eval_and_updated_in_training():
    torch.manual_seed(0)
    conv = layers.SNConv2d(4, 6, 3, padding=1, num_svs=2, num_itrs=3)
    x = torch.randn(2, 4, 8, 8)
    conv.eval()
    before = [u.clone() for u in conv.u] + [s.clone() for s in conv.sv]
    conv(x)
    after = list(conv.u) + list(conv.sv)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    conv.train()
    conv(x)
    assert not torch.equal(before[0], conv.u0)
    assert not torch.equal(before[2], conv.sv0)


def _reference_power_iteration(W, u, eps):
    """The original's single-vector step: sigma = v W^T u^T with u, v detached."""
    with torch.no_grad():
        v = F.normalize(u @ W, eps=eps)
        u = F.normalize(v @ W.t(), eps=eps)
    return (v @ W.t() @ u.t()).squeeze()


def test_sn_forward_and_gradient_match_original_formula():
    torch.manual_seed(0)
    lin = layers.SNLinear(9, 5, num_itrs=1)
    u = lin.u0.clone()
    W_ref = lin.weight.detach().clone().requires_grad_(True)
    sigma = _reference_power_iteration(W_ref, u, lin.eps)
    x = torch.randn(3, 9)
    (F.linear(x, W_ref / sigma, lin.bias) ** 2).sum().backward()
    lin.train()
    (lin(x) ** 2).sum().backward()
    torch.testing.assert_close(lin.weight.grad, W_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lin.sv0, sigma.detach().view(1), rtol=1e-6, atol=0)


def _reference_attention(att, x):
    """The original SA-GAN computation with explicit bmm and softmax."""
    N, C, H, W = x.shape
    theta = att.theta(x).view(N, C // 8, H * W)
    phi = F.max_pool2d(att.phi(x), [2, 2]).view(N, C // 8, H * W // 4)
    g = F.max_pool2d(att.g(x), [2, 2]).view(N, C // 2, H * W // 4)
    beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
    o = att.o(torch.bmm(g, beta.transpose(1, 2)).view(N, C // 2, H, W))
    return att.gamma * o + x


def test_attention_matches_explicit_softmax_forward_and_backward():
    torch.manual_seed(0)
    att = layers.Attention(16, functools.partial(torch.nn.Conv2d))
    with torch.no_grad():
        att.gamma.fill_(0.7)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    out = att(x)
    ref = _reference_attention(att, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, att.theta.weight, att.gamma])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, att.theta.weight, att.gamma])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_attention_gamma_starts_at_zero_so_block_is_identity():
    att = layers.Attention(16)
    x = torch.randn(1, 16, 4, 4)
    assert att.gamma.item() == 0.0
    torch.testing.assert_close(att(x), x)


def _ccbn(mybn=False, norm_style='bn', channels=6):
    return layers.ccbn(channels, 5, which_linear=functools.partial(torch.nn.Linear, bias=False),
                       mybn=mybn, norm_style=norm_style, eps=1e-4)


def test_ccbn_fused_path_equals_batch_norm_then_affine():
    torch.manual_seed(0)
    bn = _ccbn()
    x, y = torch.randn(4, 6, 5, 5) * 3 + 1, torch.randn(4, 5)
    rm, rv = bn.stored_mean.clone(), bn.stored_var.clone()
    bn.train()
    out = bn(x, y)
    gain = (1 + bn.gain(y)).view(4, -1, 1, 1)
    bias = bn.bias(y).view(4, -1, 1, 1)
    ref = F.batch_norm(x, rm, rv, None, None, True, 0.1, 1e-4) * gain + bias
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Running statistics follow F.batch_norm's update (unbiased running variance).
    torch.testing.assert_close(bn.stored_mean, rm)
    torch.testing.assert_close(bn.stored_var, rv)
    bn.eval()
    ref_eval = F.batch_norm(x, rm, rv, None, None, False, 0.1, 1e-4) * gain + bias
    torch.testing.assert_close(bn(x, y), ref_eval, rtol=1e-5, atol=1e-5)


def test_ccbn_gradients_equal_reference():
    torch.manual_seed(0)
    bn = _ccbn()
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    y = torch.randn(4, 5)
    bn.train()
    g1 = torch.autograd.grad(bn(x, y).sin().sum(), [x, bn.gain.weight])
    gain = (1 + bn.gain(y)).view(4, -1, 1, 1)
    bias = bn.bias(y).view(4, -1, 1, 1)
    ref = F.batch_norm(x, None, None, None, None, True, 0.1, 1e-4) * gain + bias
    g2 = torch.autograd.grad(ref.sin().sum(), [x, bn.gain.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mybn_standing_stats_are_the_average_of_batch_stats():
    torch.manual_seed(0)
    bn = _ccbn(mybn=True)
    y = torch.randn(3, 5)
    batches = [torch.randn(3, 6, 4, 4) * (i + 1) for i in range(4)]
    layers_bn = bn.bn
    layers_bn.reset_stats()
    layers_bn.accumulate_standing = True
    bn.train()
    for x in batches:
        bn(x, y)
    assert layers_bn.accumulation_counter.item() == 4
    mean = torch.stack([x.mean((0, 2, 3)) for x in batches]).mean(0)
    var = torch.stack([x.var((0, 2, 3), unbiased=False) for x in batches]).mean(0)
    bn.eval()
    x = torch.randn(3, 6, 4, 4)
    gain = (1 + bn.gain(y)).view(3, -1, 1, 1)
    bias = bn.bias(y).view(3, -1, 1, 1)
    ref = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-4) * gain + bias
    torch.testing.assert_close(bn(x, y), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('style, groups', [('in', None), ('gn', 16), ('gn_ch_4', 8),
                                           ('gn_grp_2', 2), ('nonorm', None)])
def test_other_norm_styles_apply_gain_and_bias_after_normalising(style, groups):
    torch.manual_seed(0)
    bn = _ccbn(norm_style=style, channels=32)
    x, y = torch.randn(2, 32, 4, 4) * 2 + 1, torch.randn(2, 5)
    gain = (1 + bn.gain(y)).view(2, -1, 1, 1)
    bias = bn.bias(y).view(2, -1, 1, 1)
    if style == 'in':
        normed = F.instance_norm(x, eps=1e-4)
    elif style == 'nonorm':
        normed = x
    else:
        normed = F.group_norm(x, groups, eps=1e-4)
    bn.train()
    torch.testing.assert_close(bn(x, y), normed * gain + bias, rtol=1e-5, atol=1e-5)


def test_unknown_norm_style_is_refused():
    with pytest.raises(ValueError, match='norm_style'):
        _ccbn(norm_style='ln')


def _reference_gblock(block, x, y):
    """The original order: upsample both paths, then the 1x1 shortcut conv."""
    h = block.activation(block.bn1(x, y))
    h = block.upsample(h)
    x = block.upsample(x)
    h = block.conv2(block.activation(block.bn2(block.conv1(h), y)))
    return h + block.conv_sc(x)


def _reference_dblock(block, x):
    """The original preactivated order: shortcut conv first, then pooling."""
    h = F.relu(x)
    h = block.downsample(block.conv2(block.activation(block.conv1(h))))
    return h + block.downsample(block.conv_sc(x))


def test_gblock_and_dblock_shortcut_reordering_is_exact():
    torch.manual_seed(0)
    conv = functools.partial(torch.nn.Conv2d, kernel_size=3, padding=1)
    which_bn = functools.partial(layers.ccbn, input_size=5,
                                 which_linear=functools.partial(torch.nn.Linear, bias=False))
    g = layers.GBlock(6, 4, conv, which_bn, torch.nn.ReLU(), layers.nearest_upsample)
    x, y = torch.randn(2, 6, 4, 4), torch.randn(2, 5)
    torch.testing.assert_close(g(x, y), _reference_gblock(g, x, y), rtol=1e-5, atol=1e-5)
    d = layers.DBlock(4, 6, conv, wide=True, preactivation=True, activation=torch.nn.ReLU(),
                      downsample=torch.nn.AvgPool2d(2))
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(d(x), _reference_dblock(d, x), rtol=1e-5, atol=1e-5)


def test_dblock_wide_and_thin_hidden_widths():
    conv = functools.partial(torch.nn.Conv2d, kernel_size=3, padding=1)
    wide = layers.DBlock(4, 8, conv, wide=True, activation=torch.nn.ReLU())
    thin = layers.DBlock(4, 8, conv, wide=False, activation=torch.nn.ReLU())
    assert wide.conv1.out_channels == 8 and thin.conv1.out_channels == 4
    assert not layers.DBlock(8, 8, conv, activation=torch.nn.ReLU()).learnable_sc


def test_unconditional_bn_equals_batch_norm_with_affine_in_train_and_eval():
    torch.manual_seed(0)
    norm = layers.bn(6, eps=1e-4)
    with torch.no_grad():
        norm.gain.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(4, 6, 3, 3)
    rm, rv = torch.zeros(6), torch.ones(6)
    ref = F.batch_norm(x, rm, rv, norm.gain, norm.bias, True, 0.1, 1e-4)
    torch.testing.assert_close(norm(x), ref)
    norm.eval()
    ref = F.batch_norm(x, rm, rv, norm.gain, norm.bias, False, 0.1, 1e-4)
    torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-5)


def test_cross_replica_bn_in_one_process_equals_plain_bn():
    torch.manual_seed(0)
    plain, cross = _ccbn(), _ccbn()
    cross.load_state_dict(plain.state_dict())
    cross.cross_replica = True
    assert set(plain.state_dict()) == set(cross.state_dict())
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    y = torch.randn(4, 5)
    out_p, out_c = plain(x, y), cross(x, y)
    torch.testing.assert_close(out_c, out_p, rtol=1e-5, atol=1e-5)
    gp = torch.autograd.grad(out_p.sin().sum(), x)[0]
    gc = torch.autograd.grad(out_c.sin().sum(), x)[0]
    torch.testing.assert_close(gc, gp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cross.stored_var, plain.stored_var)


def test_embedding_ccbn_accepts_one_hot_class_weights():
    torch.manual_seed(0)
    bn = layers.ccbn(6, 4, which_linear=torch.nn.Embedding)
    bn.eval()
    x, classes = torch.randn(3, 6, 2, 2), torch.tensor([0, 3, 1])
    one_hot = F.one_hot(classes, 4).float()
    torch.testing.assert_close(bn(x, one_hot), bn(x, classes))
    mix = 0.25 * F.one_hot(torch.tensor([0]), 4).float() + 0.75 * F.one_hot(torch.tensor([2]), 4)
    gain = 1 + mix @ bn.gain.weight
    bias = (mix @ bn.bias.weight).view(1, -1, 1, 1)
    expected = (x[:1] - bn.stored_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.stored_var.view(1, -1, 1, 1) + bn.eps) * gain.view(1, -1, 1, 1) + bias
    torch.testing.assert_close(bn(x[:1], mix), expected)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float16, torch.bfloat16])
def test_spectral_norm_works_in_the_dtype_the_module_is_cast_to(dtype):
    torch.manual_seed(0)
    for layer in (layers.SNLinear(12, 7, num_itrs=50), layers.SNConv2d(4, 6, 3, num_itrs=50)):
        layer = layer.to(dtype)
        layer.train()
        W = layer.W_()
        assert W.dtype == dtype and layer.u0.dtype == dtype
        top = torch.linalg.svdvals(layer.weight.double().flatten(1))[0]
        if dtype == torch.float64:
            # 50 power steps from a random start: sigma to float64 precision.
            torch.testing.assert_close(layer.sv0.double()[0], top, rtol=1e-10, atol=0)
            assert torch.linalg.svdvals(W.flatten(1))[0].item() == pytest.approx(1.0, abs=1e-10)
        else:
            assert layer.sv0.double()[0].item() == pytest.approx(top.item(), rel=1e-2)
        shape = (2, 12) if isinstance(layer, torch.nn.Linear) else (2, 4, 5, 5)
        x = torch.randn(shape, dtype=dtype)
        assert layer(x).dtype == dtype


def test_a_float64_generator_matches_the_float32_one():
    torch.manual_seed(0)
    config = tiny_config('--G_shared', '--hier', '--dim_z', '20', '--shared_dim', '8')
    G = BigGAN.Generator(**config)
    G64 = BigGAN.Generator(**config)
    G64.load_state_dict(G.state_dict())
    G64.double()
    z, y = torch.randn(4, G.dim_z), torch.arange(4)
    for net in (G, G64):
        net.train()
    out, out64 = G(z, G.shared(y)), G64(z.double(), G64.shared(y))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out, rtol=1e-4, atol=1e-5)
