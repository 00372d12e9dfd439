"""BigGAN training: `python train.py [flags]`, or `train.run(config)`.

Builds G, D (and an EMA copy of G) from the shared config, trains them with
the hinge loss and gradient accumulation, and periodically writes sample
sheets, checkpoints and IS/FID. `--resume` continues a run exactly where its
latest checkpoint left it. Under torchrun (`torchrun --nproc_per_node N
train.py ...`) each process trains its slice of every batch with DDP
(distributed.py); --amp and --compile pick the precision and compilation.
"""
import contextlib
import functools
import os
import time

import torch
import torch.nn as nn
from tqdm import tqdm

import datasets
import distributed
import inception_utils
import sync_batchnorm
import train_fns
import utils


def prepare_inception(config, log, ctx=None):
    """get_inception_metrics for 1 or N processes, or None (said once) when Inception or the
    dataset's moments are missing here; a moments file that exists but is unusable refuses
    the run (before anything is written)."""
    ctx = ctx or distributed.Context()
    try:
        if ctx.distributed:
            return distributed.prepare_inception_metrics(config, ctx, log)
        return inception_utils.prepare_inception_metrics(
            config['dataset'], config['parallel'], config['no_fid'],
            data_root=config['data_root'], network=config['inception_network'],
            weights_path=config['inception_weights'], resolution=config['resolution'])
    except inception_utils.METRICS_UNAVAILABLE as err:
        log(f'IS/FID are off: {err}')
    except inception_utils.InceptionMomentsInvalid as err:
        _refuse(f'{err} (or train without IS/FID: --test_every 0)', ctx)
    return None


def _quiet(message):
    pass


# The losses come first, so that a narrow terminal trims the timing, never the losses.
BAR_FORMAT = '{desc}{postfix} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]'
_SHORT_LOSS_NAMES = {'G_loss': 'G', 'D_loss_real': 'Dr', 'D_loss_fake': 'Df', 'ADA_p': 'p'}


def progress_bar(total, initial, experiment_name, disable=False, **kwargs):
    """The training bar: 'name, G +0.12 Dr +0.34 Df -0.56  45%|####| 900/2000 [..<..]'."""
    return tqdm(**{'total': total, 'initial': initial, 'desc': experiment_name[:20],
                   'bar_format': BAR_FORMAT, 'dynamic_ncols': True, 'disable': disable, **kwargs})


def show_losses(pbar, losses):
    """Put the latest losses {name: value} on the bar, in short form (G, Dr, Df)."""
    pbar.set_postfix_str(' '.join(f'{_SHORT_LOSS_NAMES.get(k, k)} {v:+.2f}'
                                  for k, v in losses.items()), refresh=False)


def run(config, log=None):
    """Train as configured by `config` (from utils.prepare_config); returns the final state_dict.

    Under torchrun (WORLD_SIZE > 1 in the environment) this is one process of a
    data-parallel run (see distributed.py); only rank 0 writes anything.
    """
    ctx = distributed.Context.from_env()
    log = (log or tqdm.write) if ctx.is_main else _quiet
    # Sizes that do not split over the processes are refused before anything starts.
    for error in distributed.check_config(config, ctx.world_size):
        _refuse(error, ctx)
    distributed.setup(ctx)
    try:
        with _experiment_lock(config, ctx):
            return _train(config, ctx, log)
    finally:
        distributed.teardown(ctx)


def _refuse(message, ctx):
    """utils.fail on rank 0; the other ranks exit with the same status, silently."""
    if ctx.is_main:
        utils.fail(message)
    raise SystemExit(2)


def _refuse_if(problem, ctx):
    """Refuse on every rank when rank 0 found `problem` (None elsewhere)."""
    if not distributed.agree(problem is None, ctx):
        _refuse(problem, ctx)


def _experiment_name(config):
    return config['experiment_name'] or utils.name_from_config(config)


