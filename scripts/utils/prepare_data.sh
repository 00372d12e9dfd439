#!/bin/bash
# Build a dataset's HDF5 file, then the Inception moments of it for FID:
#   bash scripts/utils/prepare_data.sh                     # data/ImageNet -> data/ILSVRC128.hdf5
#   bash scripts/utils/prepare_data.sh folder --data_root my_images --resolution 64
# The first argument, unless it is a flag, names the dataset (default I128). Each step gets only
# the flags it accepts: --chunk_size, --compression, --overwrite and --max_images go to
# make_hdf5.py; --data_root, --base_root, --resolution, --batch_size and --num_workers to both;
# the rest (e.g. --inception_network tf --inception_weights FILE) to calculate_inception_moments.py.
set -e
dataset=I128
if [[ $# -gt 0 && $1 != -* ]]; then
  dataset=$1
  shift
fi
hdf5_only=' --chunk_size --compression --overwrite --max_images '
both=' --data_root --base_root --resolution --batch_size --num_workers '
hdf5_args=(--dataset "$dataset")
moments_args=(--dataset "${dataset}_hdf5")
target=moments
for arg in "$@"; do
  if [[ $arg == --* ]]; then
    flag=" ${arg%%=*} "
    if [[ $hdf5_only == *"$flag"* ]]; then
      target=hdf5
    elif [[ $both == *"$flag"* ]]; then
      target=both
    else
      target=moments
    fi
  fi
  if [[ $target != moments ]]; then
    hdf5_args+=("$arg")
  fi
  if [[ $target != hdf5 ]]; then
    moments_args+=("$arg")
  fi
done
python make_hdf5.py --dataset I128 --batch_size 256 --data_root data "${hdf5_args[@]}"
python calculate_inception_moments.py --dataset I128_hdf5 --data_root data "${moments_args[@]}"
