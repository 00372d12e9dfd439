"""BigGAN training: `python train.py [flags]`, or `train.run(config)`.

Builds G, D (and an EMA copy of G) from the shared config, trains them with
the hinge loss and gradient accumulation, and periodically writes sample
sheets, checkpoints and IS/FID. `--resume` continues a run exactly where its
latest checkpoint left it. Under torchrun (`torchrun --nproc_per_node N
train.py ...`) each process trains its slice of every batch with DDP
(distributed.py); --amp and --compile pick the precision and compilation.
"""
import contextlib
import dataclasses
import functools
import os

import torch
import torch.nn as nn
from tqdm import tqdm

import datasets
import distributed
import inception_utils
import sync_batchnorm
import tensorboard_logs
import train_fns
import utils


def prepare_inception(config, log, ctx=None):
    """get_inception_metrics for 1 or N processes, or None (said once) when Inception or the
    dataset's moments are missing here; a moments file that exists but is unusable refuses
    the run (before anything is written)."""
    ctx = ctx or distributed.Context()
    try:
        return inception_utils.metrics_for_config(config, distributed.FeatureGather(ctx), log)
    except inception_utils.InceptionMomentsInvalid as err:
        raise inception_utils.InceptionMomentsInvalid(
            f'{err} (or train without IS/FID: --test_every 0)') from None


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
    try:
        # Sizes that do not split over the processes are refused before anything starts.
        problems = distributed.check_config(config, ctx.world_size) + \
            distributed.launch_problems(ctx)
        if problems:
            raise utils.ConfigError(problems[0])
        distributed.setup(ctx)
        try:
            with _experiment_lock(config, ctx):
                return _train(config, ctx, log)
        finally:
            distributed.teardown(ctx)
    except utils.USER_ERRORS as err:
        # Every rank meets the error (a rank-0-only check is agreed first, _raise_if_any),
        # so every rank stops: rank 0 says why, the others exit with the same status.
        if ctx.is_main:
            utils.fail(str(err))
        raise SystemExit(2) from None


def _raise_if_any(problem, ctx, error):
    """Raise `error`(problem) on every rank when rank 0 found `problem` (None elsewhere)."""
    if not distributed.agree(problem is None, ctx):
        raise error(problem or 'rank 0 refused the run')


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
        _raise_if_any(problem, ctx, utils.CheckpointError)
        yield
    finally:
        if lock is not None:
            lock.release()


@dataclasses.dataclass
class Networks:
    """G, D and what trains with them: G_ema and its EMA (None without --ema), the
    GradScalers, the memory format of the inputs, and which_G (the one that samples)."""
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    ema: object
    scalers: dict
    memory_format: torch.memory_format
    which_G: nn.Module


@dataclasses.dataclass
class Latents:
    """The training draws z_, y_ (global: every rank draws the same values and takes its
    slice); the sheets' and metrics' draws sample_z, sample_y from the private generator
    sample_gen, reseeded before each use; and fixed_z, fixed_y, the same every time."""
    z_: torch.Tensor
    y_: torch.Tensor
    sample_z: torch.Tensor
    sample_y: torch.Tensor
    sample_gen: torch.Generator
    fixed_z: torch.Tensor
    fixed_y: torch.Tensor


