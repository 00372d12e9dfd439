"""Shared test setup: the flat modules live in the repository root."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
sys.path.insert(0, str(ROOT))
# Tests are small; more threads only add contention on CI's 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: with other processes on CI's 2 cores, two OpenMP
    threads spin-wait on each other and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_spec():
    """Path to ../shared/spec, or skip: a fresh clone has no ../shared."""
    spec = SHARED / 'spec'
    if not spec.is_dir():
        pytest.skip('../shared/spec is not present')
    return spec


def tiny_config(*argv):
    """A prepared config for a tiny 32x32 model (G_ch = D_ch = 8), plus argv overrides."""
    import utils
    base = ['--dataset', 'C10', '--G_ch', '8', '--D_ch', '8', '--G_attn', '0', '--D_attn', '0']
    return utils.prepare_config(vars(utils.prepare_parser().parse_args(base + list(argv))))


def _file_permission_dropper():
    """A preexec_fn after which the child meets file permissions although the tests run as
    root: it drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so the
    program it executes has neither. Resolved here, before any fork."""
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def drop():
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP) failed')
    return drop


def run_unprivileged(cmd, **kwargs):
    """subprocess.run(cmd, **kwargs) in a process that chmod restrictions apply to (tests
    run as root in some containers); skips the test where that cannot be arranged."""
    import subprocess
    if os.geteuid() == 0:
        kwargs['preexec_fn'] = _file_permission_dropper()
    try:
        return subprocess.run(cmd, **kwargs)
    except subprocess.SubprocessError as err:
        pytest.skip(f'cannot run without root file permissions here ({err})')
