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
PARSERS = {
    'train.py': lambda: utils.prepare_parser(),
    'sample.py': lambda: utils.add_sample_parser(utils.prepare_parser()),
    'make_hdf5.py': make_hdf5.prepare_parser,
    'calculate_inception_moments.py': calculate_inception_moments.prepare_parser,
}
TOOLS = {'make_hdf5.py', 'calculate_inception_moments.py'}


def _commands(path):
    """(script name, argv) of every `python X.py ...` / torchrun command in a shell script."""
    text = re.sub(r'\\\n', ' ', Path(path).read_text())
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word in PARSERS:
                commands.append((word, words[i + 1:]))
                break
    return commands


def test_every_original_script_is_present():
    names = {p.relative_to(ROOT / 'scripts').as_posix() for p in SCRIPTS}
    for name in ('launch_BigGAN_bs256x8.sh', 'launch_BigGAN_bs512x4.sh',
                 'launch_BigGAN_ch64_bs256x8.sh', 'launch_BigGAN_deep.sh',
                 'launch_SAGAN_bs128x2_ema.sh', 'launch_SNGAN.sh', 'launch_cifar_ema.sh',
                 'utils/prepare_data.sh', 'utils/duplicate.sh', 'launch_demo.sh',
                 'sample_BigGAN_bs256x8.sh', 'sample_cifar_ema.sh'):
        assert name in names, name


@pytest.mark.parametrize('path', SCRIPTS, ids=lambda p: p.name)
def test_script_command_lines_parse_and_pass_extra_arguments(path):
    commands = _commands(path)
    if path.name == 'duplicate.sh':
        assert not commands and '"$@"' not in path.read_text()
        return
    assert commands, f'{path.name} runs no python script'
    for script, argv in commands:
        assert argv[-1] == '$@', f'{path.name}: {script} does not pass "$@" on'
        args = argv[:-1]
        config = utils.parse_config(PARSERS[script](), args, check_model=script not in TOOLS)
        assert config['dataset'] in utils.nclass_dict
