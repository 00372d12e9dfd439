#!/bin/bash
# BigGAN on 10% of CIFAR-10 (a class-balanced 5,000 images, chosen by --seed) with ADA: the
# DiffAugment paper's 10% CIFAR settings (launch_cifar_DiffAug_10pct.sh) with ADA instead of
# DiffAugment, at stylegan2-ada's defaults (target 0.6, p adjusted every 4 D steps, 0 to 1 in
# 500k images at the fastest, the bgc pipeline). README, "Small datasets".
python train.py \
--ADA_target 0.6 --ADA_interval 4 --ADA_kimg 500 --ADA_policy bgc --data_subset 5000 \
--use_multiepoch_sampler --which_best FID --num_inception_images 10000 \
--shuffle --batch_size 50 --parallel \
--num_G_accumulations 1 --num_D_accumulations 1 --num_epochs 5000 \
--num_D_steps 4 --G_lr 2e-4 --D_lr 2e-4 \
--dataset C10 \
--G_ortho 0.0 \
--G_attn 0 --D_attn 0 \
--G_init N02 --D_init N02 \
--ema --use_ema --ema_start 1000 \
--test_every 4000 --save_every 2000 --num_save_copies 2 --seed 0 "$@"
