#!/bin/bash
# Sample the CPU demo trained by launch_demo.sh. The flags that build G come from the run's saved
# config (weights/demo_digits32/state_dict.pth); flags given here win. Writes class and
# interpolation sheets, a random sheet and 1000 samples (samples.npz) with the EMA generator into
# samples/demo_digits32/sample_<iteration>/.
python sample.py --experiment_name demo_digits32 --use_ema \
--sample_sheets --sample_interps --sample_random --sample_npz --sample_num_npz 1000 "$@"
