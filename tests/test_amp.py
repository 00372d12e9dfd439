"""Mixed precision (--amp), the legacy fp16 flags, GradScaler handling and --compile."""
import functools
import math
import threading

import pytest
import torch

import BigGAN
import layers
import train
import train_fns
import utils
from conftest import tiny_config

pytestmark = pytest.mark.usefixtures('one_thread')


def _setup(*argv):
    torch.manual_seed(0)
    config = tiny_config('--batch_size', '4', '--num_D_steps', '1', *argv)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    z_, y_ = utils.prepare_z_y(4, G.dim_z, config['n_classes'], device='cpu')
    scalers = train_fns.make_grad_scalers(config, 'cpu')
    train = train_fns.GAN_training_function(G, D, BigGAN.G_D(G, D), z_, y_, None, {'itr': 1},
                                            config, scalers=scalers)
    return config, G, D, scalers, train


def _batch(n):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, 32, 32, generator=g).clamp(-1, 1)
    return x, torch.randint(0, 10, (n,), generator=g)


def test_legacy_fp16_flags_map_onto_amp_fp16():
    assert tiny_config()['amp'] == 'none'
    for flag in utils.LEGACY_FP16_FLAGS:
        assert tiny_config(f'--{flag}')['amp'] == 'fp16', flag
    # An explicit --amp wins over the legacy flags.
    assert tiny_config('--G_fp16', '--amp', 'bf16')['amp'] == 'bf16'
    assert tiny_config('--amp', 'bf16')['amp'] == 'bf16'
    assert tiny_config()['channels_last'] is False and tiny_config()['compile'] is False


def test_bf16_autocast_trains_with_fp32_weights_statistics_and_losses():
    config, G, D, scalers, train = _setup('--amp', 'bf16')
    dtypes = {}

    def record(name, module, inputs, output):
        dtypes[name] = output.dtype
    G.blocks[0][0].conv1.register_forward_hook(functools.partial(record, 'G_conv'))
    D.blocks[0][0].conv1.register_forward_hook(functools.partial(record, 'D_conv'))
    before = {k: v.clone() for k, v in D.state_dict().items()}
    x, y = _batch(4)
    for _ in range(2):
        out = train(x, y)
        assert all(math.isfinite(float(v)) and v.dtype == torch.float32 for v in out.values())
    assert dtypes == {'G_conv': torch.bfloat16, 'D_conv': torch.bfloat16}
    for net in (G, D):
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point():
                assert tensor.dtype == torch.float32, name
                assert torch.isfinite(tensor).all(), name
    key = 'blocks.0.0.conv1.weight'
    assert not torch.equal(before[key], D.state_dict()[key])
    assert not scalers['G'].is_enabled() and not scalers['D'].is_enabled()


@pytest.mark.parametrize('cross_replica', [False, True])
@pytest.mark.parametrize('mybn', [False, True])
def test_batch_norm_under_bf16_keeps_fp32_statistics(cross_replica, mybn):
    def build():
        torch.manual_seed(0)
        return layers.ccbn(6, 5, functools.partial(torch.nn.Linear, bias=False),
                           cross_replica=cross_replica, mybn=mybn)
    x, y = torch.randn(8, 6, 4, 4) * 2 + 1, torch.randn(8, 5)
    full, half = build(), build()
    reference = full(x, y)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = half(x.bfloat16(), y)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 0.1
    expected = dict(full.named_buffers())
    for k, v in half.named_buffers():
        assert v.dtype == torch.float32, k
        assert torch.allclose(v, expected[k], rtol=1e-2, atol=1e-2), k


def test_fp16_step_with_an_inf_gradient_is_skipped_and_the_scale_halved():
    config, G, D, scalers, train = _setup('--amp', 'fp16', '--num_D_accumulations', '2',
                                          '--D_ortho', '1e-4')
    # Start at a scale the tiny model cannot overflow, so only the injected inf skips.
    for scaler in scalers.values():
        scaler.load_state_dict({**scaler.state_dict(), 'scale': 4.0})
    calls = []

    def poison(grad):
        calls.append(1)
        return torch.full_like(grad, math.inf) if len(calls) == 1 else grad
    D.linear.weight.register_hook(poison)
    D_before = {k: p.detach().clone() for k, p in D.named_parameters()}
    G_before = {k: p.detach().clone() for k, p in G.named_parameters()}
    x, y = _batch(8)
    train(x, y)
    assert len(calls) == 2  # the inf came in the first of the two micro-batches
    for k, p in D.named_parameters():
        assert torch.equal(p, D_before[k]), k
    assert not D.optim.state  # Adam never stepped
    assert scalers['D'].get_scale() == 2.0
    # G's step and scale are untouched by D's overflow.
    assert scalers['G'].get_scale() == 4.0
    assert any(not torch.equal(p, G_before[k]) for k, p in G.named_parameters())
    train(x, y)
    assert any(not torch.equal(p, D_before[k]) for k, p in D.named_parameters())
    assert scalers['D'].get_scale() == 2.0


