#!/usr/bin/env bash
# solo-learn's offline k-NN (main_knn.py) on a CueCo run, with its usual sweep of k and T.
# A preset over the runner: python -m cueco_plugin.solo <solo-learn script> [its arguments]
# (docs/evaluate.md), which registers CueCo and runs main_knn.py unchanged. main_knn.py moves
# every batch to CUDA: it needs a GPU (on CPU use python -m cueco_plugin.evaluate).
#
#   SOLO_LEARN_ROOT=/path/to/solo-learn configs/knn/knn.sh <run dir> <dataset> <train> <val> [more main_knn.py args]
set -euo pipefail
: "${SOLO_LEARN_ROOT:?set SOLO_LEARN_ROOT to your solo-learn clone (the folder with main_knn.py)}"
if [ "$#" -lt 4 ]; then
    sed -n '2,7p' "$0"
    exit 2
fi
RUN_DIR=$1 DATASET=$2 TRAIN=$3 VAL=$4
shift 4
exec python3 -m cueco_plugin.solo "$SOLO_LEARN_ROOT/main_knn.py" \
    --dataset "$DATASET" --train_data_path "$TRAIN" --val_data_path "$VAL" \
    --batch_size 64 --num_workers 8 --pretrained_checkpoint_dir "$RUN_DIR" \
    --k 10 20 50 100 200 --temperature 0.02 0.07 0.1 0.2 \
    --feature_type backbone projector --distance_function euclidean cosine "$@"
