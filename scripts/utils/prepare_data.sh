#!/bin/bash
# Build data/ILSVRC128.hdf5 from data/ImageNet and compute its Inception moments for FID.
# Extra arguments (e.g. --data_root /big/disk --num_workers 4) go to both steps.
set -e
python make_hdf5.py --dataset I128 --batch_size 256 --data_root data "$@"
python calculate_inception_moments.py --dataset I128_hdf5 --data_root data "$@"
