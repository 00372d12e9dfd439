"""Cross-replica batch statistics for G's batch norms (--cross_replica).

`global_batch_stats(x)` returns the per-channel mean and biased variance of
the batch concatenated over every rank of the default process group, with
gradients that flow back to every rank's x. layers.batch_stats calls it when
`is_distributed()`; otherwise cross-replica BN is ordinary batch norm.

Forward and backward then equal batch norm over the global batch: each
all_reduce's backward is an all_reduce (sum) of the incoming gradients, so
rank r's x receives d(sum over ranks of the local losses)/dx_r, and DDP's
averaging of the parameter gradients turns that into the gradient of the
global-batch mean loss. The class-conditional gain and bias are applied after
normalisation, per sample, by the caller (layers.fused_bn).

`local_stats()` switches the reduction off for work that only some ranks do
(rank 0's sample sheets) or that ranks do on unrelated batches (metrics):
a collective there would wait forever for the ranks that are not sampling.
"""
import contextlib

import torch
import torch.distributed as dist

_local_depth = 0


def is_distributed():
    """True inside an initialised process group of more than one rank (outside local_stats)."""
    return (_local_depth == 0 and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


@contextlib.contextmanager
def local_stats():
    """Within this block, cross-replica BN uses each process's own batch statistics."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x):
    """x summed over every rank of the default group, differentiably."""
    return _AllReduceSum.apply(x)


def global_batch_stats(x):
    """x: (N, C, H, W) -> (mean (C,), var (C,), count) over all ranks, in fp32.

    Two small all_reduces of C floats each (and two in backward); no host sync.
    """
    # Every rank holds an equal slice of the global batch (train.py enforces it),
    # so the count needs no communication and no host sync.
    count = x.numel() // x.shape[1] * dist.get_world_size()
    # Two reductions (mean, then centred second moment) rather than E[x^2] - E[x]^2,
    # which loses precision when |mean| >> std.
    xf = x.float()
    mean = all_reduce_sum(xf.sum(dim=(0, 2, 3))) / count
    var = all_reduce_sum(((xf - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))) / count
    return mean, var, count
