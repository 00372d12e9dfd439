"""The shared parser, derived config keys and bad-flag messages."""
import argparse
import json
import subprocess
import sys

import pytest
import torch

import utils
from conftest import ROOT, tiny_config

_ACTIONS = {'Store': argparse._StoreAction, 'StoreTrue': argparse._StoreTrueAction,
            'StoreFalse': argparse._StoreFalseAction}


def _full_parser():
    return utils.add_sample_parser(utils.prepare_parser())


def test_every_original_flag_has_the_same_dest_type_default_and_action(shared_spec):
    rows = json.loads((shared_spec / 'flags.json').read_text())
    assert len(rows) == 98
    actions = {opt: a for a in _full_parser()._actions for opt in a.option_strings}
    sample_flags = {opt for a in utils.add_sample_parser(argparse.ArgumentParser())._actions
                    for opt in a.option_strings}
    for row in rows:
        for flag in row['flags']:
            action = actions[flag]
            assert action.dest == row['dest'], flag
            assert type(action) is _ACTIONS[row['action']], flag
            assert action.default == row['default'], flag
            assert (action.type.__name__ if action.type else None) == row['type'], flag
            assert (flag in sample_flags) == (row['parser'] == 'sample'), flag


def test_defaults_parse_to_the_spec_values(shared_spec):
    rows = json.loads((shared_spec / 'flags.json').read_text())
    parsed = vars(_full_parser().parse_args([]))
    for row in rows:
        assert parsed[row['dest']] == row['default'], row['dest']


def test_help_lists_flags():
    text = _full_parser().format_help()
    for flag in ('--dataset', '--num_iters', '--sample_trunc_curves', '--D_thin'):
        assert flag in text
    code = 'import utils; utils.prepare_parser().parse_args()'
    proc = subprocess.run([sys.executable, '-c', code, '--help'], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and '--G_attn' in proc.stdout


def test_derived_keys():
    config = tiny_config('--G_nl', 'inplace_relu', '--resume', '--base_root', '/tmp/x')
    assert (config['resolution'], config['n_classes'], config['classes_per_sheet']) == (32, 10, 10)
    assert isinstance(config['G_activation'], torch.nn.ReLU) and config['G_activation'].inplace
    assert not config['D_activation'].inplace
    assert config['skip_init'] is True
    assert config['weights_root'] == '/tmp/x/weights' and config['data_root'] == '/tmp/x/data'


@pytest.mark.parametrize('argv, message', [
    (['--dataset', 'I99'], '--dataset I99'),
    (['--G_attn', '48'], '--G_attn 48'),
    (['--D_attn', '64'], '--D_attn 64'),
    (['--G_attn', 'sixty'], '--G_attn sixty'),
    (['--G_shared', '--hier', '--dim_z', '3'], '--dim_z must be at least 4'),
    (['--hier'], '--hier needs --G_shared'),
    (['--G_nl', 'swish'], '--G_nl swish'),
    (['--D_init', 'kaiming'], '--D_init kaiming'),
    (['--norm_style', 'ln'], '--norm_style ln'),
    (['--model', 'StyleGAN'], '--model StyleGAN'),
    (['--which_best', 'KID'], '--which_best KID'),
    (['--no_fid', '--which_best', 'FID'], '--which_best FID with --no_fid'),
    (['--batch_size', '0'], '--batch_size 0'),
    (['--G_param', 'SVD'], '--G_param SVD'),
    (['--logstyle', 'fancy'], '--logstyle fancy'),
    (['--G_ch', '1', '--G_attn', '32'], 'needs at least 8 channels'),
    (['--save_every', '0'], '--save_every 0: must be at least 1'),
    (['--num_workers', '-1'], '--num_workers -1: must not be negative'),
    (['--G_lr', '-0.001'], '--G_lr -0.001: must not be negative'),
    (['--D_lr', '-1'], '--D_lr -1.0: must not be negative'),
    (['--seed', '-1'], '--seed -1: must lie in'),
    (['--num_epochs', '0', '--num_iters', '0'], '--num_epochs 0: must be at least 1'),
])
def test_bad_flags_fail_before_building_with_the_flag_named(argv, message):
    with pytest.raises(utils.ConfigError, match=message.replace('-', r'\-')):
        tiny_config(*argv)


def test_base_root_says_which_given_roots_it_replaces(capsys):
    config = utils.parse_config(utils.prepare_parser(), [
        '--dataset', 'I128', '--base_root', '/tmp/b', '--data_root', '/mnt/imagenet',
        '--logs_root', 'mylogs'])
    assert config['data_root'] == '/tmp/b/data' and config['logs_root'] == '/tmp/b/logs'
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and '--base_root /tmp/b' in lines[0]
    assert 'ignoring --data_root /mnt/imagenet, --logs_root mylogs' in lines[0]
    utils.parse_config(utils.prepare_parser(), ['--dataset', 'I128', '--base_root', '/tmp/b'])
    assert capsys.readouterr().err == ''  # nothing given, nothing to say


def test_bad_flags_exit_2_with_message_through_the_parser(capsys):
    with pytest.raises(SystemExit) as err:
        utils.parse_config(utils.prepare_parser(), ['--dataset', 'C10', '--G_attn', '7'])
    assert err.value.code == 2
    assert '--G_attn 7' in capsys.readouterr().err


def test_default_attention_falls_back_to_none_at_32x32_with_one_note(capsys):
    # The parser's --G_attn/--D_attn 64 name no stage of a 32x32 model; left at their
    # default they mean no attention (as the original's C10 scripts pass 0).
    for dataset in ('C10', 'Digits32', 'I32'):
        config = utils.parse_config(utils.prepare_parser(), ['--dataset', dataset])
        assert (config['G_attn'], config['D_attn']) == ('0', '0'), dataset
        note = capsys.readouterr().err.strip().splitlines()
        assert len(note) == 1 and '--G_attn 64 and --D_attn 64 (the default)' in note[0]
    config = utils.parse_config(utils.prepare_parser(), ['--dataset', 'I128', '--D_attn', '32'])
    assert (config['G_attn'], config['D_attn']) == ('64', '32')
    assert capsys.readouterr().err == ''
    # Typed, the same value is an error, reported together with every other one.
    with pytest.raises(SystemExit) as err:
        utils.parse_config(utils.prepare_parser(), ['--dataset', 'C10', '--G_attn', '64',
                                                    '--G_nl', 'swish', '--batch_size', '0'])
    message = capsys.readouterr().err.split('error:')[1]
    assert err.value.code == 2
    assert all(flag in message for flag in ('--G_attn 64', '--G_nl swish', '--batch_size 0'))
    assert '--D_attn' not in message


def test_attention_allowed_at_every_resolution_of_each_arch():
    for model in utils.MODELS:
        module = utils.load_model_module(model)
        for res in (32, 64, 128, 256, 512):
            for arch, flag in ((module.G_arch, 'G_attn'), (module.D_arch, 'D_attn')):
                for r in set(arch(64, '0')[res]['resolution']):
                    config = {**tiny_config(), 'model': model, 'resolution': res, 'G_attn': '0',
                              'D_attn': '0', 'G_ch': 64, 'D_ch': 64, flag: str(r)}
                    assert module.check_config(config) == [], (model, res, flag, r)


def test_name_from_config_reproduces_the_released_experiment_name():
    config = vars(utils.prepare_parser().parse_args(
        '--dataset I128_hdf5 --shuffle --num_workers 8 --batch_size 256 --load_in_mem '
        '--num_G_accumulations 8 --num_D_accumulations 8 --num_D_steps 1 --G_lr 1e-4 '
        '--D_lr 4e-4 --D_B2 0.999 --G_B2 0.999 --G_attn 64 --D_attn 64 --G_nl inplace_relu '
        '--D_nl inplace_relu --SN_eps 1e-6 --BN_eps 1e-5 --adam_eps 1e-6 --G_ortho 0.0 '
        '--G_shared --G_init ortho --D_init ortho --hier --dim_z 120 --shared_dim 128 '
        '--G_eval_mode '
        '--G_ch 96 --D_ch 96 --ema --use_ema --ema_start 20000'.split()))
    assert utils.name_from_config(config) == (
        'BigGAN_I128_hdf5_seed0_Gch96_Dch96_bs256_nDa8_nGa8_Glr1.0e-04_Dlr4.0e-04_'
        'Gnlinplace_relu_Dnlinplace_relu_Ginitortho_Dinitortho_Gattn64_Dattn64_Gshared_hier_ema')
    config['G_attn'] = '0'
    config['G_ortho'] = 1e-4
    config['model'] = 'BigGANdeep'
    name = utils.name_from_config(config)
    assert '_BigGANdeep_seed0_' in name and 'Gattn' not in name and '_Gortho1.0e-04_' in name


def test_hashname_is_stable_across_processes():
    cmd = [sys.executable, '-c', 'import utils; print(utils.hashname("abc"))']
    names = {subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                            env={'PYTHONHASHSEED': seed}).stdout for seed in ('1', '2')}
    assert len(names) == 1 and names.pop().strip() == utils.hashname('abc')


