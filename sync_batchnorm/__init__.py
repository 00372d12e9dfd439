"""Cross-replica batch statistics for G's batch norms (--cross_replica).

`global_batch_stats(x)` returns the per-channel mean and biased variance of
the batch concatenated over every rank of the default process group, with
gradients that flow back to every rank's x. layers.batch_stats calls it when
`is_distributed()`; otherwise cross-replica BN is ordinary batch norm.
"""
import torch.distributed as dist


def is_distributed():
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_batch_stats(x):
    """x: (N, C, H, W) -> (mean (C,), var (C,), count) over all ranks, in fp32."""
    from torch.distributed.nn.functional import all_reduce
    # Every rank holds an equal slice of the global batch (train.py enforces it),
    # so the count needs no communication and no host sync.
    count = x.numel() // x.shape[1] * dist.get_world_size()
    # Two reductions (mean, then centred second moment) rather than E[x^2] - E[x]^2,
    # which loses precision when |mean| >> std.
    xf = x.float()
    mean = all_reduce(xf.sum(dim=(0, 2, 3))) / count
    var = all_reduce(((xf - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))) / count
    return mean, var, count
