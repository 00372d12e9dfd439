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


@pytest.mark.parametrize('fn, off_diagonal', [(utils.ortho, True), (utils.default_ortho, False)])
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
    ema = utils.ema(src, tgt, decay=0.9, start_itr=10)
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
