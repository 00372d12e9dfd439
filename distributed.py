"""Multi-process training under torchrun: one process per GPU, on one node or several.

`Context.from_env()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK);
`setup()` joins the process group (NCCL on GPU, gloo on CPU) and picks the
device. `check_config()` lists the flags that cannot work at this world size,
before anything is built or written.

The trajectory does not depend on the number of processes: every rank draws
the same global z/y (same seed, same RNG stream) and reads the same global data
order, and works on its own slice of every micro-batch (datasets' samplers). With
--cross_replica, G's batch statistics are global (sync_batchnorm); D has no
batch norm; DDP averages the gradients of the local means over equal slices,
which is the gradient of the global-batch mean. `DistributedG_D` is G_D with
DDP(G) in G steps and DDP(D) in D steps. Metrics are computed from every
rank's samples by inception_utils' one metric path, with `FeatureGather`
gathering Inception features, not images, on rank 0. Only rank 0 writes (train.py checks `is_main`).
"""
import contextlib
import dataclasses
import datetime
import itertools
import json
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import BigGAN
import datasets
import inception_utils as iu


@dataclasses.dataclass
class Context:
    """Where this process sits: rank and world_size (global), local_rank (on its node)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = None
    initialized: bool = False

    @property
    def is_main(self):
        """Rank 0: the one process that writes checkpoints, logs and samples."""
        return self.rank == 0

    @property
    def distributed(self):
        """More than one process: DDP, sharded data, gathered metrics."""
        return self.world_size > 1

    @classmethod
    def from_env(cls):
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK; a single process outside torchrun."""
        world_size = int(os.environ.get('WORLD_SIZE', '1'))
        if world_size <= 1:
            return cls()
        rank = int(os.environ.get('RANK', '0'))
        return cls(rank, world_size, int(os.environ.get('LOCAL_RANK', str(rank))))


def check_config(config, world_size):
    """Messages (naming the flag) for sizes that do not split over world_size processes."""
    errors = []
    if world_size > 1:
        problem = datasets.batch_split_problem(config['batch_size'], world_size)
        if problem:
            errors.append(problem)
        G_batch_size = max(config['G_batch_size'], config['batch_size'])
        if G_batch_size % world_size:
            errors.append(f"--G_batch_size {config['G_batch_size']} (G's batch {G_batch_size}) "
                          f'does not split evenly over {world_size} processes; make it a '
                          f'multiple of {world_size}')
    elif config['parallel'] and torch.cuda.device_count() > 1:
        if config['cross_replica']:
            errors.append('--cross_replica with --parallel: nn.DataParallel replicas cannot '
                          'share batch statistics; launch one process per GPU with torchrun '
                          'instead (scripts/launch_BigGAN_bs256x8_torchrun.sh)')
        views = [f'--{flag}' for flag in ('bCR_real', 'bCR_fake', 'zCR_D') if config.get(flag)]
        if views:
            errors.append(f"{', '.join(views)} with --parallel: nn.DataParallel would "
                          "interleave the replicas' extra views of the batch; launch one "
                          'process per GPU with torchrun instead '
                          '(scripts/launch_BigGAN_bs256x8_torchrun.sh)')
    return errors


def launch_problems(ctx):
    """Messages for a launch this node cannot serve: more processes than GPUs."""
    if ctx.distributed and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count > 1 and ctx.local_rank >= count:
            return [f'LOCAL_RANK {ctx.local_rank}, but this node shows {count} GPUs: start at '
                    'most one process per GPU (torchrun --nproc_per_node)']
    return []


def setup(ctx, timeout_minutes=30):
    """Join the process group from the environment and set ctx.device; returns ctx.

    A single process gets cuda (if available) or cpu and no process group.
    The generous timeout covers rank 0's checkpoint writes and FID, which the
    other ranks wait out at their next collective.
    """
    if not ctx.distributed:
        ctx.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        return ctx
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        # One visible GPU per process (as some schedulers arrange) is cuda:0.
        index = 0 if count == 1 else ctx.local_rank
        if index >= count:
            raise RuntimeError(launch_problems(ctx)[0])
        torch.cuda.set_device(index)
        ctx.device = torch.device('cuda', index)
        dist.init_process_group('nccl', timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=ctx.device)
    else:
        ctx.device = torch.device('cpu')
        dist.init_process_group('gloo', timeout=datetime.timedelta(minutes=timeout_minutes))
    ctx.initialized = True
    return ctx


