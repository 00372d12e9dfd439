"""The training step: gradient accumulation, D-step grouping, losses."""
import torch

import BigGAN
import train_fns
import utils
from conftest import tiny_config


def _setup(*argv):
    torch.manual_seed(0)
    config = tiny_config('--G_lr', '0', '--D_lr', '0', *argv)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    GD = BigGAN.G_D(G, D)
    return config, G, D, GD


class _Recorder(torch.nn.Module):
    """Wraps G_D, recording every call's arguments in order."""

    def __init__(self, GD):
        super().__init__()
        self.GD, self.calls = GD, []

    def forward(self, z, gy, x=None, dy=None, **kw):
        self.calls.append((z.clone(), gy.clone(), x, dy, kw))
        return self.GD(z, gy, x, dy, **kw)


def _capture_step_grads(net):
    grads = []
    step = net.optim.step

    def record(*a, **k):
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
        return step(*a, **k)
    net.optim.step = record
    return grads


def _replay(GD, G, D, calls, buffers):
    """Re-run each recorded call alone, from the same starting buffers; per-call grads."""
    with torch.no_grad():
        for b, v in zip(list(G.buffers()) + list(D.buffers()), buffers):
            b.copy_(v)
    per_call = []
    for z, gy, x, dy, kw in calls:
        net = G if kw.get('train_G') else D
        train_fns.toggle_grad(net, True)
        net.zero_grad(set_to_none=True)
        out = GD(z, gy, x, dy, **kw)
        if kw.get('train_G'):
            loss = train_fns.generator_loss(out)
        else:
            real, fake = train_fns.discriminator_loss(*out)
            loss = real + fake
        loss.backward()
        per_call.append((net is G, {n: p.grad.clone() for n, p in net.named_parameters()}))
    return per_call


def _mean(dicts):
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]}


def test_accumulated_gradients_equal_the_mean_of_micro_batch_gradients():
    config, G, D, GD = _setup('--num_D_steps', '2', '--num_D_accumulations', '3',
                              '--num_G_accumulations', '2', '--batch_size', '4')
    rec = _Recorder(GD)
    z_, y_ = utils.prepare_z_y(4, G.dim_z, config['n_classes'], device='cpu')
    train = train_fns.GAN_training_function(G, D, rec, z_, y_, None, {'itr': 1}, config)
    D_steps, G_steps = _capture_step_grads(D), _capture_step_grads(G)
    buffers = [b.clone() for b in list(G.buffers()) + list(D.buffers())]
    x, y = torch.randn(2 * 3 * 4, 3, 32, 32), torch.randint(0, 10, (24,))
    out = train(x, y)
    assert len(rec.calls) == 2 * 3 + 2 and len(D_steps) == 2 and len(G_steps) == 1
    # Each D micro-batch saw its own slice of x, in order.
    for i, (_, _, xs, _, _) in enumerate(rec.calls[:6]):
        assert torch.equal(xs, x[4 * i:4 * (i + 1)])
    per_call = _replay(GD, G, D, rec.calls, buffers)
    D_grads = [g for is_G, g in per_call if not is_G]
    G_grads = [g for is_G, g in per_call if is_G]
    for step in range(2):  # each D step's gradient is the mean over ITS micro-batches only
        expected = _mean(D_grads[3 * step:3 * (step + 1)])
        for name, g in expected.items():
            torch.testing.assert_close(D_steps[step][name], g, rtol=1e-4, atol=1e-5)
    for name, g in _mean(G_grads).items():
        torch.testing.assert_close(G_steps[0][name], g, rtol=1e-4, atol=1e-5)
    assert set(out) == {'G_loss', 'D_loss_real', 'D_loss_fake'}
    assert all(v.ndim == 0 and not v.requires_grad for v in out.values())


def test_hinge_losses():
    D_real, D_fake = torch.tensor([[2.0], [0.5]]), torch.tensor([[-2.0], [0.5]])
    real, fake = train_fns.discriminator_loss(D_fake, D_real)
    assert real.item() == 0.25 and fake.item() == 0.75
    assert train_fns.generator_loss(D_fake).item() == 0.75


def test_toggle_grads_and_ema_update_inside_the_step():
    config, G, D, GD = _setup('--G_lr', '1e-3', '--ema', '--ema_decay', '0.5', '--batch_size', '2',
                              '--num_D_steps', '1')
    G_ema = BigGAN.Generator(**{**config, 'skip_init': True, 'no_optim': True})
    ema = train_fns.ema(G, G_ema, 0.5)
    before = G_ema.linear.weight.detach().clone()
    z_, y_ = utils.prepare_z_y(2, G.dim_z, 10, device='cpu')
    train = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, {'itr': 5}, config)
    train(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    torch.testing.assert_close(G_ema.linear.weight, 0.5 * before + 0.5 * G.linear.weight)
    assert all(p.requires_grad for p in G.parameters())
    assert not any(p.requires_grad for p in D.parameters())


def test_dummy_training_function_returns_no_metrics():
    assert train_fns.dummy_training_function()(torch.zeros(1), torch.zeros(1)) == {}
