"""The training step and the periodic steps of the training loop.

GAN_training_function (one G iteration with its D steps), the hinge losses,
autocast and the GradScalers, the training state (new_training_state), and the
save / sample / test steps of train.py. Orthogonal regularisation, EMA, grad
toggling and standing statistics live in train_helpers.py (also train_fns.<name>).
"""
import contextlib
import json
import math

import torch
import torch.nn.functional as F

import layers
import metrics
import train_helpers
import utils

# train_fns.<name>, as train.py and the tests call them (defined in train_helpers).
ortho, default_ortho = train_helpers.ortho, train_helpers.default_ortho
ema, toggle_grad = train_helpers.ema, train_helpers.toggle_grad
initiate_standing_stats = train_helpers.initiate_standing_stats
accumulate_standing_stats = train_helpers.accumulate_standing_stats


# ---------------------------------------------------------------------------
# Losses (hinge), computed in fp32 whatever the activations' precision
# ---------------------------------------------------------------------------
def discriminator_loss(D_fake, D_real):
    """Hinge loss for D. D_fake, D_real: (N, 1) -> (loss_real, loss_fake), 0-d."""
    return F.relu(1.0 - D_real.float()).mean(), F.relu(1.0 + D_fake.float()).mean()


def generator_loss(D_fake):
    """Hinge loss for G. D_fake: (N, 1) -> 0-d loss."""
    return -D_fake.float().mean()


# ---------------------------------------------------------------------------
# Training functions
# ---------------------------------------------------------------------------
def dummy_training_function():
    """A train(x, y) that does nothing, for testing the pipeline around it."""
    def train(x, y):
        return {}
    return train


AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def autocast(device_type, amp):
    """The forward-pass context for --amp: torch.autocast to bf16/fp16, or nothing for none.

    Weights stay fp32 (the optimizers' master copy); SN's power iteration, the
    BN statistics and the losses are computed in fp32 inside it.
    """
    if amp in (None, 'none'):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=AMP_DTYPES[amp])


class AutocastModule(torch.nn.Module):
    """Runs `module` inside autocast(amp) itself, in whatever thread calls it.

    nn.DataParallel calls its replicas from worker threads, which re-enter
    autocast with the device's default dtype (fp16 on CUDA), not the caller's:
    wrapped like this, every replica uses --amp's dtype.
    """

    def __init__(self, module, amp):
        super().__init__()
        self.module, self.amp = module, amp

    def forward(self, *args, **kwargs):
        device_type = layers.module_device(self.module).type
        with autocast(device_type, self.amp):
            return self.module(*args, **kwargs)


def make_grad_scalers(config, device):
    """{'G': GradScaler, 'D': GradScaler}, one per optimizer; enabled only for --amp fp16.

    A disabled scaler is a pass-through (scale returns the loss, step calls
    optimizer.step), so one code path serves every precision.
    """
    enabled = config.get('amp', 'none') == 'fp16'
    device_type = torch.device(device).type
    return {k: torch.amp.GradScaler(device_type, enabled=enabled) for k in ('G', 'D')}