def _grads_at_step(scale):
    config, G, D, scalers, train = _setup('--amp', 'fp16', '--num_D_accumulations', '2',
                                          '--D_ortho', '0.5')
    for scaler in scalers.values():
        scaler.load_state_dict({**scaler.state_dict(), 'scale': scale})
    grads, step = [], D.optim.step

    def record(*args, **kwargs):
        grads.append(D.blocks[0][0].conv1.weight.grad.clone())
        return step(*args, **kwargs)
    D.optim.step = record
    train(*_batch(8))
    return grads[0]


def test_fp16_gradients_are_unscaled_once_before_the_ortho_reg():
    # Powers of two scale fp16 gradients exactly (above the underflow range), so what
    # the optimizer sees (loss gradient plus ortho term) must not depend on the scale.
    small, big = _grads_at_step(64.0), _grads_at_step(1024.0)
    assert torch.allclose(small, big, rtol=1e-5, atol=1e-6)


def test_autocast_module_uses_the_amp_dtype_in_any_thread():
    # DataParallel runs replicas in worker threads, where autocast's dtype is the default
    # one (bf16 on CPU, fp16 on CUDA), not the caller's.
    conv = torch.nn.Conv2d(3, 4, 3)
    wrapped = train_fns.AutocastModule(conv, 'fp16')
    out = {}
    with train_fns.autocast('cpu', 'fp16'):
        worker = threading.Thread(target=lambda: out.update(
            plain=conv(torch.randn(1, 3, 8, 8)).dtype,
            wrapped=wrapped(torch.randn(1, 3, 8, 8)).dtype))
        worker.start()
        worker.join()
    assert out == {'plain': torch.float32, 'wrapped': torch.float16}


BASE = ['--dataset', 'Digits32', '--G_ch', '8', '--D_ch', '8', '--batch_size', '4',
        '--num_D_steps', '1', '--G_attn', '0', '--D_attn', '0', '--num_workers', '0',
        '--shuffle', '--experiment_name', 'exp', '--test_every', '0', '--save_every', '2']


def _run(root, *argv, log=None):
    config = utils.parse_config(utils.prepare_parser(), BASE + ['--base_root', str(root), *argv])
    return train.run(config, log=log or (lambda m: None))


def _weights(root):
    return {part: utils.torch_load(str(root / 'weights' / 'exp' / f'{part}.pth'))
            for part in ('G', 'D', 'G_optim', 'D_optim', 'state_dict')}


def test_legacy_flag_trains_fp16_and_resumes_exactly_with_the_scaler_state(tmp_path):
    messages = []
    _run(tmp_path / 'straight', '--G_mixed_precision', '--num_iters', '3', log=messages.append)
    assert any('--G_mixed_precision: mapped onto --amp fp16' in m for m in messages)
    _run(tmp_path / 'split', '--G_mixed_precision', '--num_iters', '2')
    mid = _weights(tmp_path / 'split')['state_dict']['grad_scalers']
    # The tiny model overflows fp16 at the default initial scale, so the state is not trivial.
    assert mid['D']['scale'] < 65536.0 and isinstance(mid['D']['_growth_tracker'], int)
    _run(tmp_path / 'split', '--G_mixed_precision', '--num_iters', '3', '--resume')
    a, b = _weights(tmp_path / 'straight'), _weights(tmp_path / 'split')
    for part in ('G', 'D'):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
        for i, state in a[f'{part}_optim']['state'].items():
            for name, value in state.items():
                assert torch.equal(value, b[f'{part}_optim']['state'][i][name]), (part, i, name)
    assert a['state_dict']['grad_scalers'] == b['state_dict']['grad_scalers']
    losses = (tmp_path / 'split' / 'logs' / 'exp' / 'G_loss.log').read_text().splitlines()
    assert all(math.isfinite(float(line.split(': ')[1])) for line in losses)


def test_compile_trains_the_same_modules(tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        # The eager backend runs Dynamo's capture without a C++ toolchain.
        compiled.append(type(module).__name__)
        return real_compile(module, backend='eager', **kwargs)
    monkeypatch.setattr(torch, 'compile', eager_compile)
    _run(tmp_path / 'compiled', '--compile', '--num_iters', '2')
    _run(tmp_path / 'plain', '--num_iters', '2')
    assert compiled == ['Generator', 'Discriminator']
    a, b = _weights(tmp_path / 'compiled'), _weights(tmp_path / 'plain')
    for part in ('G', 'D'):
        assert a[part].keys() == b[part].keys()  # no _orig_mod. prefixes
        for k in a[part]:
            assert torch.allclose(a[part][k], b[part][k], atol=1e-5), (part, k)
