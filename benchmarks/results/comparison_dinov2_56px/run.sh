#!/usr/bin/env bash
# Reduced-budget comparison through `vqt sweep` (offline DINOv2-S/14, one built-in task, 56 px).
set -e
COMMON="--backbone offline:dinov2_s14 --img-size 56 --data-root /tmp/cmp/data --tasks dsprites_loc --epochs 10 --warmup-epochs 1 --batch-size 32 --seeds 1 --eval-every 5 --store-dir /tmp/cmp/stores --no-progress"
run() { m=$1; shift; start=$(date +%s); vqt sweep $COMMON --method $m "$@" --out /tmp/cmp/runs/$m; echo "TIME $m: $(( $(date +%s) - start )) s"; }
run linear --lrs 1.0 --wds 0.001
run head2toe --lrs 1.0 --wds 0.001
run vqt --lrs 1.0 --wds 0.001
run vpt-deep --lrs 1.0 --wds 0.001
run lora --lrs 0.02 --wds 0.001
run adaptformer --lrs 0.02 --wds 0.001
run vqt+adaptformer --lrs 0.1 --wds 0.001
