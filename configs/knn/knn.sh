#!/usr/bin/env bash
# Offline k-NN evaluation of a CueCo pretraining run with stock solo-learn's main_knn.py.
#
#   SOLO_LEARN_ROOT=/path/to/solo-learn configs/knn/knn.sh <run dir> <dataset> <train> <val> [extra main_knn.py args]
#   e.g. configs/knn/knn.sh trained_models/cueco/abcd1234 imagenet100 \
#            ./datasets/imagenet-100/train ./datasets/imagenet-100/val
#
# <run dir> is the folder solo-learn's Checkpointer wrote (args.json + one .ckpt).
# main_knn.py is an argparse script (no Hydra, so the YAML's registration callback never runs)
# and rebuilds the model with METHODS[args.json's method]: this wrapper registers "cueco" in
# solo.methods.METHODS (cueco_plugin.register()) and then runs main_knn.py unchanged.
# main_knn.py moves every batch to CUDA: it needs a GPU.
set -euo pipefail
: "${SOLO_LEARN_ROOT:?set SOLO_LEARN_ROOT to your solo-learn clone (the folder with main_knn.py)}"
if [ "$#" -lt 4 ]; then
    sed -n '2,8p' "$0"
    exit 2
fi
RUN_DIR=$1 DATASET=$2 TRAIN=$3 VAL=$4
shift 4
python3 - "$SOLO_LEARN_ROOT/main_knn.py" \
    --dataset "$DATASET" \
    --train_data_path "$TRAIN" \
    --val_data_path "$VAL" \
    --batch_size 64 \
    --num_workers 8 \
    --pretrained_checkpoint_dir "$RUN_DIR" \
    --k 10 20 50 100 200 \
    --temperature 0.02 0.07 0.1 0.2 \
    --feature_type backbone projector \
    --distance_function euclidean cosine \
    "$@" <<'PY'
import runpy
import sys

import cueco_plugin

cueco_plugin.register()  # main_knn.py looks the method up in solo.methods.METHODS
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
PY
