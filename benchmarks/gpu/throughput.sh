#!/usr/bin/env bash
# GPU throughput of MoCo V2+ and CueCo (torchvision loader vs DALI CIFAR; at batch 256 with DALI
# also with torch.compiled backbones), the DALI CIFAR loader alone (arrays held on the GPU and in
# host memory), and solo-learn's own DALI path on Imagenette, on one lent H100/H200 machine
# (Python 3.12, torch 2.11 + CUDA 13 with its Triton, no DALI). Run from the repository root on the device machine, one stage
# per device call, back to back while the machine stays warm (see benchmarks/gpu/README.md):
#
#   bash benchmarks/gpu/throughput.sh stage N     # N = 1..5: unpack what call N carried
#   bash benchmarks/gpu/throughput.sh measure     # call 6: unpack the rest, check, measure
#
# Call N carries .gpu/tpN (made by benchmarks/gpu/throughput_prepare.sh on the dev machine).
# What a stage unpacks goes to /tmp/gpu_tp (data, DALI wheel parts) and /tmp/site_tp (wheels,
# unzipped into one folder put first on PYTHONPATH, so lightning 2.1.2 / torchmetrics 0.11.4
# shadow the machine's newer ones); both stay while the machine is warm.
# `measure` runs benchmarks/gpu_throughput.py with a budget of ${BUDGET_S:-420} s (runs that would
# not fit are skipped and recorded as skipped) and copies the results and logs to $OUT:
#   gpu_throughput.json, gpu_throughput.md, gpu_throughput.log, runs.tar.gz (per-run logs)
# Back on the dev machine: copy gpu_throughput.{json,md} into benchmarks/results/.
#
# Settings: BUDGET_S, RUNS ("method:loader:batch ...", default all), EXTRA (more arguments).
# Dry run of `measure` on a CPU machine whose python3 has the stack (this script's own test):
#   DEVICE=cpu SKIP_UNPACK=1 EXTRA="--tiny --data D --imagenette I --steps 3 --warmup 1" ...
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_out}
GPU=${GPU_DIR:-/tmp/gpu_tp}
SITE=${SITE_DIR:-/tmp/site_tp}
mkdir -p "$OUT" "$GPU/parts" "$GPU/data/cifar10" "$SITE"

unzip_wheels() {  # unzip (not pip --target, which replaces the shared nvidia/ folder per wheel)
    for w in "$@"; do
        echo "  $(basename "$w")"
        python3 -m zipfile -e "$w" "$SITE" || exit 2
    done
}

stage() {
    local n=$1 dir=.gpu/tp$1
    [ -d "$dir" ] || { echo "$dir was not carried (carry it in this call)"; exit 2; }
    echo "== [$(date -u +%FT%TZ)] stage $n: $(du -sh "$dir" | cut -f1) in $dir"
    cp "$dir"/*.part-* "$GPU/parts/" 2>/dev/null
    cp "$dir"/*.npz "$GPU/data/cifar10/" 2>/dev/null
    [ -d "$dir/imagenette-small" ] && cp -r "$dir/imagenette-small" "$GPU/data/"
    [ -d "$dir/solo-learn" ] && cp -r "$dir/solo-learn" "$GPU/"
    if [ -f "$dir/dali.sha256" ]; then
        echo "  joining the DALI wheel"
        local name
        name=$(awk '{print $2}' "$dir/dali.sha256")
        cat "$GPU"/parts/"$name".part-* > "$GPU/$name"
        (cd "$GPU" && sha256sum -c "$OLDPWD/$dir/dali.sha256") || exit 2
        unzip_wheels "$GPU/$name"
        rm -f "$GPU/$name" "$GPU"/parts/*
    fi
    shopt -s nullglob
    local wheels=("$dir"/*.whl)
    [ "${#wheels[@]}" -gt 0 ] && unzip_wheels "${wheels[@]}"
    # one `nvidia` package over this folder and the machine's own nvidia-* libraries
    if [ -f "$SITE/nvidia/__init__.py" ]; then
        echo "__path__ = __import__('pkgutil').extend_path(__path__, __name__)" > "$SITE/nvidia/__init__.py"
    fi
    ls "$GPU/data/cifar10"
}

case "${1:-}" in
stage)
    stage "$2"
    ;;
measure)
    exec > >(tee "$OUT/gpu_throughput.log") 2>&1
    DEVICE=${DEVICE:-cuda}
    if [ -z "${SKIP_UNPACK:-}" ]; then
        stage 6
        export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
        export SOLO_LEARN_ROOT="$GPU/solo-learn"
    fi
    export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
    echo "== [$(date -u +%FT%TZ)] check"
    [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # the imports of gpu_throughput.py, main_pretrain.py and DALI, and a DALI CIFAR pipeline on
    # the device (benchmarks/gpu/stack.py; checked on the CPU by tests/test_gpu_stack.py)
    python3 benchmarks/gpu/stack.py check --for throughput --device "$DEVICE" || exit 2
    echo "== [$(date -u +%FT%TZ)] measure (budget ${BUDGET_S:-420} s)"
    # shellcheck disable=SC2086
    timeout $((${BUDGET_S:-420} + 60)) python3 benchmarks/gpu_throughput.py --device "$DEVICE" \
        --data "$GPU/data/cifar10" --imagenette "$GPU/data/imagenette-small" \
        --budget-s "${BUDGET_S:-420}" --work "$GPU/work" --out "$OUT/gpu_throughput.json" \
        ${RUNS:+--runs $RUNS} ${EXTRA:-}
    status=$?
    tar -czf "$OUT/runs.tar.gz" -C "$GPU/work" --exclude='*/lightning_logs' . 2>/dev/null
    echo "== [$(date -u +%FT%TZ)] done (exit $status)"
    exit $status
    ;;
*)
    echo "usage: $0 stage N | measure"; exit 2
    ;;
esac
