"""Your own images: --dataset folder / folder_hdf5 end to end, without editing datasets.DATASETS."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from fixtures.fake_data import write_png
from fixtures.random_inception import random_inception_state_dict

import datasets as dset
import make_hdf5
import sample
import train
import utils
from conftest import ROOT


def _my_images(root, classes=('apple', 'pear', 'plum'), per_class=3):
    """root/<class>/<i>.png of varied sizes; returns root."""
    for label, name in enumerate(classes):
        for i in range(per_class):
            write_png(str(root / name / f'{i}.png'), 40 + 7 * i, 36 + 5 * label,
                      seed=10 * label + i)
    return root


def test_folder_config_takes_size_from_resolution_and_classes_from_folders(tmp_path):
    images = _my_images(tmp_path / 'my_images')
    config = utils.parse_config(utils.prepare_parser(), [
        '--dataset', 'folder', '--data_root', str(images), '--resolution', '64'])
    assert (config['resolution'], config['n_classes'], config['classes_per_sheet']) == (64, 3, 3)
    x, y = dset.get_dataset('folder', str(images), resolution=64)[4]
    assert x.shape == (3, 64, 64) and int(y) == 1
    for argv, needle in (
            (['--dataset', 'folder', '--data_root', str(images)], 'needs --resolution'),
            (['--dataset', 'folder', '--data_root', str(tmp_path / 'nope'), '--resolution', '64'],
             'image folder not found'),
            (['--dataset', 'C10', '--resolution', '64'], 'C10 is 32x32')):
        with pytest.raises(utils.ConfigError, match=needle):
            utils.prepare_config(vars(utils.prepare_parser().parse_args(argv)))


def test_two_commands_make_the_hdf5_and_train_and_sampling_needs_no_data(tmp_path, capsys):
    images = _my_images(tmp_path / 'my_images')
    make_hdf5.main(['--dataset', 'folder', '--data_root', str(images), '--resolution', '32',
                    '--num_workers', '0'])
    with h5py.File(images / 'folder32.hdf5', 'r') as f:
        assert f['imgs'].shape == (9, 3, 32, 32) and int(f.attrs['n_classes']) == 3
    roots = ['--weights_root', str(tmp_path / 'weights'), '--logs_root', str(tmp_path / 'logs'),
             '--samples_root', str(tmp_path / 'samples')]
    train.main(['--dataset', 'folder_hdf5', '--data_root', str(images), '--resolution', '32',
                '--G_ch', '8', '--D_ch', '8', '--batch_size', '4', '--num_D_steps', '1',
                '--num_iters', '2', '--num_workers', '0', '--experiment_name', 'mine'] + roots)
    out = capsys.readouterr()
    # The parser's attention at 64 has no stage at 32x32: said once, built without it.
    assert out.err.count('name no stage of the 32x32 BigGAN') == 1
    D = utils.torch_load(str(tmp_path / 'weights' / 'mine' / 'D.pth'))
    assert D['embed.weight'].shape[0] == 3
    # Sampling takes the size and the 3 classes from the checkpoint, not from the data.
    os.rename(images, tmp_path / 'moved')
    sample.main(['--experiment_name', 'mine', '--sample_sheets', '--sample_npz',
                 '--sample_num_npz', '6'] + roots)
    with np.load(tmp_path / 'samples' / 'mine' / 'sample_2' / 'samples.npz') as f:
        assert f['x'].shape == (6, 3, 32, 32) and f['y'].max() < 3


def test_prepare_data_gives_each_step_only_its_flags(tmp_path):
    images = _my_images(tmp_path / 'my_images', classes=('a', 'b'), per_class=2)
    weights = tmp_path / 'tf_inception.pth'
    torch.save(random_inception_state_dict('tf', 0), weights)
    env = {**os.environ, 'PATH': f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(
        ['bash', 'scripts/utils/prepare_data.sh', 'folder', '--data_root', str(images),
         '--resolution', '32', '--num_workers', '0', '--chunk_size', '3',
         '--inception_network', 'tf', '--inception_weights', str(weights)],
        cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(images / 'folder32.hdf5', 'r') as f:
        assert f['imgs'].chunks[0] == 3 and len(f['labels']) == 4
    with np.load(images / 'folder32_inception_moments_tf.npz') as f:
        assert f['mu'].shape == (2048,) and np.isfinite(f['sigma']).all()
