"""make_hdf5.py: round trips, atomic writes, refusals."""
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from fixtures.fake_data import make_image_folder

import datasets as dset
import make_hdf5
from conftest import ROOT


def _items(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack(ys)


@pytest.mark.parametrize('compression', ['none', 'lzf'])
def test_digits_round_trip(tmp_path, compression):
    # 700 images in chunks of 256 written from batches of 100: chunk writes
    # straddle batches, and the last chunk is partial.
    path = make_hdf5.make_hdf5('Digits32', tmp_path, batch_size=100, num_workers=0,
                               chunk_size=256, compression=compression, max_images=700)
    assert path == os.path.join(tmp_path, 'Digits32.hdf5')
    with h5py.File(path, 'r') as f:
        assert f['imgs'].dtype == np.uint8 and f['imgs'].shape == (700, 3, 32, 32)
        assert f['imgs'].chunks == (256, 3, 32, 32)
        assert f['imgs'].compression == (None if compression == 'none' else compression)
        assert f['labels'].dtype == np.int64 and f['labels'].shape == (700,)
        raw_imgs, raw_labels = dset.load_digits()
        assert np.array_equal(f['imgs'][:], raw_imgs[:700])
        assert np.array_equal(f['labels'][:], raw_labels[:700])
    source = dset.get_dataset('Digits32')
    want_x, want_y = _items(torch.utils.data.Subset(source, range(700)))
    for load_in_mem in (False, True):
        got_x, got_y = _items(dset.get_dataset('Digits32_hdf5', tmp_path, load_in_mem=load_in_mem))
        assert torch.equal(got_x, want_x) and torch.equal(got_y, want_y)
    assert os.listdir(tmp_path) == ['Digits32.hdf5']  # no temporary files left


def test_image_folder_round_trip(tmp_path):
    make_image_folder(tmp_path)
    root = tmp_path / 'ImageNet'
    path = make_hdf5.make_hdf5('folder', root, batch_size=2, num_workers=0, chunk_size=3,
                               resolution=32)
    assert path == os.path.join(root, 'folder32.hdf5')
    want_x, want_y = _items(dset.get_dataset('folder', root, resolution=32))
    got = dset.get_dataset('folder_hdf5', root, resolution=32)
    got_x, got_y = _items(got)
    assert torch.equal(got_x, want_x) and torch.equal(got_y, want_y)
    assert got.n_classes == 2


def test_a_registered_dataset_refuses_a_folder_with_other_classes(tmp_path):
    # Two class folders under I32 (1000 classes) would make a 1000-class model.
    make_image_folder(tmp_path)
    with pytest.raises(dset.DataError, match='2 class folders, but --dataset I32 has 1000'):
        make_hdf5.make_hdf5('I32', tmp_path, num_workers=0)
    assert not (tmp_path / 'ILSVRC32.hdf5').exists()
    # An I32_hdf5 file made from 3 classes is refused where a model's classes are set.
    make_hdf5.make_hdf5('folder', tmp_path / 'ImageNet', num_workers=0, resolution=32)
    os.replace(tmp_path / 'ImageNet' / 'folder32.hdf5', tmp_path / 'ILSVRC32.hdf5')
    with pytest.raises(dset.DataError, match='2 classes, but --dataset I32_hdf5 has 1000'):
        dset.get_data_loaders('I32_hdf5', str(tmp_path), batch_size=2, num_workers=0,
                              n_classes=1000)
    assert len(dset.get_dataset('I32_hdf5', tmp_path)) == 5  # as data, without a model


def test_help_lists_only_its_own_flags():
    proc = subprocess.run([sys.executable, 'make_hdf5.py', '--help'], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0
    flags = set(re.findall(r'^ +(?:-\w, )?(--\w+)', proc.stdout, re.M))
    assert flags == {'--help', '--dataset', '--data_root', '--base_root', '--resolution',
                     '--batch_size', '--num_workers', '--chunk_size', '--compression',
                     '--overwrite', '--max_images'}


def test_full_digits_through_a_two_worker_loader(tmp_path):
    make_hdf5.main(['--dataset', 'Digits32', '--data_root', str(tmp_path), '--num_workers', '0'])
    ds = dset.get_dataset('Digits32_hdf5', tmp_path)
    assert len(ds) == 5000
    ds[0]  # the parent opens the file before the workers fork
    loader = dset.get_data_loaders('Digits32_hdf5', str(tmp_path), batch_size=500,
                                   num_workers=2, shuffle=False, pin_memory=False)[0]
    imgs, labels = (torch.tensor(a) for a in dset.load_digits())
    x, y = zip(*loader)
    assert torch.equal(torch.cat(y), labels)
    assert torch.equal(torch.cat(x), imgs.float() / 127.5 - 1)


def _fail_at(monkeypatch, index, exc):
    load = dset.Digits32._load

    def failing(self, i):
        if i == index:
            raise exc
        return load(self, i)
    monkeypatch.setattr(dset.Digits32, '_load', failing)


@pytest.mark.parametrize('exc', [RuntimeError('disk on fire'), KeyboardInterrupt()])
def test_interrupted_run_leaves_no_file(tmp_path, monkeypatch, exc):
    _fail_at(monkeypatch, 450, exc)  # after the first chunk of 256 was written
    with pytest.raises(type(exc)):
        make_hdf5.make_hdf5('Digits32', tmp_path, batch_size=100, num_workers=0,
                            chunk_size=256, max_images=700)
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_existing_file(tmp_path, monkeypatch):
    path = make_hdf5.make_hdf5('Digits32', tmp_path, num_workers=0, max_images=300)
    before = open(path, 'rb').read()
    with pytest.raises(dset.DataError, match='already exists; pass --overwrite'):
        make_hdf5.make_hdf5('Digits32', tmp_path, num_workers=0, max_images=50)
    _fail_at(monkeypatch, 20, RuntimeError('disk on fire'))
    with pytest.raises(RuntimeError):
        make_hdf5.make_hdf5('Digits32', tmp_path, num_workers=0, max_images=50,
                            overwrite=True)
    assert open(path, 'rb').read() == before
    assert os.listdir(tmp_path) == ['Digits32.hdf5']


def test_overwrite_replaces_the_file(tmp_path):
    make_hdf5.make_hdf5('Digits32', tmp_path, num_workers=0, max_images=300)
    make_hdf5.make_hdf5('Digits32', tmp_path, num_workers=0, max_images=50, overwrite=True)
    assert len(dset.get_dataset('Digits32_hdf5', tmp_path)) == 50


@pytest.mark.parametrize('kwargs, needle', [
    ({'dataset': 'C10'}, "no 'C10_hdf5' entry in datasets.DATASETS"),
    ({'dataset': 'I128_hdf5'}, 'already an HDF5 dataset'),
    ({'dataset': 'Digits32', 'chunk_size': 0}, '--chunk_size 0: must be at least 1'),
    ({'dataset': 'Digits32', 'compression': 'zip'}, '--compression zip'),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, needle):
    with pytest.raises(dset.DataError, match=needle):
        make_hdf5.make_hdf5(data_root=tmp_path, **kwargs)
    assert os.listdir(tmp_path) == []


def test_script_exits_with_one_line_error(tmp_path):
    (tmp_path / 'Digits32.hdf5').write_bytes(b'previous output')
    proc = subprocess.run([sys.executable, 'make_hdf5.py', '--dataset', 'Digits32',
                           '--data_root', str(tmp_path), '--num_workers', '0'],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f'error: {tmp_path / "Digits32.hdf5"} already exists; pass --overwrite to replace it']
    assert (tmp_path / 'Digits32.hdf5').read_bytes() == b'previous output'


def test_parser_keeps_the_original_flags():
    parser = make_hdf5.prepare_parser()
    config = vars(parser.parse_args(['--dataset', 'I128', '--data_root', 'data']))
    assert (config['batch_size'], config['num_workers'], config['chunk_size'],
            config['compression']) == (256, 16, 500, 'none')
    assert vars(parser.parse_args(['--compression']))['compression'] == 'lzf'
    assert vars(parser.parse_args(['--compression', 'gzip']))['compression'] == 'gzip'


def test_a_killed_run_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    stale = tmp_path / 'Digits32.hdf5.0badf00d.part'
    stale.write_bytes(b'half an HDF5 file from a run killed with -9')
    old = os.stat(tmp_path).st_mtime - 3600
    os.utime(stale, (old, old))
    make_hdf5.make_hdf5('Digits32', tmp_path, batch_size=50, num_workers=0, max_images=50)
    assert os.listdir(tmp_path) == ['Digits32.hdf5']
