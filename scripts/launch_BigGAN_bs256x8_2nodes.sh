#!/bin/bash
# BigGAN at 128x128 on ImageNet on 2 nodes x 8 GPUs, via torchrun. Run this script on both
# nodes, with the same MASTER_ADDR and NODE_RANK=0 on the node at MASTER_ADDR, 1 on the other:
#   MASTER_ADDR=10.0.0.1 NODE_RANK=0 bash scripts/launch_BigGAN_bs256x8_2nodes.sh   # node 0
#   MASTER_ADDR=10.0.0.1 NODE_RANK=1 bash scripts/launch_BigGAN_bs256x8_2nodes.sh   # node 1
# Optional: MASTER_PORT (default 29500, must be open on node 0), NPROC_PER_NODE (default 8).
# The data, the moments and --weights_root must be readable at the same paths on both nodes
# (a shared filesystem): every process reads its data slice, and on --resume every process
# loads the checkpoint. Only rank 0 (on node 0) writes checkpoints, logs and samples.
# The flags are those of launch_BigGAN_bs256x8_torchrun.sh: with --cross_replica the run
# follows the same trajectory as on one node (16 per GPU per micro-batch instead of 32), and
# either can resume the other's checkpoints.
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
: "${NODE_RANK:?set NODE_RANK to 0 on the node at MASTER_ADDR and 1 on the other}"
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
torchrun --nnodes 2 --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" train.py \
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
