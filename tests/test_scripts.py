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