@contextlib.contextmanager
def _experiment_lock(config, ctx):
    """Rank 0 holds the experiment's lock for the run's whole life (the OS drops it if the
    process dies), and as the one writer finishes or discards an interrupted save first."""
    root = os.path.join(config['weights_root'], _experiment_name(config))
    lock, problem = None, None
    if ctx.is_main:
        try:
            utils.check_writable(root, '--weights_root')
            lock = utils.ExperimentLock(root).acquire()
            utils.recover_checkpoints(root)
        except (utils.CheckpointError, utils.OutputError) as err:
            problem = str(err)
    try:
        _refuse_if(problem, ctx)
        yield
    finally:
        if lock is not None:
            lock.release()


def _train(config, ctx, log):
    device = ctx.device
    config = dict(config)
    legacy = [f'--{flag}' for flag in utils.LEGACY_FP16_FLAGS if config[flag]]
    if legacy and config['amp'] == 'fp16':
        log(f"{', '.join(legacy)}: mapped onto --amp fp16 for both G and D (autocast with fp32 "
            'master weights and a GradScaler per optimizer, not fp16 weights).')
    elif legacy:
        log(f"{', '.join(legacy)}: superseded by --amp {config['amp']}.")
    if ctx.distributed and config['parallel']:
        log('--parallel is ignored under torchrun: each process drives one device.')
        config['parallel'] = False
    utils.seed_rng(config['seed'])
    torch.backends.cudnn.benchmark = True
    model = utils.load_model_module(config['model'])
    experiment_name = _experiment_name(config)

    # Everything that can refuse the run is checked before anything is written (rank 0
    # has already repaired any interrupted save, under the experiment's lock).
    if not config['resume'] and not config['load_weights'] and utils.checkpoint_exists(
            config['weights_root'], experiment_name):
        _refuse(f"{os.path.join(config['weights_root'], experiment_name)} already holds "
                'checkpoints: pass --resume to continue that run, or --experiment_name '
                '(or --name_suffix) to start a new one', ctx)
    G = model.Generator(**config).to(device)
    D = model.Discriminator(**config).to(device)
    G_ema, ema = None, None
    if config['ema']:
        G_ema = model.Generator(**{**config, 'skip_init': True, 'no_optim': True}).to(device)
    memory_format = torch.channels_last if config['channels_last'] else torch.contiguous_format
    for net in (G, D, G_ema):
        if net is not None:
            net.to(memory_format=memory_format)
    if G_ema is not None:
        # After every .to(): the EMA holds references to G's and G_ema's tensors.
        ema = utils.ema(G, G_ema, config['ema_decay'], config['ema_start'])
    scalers = train_fns.make_grad_scalers(config, device)
    state_dict = {'itr': 0, 'epoch': 0, 'save_num': 0, 'save_best_num': 0,
                  'best_IS': 0.0, 'best_FID': 999999.0, 'best_copies': [], 'rng': None,
                  'config': config}
    # Small data: ADA's p and statistics, LeCam's anchors (train_fns.SmallData fills them).
    state_dict.update(ADA=None, LeCam=None)
    if config['amp'] == 'fp16':
        # The scales and growth trackers, as plain numbers, for an exact resume.
        state_dict['grad_scalers'] = None
    try:
        if config['resume']:
            utils.load_weights(G, D, state_dict, config['weights_root'], experiment_name,
                               config['load_weights'] or None, G_ema, log=log)
        elif config['load_weights']:
            # Fine-tuning: weights only; optimizers, counters and RNG start fresh.
            utils.load_weights(G, D, {}, config['weights_root'], experiment_name,
                               config['load_weights'], G_ema, load_optim=False, log=log)
    except utils.CheckpointError as err:
        _refuse(f'--resume/--load_weights: {err}', ctx)
    if config['resume']:
        log(f"resumed from iteration {state_dict['itr']}")
    if state_dict.get('grad_scalers'):
        for key, scaler in scalers.items():
            scaler.load_state_dict(state_dict['grad_scalers'][key])

    # Found (or found missing) before sampling or writing anything.
    get_inception_metrics = None
    if config['test_every'] > 0:
        get_inception_metrics = prepare_inception(config, log, ctx)

    # One G iteration consumes a real batch for every D micro-batch.
    D_batch_size = config['batch_size'] * config['num_D_steps'] * config['num_D_accumulations']
    # Rank 0 first, so that only it builds an image folder's index cache.
    with distributed.main_first(ctx):
        try:
            # Each rank reads its slice of every micro-batch of the one global order.
            loader = datasets.get_data_loaders(**{
                **config, 'batch_size': D_batch_size, 'micro_batch': config['batch_size'],
                'rank': ctx.rank, 'world_size': ctx.world_size,
                'start_itr': state_dict['itr']})[0]
        except datasets.DataError as err:
            _refuse(str(err), ctx)

    G_train, D_train = G, D
    if config['compile']:
        # Parameters, buffers and state-dict keys stay G's and D's own.
        G_train, D_train = torch.compile(G), torch.compile(D)
    if ctx.distributed:
        GD = distributed.DistributedG_D(G_train, D_train, device)
    else:
        GD = model.G_D(G_train, D_train)
        if config['parallel'] and torch.cuda.device_count() > 1:
            GD = nn.DataParallel(train_fns.AutocastModule(GD, config['amp']))

    # Every output folder is writable and there is room for a checkpoint set, before
    # the first iteration rather than at the first save.
    problem = None
    if ctx.is_main:
        try:
            utils.check_outputs(config, experiment_name,
                                utils.checkpoint_set_bytes(G, D, G_ema))
        except utils.OutputError as err:
            problem = str(err)
    _refuse_if(problem, ctx)

    if ctx.is_main:
        utils.prepare_root(config)
        # On resume, log lines past the checkpoint (a run killed after it) are cut.
        start_itr = state_dict['itr'] if config['resume'] else None
        test_log = utils.MetricsLogger(
            os.path.join(config['logs_root'], f'{experiment_name}_log.jsonl'),
            reinitialize=not config['resume'], start_itr=start_itr)
        train_log = utils.MyLogger(os.path.join(config['logs_root'], experiment_name),
                                   reinitialize=not config['resume'],
                                   logstyle=config['logstyle'], start_itr=start_itr)
        utils.write_metadata(config['logs_root'], experiment_name, config, state_dict)
    else:
        test_log = train_log = None
    where = f'{ctx.world_size} processes ({device.type})' if ctx.distributed else str(device)
    log(f'Experiment {experiment_name}: G has {sum(p.numel() for p in G.parameters()):,} '
        f'parameters, D {sum(p.numel() for p in D.parameters()):,}; training on {where}.')

    G_batch_size = max(config['G_batch_size'], config['batch_size'])
    # The global z/y: every rank draws the same values and takes its slice.
    z_, y_ = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'], device=device,
                               z_var=config['z_var'])
    # Sheets and metrics draw from a private generator, reseeded from (seed, itr,
    # rank) before each use, so the training trajectory never depends on how often
    # the run samples or saves, and neither do the sheets of a given iteration.
    # Each rank samples its own share of the metrics' images, so each has its own stream.
    sample_gen = utils.private_generator(utils.sampling_seed(config['seed'], 0, ctx.rank), device)
    fixed_z, fixed_y = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'],
                                         device=device, z_var=config['z_var'],
                                         generator=utils.private_generator(config['seed'], device))
    sample_z, sample_y = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'],
                                           device=device, z_var=config['z_var'],
                                           generator=sample_gen)
    which_G = train_fns.sampling_G(G, G_ema, config)
    sample = functools.partial(utils.sample, G=which_G, z_=sample_z, y_=sample_y, config=config)
    if config['which_train_fn'] == 'GAN':
        train = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, state_dict, config,
                                                scalers=scalers, rank=ctx.rank,
                                                world_size=ctx.world_size)
    else:
        train = train_fns.dummy_training_function()
    if state_dict['rng'] is not None:
        utils.set_rng_state(state_dict['rng'])
        distributed.sync_cuda_rng(state_dict['rng'], ctx)

    def snapshot_scalers():
        if 'grad_scalers' in state_dict:
            state_dict['grad_scalers'] = {k: s.state_dict() for k, s in scalers.items()}

    def save():
        if config['G_eval_mode']:
            which_G.eval()
        state_dict['rng'] = utils.get_rng_state()
        snapshot_scalers()
        sample_gen.manual_seed(utils.sampling_seed(config['seed'], state_dict['itr'], ctx.rank))
        # Rank 0 samples alone: its batch norms must not wait for the other ranks.
        with sync_batchnorm.local_stats():
            train_fns.save_and_sample(G, D, G_ema, sample_z, sample_y, fixed_z, fixed_y,
                                      state_dict, config, experiment_name,
                                      generator=sample_gen)
        return state_dict['itr']

    def test():
        if config['G_eval_mode']:
            which_G.eval()
        # Every rank samples with rank 0's running statistics (they differ between
        # ranks without --cross_replica).
        distributed.broadcast_buffers(which_G, ctx)
        state_dict['rng'] = utils.get_rng_state()
        snapshot_scalers()
        sample_gen.manual_seed(utils.sampling_seed(config['seed'], state_dict['itr'], ctx.rank))
        with sync_batchnorm.local_stats():
            train_fns.test(G, D, G_ema, sample_z, sample_y, state_dict, config, sample,
                           get_inception_metrics, experiment_name, test_log, log=log,
                           write=ctx.is_main)

    sampler = loader.sampler
    total = config['num_iters'] or config['num_epochs'] * sampler.batches_per_epoch
    pending, last_flush, last_save = [], time.monotonic(), state_dict['itr']
    pbar = progress_bar(total, min(state_dict['itr'], total), experiment_name,
                        disable=not ctx.is_main)

    def flush():
        """Write buffered per-iteration metrics (one host sync) and refresh the bar."""
        nonlocal pending, last_flush
        if pending:
            itrs = [itr for itr, _ in pending]
            keys = list(pending[-1][1])
            values = torch.stack([torch.stack([m[k] for _, m in pending]) for k in keys]).tolist()
            columns = dict(zip(keys, values))
            train_log.log_many(itrs, columns)
            show_losses(pbar, {k: v[-1] for k, v in columns.items()})
        pbar.n = min(state_dict['itr'], total)
        pbar.refresh()
        pending, last_flush = [], time.monotonic()

    done = state_dict['itr'] >= total
    while not done and state_dict['epoch'] < config['num_epochs']:
        sampler.set_epoch(*sampler.locate(state_dict['itr']))
        for x, y in loader:
            state_dict['itr'] += 1
            itr = state_dict['itr']
            G.train()
            D.train()
            if G_ema is not None:
                G_ema.train()
            x = x.to(device, non_blocking=True, memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            # The logged losses are global-batch means on every rank.
            metrics = distributed.all_mean(train(x, y), ctx)
            done = itr >= total
            if ctx.is_main:
                if metrics:
                    pending.append((itr, metrics))
                if config['sv_log_interval'] > 0 and itr % config['sv_log_interval'] == 0:
                    train_log.log(itr, **utils.get_SVs(G, 'G'), **utils.get_SVs(D, 'D'))
                if time.monotonic() - last_flush > 2.0:
                    flush()
            if get_inception_metrics is not None and itr % config['test_every'] == 0:
                if ctx.is_main:
                    flush()
                test()
            if ctx.is_main and (itr % config['save_every'] == 0 or done):
                flush()
                last_save = save()
            if done:
                break
        state_dict['epoch'] = sampler.epoch_of(state_dict['itr'])
    if ctx.is_main:
        if state_dict['itr'] != last_save:
            flush()
            save()
        flush()
    pbar.close()
    log(f"Finished at iteration {state_dict['itr']}: checkpoints in "
        f"{os.path.join(config['weights_root'], experiment_name)}, samples in "
        f"{os.path.join(config['samples_root'], experiment_name)}, logs in "
        f"{os.path.join(config['logs_root'], experiment_name)}.")
    return state_dict


def main(argv=None):
    """Parse the command line and train; with --resume, the flags not typed come from
    the run's saved config. Bad data or a failed write exit with one line."""
    config = utils.parse_config(utils.prepare_parser(), argv, from_checkpoint='resume')
    try:
        run(config)
    except (datasets.DataError, utils.CheckpointError) as err:
        utils.fail(str(err))
    except OSError as err:
        if err.errno not in utils.WRITE_ERRNOS:
            raise
        utils.fail(f'{err.filename or "an output file"}: {err.strerror}; the last committed '
                   'checkpoint is intact: free space (or fix permissions) and --resume')


if __name__ == '__main__':
    main()