def GAN_training_function(G, D, GD, z_, y_, ema, state_dict, config, scalers=None,
                          rank=0, world_size=1):
    """Return train(x, y) -> {'G_loss', 'D_loss_real', 'D_loss_fake'} (detached 0-d tensors).

    x: (num_D_steps * num_D_accumulations * B, 3, H, W), y: (...,) is one G
    iteration's real data. Each D step accumulates num_D_accumulations
    micro-batches of B, each loss divided by the count, and steps D once; then
    G accumulates num_G_accumulations batches of z_ and steps once. Logged
    losses are the group means: G's over its accumulations, D's over the last
    D step's.

    With world_size > 1 (GD a distributed.DistributedG_D), x holds this rank's
    slice of each global micro-batch, and z_, y_ hold the GLOBAL draws (the same
    on every rank): the D steps use slice `rank` of their first
    world_size * B rows, the G steps slice `rank` of all of them. Gradients are
    all-reduced once per optimizer step (no_sync on the other micro-batches).
    scalers: make_grad_scalers' dict (None: disabled). Each micro-batch loss is
    scaled, and per optimizer step the grads are unscaled once, before the
    ortho reg, then scaler.step and scaler.update run once; a step whose
    gradients are not finite is skipped and the scale backed off.
    """
    num_D_steps, num_D_acc = config['num_D_steps'], config['num_D_accumulations']
    num_G_acc = config['num_G_accumulations']
    toggle = config['toggle_grads']
    blacklist = list(G.shared.parameters())
    amp = config.get('amp', 'none')
    if scalers is None:
        scalers = make_grad_scalers({'amp': 'none'}, z_.device)
    G_scaler, D_scaler = scalers['G'], scalers['D']
    can_defer_sync = world_size > 1 and hasattr(GD, 'no_sync')

    def accumulating(train_G, last):
        # Only the last micro-batch's backward all-reduces the summed gradients.
        if last or not can_defer_sync:
            return contextlib.nullcontext()
        return GD.no_sync(train_G)

    def train(x, y):
        micro = x.shape[0] // (num_D_steps * num_D_acc)
        xs, ys = torch.split(x, micro), torch.split(y, micro)
        device_type = x.device.type
        lo = rank * micro
        G_micro = z_.shape[0] // world_size
        G_lo = rank * G_micro
        if toggle:
            toggle_grad(D, True)
            toggle_grad(G, False)
        counter = 0
        for _ in range(num_D_steps):
            D.optim.zero_grad(set_to_none=True)
            D_real_sum = D_fake_sum = 0.0
            for acc in range(num_D_acc):
                z_.sample_()
                y_.sample_()
                with accumulating(False, acc == num_D_acc - 1):
                    with autocast(device_type, amp):
                        D_fake, D_real = GD(z_[lo:lo + micro], y_[lo:lo + micro], xs[counter],
                                            ys[counter], train_G=False,
                                            split_D=config['split_D'])
                        D_loss_real, D_loss_fake = discriminator_loss(D_fake, D_real)
                    D_scaler.scale((D_loss_real + D_loss_fake) / num_D_acc).backward()
                D_real_sum = D_real_sum + D_loss_real.detach()
                D_fake_sum = D_fake_sum + D_loss_fake.detach()
                counter += 1
            D_scaler.unscale_(D.optim)
            if config['D_ortho'] > 0.0:
                ortho(D, config['D_ortho'])
            D_scaler.step(D.optim)
            D_scaler.update()

        if toggle:
            toggle_grad(D, False)
            toggle_grad(G, True)
        G.optim.zero_grad(set_to_none=True)
        G_loss_sum = 0.0
        for acc in range(num_G_acc):
            z_.sample_()
            y_.sample_()
            with accumulating(True, acc == num_G_acc - 1):
                with autocast(device_type, amp):
                    D_fake = GD(z_[G_lo:G_lo + G_micro], y_[G_lo:G_lo + G_micro],
                                train_G=True, split_D=config['split_D'])
                    G_loss = generator_loss(D_fake) / num_G_acc
                G_scaler.scale(G_loss).backward()
            G_loss_sum = G_loss_sum + G_loss.detach()
        G_scaler.unscale_(G.optim)
        if config['G_ortho'] > 0.0:
            ortho(G, config['G_ortho'], blacklist=blacklist)
        G_scaler.step(G.optim)
        G_scaler.update()
        if ema is not None:
            ema.update(state_dict['itr'])
        out = {'G_loss': G_loss_sum}
        if num_D_steps > 0:
            out.update(D_loss_real=D_real_sum / num_D_acc, D_loss_fake=D_fake_sum / num_D_acc)
        return out
    return train


# ---------------------------------------------------------------------------
# The training state
# ---------------------------------------------------------------------------
def new_training_state(config):
    """The training state of a new run: the dict saved as state_dict.pth.

    Keys, and what writes them (load_weights copies each saved key back on --resume):
      itr (int): G iterations done; train._train's loop.
      epoch (int): epochs done; train._train's loop, from its sampler.
      save_num (int): the rotating copy slot written next; save_and_sample.
      save_best_num (int): the best-copy slot written last; update_best_copies.
      best_IS, best_FID (float): the best IS and FID so far; test.
      best_copies (list): {slot, itr, IS_mean, FID and the other ranked metrics computed
        (KID_mean, precision, ...)} of the kept best copies, best first (by --which_best);
        update_best_copies.
      rng (dict or None): the RNG states at the last save or test, for an exact resume;
        train.frozen_for_sampling (utils.get_rng_state).
      grad_scalers (dict or None, with --amp fp16 only): the GradScalers' scales and
        growth trackers, as plain numbers; train.frozen_for_sampling.
      config (dict): `config` itself; save_weights stores it without the module
        objects derived from it.
    """
    state = {'itr': 0, 'epoch': 0, 'save_num': 0, 'save_best_num': 0,
             'best_IS': 0.0, 'best_FID': 999999.0, 'best_copies': [], 'rng': None,
             'config': config}
    if config.get('amp', 'none') == 'fp16':
        state['grad_scalers'] = None
    return state


