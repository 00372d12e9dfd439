"""What training does to the weights besides the optimizer step.

BigGAN's orthogonal regularisation (ortho, default_ortho), the EMA of G's
weights (ema), requires_grad toggling (toggle_grad), and myBN's standing
statistics (initiate_standing_stats, accumulate_standing_stats). Also reachable as
train_fns.<name> and, as in the original, utils.<name>.
"""
import torch


def _ortho_grad(w, off_diagonal):
    """d/dW of (1/2)||W W^T - D||_F^2 for w: (out, in); D = diag(W W^T) or I.

    Uses W (W^T W) when in < out, so a tall matrix (such as G's first linear
    layer, 24576 x 20) never forms an out x out Gram matrix.
    """
    if w.shape[0] <= w.shape[1]:
        gram = w @ w.t()
        if off_diagonal:
            gram.diagonal().zero_()
        else:
            gram.diagonal().sub_(1.0)
        return 2 * gram @ w
    grad = w @ (w.t() @ w)
    if off_diagonal:
        grad -= (w * w).sum(1, keepdim=True) * w
    else:
        grad -= w
    return 2 * grad


def _apply_ortho(model, strength, blacklist, off_diagonal):
    skip = {id(p) for p in blacklist}
    shared = getattr(model, 'shared', None)
    if isinstance(shared, torch.nn.Module):
        # G's shared class embedding is never orthogonalised.
        skip.update(id(p) for p in shared.parameters())
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim < 2 or id(param) in skip or param.grad is None:
                continue
            # reshape, not view: a channels-last conv weight is not contiguous as (out, -1).
            w = param.reshape(param.shape[0], -1)
            if w.dtype in (torch.float16, torch.bfloat16):
                w = w.float()
            param.grad.add_(_ortho_grad(w, off_diagonal).view(param.shape), alpha=strength)


def ortho(model, strength=1e-4, blacklist=()):
    """BigGAN's off-diagonal orthogonal regularisation, added straight to .grad.

    For every parameter with 2+ dims (W viewed as (out, -1)), not in
    `blacklist` and not in model.shared, adds 2*strength*((W W^T) * (1 - I)) W.
    """
    _apply_ortho(model, strength, blacklist, off_diagonal=True)


def default_ortho(model, strength=1e-4, blacklist=()):
    """Full orthogonal regularisation: adds 2*strength*(W W^T - I) W to .grad."""
    _apply_ortho(model, strength, blacklist, off_diagonal=False)


def toggle_grad(model, on_or_off):
    """Set requires_grad of every parameter of `model`."""
    for param in model.parameters():
        param.requires_grad_(on_or_off)


class ema:
    """Exponential moving average of `source`'s state into `target`.

    Every floating-point entry of the state dict (weights, SN vectors, BN
    statistics) is averaged, as in the original. Before `start_itr` the
    target simply copies the source. The target starts as a copy.
    """

    def __init__(self, source, target, decay=0.9999, start_itr=0):
        self.source = source
        self.target = target
        self.decay = decay
        self.start_itr = start_itr
        src, tgt = source.state_dict(), target.state_dict()
        self.source_float, self.target_float = [], []
        self.source_other, self.target_other = [], []
        for key, value in src.items():
            if value.is_floating_point():
                self.source_float.append(value)
                self.target_float.append(tgt[key])
            else:
                self.source_other.append(value)
                self.target_other.append(tgt[key])
        with torch.no_grad():
            torch._foreach_copy_(self.target_float + self.target_other,
                                 self.source_float + self.source_other)

    def update(self, itr=None):
        """Move target toward source: target = decay * target + (1 - decay) * source."""
        # As in the original, itr=None or 0 never pegs the average to the source.
        decay = 0.0 if itr and itr < self.start_itr else self.decay
        with torch.no_grad():
            torch._foreach_lerp_(self.target_float, self.source_float, 1.0 - decay)
            if self.target_other:
                torch._foreach_copy_(self.target_other, self.source_other)


def initiate_standing_stats(net):
    """Zero every myBN's statistics and switch it to accumulating them."""
    for module in net.modules():
        if hasattr(module, 'accumulate_standing'):
            module.reset_stats()
            module.accumulate_standing = True


def accumulate_standing_stats(net, z, y, nclasses, num_accumulations=16):
    """Recompute "standing" BN statistics of G from `num_accumulations` batches.

    z, y: samplable (N, dim_z) and (N,) from utils.prepare_z_y (drawn with
    their own generator, if they have one). nclasses: kept for the original's
    signature; unused. Leaves `net` in eval mode, using the accumulated averages.
    """
    initiate_standing_stats(net)
    net.train()
    with torch.no_grad():
        for _ in range(num_accumulations):
            z.sample_()
            y.sample_()
            net(z, net.shared(y))
    net.eval()