def teardown(ctx):
    """Leave the process group joined by setup()."""
    if ctx.initialized and dist.is_initialized():
        dist.destroy_process_group()
        ctx.initialized = False


@contextlib.contextmanager
def main_first(ctx):
    """Rank 0 runs the block before the other ranks do (e.g. one that may write a cache)."""
    if ctx.distributed and not ctx.is_main:
        dist.barrier()
    try:
        yield
    finally:
        # Also when rank 0 refuses: the others then reach the same refusal themselves.
        if ctx.distributed and ctx.is_main:
            dist.barrier()


def agree(flag, ctx):
    """True only when `flag` is true on every rank (an all_reduce MIN)."""
    if not ctx.distributed:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_buffers(module, ctx):
    """Give every rank rank 0's buffers of `module` (BN statistics, SN vectors)."""
    if ctx.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def broadcast_json(value, ctx):
    """Rank 0's `value` (anything JSON holds) on every rank, as JSON bytes (never a pickle).
    Rank 0 gets its own object back; the others get its JSON round trip (dict keys as
    strings)."""
    if not ctx.distributed:
        return value
    data = json.dumps(value).encode() if ctx.is_main else b''
    size = torch.tensor([len(data)], dtype=torch.long, device=ctx.device)
    dist.broadcast(size, src=0)
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(ctx.device) if ctx.is_main
              else torch.empty(int(size.item()), dtype=torch.uint8, device=ctx.device))
    dist.broadcast(buffer, src=0)
    return value if ctx.is_main else json.loads(bytes(buffer.cpu().tolist()))


def all_mean(values, ctx):
    """{name: 0-d tensor} averaged over ranks in one all_reduce (no host sync)."""
    if not ctx.distributed or not values:
        return values
    keys = list(values)
    stacked = torch.stack([values[k].float() for k in keys])
    dist.all_reduce(stacked)
    stacked /= ctx.world_size
    return dict(zip(keys, stacked.unbind()))


# ---------------------------------------------------------------------------
# DDP
# ---------------------------------------------------------------------------
class _GWithShared(nn.Module):
    """G(z, G.shared(y)) as one forward, so DDP(G) covers the class embedding too."""

    def __init__(self, G):
        super().__init__()
        self.G = G

    def forward(self, z, gy):
        return self.G(z, self.G.shared(gy))


class _DPair(nn.Module):
    """D on one batch, or on two (split_D) within a single DDP forward."""

    def __init__(self, D):
        super().__init__()
        self.D = D

    def forward(self, x, y, x2=None, y2=None):
        if x2 is None:
            return self.D(x, y)
        return self.D(x, y), self.D(x2, y2)


class DistributedG_D(nn.Module):
    """G_D for DDP: same forward as the model's G_D, with one DDP wrapper per network.

    A G step runs DDP(G) and the bare D; a D step runs the bare G (no grad) and
    DDP(D). So each reducer's backward always covers all of its parameters
    while toggle_grads freezes the other network, and no find_unused_parameters
    search is needed. Buffers are synced from rank 0 once, at construction, and not
    broadcast before every forward: the SN vectors are computed from
    identical weights on every rank, and with --cross_replica so are the BN
    statistics (without it each rank keeps its own running statistics, used only
    in eval mode; rank 0's are the ones saved, and train.py broadcasts them before
    the metrics). `no_sync(train_G)` defers the
    gradient all-reduce of that network's accumulation micro-batches.
    G and D may be torch.compile'd modules.
    """

    def __init__(self, G, D, device):
        super().__init__()
        ids = [device.index] if device.type == 'cuda' else None
        self.G, self.D = G, D
        self.G_ddp = DDP(_GWithShared(G), device_ids=ids, forward_sync_buffers=False)
        self.D_ddp = DDP(_DPair(D), device_ids=ids, forward_sync_buffers=False)

    def no_sync(self, train_G):
        """DDP.no_sync() of G's wrapper (train_G) or D's: no gradient all-reduce in it."""
        return (self.G_ddp if train_G else self.D_ddp).no_sync()

    def forward(self, z, gy, x=None, dy=None, train_G=False, return_G_z=False,
                split_D=False, augment=None):
        """As G_D.forward: z (N, dim_z), gy (N,); x, dy optional real images and classes;
        augment the fakes' views for D (G_D's docstring)."""
        if train_G:
            G_z = self.G_ddp(z, gy)
            D = self.D
        else:
            with torch.no_grad():
                G_z = self.G(z, self.G.shared(gy))
            D = self.D_ddp
        return BigGAN.D_on_fake_and_real(D, G_z, gy, x, dy, split_D, return_G_z,
                                         D_pair=D if D is self.D_ddp else None,
                                         augment=augment)


