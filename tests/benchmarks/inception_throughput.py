"""Images per second through each Inception network (random weights), and the input resize alone.

Batch 16 at 128x128 by default, resized to 299x299 inside the network, under no_grad. The
torchvision network is the baseline of the ratio column. The resize rows time only the input
resize: TF1 resize_bilinear (the tf network's) against F.interpolate (the torchvision one's).

    python tests/benchmarks/inception_throughput.py [--batch_size 16] [--size 128] [--reps 3]
        [--device cpu]
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import inception_utils  # noqa: E402


def random_net(network, device, path):
    """The network with random weights, loaded through weights_path like real ones."""
    net = inception_utils.inception_architecture(network)
    for module in net.modules():
        # Kaiming convs keep activations O(1): vanishing ones would time denormal arithmetic.
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
    torch.save(net.state_dict(), path)
    return inception_utils.load_inception_net(network=network, weights_path=str(path),
                                              device=device)


def images_per_second(fn, images, reps):
    """Median over reps of images / seconds for fn(images), after one warm-up call."""
    with torch.no_grad():
        fn(images)
        times = []
        for _ in range(reps):
            if images.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(images)
            if images.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    times.sort()
    return len(images) / times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--reps', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    images = torch.rand(args.batch_size, 3, args.size, args.size, device=args.device) * 2 - 1
    tmp = Path(os.environ.get('TMPDIR', '/tmp'))
    rows = []
    for network in ('torchvision', 'tf'):
        net = random_net(network, args.device, tmp / f'inception_throughput_{network}.pth')
        rows.append((f'{network} network', images_per_second(net, images, args.reps)))
        del net
    scaled = (images + 1) * 127.5
    rows.append(('resize only: torchvision (F.interpolate)', images_per_second(
        lambda x: F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=True),
        images, args.reps)))
    rows.append(('resize only: tf (TF1 resize_bilinear)', images_per_second(
        inception_utils.tf1_resize_bilinear, scaled, args.reps)))
    print(f'{args.device}, batch {args.batch_size} at {args.size}x{args.size} -> 299x299, '
          f'torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}')
    print(f'| {"what":42s} | {"images/s":>9s} | {"ratio":>6s} |')
    print(f'|{"-" * 44}|{"-" * 10}:|{"-" * 7}:|')
    baselines = {'network': rows[0][1], 'resize': rows[2][1]}
    for name, speed in rows:
        base = baselines['resize' if name.startswith('resize') else 'network']
        print(f'| {name:42s} | {speed:9.1f} | {speed / base:6.2f} |')


if __name__ == '__main__':
    main()