def test_prepare_z_y_samples_in_place_and_stays_plain_through_ops():
    z, y = utils.prepare_z_y(5, 3, 4, device='cpu', z_var=2.0)
    torch.manual_seed(0)
    z.sample_(), y.sample_()
    first = z.clone()
    z.sample_()
    assert not torch.equal(first, z)
    assert z.shape == (5, 3) and y.dtype == torch.int64 and 0 <= y.min() and y.max() < 4
    assert type(z * 2) is torch.Tensor


def test_old_utils_names_still_resolve():
    import train_fns
    for name in ('ema', 'ortho', 'default_ortho', 'toggle_grad', 'accumulate_standing_stats'):
        assert getattr(utils, name) is getattr(train_fns, name)
    with pytest.raises(AttributeError):
        utils.no_such_helper  # noqa: B018


# Flags the original accepts and never reads (nor do we): their help must say so.
IGNORED_FLAGS = ('log_G_spectra', 'log_D_spectra', 'config_from_name', 'pbar')


def test_flags_that_do_nothing_say_so_and_are_never_read(tmp_path):
    helps = {a.dest: a.help for a in _full_parser()._actions}
    code = '\n'.join(p.read_text() for p in ROOT.glob('*.py'))
    for dest in IGNORED_FLAGS:
        assert 'compatibility' in helps[dest] and 'no effect' in helps[dest], dest
        assert f"'{dest}'" not in code and f'"{dest}"' not in code, dest
    # --toggle_grads is always on, so giving it changes nothing either.
    assert 'compatibility' in helps['toggle_grads']
    assert tiny_config('--toggle_grads') == tiny_config()
    # The original's non-printf log styles are accepted and write text, as its own did.
    assert 'compatibility' in helps['logstyle']
    utils.MyLogger(str(tmp_path), logstyle='pickle').log(3, G_loss=0.5)
    assert (tmp_path / 'G_loss.log').read_text() == '3: 5.000e-01\n'
