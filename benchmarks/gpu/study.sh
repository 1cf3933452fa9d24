#!/usr/bin/env bash
# The GPU study of issue 11 on one lent H100/H200, as two device calls (benchmarks/gpu/README.md):
#   call 1, carry [".gpu/study/c1"]:                   bash benchmarks/gpu/study.sh stage
#   call 2, carry [".gpu/study/whl", ".gpu/study/c2"]: bash benchmarks/gpu/study.sh run
# Prepared here by benchmarks/gpu/study_prepare.sh. Call 1 only leaves cifar10_train_0/1.npz on
# the machine (a machine stays warm 30 s after a call; ignored files stay while it is warm).
# Call 2 installs the wheels into /tmp/site, checks the imports, the GPU and the data, then runs
#   benchmarks/study.py --arms benchmarks/studies/gpu_study.yaml (profile gpu-short, seed 5, then
#   the best CueCo arm and the control with seed 6)
# inside BUDGET_MIN (default 7.6) minutes, hard-stopped at STUDY_TIMEOUT_S (default 500 s; SIGINT:
# the study writes what it has), and copies results.{csv,md}, knn_per_epoch.png, metadata.json
# and study.log to $OUT: about 8.7 minutes in all. Then, here: copy them into
# benchmarks/results/gpu_study/. `study.sh confirm control|best [ARM]`: see confirm.sh.
# The python part runs on a CPU at a tiny budget as docs/benchmarks.md shows.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/study_out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/study.log") 2>&1
echo "== [$(date -u +%FT%TZ)] study.sh $*"
ls -la .gpu/study/* 2>/dev/null
mode="${1:-run}"
files=(cifar10_train_0 cifar10_train_1 cifar10_train_2 cifar10_test)
dirs=(.gpu/study/c1 .gpu/study/c2)
case "$mode" in
    stage) exit 0 ;;
    run)
        name=gpu_study
        args=(--budget-minutes "${BUDGET_MIN:-7.6}")
        ;;
    confirm)
        name=gpu_confirm_study
        files+=(cifar10_train_3 cifar10_train_4)
        dirs+=(.gpu/study/c3)
        arm="${3:-}"
        if [ "${2:-}" = best ] && [ -z "$arm" ]; then  # the CueCo arm the study reran
            arm=$(awk -F, '$2 == 6 && $1 != "mocov2plus" {print $1}' \
                benchmarks/results/gpu_study/results.csv 2>/dev/null | head -1)
        fi
        [ "${2:-}" = control ] && arm=mocov2plus
        [ -n "$arm" ] || { echo "usage: study.sh confirm control | best [ARM]"; exit 2; }
        args=(--profile gpu-confirm --name "$name" --only "$arm" --rerun-seed 0)
        ;;
    *) echo "usage: study.sh stage | run | confirm control|best [ARM]"; exit 2 ;;
esac

SITE=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .gpu/study/whl/*.whl || { echo "wheel install failed"; exit 2; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS="ignore::DeprecationWarning,ignore::FutureWarning"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
# the imports of study.py and the stack (benchmarks/gpu/stack.py; checked on the CPU by
# tests/test_gpu_stack.py against what this call carries and the image holds)
python3 benchmarks/gpu/stack.py check --for study --device cuda || exit 3
for f in "${files[@]}"; do
    compgen -G ".gpu/study/c?/$f.npz" >/dev/null || {
        echo "missing $f.npz: the machine was given back after an earlier call; start again"
        exit 4
    }
done

echo "== [$(date -u +%FT%TZ)] study.py ${args[*]}"
timeout --signal=INT --kill-after=20 "${STUDY_TIMEOUT_S:-500}" \
    python3 benchmarks/study.py --arms "${arms:-benchmarks/studies/gpu_study.yaml}" \
    --data-dir "${dirs[@]}" --out-dir .gpu/results "${args[@]}" ${STUDY_ARGS:-}
echo "study.py exit status: $?"
for f in results.csv results.md knn_per_epoch.png metadata.json; do
    cp ".gpu/results/$name/$f" "$OUT/" || echo "missing: $f"
done
echo "== [$(date -u +%FT%TZ)] done"
