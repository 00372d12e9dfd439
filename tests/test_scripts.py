"""Every launch/sample script's command line parses with our parsers and passes "$@" on."""
import re
import shlex
from pathlib import Path

import pytest

import calculate_inception_moments
import make_hdf5
import utils
from conftest import ROOT

SCRIPTS = sorted((ROOT / 'scripts').rglob('*.sh'))
# Each python script's own command-line parsing, to a prepared config.
PARSE = {
    'train.py': lambda argv: utils.parse_config(utils.prepare_parser(), argv),
    'sample.py': lambda argv: utils.parse_config(
        utils.add_sample_parser(utils.prepare_parser()), argv),
    'make_hdf5.py': make_hdf5.parse_config,
    'calculate_inception_moments.py': calculate_inception_moments.parse_config,
}
# "$@" itself, or an array that a script fills from it ("${hdf5_args[@]}").
PASSED_ON = re.compile(r'\$@|\$\{\w+\[@\]\}')


def _commands(path):
    """(script name, argv) of every `python X.py ...` / torchrun command in a shell script."""
    text = re.sub(r'\\\n', ' ', Path(path).read_text())
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word in PARSE:
                commands.append((word, words[i + 1:]))
                break
    return commands


def test_every_original_script_is_present():
    names = {p.relative_to(ROOT / 'scripts').as_posix() for p in SCRIPTS}
    for name in ('launch_BigGAN_bs256x8.sh', 'launch_BigGAN_bs512x4.sh',
                 'launch_BigGAN_ch64_bs256x8.sh', 'launch_BigGAN_deep.sh',
                 'launch_SAGAN_bs128x2_ema.sh', 'launch_SNGAN.sh', 'launch_cifar_ema.sh',
                 'utils/prepare_data.sh', 'utils/duplicate.sh', 'launch_demo.sh',
                 'sample_BigGAN_bs256x8.sh', 'sample_cifar_ema.sh', 'sample_demo.sh'):
        assert name in names, name


@pytest.mark.parametrize('path', SCRIPTS, ids=lambda p: p.name)
def test_script_command_lines_parse_and_pass_extra_arguments(path):
    commands = _commands(path)
    if path.name == 'duplicate.sh':
        assert not commands and '"$@"' not in path.read_text()
        return
    assert commands, f'{path.name} runs no python script'
    for script, argv in commands:
        assert PASSED_ON.fullmatch(argv[-1]), f'{path.name}: {script} does not pass "$@" on'
        config = PARSE[script](argv[:-1])
        assert config['dataset'] in utils.nclass_dict


# The original BigGAN-PyTorch scripts' command lines, flag for flag (environment variables
# such as CUDA_VISIBLE_DEVICES left out): each script of ours with one of these names must
# parse to exactly the same config, so it trains or samples what the original's does.
_I128 = ('--dataset I128_hdf5 --parallel --shuffle --num_workers 8 --batch_size {bs} '
         '--load_in_mem --num_G_accumulations {acc} --num_D_accumulations {acc} '
         '--num_D_steps 1 --G_lr 1e-4 --D_lr 4e-4 --D_B2 0.999 --G_B2 0.999 '
         '--G_attn 64 --D_attn 64 --G_nl inplace_relu --D_nl inplace_relu '
         '--SN_eps 1e-6 --BN_eps 1e-5 --adam_eps 1e-6 --G_ortho 0.0 --G_shared '
         '--G_init ortho --D_init ortho --hier --dim_z 120 --shared_dim 128 --G_eval_mode '
         '--G_ch {ch} --D_ch {ch} --ema --use_ema --ema_start 20000 --test_every 2000 '
         '--save_every 1000 --num_best_copies 5 --num_save_copies 2 --seed 0 '
         '--use_multiepoch_sampler')
_CIFAR = ('--shuffle --batch_size 50 {G_batch} --parallel --num_G_accumulations 1 '
          '--num_D_accumulations 1 --num_epochs 500 --num_D_steps 4 --G_lr 2e-4 --D_lr 2e-4 '
          '--dataset C10 --G_ortho 0.0 --G_attn 0 --D_attn 0 --G_init N02 --D_init N02 '
          '--ema --use_ema --ema_start 1000 --test_every 5000 --save_every 2000 '
          '--num_best_copies 5 --num_save_copies 2 --seed 0')