# ---------------------------------------------------------------------------
# Periodic steps of the training loop
# ---------------------------------------------------------------------------
def sampling_G(G, G_ema, config):
    """The generator that sheets and metrics use: G_ema with --ema --use_ema, else G."""
    return G_ema if config['ema'] and config['use_ema'] and G_ema is not None else G


@contextlib.contextmanager
def standing_G(G, G_ema, z_, y_, config):
    """Yield sampling_G, with --accumulate_stats' standing statistics drawn from z_, y_;
    every buffer of it is restored on exit, so sampling never changes the training run."""
    which_G = sampling_G(G, G_ema, config)
    with utils.preserved_buffers(which_G):
        if config['accumulate_stats']:
            accumulate_standing_stats(which_G, z_, y_, config['n_classes'],
                                      config['num_standing_accumulations'])
        yield which_G


def save_and_sample(G, D, G_ema, z_, y_, fixed_z, fixed_y, state_dict, config,
                    experiment_name, generator=None):
    """Write the sample sheets for this iteration, then the latest and rotating copy sets.

    Sampling happens with every buffer restored afterwards and from its own
    generator, so it never changes the training run; saving comes last so the
    checkpoint holds exactly the state the next iteration starts from.
    """
    with standing_G(G, G_ema, z_, y_, config) as which_G:
        folder = state_dict['itr']
        root = config['samples_root']
        with torch.no_grad():
            fixed_Gz = which_G(fixed_z, which_G.shared(fixed_y))
        utils.save_sheet(fixed_Gz, f'{root}/{experiment_name}/fixed_samples{folder}.jpg',
                         nrow=int(fixed_Gz.shape[0] ** 0.5))
        utils.sample_sheet(which_G, classes_per_sheet=config['classes_per_sheet'],
                           num_classes=config['n_classes'], samples_per_class=10,
                           parallel=config['parallel'], samples_root=root,
                           experiment_name=experiment_name, folder_number=folder,
                           z_=z_, generator=generator)
        for fix_z, fix_y in ((False, False), (False, True), (True, False)):
            utils.interp_sheet(which_G, num_per_sheet=16, num_midpoints=8,
                               num_classes=config['n_classes'], parallel=config['parallel'],
                               samples_root=root, experiment_name=experiment_name,
                               folder_number=folder, fix_z=fix_z, fix_y=fix_y,
                               generator=generator, z_=z_)
    ema_G = G_ema if config['ema'] else None
    slot = state_dict['save_num']
    if config['num_save_copies'] > 0:
        # Advanced before writing, so a run resumed from these files rotates to
        # the next copy instead of overwriting the one written now.
        state_dict['save_num'] = (slot + 1) % config['num_save_copies']
        # The copy is committed before the latest set: a run killed between the two
        # resumes from the previous latest set and writes this slot again, where the
        # other order would resume past it and leave the slot stale.
        utils.save_weights(G, D, state_dict, config['weights_root'], experiment_name,
                           f'copy{slot}', ema_G)
    utils.save_weights(G, D, state_dict, config['weights_root'], experiment_name, None, ema_G)


def _best_key(which_best):
    """The result key that --which_best ranks by (IS -> IS_mean, KID -> KID_mean, ...)."""
    return metrics.ranking(which_best)[0]


def rank_best(entries, which_best):
    """Sort best-copy records (dicts of itr and metric values) from best to worst by
    --which_best, in its direction (higher IS, precision, recall, density, coverage; lower
    FID, KID, iFID); a NaN, infinite or missing value of the ranking metric ranks below
    every number."""
    key, direction = metrics.ranking(which_best)
    sign = -1.0 if direction == 'higher' else 1.0

    def value(entry):
        v = entry.get(key, float('nan'))
        return (not math.isfinite(v), sign * v if math.isfinite(v) else 0.0)
    return sorted(entries, key=value)


