#!/usr/bin/env bash
# gpu-short comparison + GPU step overhead, as ONE call on a lent H100/H200 machine.
#
# Run from the repository root on the device machine (the device tool's working directory):
#     bash benchmarks/gpu/gpu_short.sh [CIFAR10_DIR ...]
# CIFAR10_DIR: folder(s) holding cifar10_train_0..2.npz and cifar10_test.npz (the files may be
# split over several folders); default: $CUECO_CIFAR10_DIRS (':'-separated), else .gpu/c1 .gpu/c2.
#
# Expects, in git-ignored folders of the repository root (carried by the device tool):
#   .whl/               py3 wheels: lightning==2.1.2, torchmetrics==0.11.4, hydra-core, omegaconf,
#                       antlr4-python3-runtime==4.9.3, and setuptools<81 unless the machine's
#                       python3 already has pkg_resources (lightning 2.1.2 and torchmetrics 0.11.4
#                       import it at import time)
#   .gpu/solo-learn/solo  a copy of solo-learn's `solo` package (put on PYTHONPATH, not installed)
#   .gpu/c1, .gpu/c2    the CIFAR-10 .npz files (carry them in two calls: 64 MiB per call; what an
#                       earlier call left in an ignored folder stays while the machine is warm)
# Writes to $OUT (the device tool's return folder; at most 8 files come back):
#   gpu_short.log, gpu-short/{results.md,results.csv,metadata.json,accuracy_vs_epoch.png,
#   throughput.png}, step_overhead_gpu-b256.{json,md}
# Then, on the dev machine: copy gpu-short/* into benchmarks/results/gpu-short/ and the two
# step_overhead files into benchmarks/results/.
#
# Budget (one call, at most 600 s): wheel install ~10 s; compare.py is given a deadline of
# ${DEADLINE_MIN:-6.5} minutes (a run that would not finish in time is skipped, never cut short
# silently) and a hard timeout; the step-overhead measurement takes about a minute.
# Re-running the same command on the still-warm machine resumes: finished runs are kept in
# .gpu/results/gpu-short/runs/ and skipped.

set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu_short_out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_short.log") 2>&1

if [ "$#" -gt 0 ]; then
    DATA_DIRS=("$@")
elif [ -n "${CUECO_CIFAR10_DIRS:-}" ]; then
    IFS=':' read -r -a DATA_DIRS <<<"$CUECO_CIFAR10_DIRS"
else
    DATA_DIRS=(.gpu/c1 .gpu/c2)
fi

SITE=/tmp/site
echo "== [$(date -u +%FT%TZ)] installing carried wheels into $SITE"
if [ ! -f "$SITE/.cueco_installed" ]; then
    shopt -s nullglob
    wheels=(.whl/*.whl)
    if [ "${#wheels[@]}" -eq 0 ]; then
        echo "no wheels in .whl/ (carry .whl with the device tool)"; exit 2
    fi
    if ! python3 -m pip install --quiet --no-index --no-deps --target "$SITE" "${wheels[@]}"; then
        echo "pip failed; unpacking the (pure-python) wheels directly"
        mkdir -p "$SITE"
        for w in "${wheels[@]}"; do python3 -m zipfile -e "$w" "$SITE" || exit 2; done
    fi
    touch "$SITE/.cueco_installed"
fi
export PYTHONPATH="$SITE:$PWD/.gpu/solo-learn:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS="ignore::DeprecationWarning"

echo "== [$(date -u +%FT%TZ)] machine and versions"
nvidia-smi || true
nproc; free -g || true
python3 - <<'EOF' || exit 3
import sys
try:
    import pkg_resources  # noqa: F401  (lightning 2.1.2 and torchmetrics 0.11.4 need it)
except ImportError:
    sys.exit("pkg_resources is missing: add a setuptools<81 wheel to .whl/ and rerun")
import torch, torchvision, lightning, torchmetrics, omegaconf, solo, cueco_plugin
from cueco_plugin.registration import register
register()
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| torchvision", torchvision.__version__, "| lightning", lightning.__version__,
      "| torchmetrics", torchmetrics.__version__, "| omegaconf", omegaconf.__version__)
print("solo from", solo.__file__, "| cueco_plugin", cueco_plugin.__version__, "from",
      cueco_plugin.__file__)
print("GPU:", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0))
assert lightning.__version__ == "2.1.2", "the carried lightning 2.1.2 must shadow the machine's"
EOF

echo "== [$(date -u +%FT%TZ)] compare.py --profile gpu-short (data: ${DATA_DIRS[*]})"
timeout --signal=INT --kill-after=20 "${COMPARE_TIMEOUT_S:-450}" \
    python3 benchmarks/compare.py --profile gpu-short --data-dir "${DATA_DIRS[@]}" \
    --out-dir .gpu/results --deadline-minutes "${DEADLINE_MIN:-6.5}"
echo "compare.py exit status: $?"
mkdir -p "$OUT/gpu-short"
for f in results.md results.csv metadata.json accuracy_vs_epoch.png throughput.png; do
    cp ".gpu/results/gpu-short/$f" "$OUT/gpu-short/" 2>/dev/null || echo "missing: $f"
done

echo "== [$(date -u +%FT%TZ)] step overhead CueCo / MoCo V2+ on the GPU"
timeout --signal=INT --kill-after=10 "${STEP_TIMEOUT_S:-100}" \
    python3 benchmarks/step_overhead.py --device cuda --batch-size 256 --rounds 6 --steps 15 \
    --warmup-steps 3 --data-dir "${DATA_DIRS[@]}" --out-dir "$OUT" --tag gpu-b256
echo "step_overhead.py exit status: $?"
echo "== [$(date -u +%FT%TZ)] done; files in $OUT:"
find "$OUT" -type f | sort
