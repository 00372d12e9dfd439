"""BigGAN training: `python train.py [flags]`, or `train.run(config)`.

Builds G, D (and an EMA copy of G) from the shared config, trains them with
the hinge loss and gradient accumulation, and periodically writes sample
sheets, checkpoints and IS/FID. `--resume` continues a run exactly where its
latest checkpoint left it.
"""
import functools
import os
import time

import torch
import torch.nn as nn
from tqdm import tqdm

import datasets
import train_fns
import utils


def _device():
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def prepare_inception(config, log):
    """get_inception_metrics, or None (said once) when Inception or its moments are missing."""
    try:
        import inception_utils
        return inception_utils.prepare_inception_metrics(
            config['dataset'], config['parallel'], config['no_fid'],
            data_root=config['data_root'], network=config['inception_network'],
            weights_path=config['inception_weights'])
    except ImportError as err:
        log(f'IS/FID are off: the Inception code is unavailable ({err}).')
    except (RuntimeError, FileNotFoundError) as err:
        log(f'IS/FID are off: {err}')
    return None


def run(config, log=None):
    """Train as configured by `config` (from utils.prepare_config); returns the final state_dict."""
    log = log or tqdm.write
    device = _device()
    utils.seed_rng(config['seed'])
    torch.backends.cudnn.benchmark = True
    model = utils.load_model_module(config['model'])
    experiment_name = config['experiment_name'] or utils.name_from_config(config)

    # Everything that can refuse the run is checked before anything is written.
    if not config['resume'] and not config['load_weights'] and utils.checkpoint_exists(
            config['weights_root'], experiment_name):
        utils.fail(f"{os.path.join(config['weights_root'], experiment_name)} already holds "
                   'checkpoints: pass --resume to continue that run, or --experiment_name '
                   '(or --name_suffix) to start a new one')
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
    GD = model.G_D(G, D)
    state_dict = {'itr': 0, 'epoch': 0, 'save_num': 0, 'save_best_num': 0,
                  'best_IS': 0.0, 'best_FID': 999999.0, 'best_copies': [], 'rng': None,
                  'config': config}
    try:
        if config['resume']:
            utils.load_weights(G, D, state_dict, config['weights_root'], experiment_name,
                               config['load_weights'] or None, G_ema)
        elif config['load_weights']:
            # Fine-tuning: weights only; optimizers, counters and RNG start fresh.
            utils.load_weights(G, D, {}, config['weights_root'], experiment_name,
                               config['load_weights'], G_ema, load_optim=False)
    except utils.CheckpointError as err:
        utils.fail(f'--resume/--load_weights: {err}')
    if config['parallel'] and torch.cuda.device_count() > 1:
        GD = nn.DataParallel(GD)

    # One G iteration consumes a real batch for every D micro-batch.
    D_batch_size = config['batch_size'] * config['num_D_steps'] * config['num_D_accumulations']
    try:
        loader = datasets.get_data_loaders(**{**config, 'batch_size': D_batch_size,
                                              'start_itr': state_dict['itr']})[0]
    except datasets.DataError as err:
        utils.fail(str(err))

    utils.prepare_root(config)
    test_log = utils.MetricsLogger(
        os.path.join(config['logs_root'], f'{experiment_name}_log.jsonl'),
        reinitialize=not config['resume'])
    train_log = utils.MyLogger(os.path.join(config['logs_root'], experiment_name),
                               reinitialize=not config['resume'], logstyle=config['logstyle'])
    utils.write_metadata(config['logs_root'], experiment_name, config, state_dict)
    log(f'Experiment {experiment_name}: G has {sum(p.numel() for p in G.parameters()):,} '
        f'parameters, D {sum(p.numel() for p in D.parameters()):,}; training on {device}.')

    get_inception_metrics = prepare_inception(config, log) if config['test_every'] > 0 else None
    G_batch_size = max(config['G_batch_size'], config['batch_size'])
    z_, y_ = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'], device=device,
                               z_var=config['z_var'])
    # Sheets and metrics draw from private generators, seeded from --seed, so the
    # training trajectory never depends on how often the run samples or saves.
    sample_gen = utils.private_generator(config['seed'] + 1, device)
    fixed_z, fixed_y = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'],
                                         device=device, z_var=config['z_var'],
                                         generator=utils.private_generator(config['seed'], device))
    sample_z, sample_y = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'],
                                           device=device, z_var=config['z_var'],
                                           generator=sample_gen)
    which_G = train_fns.sampling_G(G, G_ema, config)
    sample = functools.partial(utils.sample, G=which_G, z_=sample_z, y_=sample_y, config=config)
    if config['which_train_fn'] == 'GAN':
        train = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, state_dict, config)
    else:
        train = train_fns.dummy_training_function()
    if state_dict['rng'] is not None:
        utils.set_rng_state(state_dict['rng'])

    def save():
        if config['G_eval_mode']:
            which_G.eval()
        state_dict['rng'] = utils.get_rng_state()
        train_fns.save_and_sample(G, D, G_ema, sample_z, sample_y, fixed_z, fixed_y,
                                  state_dict, config, experiment_name, generator=sample_gen)
        return state_dict['itr']

    def test():
        if config['G_eval_mode']:
            which_G.eval()
        train_fns.test(G, D, G_ema, sample_z, sample_y, state_dict, config, sample,
                       get_inception_metrics, experiment_name, test_log, log=log)

    sampler = loader.sampler
    total = config['num_iters'] or config['num_epochs'] * sampler.batches_per_epoch
    pending, last_flush, last_save = [], time.monotonic(), state_dict['itr']
    pbar = tqdm(total=total, initial=min(state_dict['itr'], total), desc=experiment_name[:40],
                dynamic_ncols=True)

    def flush():
        """Write buffered per-iteration metrics (one host sync) and refresh the bar."""
        nonlocal pending, last_flush
        if pending:
            itrs = [itr for itr, _ in pending]
            keys = list(pending[-1][1])
            values = torch.stack([torch.stack([m[k] for _, m in pending]) for k in keys]).tolist()
            columns = dict(zip(keys, values))
            train_log.log_many(itrs, columns)
            pbar.set_postfix({k: f'{v[-1]:+.3f}' for k, v in columns.items()}, refresh=False)
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
            metrics = train(x, y)
            if metrics:
                pending.append((itr, metrics))
            if config['sv_log_interval'] > 0 and itr % config['sv_log_interval'] == 0:
                train_log.log(itr, **utils.get_SVs(G, 'G'), **utils.get_SVs(D, 'D'))
            done = itr >= total
            if time.monotonic() - last_flush > 2.0:
                flush()
            if get_inception_metrics is not None and itr % config['test_every'] == 0:
                flush()
                test()
            if itr % config['save_every'] == 0 or done:
                flush()
                last_save = save()
            if done:
                break
        state_dict['epoch'] = sampler.epoch_of(state_dict['itr'])
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
    """Parse the command line and train."""
    config = utils.parse_config(utils.prepare_parser(), argv)
    run(config)


if __name__ == '__main__':
    main()