def _train(config, ctx, log):
    config = _effective_config(config, ctx, log)
    utils.seed_rng(config['seed'])
    torch.backends.cudnn.benchmark = True
    experiment_name = _experiment_name(config)
    # Everything that can refuse the run is checked before anything is written (rank 0
    # has already repaired any interrupted save, under the experiment's lock).
    _refuse_to_start_over(config, experiment_name)

    # Networks and the training state, continued from the checkpoint on --resume.
    nets = build_networks(config, ctx.device)
    state_dict = train_fns.new_training_state(config)
    restore(nets, state_dict, config, experiment_name, ctx, log)

    # IS/FID's inputs are found (or found missing) before anything is sampled or written.
    get_inception_metrics = prepare_inception(config, log, ctx) if config['test_every'] > 0 \
        else None

    # Data, the training wrappers, the logs and the latents.
    loader = make_loader(config, state_dict, ctx)
    GD = wrap_for_training(nets, config, ctx)
    train_log, test_log = open_logs(config, experiment_name, nets, state_dict, ctx)
    board = open_board(config, experiment_name, nets, state_dict, train_log, test_log, ctx)
    where = f'{ctx.world_size} processes ({ctx.device.type})' if ctx.distributed else \
        str(ctx.device)
    log(f'Experiment {experiment_name}: G has {_count(nets.G):,} parameters, D '
        f'{_count(nets.D):,}; training on {where}.')
    latents = make_latents(config, nets.G, ctx)
    train = make_train_fn(nets, GD, latents, state_dict, config, ctx)
    if state_dict['rng'] is not None:
        utils.set_rng_state(state_dict['rng'])
        distributed.sync_cuda_rng(state_dict['rng'], ctx)

    # The loop: train -> log -> test? -> save?
    sampler = loader.sampler
    total = last_iteration(config, sampler, state_dict, log)
    pbar = progress_bar(total, min(state_dict['itr'], total), experiment_name,
                        disable=not ctx.is_main)
    if train_log is not None:
        train_log.sinks.append(bar_sink(pbar, total))
    saved_itr = state_dict['itr']
    done = state_dict['itr'] >= total
    while not done and state_dict['epoch'] < config['num_epochs']:
        sampler.set_epoch(*sampler.locate(state_dict['itr']))
        for x, y in loader:
            state_dict['itr'] += 1
            itr = state_dict['itr']
            # Current at every save, so a run stopped on an epoch's last iteration resumes
            # with that epoch counted.
            state_dict['epoch'] = sampler.epoch_of(itr)
            done = itr >= total
            losses = train_step(train, nets, x, y, ctx)
            if train_log is not None:
                log_step(train_log, board, itr, losses, nets, config)
            if get_inception_metrics is not None and itr % config['test_every'] == 0:
                test(nets, latents, state_dict, config, experiment_name,
                     get_inception_metrics, test_log, train_log, ctx, log)
            if ctx.is_main and (itr % config['save_every'] == 0 or done):
                saved_itr = save(nets, latents, state_dict, config, experiment_name,
                                 train_log, board, ctx)
            if done:
                break

    # The end: a last save unless this iteration's is on disk.
    if ctx.is_main:
        if state_dict['itr'] != saved_itr:
            save(nets, latents, state_dict, config, experiment_name, train_log, board, ctx)
        train_log.flush()
        if board is not None:
            board.close()
    pbar.close()
    log(f"Finished at iteration {state_dict['itr']}: checkpoints in "
        f"{os.path.join(config['weights_root'], experiment_name)}, samples in "
        f"{os.path.join(config['samples_root'], experiment_name)}, logs in "
        f"{os.path.join(config['logs_root'], experiment_name)}.")
    return state_dict


# ---------------------------------------------------------------------------
# Phases of _train, in order
# ---------------------------------------------------------------------------
def _effective_config(config, ctx, log):
    """A copy of `config` as this process runs it: says how the original's fp16 flags
    are read, and drops --parallel under torchrun (one device per process)."""
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
    return config


def _refuse_to_start_over(config, experiment_name):
    """Refuse a new run (neither --resume nor --load_weights) over an experiment's checkpoints."""
    if not config['resume'] and not config['load_weights'] and utils.checkpoint_exists(
            config['weights_root'], experiment_name):
        raise utils.CheckpointError(
            f"{os.path.join(config['weights_root'], experiment_name)} already holds "
            'checkpoints: pass --resume to continue that run, or --experiment_name '
            '(or --name_suffix) to start a new one')


def build_networks(config, device):
    """G, D, G_ema (with --ema) on `device` in the configured memory format; the EMA; the
    GradScalers (see Networks)."""
    model = utils.load_model_module(config['model'])
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
        ema = train_fns.ema(G, G_ema, config['ema_decay'], config['ema_start'])
    return Networks(G, D, G_ema, ema, train_fns.make_grad_scalers(config, device),
                    memory_format, train_fns.sampling_G(G, G_ema, config))


def restore(nets, state_dict, config, experiment_name, ctx, log):
    """--resume: the latest (or --load_weights') set into the networks, their optimizers,
    the GradScalers and `state_dict`. --load_weights alone (fine-tuning): weights only;
    optimizers, counters and RNG start fresh."""
    try:
        if config['resume']:
            utils.load_weights(nets.G, nets.D, state_dict, config['weights_root'],
                               experiment_name, config['load_weights'] or None, nets.G_ema,
                               log=log)
        elif config['load_weights']:
            utils.load_weights(nets.G, nets.D, {}, config['weights_root'], experiment_name,
                               config['load_weights'], nets.G_ema, load_optim=False, log=log)
    except utils.CheckpointError as err:
        raise utils.CheckpointError(f'--resume/--load_weights: {err}') from None
    if config['resume']:
        log(f"resumed from iteration {state_dict['itr']}")
    if state_dict.get('grad_scalers'):
        for key, scaler in nets.scalers.items():
            scaler.load_state_dict(state_dict['grad_scalers'][key])


def make_loader(config, state_dict, ctx):
    """The training loader, from iteration state_dict['itr'] of the one global order: each
    rank reads its slice of every micro-batch, a G iteration's worth per batch."""
    # One G iteration consumes a real batch for every D micro-batch.
    D_batch_size = config['batch_size'] * config['num_D_steps'] * config['num_D_accumulations']
    # Rank 0 first, so that only it builds an image folder's index cache.
    with distributed.main_first(ctx):
        return datasets.get_data_loaders(**{
            **config, 'batch_size': D_batch_size, 'micro_batch': config['batch_size'],
            'rank': ctx.rank, 'world_size': ctx.world_size, 'start_itr': state_dict['itr']})[0]


