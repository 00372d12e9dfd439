"""Orthogonal regularisation gradients and EMA arithmetic."""
import pytest
import torch
import torch.nn as nn

import train_fns
import utils


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide = nn.Linear(12, 5)        # out < in: W W^T path
        self.tall = nn.Linear(3, 9)         # out > in: W (W^T W) path
        self.conv = nn.Conv2d(4, 6, 3)      # 4-d weight viewed as (6, 36)
        self.shared = nn.Embedding(7, 4)    # always excluded
        self.skipme = nn.Linear(4, 4)       # excluded through the blacklist


def _penalty(net, off_diagonal, params):
    total = 0
    for p in params:
        w = p.view(p.shape[0], -1)
        m = w @ w.t()
        eye = torch.eye(w.shape[0], dtype=w.dtype)
        m = m * (1 - eye) if off_diagonal else m - eye
        total = total + 0.5 * (m ** 2).sum()
    return total


@pytest.mark.parametrize('fn, off_diagonal',
                         [(train_fns.ortho, True), (train_fns.default_ortho, False)])
def test_ortho_gradient_equals_autograd_of_the_penalty(fn, off_diagonal):
    torch.manual_seed(0)
    net = _Net().double()
    strength = 0.3
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    fn(net, strength, blacklist=list(net.skipme.parameters()))
    penalised = [net.wide.weight, net.tall.weight, net.conv.weight]
    expected = torch.autograd.grad(strength * _penalty(net, off_diagonal, penalised), penalised)
    for p, g in zip(penalised, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    for p in [net.shared.weight, net.skipme.weight, net.wide.bias, net.conv.bias]:
        assert torch.count_nonzero(p.grad) == 0


def test_ortho_uses_the_same_formula_as_stated():
    """2 * strength * ((W W^T) * (1 - I)) W on a wide matrix, computed directly."""
    torch.manual_seed(1)
    lin = nn.Linear(8, 3, bias=False).double()
    lin.weight.grad = torch.zeros_like(lin.weight)
    w = lin.weight.detach()
    expected = 2 * 1e-2 * ((w @ w.t()) * (1 - torch.eye(3, dtype=w.dtype))) @ w
    train_fns.ortho(lin, 1e-2)
    torch.testing.assert_close(lin.weight.grad, expected)


def test_ema_arithmetic_and_start_itr():
    torch.manual_seed(0)
    src, tgt = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        src.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        tgt.weight.fill_(-5.0)
    ema = train_fns.ema(src, tgt, decay=0.9, start_itr=10)
    assert torch.equal(tgt.weight, src.weight)  # starts as a copy
    with torch.no_grad():
        src.weight.add_(1.0)
        src.running_mean.fill_(4.0)
    ema.update(itr=5)  # before start_itr: copies
    assert torch.equal(tgt.weight, src.weight)
    prev = tgt.weight.detach().clone()
    with torch.no_grad():
        src.weight.mul_(3.0)
        src.num_batches_tracked.fill_(7)
    ema.update(itr=10)
    torch.testing.assert_close(tgt.weight, 0.9 * prev + 0.1 * src.weight)
    torch.testing.assert_close(tgt.running_mean, torch.full((3,), 4.0))  # buffers are averaged
    assert tgt.num_batches_tracked.item() == 7  # integer buffers are copied


def test_ortho_of_a_channels_last_conv_equals_the_contiguous_one():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3).double()
    last = nn.Conv2d(4, 6, 3).double().to(memory_format=torch.channels_last)
    last.load_state_dict(conv.state_dict())
    assert not last.weight.is_contiguous()
    for net in (conv, last):
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        train_fns.ortho(net, 0.3)
    torch.testing.assert_close(last.weight.grad, conv.weight.grad, rtol=1e-12, atol=1e-14)


def _ortho_step(channels_last, amp, compiled, strength='1000'):
    """One GAN_training_function step of a tiny BigGAN with G_ortho/D_ortho on: the grads.

    The strength is large enough for the ortho term to dominate the N(0, 0.02)-initialised
    weights' gradients. D_lr 0 keeps D as it was, so that G's gradients of every run see
    the same D (Adam's first step would turn rounding noise in D's gradients into steps of lr).
    """
    import BigGAN
    from conftest import tiny_config
    torch.manual_seed(0)
    config = tiny_config('--batch_size', '4', '--num_D_steps', '1', '--G_ortho', strength,
                         '--D_ortho', strength, '--D_lr', '0', '--G_init', 'N02',
                         '--D_init', 'N02', '--amp', amp)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    G.to(memory_format=fmt), D.to(memory_format=fmt)
    G_train, D_train = ((torch.compile(G, backend='eager'), torch.compile(D, backend='eager'))
                        if compiled else (G, D))
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 10, device='cpu')
    train = train_fns.GAN_training_function(G, D, BigGAN.G_D(G_train, D_train), z_, y_, None,
                                            {'itr': 1}, config)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 32, 32, generator=g).clamp(-1, 1).to(memory_format=fmt)
    train(x, torch.randint(0, 10, (4,), generator=g))
    # The ortho reg acts on the weights (2+ dims); the rest is unchanged by it.
    return {f'{prefix}.{k}': p.grad.clone() for prefix, net in (('G', G), ('D', D))
            for k, p in net.named_parameters() if p.ndim >= 2}


def _rel_err(a, b):
    return max(((a[k] - v).norm() / v.norm()).item() for k, v in b.items())


def test_ortho_reg_with_the_speed_flags(one_thread):
    """--channels_last crashed the ortho reg (a view of a channels-last weight). With every
    speed flag the gradients, dominated by the ortho term, stay those of the plain step:
    channels-last with and without --amp bf16, and all three flags together (--compile with
    dynamo's eager backend, which needs no C++ toolchain; it is slow to trace, so once)."""
    references = {amp: _ortho_step(False, amp, False) for amp in ('none', 'bf16')}
    assert _rel_err(_ortho_step(False, 'none', False, strength='0'), references['none']) > 0.5
    for channels_last, amp, compiled in ((True, 'none', False), (True, 'bf16', False),
                                         (True, 'bf16', True)):
        grads = _ortho_step(channels_last, amp, compiled)
        assert all(torch.isfinite(g).all() for g in grads.values())
        tol = 1e-2 if amp == 'none' else 1e-1
        assert _rel_err(grads, references[amp]) < tol, (channels_last, amp, compiled)


def test_the_original_utils_names_are_the_training_helpers_themselves():
    for name in ('ema', 'ortho', 'default_ortho', 'toggle_grad', 'initiate_standing_stats',
                 'accumulate_standing_stats'):
        assert getattr(utils, name) is getattr(train_fns, name), name
    import checkpoints
    for name in ('save_weights', 'load_weights', 'torch_load', 'CheckpointError'):
        assert getattr(utils, name) is getattr(checkpoints, name), name
