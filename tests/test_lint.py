"""The tree passes ruff with the project's configuration."""
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def test_ruff_clean():
    if shutil.which('ruff') is None and subprocess.run(
            [sys.executable, '-m', 'ruff', '--version'], capture_output=True).returncode != 0:
        pytest.fail('ruff is not installed: install requirements-dev.txt')
    proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', '.'], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