def wrap_for_training(nets, config, ctx):
    """G_D for the training step: over torch.compile'd G and D with --compile, with DDP
    under torchrun, in nn.DataParallel with --parallel on several GPUs."""
    G_train, D_train = nets.G, nets.D
    if config['compile']:
        # Parameters, buffers and state-dict keys stay G's and D's own.
        G_train, D_train = torch.compile(nets.G), torch.compile(nets.D)
    if ctx.distributed:
        return distributed.DistributedG_D(G_train, D_train, ctx.device)
    GD = utils.load_model_module(config['model']).G_D(G_train, D_train)
    if config['parallel'] and torch.cuda.device_count() > 1:
        GD = nn.DataParallel(train_fns.AutocastModule(GD, config['amp']))
    return GD


def open_logs(config, experiment_name, nets, state_dict, ctx):
    """(train_log, test_log) on rank 0, (None, None) elsewhere. First refuses, on every
    rank, output folders that cannot be written or a disk without room for a checkpoint
    set; on --resume, log lines past the checkpoint (a run killed after it) are cut."""
    problem = None
    if ctx.is_main:
        try:
            utils.check_outputs(config, experiment_name,
                                utils.checkpoint_set_bytes(nets.G, nets.D, nets.G_ema))
        except utils.OutputError as err:
            problem = str(err)
    _raise_if_any(problem, ctx, utils.OutputError)
    if not ctx.is_main:
        return None, None
    utils.prepare_root(config)
    start_itr = state_dict['itr'] if config['resume'] else None
    test_log = utils.MetricsLogger(
        os.path.join(config['logs_root'], f'{experiment_name}_log.jsonl'),
        reinitialize=not config['resume'], start_itr=start_itr)
    train_log = utils.MyLogger(os.path.join(config['logs_root'], experiment_name),
                               reinitialize=not config['resume'],
                               logstyle=config['logstyle'], start_itr=start_itr)
    utils.write_metadata(config['logs_root'], experiment_name, config, state_dict)
    return train_log, test_log


def open_board(config, experiment_name, nets, state_dict, train_log, test_log, ctx):
    """--tensorboard on rank 0: a TensorBoardLogger fed by the text logs' flushes (the
    same host values, no extra sync) and metrics records; None otherwise."""
    if not (ctx.is_main and config['tensorboard']):
        return None
    board = tensorboard_logs.TensorBoardLogger(
        config, experiment_name, state_dict['itr'] if config['resume'] else None,
        {'G': nets.G.optim, 'D': nets.D.optim})
    train_log.sinks.append(board.sink)
    test_log.sinks.append(board.log_metrics)
    return board


def make_latents(config, G, ctx):
    """The run's Latents. Sheets and metrics draw from a private generator, reseeded from
    (seed, itr, rank) before each use, so the training trajectory never depends on how
    often the run samples or saves, and neither do the sheets of a given iteration; each
    rank samples its own share of the metrics' images, so each has its own stream."""
    device = ctx.device
    G_batch_size = max(config['G_batch_size'], config['batch_size'])

    def draw(generator=None):
        return utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'], device=device,
                                 z_var=config['z_var'], generator=generator)
    z_, y_ = draw()
    sample_gen = utils.private_generator(utils.sampling_seed(config['seed'], 0, ctx.rank),
                                         device)
    fixed_z, fixed_y = draw(utils.private_generator(config['seed'], device))
    sample_z, sample_y = draw(sample_gen)
    return Latents(z_, y_, sample_z, sample_y, sample_gen, fixed_z, fixed_y)


def make_train_fn(nets, GD, latents, state_dict, config, ctx):
    """train(x, y) -> {loss name: 0-d tensor}: --which_train_fn's training step."""
    if config['which_train_fn'] != 'GAN':
        return train_fns.dummy_training_function()
    return train_fns.GAN_training_function(nets.G, nets.D, GD, latents.z_, latents.y_, nets.ema,
                                           state_dict, config, scalers=nets.scalers,
                                           rank=ctx.rank, world_size=ctx.world_size)


# ---------------------------------------------------------------------------
# One iteration: train -> log -> test? -> save?
# ---------------------------------------------------------------------------
def train_step(train, nets, x, y, ctx):
    """One G iteration on the batch x, y: its losses, global-batch means on every rank."""
    for net in (nets.G, nets.D, nets.G_ema):
        if net is not None:
            net.train()
    x = x.to(ctx.device, non_blocking=True, memory_format=nets.memory_format)
    y = y.to(ctx.device, non_blocking=True)
    return distributed.all_mean(train(x, y), ctx)