def _ranked_values(results):
    """{key: float} of the ranked metric values in `results` (IS_mean, FID, KID_mean, ...)."""
    ranked = {key for metric in metrics.METRICS.values()
              for key, direction in metric.keys.items() if direction}
    return {key: float(value) for key, value in results.items() if key in ranked}


def update_best_copies(G, D, G_ema, state_dict, config, experiment_name, IS_mean, FID,
                       results=None):
    """Keep the num_best_copies best checkpoints so far, in slots best0..best{N-1}.

    Ranked by config['which_best'] (rank_best). `results` (the metrics' dict) adds the other
    computed metrics to the record; IS_mean and FID are the original's arguments. A new
    result that beats the worst kept one (or fills a free slot) is saved into that slot;
    state_dict['best_copies'] and best_copies.json (committed with the set) record which
    slot holds which iteration and its metrics, best first. Returns the slot written, or None.
    """
    n = config['num_best_copies']
    if n <= 0:
        return None
    kept = list(state_dict.get('best_copies', []))
    new = {'itr': int(state_dict['itr']), 'IS_mean': float(IS_mean), 'FID': float(FID),
           **_ranked_values(results or {})}
    if not math.isfinite(new.get(_best_key(config['which_best']), float('nan'))):
        return None  # a NaN is no result, let alone a best one
    if len(kept) < n:
        slot = min(set(range(n)) - {e['slot'] for e in kept})
    else:
        worst = rank_best(kept, config['which_best'])[-1]
        if rank_best([worst, new], config['which_best'])[0] is worst:
            return None
        kept.remove(worst)
        slot = worst['slot']
    kept = rank_best(kept + [{**new, 'slot': slot}], config['which_best'])
    state_dict['best_copies'] = kept
    state_dict['save_best_num'] = slot
    index = json.dumps({'which_best': config['which_best'], 'best_copies': kept}, indent=1)
    utils.save_weights(G, D, state_dict, config['weights_root'], experiment_name,
                       f'best{slot}', G_ema if config['ema'] else None,
                       extra_files={'best_copies.json': index.encode()})
    return slot


def test(G, D, G_ema, z_, y_, state_dict, config, sample, get_inception_metrics,
         experiment_name, test_log, log=print, write=True):
    """Compute --test_metrics, keep the best checkpoints, and log to logs/<exp>_log.jsonl.

    Each jsonl line holds itr, every computed metric (IS_mean, IS_std and FID always, NaN
    when not computed) and the protocol that produced them (metrics.Evaluation).
    write=False (ranks other than 0 of a multi-process run) takes part in the
    metrics and updates best_IS/best_FID, but writes nothing.
    Returns (IS_mean, IS_std, FID).
    """
    with standing_G(G, G_ema, z_, y_, config):
        results = get_inception_metrics(sample, config['num_inception_images'],
                                        num_splits=10, prints=write, as_dict=True)
    IS_mean, IS_std, FID = (float(results.get(key, float('nan')))
                            for key in ('IS_mean', 'IS_std', 'FID'))
    if write:
        others = metrics.results_line({k: v for k, v in results.items()
                                       if k not in ('IS_mean', 'IS_std', 'FID')})
        log(f"Itr {state_dict['itr']}: Inception Score is {IS_mean:3.3f} +/- {IS_std:3.3f}, "
            f"FID is {FID:5.4f}{', ' + others if others else ''}")
        slot = update_best_copies(G, D, G_ema, state_dict, config, experiment_name, IS_mean,
                                  FID, results)
        if slot is not None:
            log(f"{config['which_best']} is among the {config['num_best_copies']} best so far: "
                f'saved as best{slot}')
    if math.isfinite(IS_mean):
        state_dict['best_IS'] = max(float(state_dict['best_IS']), IS_mean)
    if math.isfinite(FID):
        state_dict['best_FID'] = min(float(state_dict['best_FID']), FID)
    if write:
        test_log.log(itr=int(state_dict['itr']),
                     **{'IS_mean': IS_mean, 'IS_std': IS_std, 'FID': FID, **results})
    return IS_mean, IS_std, FID
