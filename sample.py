"""Sample from a trained BigGAN: `python sample.py --experiment_name EXP --sample_sheets ...`.

Loads G (or G_ema with --use_ema) of an experiment, by its name (from
--experiment_name or the flags, as train.py names it) under --weights_root,
optionally a --load_weights copy such as best0. The flags that build G come
from the experiment's saved config unless typed (utils.with_saved_flags). It
writes what the flags ask for into its own folder samples/<experiment>/sample_<N>/
(N: --sample_sheet_folder_num, else the checkpoint's iteration), never into
training's samples/<experiment>/<itr>/: an npz of samples, class-conditional and
interpolation sheets, a random sheet; and prints the --test_metrics (IS/FID by
default), also across truncations, each line with the protocol of its numbers.
"""
import functools
import os

import numpy as np
import torch
from tqdm import tqdm, trange

import datasets
import inception_utils
import metrics
import train_fns
import utils


def load_generator(config, device):
    """Build G from config and load the experiment's G.pth (G_ema.pth with --use_ema).

    Returns (G, state_dict, experiment_name); CheckpointError names the file when
    the checkpoint is missing or does not fit the flags.
    """
    model = utils.load_model_module(config['model'])
    experiment_name = config['experiment_name'] or utils.name_from_config(config)
    G = model.Generator(**{**config, 'skip_init': True, 'no_optim': True}).to(device)
    if config['channels_last']:
        G.to(memory_format=torch.channels_last)
    state_dict = train_fns.new_training_state(config)
    use_ema = config['use_ema']
    utils.load_weights(None if use_ema else G, None, state_dict, config['weights_root'],
                       experiment_name, config['load_weights'] or None,
                       G if use_ema else None, strict=True, load_optim=False)
    return G, state_dict, experiment_name


def write_npz(sample, num, path):
    """Write `num` samples as uint8 NCHW images x and labels y to `path` (the original's format)."""
    xs, ys, count = [], [], 0
    with tqdm(total=num, desc='npz', unit='img') as pbar:
        while count < num:
            images, labels = sample()
            take = min(len(labels), num - count)
            xs.append(datasets.to_uint8_image(images[:take]).cpu().numpy())
            # A copy: on CPU, .cpu().numpy() shares memory with the label buffer that
            # the next sample() redraws in place.
            ys.append(labels[:take].cpu().numpy().copy())
            count += take
            pbar.update(take)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with utils.atomic_write(path) as tmp, open(tmp, 'wb') as f:
        np.savez(f, x=np.concatenate(xs), y=np.concatenate(ys))


def run(config, log=print):
    """Do every sampling job the flags ask for; returns {job: result} for metric jobs.
    Bad input (utils.USER_ERRORS) exits with one line."""
    try:
        return _run(config, log)
    except utils.USER_ERRORS as err:
        utils.fail(str(err))


def _run(config, log):
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    utils.seed_rng(config['seed'])
    G, state_dict, experiment_name = load_generator(config, device)
    # IS/FID's inputs are found before a single image is sampled.
    get_inception_metrics = None
    if config['sample_inception_metrics'] or config['sample_trunc_curves']:
        get_inception_metrics = prepare_metrics(config)
    G_batch_size = max(config['G_batch_size'], config['batch_size'])
    gen = utils.private_generator(config['seed'], device)
    z_, y_ = utils.prepare_z_y(G_batch_size, G.dim_z, config['n_classes'], device=device,
                               z_var=config['z_var'], generator=gen,
                               truncation=config['truncation'])
    if config['G_eval_mode']:
        G.eval()
    else:
        G.train()
    if config['accumulate_stats']:
        train_fns.accumulate_standing_stats(G, z_, y_, config['n_classes'],
                                            config['num_standing_accumulations'])
    sample = functools.partial(utils.sample, G=G, z_=z_, y_=y_, config=config)
    root = os.path.join(config['samples_root'], experiment_name)
    folder = sample_folder(config, state_dict['itr'])
    results = {}
    if config['sample_npz']:
        path = os.path.join(root, folder, 'samples.npz')
        write_npz(sample, config['sample_num_npz'], path)
        log(f"Wrote {config['sample_num_npz']} samples to {path}")
    if config['sample_sheets']:
        utils.sample_sheet(G, classes_per_sheet=config['classes_per_sheet'],
                           num_classes=config['n_classes'], samples_per_class=10,
                           parallel=config['parallel'], samples_root=config['samples_root'],
                           experiment_name=experiment_name, folder_number=folder, z_=z_,
                           generator=gen)
        log(f'Wrote class sheets to {os.path.join(root, str(folder))}')
    if config['sample_interps']:
        for fix_z, fix_y in ((False, False), (False, True), (True, False)):
            utils.interp_sheet(G, num_per_sheet=16, num_midpoints=8,
                               num_classes=config['n_classes'], parallel=config['parallel'],
                               samples_root=config['samples_root'],
                               experiment_name=experiment_name, folder_number=folder,
                               fix_z=fix_z, fix_y=fix_y, generator=gen, z_=z_)
        log(f'Wrote interpolation sheets to {os.path.join(root, str(folder))}')
    if config['sample_random']:
        images, _ = sample()
        path = os.path.join(root, str(folder), 'random_samples.jpg')
        utils.save_sheet(images, path, nrow=int(G_batch_size ** 0.5))
        log(f'Wrote {path}')
    if get_inception_metrics is not None:
        results.update(_metrics(config, G, z_, y_, sample, get_inception_metrics, state_dict,
                                G_batch_size, log))
    return results


