#!/bin/bash
# A lighter sampling pass over the model of launch_BigGAN_bs256x8.sh, for a single smaller GPU:
# the flags of sample_BigGAN_bs256x8.sh with G batches of 256 and 2 loader workers, an npz of
# 5000 samples, sheets and interpolations in samples/<exp>/1/, and the IS/FID curve over z's
# standard deviation (0.05 to 1.0), without the single IS/FID and the random sheet.
python sample.py \
--dataset I128_hdf5 --parallel --shuffle  --num_workers 2 --batch_size 256 \
--num_G_accumulations 8 --num_D_accumulations 8 \
--num_D_steps 1 --G_lr 1e-4 --D_lr 4e-4 --D_B2 0.999 --G_B2 0.999 \
--G_attn 64 --D_attn 64 \
--G_ch 96 --D_ch 96 \
--G_nl inplace_relu --D_nl inplace_relu \
--SN_eps 1e-6 --BN_eps 1e-5 --adam_eps 1e-6 \
--G_ortho 0.0 \
--G_shared \
--G_init ortho --D_init ortho --skip_init \
--hier --dim_z 120 --shared_dim 128 \
--ema --ema_start 20000 \
--use_multiepoch_sampler \
--sample_npz --sample_num_npz 5000 \
--sample_sheets \
--sample_interps \
--sample_sheet_folder_num 1 \
--test_every 2000 --save_every 1000 --num_best_copies 5 --num_save_copies 2 --seed 0 \
--G_batch_size 256 --use_ema --G_eval_mode --sample_trunc_curves 0.05_0.05_1.0 "$@"