def sync_cuda_rng(state, ctx):
    """After utils.set_rng_state(state): give this rank's GPU the stream rank 0 saved.

    Rank 0 (and a single process) trains on cuda:0, so entry 0 of the saved CUDA
    states is the training stream; every rank continues it on its own device.
    """
    if ctx.distributed and ctx.device.type == 'cuda' and state.get('cuda'):
        torch.cuda.set_rng_state(state['cuda'][0], device=ctx.device)


# ---------------------------------------------------------------------------
# Metrics from every rank's samples
# ---------------------------------------------------------------------------
class FeatureGather(iu.OneProcess):
    """inception_utils' gather hook for this process's place in the run (ctx).

    Per round, rank 0 receives every rank's concatenated [pool, logits, labels] rows
    (one gather of B x (pool + logits + 1) floats per rank, never images; a label is
    exact in float32 below 2**24) and splits them again, in rank order; the results (a
    small dict of numbers and the protocol) are broadcast from rank 0 as JSON. A single
    process (world_size 1) gathers nothing.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.device = ctx.device

    @property
    def is_main(self):
        return self.ctx.is_main

    def agree(self, flag):
        return agree(flag, self.ctx)

    def gather(self, pool, logits, labels):
        if not self.ctx.distributed:
            return [(pool, logits, labels)]
        columns = [pool.float(), logits.float()]
        if labels is not None:
            columns.append(labels.to(pool.device, torch.float32).view(-1, 1))
        rows = torch.cat(columns, 1).contiguous()
        parts = [torch.empty_like(rows) for _ in range(self.ctx.world_size)] \
            if self.ctx.is_main else None
        dist.gather(rows, parts, dst=0)
        if not self.ctx.is_main:
            return [None] * self.ctx.world_size
        widths = [pool.shape[1], logits.shape[1]] + ([1] if labels is not None else [])
        out = []
        for part in parts:
            # Contiguous, as one process's outputs: the same sums to the last bit.
            split = [t.contiguous() for t in torch.split(part, widths, 1)]
            out.append((split[0], split[1],
                        split[2].view(-1).round().long() if labels is not None else None))
        return out

    def share(self, values):
        return broadcast_json(values, self.ctx)


def gather_inception_statistics(sample, net, num_images, num_splits, ctx, pool_dim=None):
    """(RunningMoments, InceptionScore) of every rank's `sample()` batches on rank 0,
    (None, None) elsewhere (inception_utils.inception_statistics with FeatureGather).
    pool_dim: kept for the earlier signature; unused (the split follows net's outputs)."""
    moments, scorer = iu.inception_statistics((sample() for _ in itertools.count()), net,
                                              num_images, num_splits,
                                              gather=FeatureGather(ctx))
    return (moments, scorer) if ctx.is_main else (None, None)


def prepare_inception_metrics(config, ctx, log):
    """get_inception_metrics from every rank's samples, or None (said once through `log`)
    when IS/FID cannot run on some rank: inception_utils.metrics_for_config with
    FeatureGather. An unusable moments file raises InceptionMomentsInvalid on every rank."""
    return iu.metrics_for_config(config, FeatureGather(ctx), log)
