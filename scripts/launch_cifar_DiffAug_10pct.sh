#!/bin/bash
# BigGAN on 10% of CIFAR-10 (a class-balanced 5,000 images, chosen by --seed) with DiffAugment:
# the settings of the DiffAugment paper's BigGAN CIFAR script (DiffAugment-biggan-cifar10-0.1.sh
# in mit-han-lab/data-efficient-gans: launch_cifar_ema.sh's flags, DiffAugment
# translation,cutout, 5000 epochs, FID on 10k samples ranking the best copies, a FID every 4000
# iterations). Its mirror_augment flag (random x-flips of the reals) has no exact twin here (our
# --augment also crops): left out. README, "Small datasets".
python train.py \
--DiffAugment translation,cutout --data_subset 5000 \
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