def sample_folder(config, itr):
    """sample_<N>: N is --sample_sheet_folder_num, or else the checkpoint's iteration `itr`.

    Its own name, so that sampling never overwrites the sheets training wrote into
    samples/<exp>/<itr>/.
    """
    number = config['sample_sheet_folder_num']
    return f'sample_{number if number >= 0 else itr}'


def prepare_metrics(config):
    """get_inception_metrics for --sample_inception_metrics / --sample_trunc_curves; raises
    MetricsUnavailable saying what is missing and how to get it when the weights or the
    moments are not usable."""
    flag = ('--sample_inception_metrics' if config['sample_inception_metrics']
            else '--sample_trunc_curves')
    return inception_utils.metrics_for_config(
        config, needed_by=flag,
        sampling=metrics.sampling_protocol(config, use_ema=config['use_ema']))


def _metrics(config, G, z_, y_, sample, get_inception_metrics, state_dict, G_batch_size, log):
    results = {}

    def measure(label):
        result = get_inception_metrics(sample, config['num_inception_images'], num_splits=10,
                                       prints=False, as_dict=True)
        # The latent distribution of this point (a truncation curve varies it).
        result['protocol'].update(z_var=float(z_.var), truncation=float(z_.truncation))
        mode = 'eval' if config['G_eval_mode'] else 'training'
        log(f"{'EMA' if config['use_ema'] else 'non-EMA'} G in {mode} mode, {label}, "
            f"{config['num_inception_images']} images, batch {G_batch_size}, itr "
            f"{state_dict['itr']}: {metrics.results_line(result)} "
            f"[{metrics.protocol_line(result['protocol'])}]")
        return {'IS_mean': float('nan'), 'IS_std': float('nan'), 'FID': float('nan'), **result}

    if config['sample_inception_metrics']:
        results['metrics'] = measure(f"z std {config['z_var']}, truncation "
                                     f"{config['truncation'] or 'none'}")
    if config['sample_trunc_curves']:
        # std: z's standard deviation at each point, as the original's curves;
        # truncate: a standard normal truncated to [-t, t] at each point.
        mode = config['sample_trunc_curves_mode']
        start, step, end = (float(v) for v in config['sample_trunc_curves'].split('_'))
        curve = []
        for t in trange(int(round((end - start) / step)) + 1, desc='truncations'):
            value = start + t * step
            if mode == 'std':
                z_.var = value
            else:
                z_.truncation = value
            if config['accumulate_stats']:
                train_fns.accumulate_standing_stats(G, z_, y_, config['n_classes'],
                                                    config['num_standing_accumulations'])
            key, label = (('z_var', 'z std') if mode == 'std' else
                          ('truncation', 'truncation'))
            curve.append({'mode': mode, key: value, **measure(f'{label} {value:.3f}')})
        results['trunc_curve'] = curve
    return results


def check_sample_flags(config):
    """Refuse bad sampling flags (ConfigError) before any model is loaded."""
    if config['sample_trunc_curves']:
        parts = config['sample_trunc_curves'].split('_')
        try:
            start, step, end = (float(v) for v in parts)
        except ValueError:
            raise utils.ConfigError(f"--sample_trunc_curves {config['sample_trunc_curves']}: "
                                    'give start_step_end, e.g. 0.2_0.1_1.0') from None
        if not (0 < start <= end and step > 0):
            raise utils.ConfigError(f"--sample_trunc_curves {config['sample_trunc_curves']}: "
                                    'need 0 < start <= end and step > 0')
    if config['truncation'] < 0:
        raise utils.ConfigError(f"--truncation {config['truncation']}: must be 0 (off) or "
                                'positive')
    if config['sample_npz'] and config['sample_num_npz'] < 1:
        raise utils.ConfigError(f"--sample_num_npz {config['sample_num_npz']}: must be at "
                                'least 1')


def main(argv=None):
    """Parse the command line and sample; the flags that build G and are not typed come
    from the experiment's saved config."""
    parser = utils.add_sample_parser(utils.prepare_parser())
    config = utils.parse_config(parser, argv, from_checkpoint='arch')
    try:
        check_sample_flags(config)
    except utils.USER_ERRORS as err:
        utils.fail(str(err))
    run(config)


if __name__ == '__main__':
    main()
