"""Score a generator trained on Digits32 with a classifier trained on the real digits.

For each class, draws samples from G (G_ema with --use_ema) and reports:
- accuracy: the fraction the classifier assigns to the class they were drawn for;
- spread: mean distance of a class's samples to their class mean, divided by the
  same for the real digits of that class (about 1 is as varied as real data,
  well below 1 is a within-class collapse);
- FID in the classifier's hidden features, samples against the real digits.

    python tests/benchmarks/demo_quality.py [train/sample flags of the run] \\
        [--load_weights copy0] [--per_class 100]
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import datasets  # noqa: E402
import inception_utils  # noqa: E402
import sample  # noqa: E402
import utils  # noqa: E402


def gray(x):
    """(N, 3, 32, 32) -> (N, 1, 32, 32): the digits are grey; G's slight tints are not the digit."""
    return x.mean(1, keepdim=True)


def train_classifier(x, y, seed=0, epochs=30):
    """A 2-layer MLP on flattened (N, 1, 32, 32) digits; returns (model, held-out accuracy)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    x, y = x[order], y[order]
    split = int(0.9 * len(x))
    torch.manual_seed(seed)  # before the layers, so their initialisation is seeded too
    net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        for i in range(0, split, 128):
            loss = F.cross_entropy(net(x[i:i + 128]), y[i:i + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (net(x[split:]).argmax(1) == y[split:]).float().mean().item()
    return net, acc


def features(net, x):
    """The classifier's hidden layer: (N, 256)."""
    with torch.no_grad():
        return net[2](net[1](net[0](x))).double()


def spread(x):
    return (x.flatten(1) - x.flatten(1).mean(0)).norm(dim=1).mean().item()


def real_digits():
    """All 5,000 digits, grey: x (5000, 1, 32, 32) in [-1, 1], y (5000,)."""
    data = datasets.Digits32()
    x_real = torch.stack([data[i][0] for i in range(len(data))])
    y_real = torch.tensor([int(data[i][1]) for i in range(len(data))])
    return gray(x_real), y_real


def generate(G, per_class, seed=123):
    """per_class samples of each class from G, grey: x (10 * per_class, 1, 32, 32), y."""
    gen = torch.Generator().manual_seed(seed)
    # Mixed-class batches, as in training: in training mode G's BN normalises over the
    # batch, and a batch of one class would shift every sample.
    y = torch.arange(10).repeat(per_class)
    z = torch.randn(len(y), G.dim_z, generator=gen)
    with torch.no_grad():
        x_fake = gray(torch.cat([G(zb, G.shared(yb)) for zb, yb in zip(z.split(100),
                                                                      y.split(100))]))
    return x_fake, y


def evaluate(config, per_class=100, classifier=None):
    """Score the run `config` names: {'name', 'itr', 'held_out', 'rows' [(class, accuracy,
    spread)], 'accuracy', 'spread', 'FID', 'x_fake', 'y_fake'}. classifier: (clf,
    held-out accuracy, x_real, y_real) from an earlier call, to train it once."""
    if classifier is None:
        x_real, y_real = real_digits()
        classifier = (*train_classifier(x_real, y_real), x_real, y_real)
    clf, held_out, x_real, y_real = classifier
    G, state, name = sample.load_generator(config, 'cpu')
    if config['G_eval_mode']:
        G.eval()
    x_fake, y = generate(G, per_class)
    rows = []
    for c in range(10):
        xf = x_fake[y == c]
        acc = (clf(xf).argmax(1) == c).float().mean().item()
        rows.append((c, acc, spread(xf) / spread(x_real[y_real == c])))
    fr, ff = features(clf, x_real), features(clf, x_fake)
    fid = inception_utils.numpy_calculate_frechet_distance(
        ff.mean(0).numpy(), np.cov(ff.numpy(), rowvar=False),
        fr.mean(0).numpy(), np.cov(fr.numpy(), rowvar=False))
    return {'name': name, 'itr': state['itr'], 'held_out': held_out, 'rows': rows,
            'accuracy': float(np.mean([r[1] for r in rows])),
            'spread': float(np.mean([r[2] for r in rows])), 'FID': float(fid),
            'x_fake': x_fake, 'y_fake': y, 'classifier': classifier}


def main():
    parser = utils.add_sample_parser(utils.prepare_parser())
    parser.add_argument('--per_class', type=int, default=100)
    config = utils.parse_config(parser)
    result = evaluate(config, config['per_class'])
    print(f"{result['name']} itr {result['itr']}: classifier held-out accuracy "
          f"{result['held_out']:.3f}")
    print('class  accuracy  spread')
    for c, acc, sp in result['rows']:
        print(f'{c:>5}  {acc:>8.2f}  {sp:>6.2f}')
    print(f"mean   {result['accuracy']:>8.3f}  {result['spread']:>6.2f}"
          f"   FID(classifier features) {result['FID']:.1f}")


if __name__ == '__main__':
    main()