ORIGINAL_SCRIPTS = {
    'launch_BigGAN_bs256x8.sh': [('train.py', _I128.format(bs=256, acc=8, ch=96))],
    'launch_BigGAN_bs512x4.sh': [('train.py', _I128.format(bs=512, acc=4, ch=96))],
    'launch_BigGAN_ch64_bs256x8.sh': [('train.py', _I128.format(bs=256, acc=8, ch=64))],
    'launch_BigGAN_deep.sh': [('train.py', (
        '--model BigGANdeep --dataset I128_hdf5 --parallel --shuffle --num_workers 8 '
        '--batch_size 256 --num_G_accumulations 8 --num_D_accumulations 8 --num_D_steps 1 '
        '--G_lr 1e-4 --D_lr 4e-4 --D_B2 0.999 --G_B2 0.999 --G_attn 64 --D_attn 64 '
        '--G_ch 128 --D_ch 128 --G_depth 2 --D_depth 2 --G_nl inplace_relu '
        '--D_nl inplace_relu --SN_eps 1e-6 --BN_eps 1e-5 --adam_eps 1e-6 --G_ortho 0.0 '
        '--G_shared --G_init ortho --D_init ortho --hier --dim_z 128 --shared_dim 128 '
        '--ema --use_ema --ema_start 20000 --G_eval_mode --test_every 2000 --save_every 500 '
        '--num_best_copies 5 --num_save_copies 2 --seed 0 --use_multiepoch_sampler'))],
    'launch_SAGAN_bs128x2_ema.sh': [('train.py', (
        '--dataset I128_hdf5 --parallel --shuffle --num_workers 8 --batch_size 128 '
        '--num_G_accumulations 2 --num_D_accumulations 2 --num_D_steps 1 --G_lr 1e-4 '
        '--D_lr 4e-4 --D_B2 0.999 --G_B2 0.999 --G_attn 64 --D_attn 64 --G_nl relu '
        '--D_nl relu --SN_eps 1e-8 --BN_eps 1e-5 --adam_eps 1e-8 --G_ortho 0.0 '
        '--G_init xavier --D_init xavier --ema --use_ema --ema_start 2000 --G_eval_mode '
        '--test_every 2000 --save_every 1000 --num_best_copies 5 --num_save_copies 2 '
        '--seed 0 --name_suffix SAGAN_ema'))],
    'launch_SNGAN.sh': [('train.py', (
        '--dataset I128_hdf5 --parallel --shuffle --num_workers 8 --batch_size 64 '
        '--num_G_accumulations 1 --num_D_accumulations 1 --num_D_steps 5 --G_lr 2e-4 '
        '--D_lr 2e-4 --D_B2 0.900 --G_B2 0.900 --G_attn 0 --D_attn 0 --G_nl relu '
        '--D_nl relu --SN_eps 1e-8 --BN_eps 1e-5 --adam_eps 1e-8 --G_ortho 0.0 --D_thin '
        '--G_init xavier --D_init xavier --G_eval_mode --test_every 2000 --save_every 1000 '
        '--num_best_copies 5 --num_save_copies 2 --seed 0 --name_suffix SNGAN'))],
    'launch_cifar_ema.sh': [('train.py', _CIFAR.format(G_batch=''))],
    'sample_BigGAN_bs256x8.sh': [('sample.py', (
        '--dataset I128_hdf5 --parallel --shuffle --num_workers 8 --batch_size 256 '
        '--num_G_accumulations 8 --num_D_accumulations 8 --num_D_steps 1 --G_lr 1e-4 '
        '--D_lr 4e-4 --D_B2 0.999 --G_B2 0.999 --G_attn 64 --D_attn 64 --G_ch 96 --D_ch 96 '
        '--G_nl inplace_relu --D_nl inplace_relu --SN_eps 1e-6 --BN_eps 1e-5 --adam_eps 1e-6 '
        '--G_ortho 0.0 --G_shared --G_init ortho --D_init ortho --skip_init --hier '
        '--dim_z 120 --shared_dim 128 --ema --ema_start 20000 --use_multiepoch_sampler '
        '--test_every 2000 --save_every 1000 --num_best_copies 5 --num_save_copies 2 '
        '--seed 0 --skip_init --G_batch_size 512 --use_ema --G_eval_mode '
        '--sample_trunc_curves 0.05_0.05_1.0 --sample_inception_metrics --sample_npz '
        '--sample_random --sample_sheets --sample_interps'))],
    'sample_cifar_ema.sh': [('sample.py', _CIFAR.format(G_batch='--G_batch_size 256'))],
    'utils/prepare_data.sh': [
        ('make_hdf5.py', '--dataset I128 --batch_size 256 --data_root data'),
        ('calculate_inception_moments.py', '--dataset I128_hdf5 --data_root data')],
    'utils/duplicate.sh': [],
}


def _parsed(script, argv):
    return PARSE[script](argv)


@pytest.mark.parametrize('name', ORIGINAL_SCRIPTS)
def test_original_scripts_carry_the_original_flags(name):
    ours = _commands(ROOT / 'scripts' / name)
    original = ORIGINAL_SCRIPTS[name]
    assert [script for script, _ in ours] == [script for script, _ in original]
    for (script, argv), (_, flags) in zip(ours, original):
        assert PASSED_ON.fullmatch(argv[-1]), (name, script)
        assert _parsed(script, argv[:-1]) == _parsed(script, flags.split()), (name, script)
