"""README.md agrees with the code: its flags exist, its choices are the parsers', and the
differences from the original are listed in one place."""
import re

import utils
from conftest import ROOT

README = (ROOT / 'README.md').read_text()
FLAG = re.compile(r'(?<![\w-])--[A-Za-z][\w-]*')


def _section(title):
    start = README.index(f'\n## {title}\n')
    end = README.find('\n## ', start + 1)
    return README[start:end if end > 0 else None]


def test_differences_from_the_original_are_one_section_near_the_end():
    assert README.count('Differences from the original') == 1
    headings = re.findall(r'^## (.+)$', README, flags=re.M)
    assert headings[-1] == 'Differences from the original'
    section = _section('Differences from the original')
    bullets = re.findall(r'^- (.+)$', section, flags=re.M)
    assert len(bullets) >= 25
    # Every line is one bullet (no wrapped continuation lines).
    body = section.split('\n\n', 2)[-1].strip().splitlines()
    assert all(line.startswith('- ') for line in body)
    # Each difference kept on purpose is listed (issue 9's list among them).
    for needle in ('`G_loss`', '`--accumulate_stats`', '`--BN_eps`', 'npz rounds',
                   'multiplies by the gain', 'always in eval mode', 'interpolation sheets',
                   '`--which_best FID` with `--no_fid`', '`stored_mean`/`stored_var`',
                   "BigGAN-deep's G follows TF Hub", 'trained with std 1'):
        assert sum(needle in b for b in bullets) == 1, needle


def test_every_flag_the_readme_names_exists():
    # The README's commands run the project's programs and its benchmarks.
    code = '\n'.join(p.read_text() for p in [*ROOT.glob('*.py'), *ROOT.glob('*/*.py'),
                                             *ROOT.glob('tests/benchmarks/*.py')]
                     if p.parent.name != 'tests' or p.name == 'make_tfhub_fixture.py')
    defined = set(re.findall(r"""['"](--[A-Za-z][\w-]*)['"]""", code))
    # Flags of other programs that the README's commands use.
    others = {'--standalone', '--nproc_per_node', '--index-url', '--help', '--logdir'}
    assert set(FLAG.findall(README)) - defined - others == set()


def test_readme_and_sample_help_agree():
    parser = utils.add_sample_parser(utils.prepare_parser())
    actions = {opt: a for a in parser._actions for opt in a.option_strings}
    # Choices written as `--flag {a,b}` are exactly the parser's.
    for flag, choices in re.findall(r'`(--[\w-]+) \{([\w,]+)\}`', README):
        assert tuple(choices.split(',')) == tuple(actions[flag].choices), flag
    # Every flag sample.py adds to training's is documented where sampling is.
    train_flags = {opt for a in utils.prepare_parser()._actions for opt in a.option_strings}
    documented = set(FLAG.findall(_section('Sampling') + _section('Configuration')))
    assert set(actions) - train_flags - documented == set()
    # What the curves vary is said alike in both.
    for text in (actions['--sample_trunc_curves'].help, _section('Sampling')):
        assert "z's standard" in text and 'as in the original' in text
    for flag in ('--log_G_spectra', '--log_D_spectra', '--config_from_name', '--pbar'):
        assert 'compatibility' in actions[flag].help and flag in _section('Configuration')
