#!/bin/bash
# BigGAN at 128x128 on ImageNet with one process per GPU on one node (8 GPUs), via torchrun.
# The flags of launch_BigGAN_bs256x8.sh, with these differences (see README, "Multiple GPUs,
# nodes and mixed precision"): no --parallel (DDP replaces DataParallel); --batch_size 256 is
# still the global micro-batch (32 per GPU) x 8 accumulations = 2048; --cross_replica makes
# G's batch statistics global, so the run follows the same trajectory on any number of GPUs;
# no --load_in_mem, which would hold a copy of the dataset in every one of the 8 processes.
# Needs data/ILSVRC128.hdf5 and its inception moments (scripts/utils/prepare_data.sh).
torchrun --standalone --nproc_per_node 8 train.py \
--dataset I128_hdf5 --shuffle  --num_workers 8 --batch_size 256 \
--num_G_accumulations 8 --num_D_accumulations 8 \
--num_D_steps 1 --G_lr 1e-4 --D_lr 4e-4 --D_B2 0.999 --G_B2 0.999 \
--G_attn 64 --D_attn 64 \
--G_nl inplace_relu --D_nl inplace_relu \
--SN_eps 1e-6 --BN_eps 1e-5 --adam_eps 1e-6 \
--G_ortho 0.0 \
--G_shared \
--G_init ortho --D_init ortho \
--hier --dim_z 120 --shared_dim 128 \
--G_eval_mode \
--G_ch 96 --D_ch 96 \
--cross_replica \
--ema --use_ema --ema_start 20000 \
--test_every 2000 --save_every 1000 --num_best_copies 5 --num_save_copies 2 --seed 0 \
--use_multiepoch_sampler "$@"