def log_step(train_log, board, itr, losses, nets, config):
    """Buffer this iteration's losses (the logger flushes them on its own clock), and log
    the singular values every --sv_log_interval iterations (also to the board)."""
    train_log.buffer(itr, losses)
    if config['sv_log_interval'] > 0 and itr % config['sv_log_interval'] == 0:
        svs = {**utils.get_SVs(nets.G, 'G'), **utils.get_SVs(nets.D, 'D')}
        train_log.log(itr, **svs)
        if board is not None:
            board.log(itr, **svs)


@contextlib.contextmanager
def frozen_for_sampling(nets, latents, state_dict, config, train_log, ctx):
    """What save() and test() share: the logs flushed, which_G in eval mode with
    --G_eval_mode, the RNG and GradScaler states snapshotted into state_dict (the state
    the next iteration starts from), the sampling generator reseeded from (seed, itr,
    rank), and batch norms on local statistics (a rank samples without waiting for the
    others)."""
    if train_log is not None:
        train_log.flush()
    if config['G_eval_mode']:
        nets.which_G.eval()
    state_dict['rng'] = utils.get_rng_state()
    if 'grad_scalers' in state_dict:
        state_dict['grad_scalers'] = {k: s.state_dict() for k, s in nets.scalers.items()}
    latents.sample_gen.manual_seed(utils.sampling_seed(config['seed'], state_dict['itr'],
                                                       ctx.rank))
    with sync_batchnorm.local_stats():
        yield


def test(nets, latents, state_dict, config, experiment_name, get_inception_metrics, test_log,
         train_log, ctx, log):
    """IS/FID from every rank's samples, logged and kept among the best copies by rank 0."""
    # Every rank samples with rank 0's running statistics (they differ between ranks
    # without --cross_replica).
    distributed.broadcast_buffers(nets.which_G, ctx)
    sample = functools.partial(utils.sample, G=nets.which_G, z_=latents.sample_z,
                               y_=latents.sample_y, config=config)
    with frozen_for_sampling(nets, latents, state_dict, config, train_log, ctx):
        train_fns.test(nets.G, nets.D, nets.G_ema, latents.sample_z, latents.sample_y,
                       state_dict, config, sample, get_inception_metrics, experiment_name,
                       test_log, log=log, write=ctx.is_main)


def save(nets, latents, state_dict, config, experiment_name, train_log, board, ctx):
    """Rank 0: this iteration's sheets, then its checkpoint sets (and the sheets to the
    board); returns the iteration."""
    with frozen_for_sampling(nets, latents, state_dict, config, train_log, ctx):
        train_fns.save_and_sample(nets.G, nets.D, nets.G_ema, latents.sample_z,
                                  latents.sample_y, latents.fixed_z, latents.fixed_y,
                                  state_dict, config, experiment_name,
                                  generator=latents.sample_gen)
    if board is not None:
        board.add_sheets(state_dict['itr'])
    return state_dict['itr']


def last_iteration(config, sampler, state_dict, log):
    """The iteration training stops at: --num_iters, or where the --num_epochs bound ends
    the loop if that comes first (said in one line: the bar would otherwise show
    --num_iters). As in the original, the bound counts the epochs in state_dict['epoch']
    (a released checkpoint's counter, for example), and a pass once begun runs to its end."""
    itr, B = state_dict['itr'], sampler.batches_per_epoch
    if state_dict['epoch'] >= config['num_epochs']:
        epochs_end = itr
    elif isinstance(sampler, datasets.MultiEpochSampler):
        epochs_end = max(itr, sampler.total_batches)  # one pass over all the epochs
    else:
        epochs_end = max(config['num_epochs'], sampler.epoch_of(itr) + 1) * B
    if config['num_iters'] > epochs_end:
        log(f"--num_iters {config['num_iters']} is past the end of --num_epochs "
            f"{config['num_epochs']} ({B} iterations an epoch): training stops at iteration "
            f'{epochs_end}. Raise --num_epochs to reach --num_iters.')
    return min(config['num_iters'] or epochs_end, epochs_end)


def bar_sink(pbar, total):
    """A train_log sink that puts the latest losses and the iteration on the bar."""
    def show(itr, rows):
        if rows:
            show_losses(pbar, rows[-1][1])
        pbar.n = min(itr, total)
        pbar.refresh()
    return show


def _count(net):
    return sum(p.numel() for p in net.parameters())


def main(argv=None):
    """Parse the command line and train; with --resume, the flags not typed come from
    the run's saved config. Bad data or a failed write exit with one line."""
    config = utils.parse_config(utils.prepare_parser(), argv, from_checkpoint='resume')
    with utils.errors_reported(advice='; the last committed checkpoint is intact: free space '
                               '(or fix permissions) and --resume'):
        run(config)


if __name__ == '__main__':
    main()
