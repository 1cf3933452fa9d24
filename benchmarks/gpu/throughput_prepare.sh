#!/usr/bin/env bash
# Prepares, on the development machine (PyPI reachable), the six carry folders .gpu/tp1 .. .gpu/tp6
# for benchmarks/gpu/throughput.sh: the wheels of benchmarks/gpu/wheels.txt (groups stack and
# dali) that a bare H100/H200 machine with Python 3.12 and torch 2.11 + CUDA 13 (no DALI, no
# hydra, its own newer lightning/torchmetrics) needs, DALI's
# 189 MiB wheel split into parts, two real CIFAR-10 .npz files (20,000 training images) and the
# real Imagenette JPEGs. Each folder stays under 58 MiB, so that with the working tree it fits the
# device tool's 64 MiB per call. .gpu/ is git-ignored. See benchmarks/gpu/README.md for the calls.
#
#   bash benchmarks/gpu/throughput_prepare.sh        # from the repository root; ~1 min
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
SOLO_LEARN_ROOT=${SOLO_LEARN_ROOT:-$SHARED/solo-learn}
WHEELS=.gpu/wheels
mkdir -p "$WHEELS"

# The `stack` and `dali` groups of benchmarks/gpu/wheels.txt, the one wheel list of the GPU calls
# (study_prepare.sh carries the same `stack` group): DALI and what its wheel requires,
# solo-learn's pins (lightning==2.1.2, torchmetrics<0.12), hydra-core/omegaconf/antlr4 (built here
# from its sdist), setuptools<81 (pkg_resources for lightning 2.1.2), six (DALI's autograph).
listing=$("$PY" benchmarks/gpu/stack.py download --groups stack dali --dest "$WHEELS" \
    --shared "$SHARED/wheels")
mapfile -t wheels <<< "$listing"
rm -rf .gpu/tp1 .gpu/tp2 .gpu/tp3 .gpu/tp4 .gpu/tp5 .gpu/tp6
mkdir -p .gpu/tp1 .gpu/tp2 .gpu/tp3 .gpu/tp4 .gpu/tp5 .gpu/tp6
dali=$(printf '%s\n' "${wheels[@]}" | grep '/nvidia_dali_cuda130-')
split -b 57M -a 2 "$dali" ".gpu/tp1/$(basename "$dali").part-"
mv .gpu/tp1/*.part-ab .gpu/tp2/ && mv .gpu/tp1/*.part-ac .gpu/tp3/ && mv .gpu/tp1/*.part-ad .gpu/tp4/
(cd "$WHEELS" && sha256sum "$(basename "$dali")") > .gpu/tp4/dali.sha256
cp -r "$SHARED"/datasets/imagenette-small .gpu/tp4/
cp "$SHARED"/datasets/cifar10/cifar10_train_0.npz .gpu/tp5/
cp "$SHARED"/datasets/cifar10/cifar10_train_1.npz .gpu/tp6/
for w in "${wheels[@]}"; do  # DALI's parts in tp1-tp4, its big libraries in tp4/tp5, the rest tp6
    case "$(basename "$w")" in
        nvidia_dali_cuda130-*) ;;
        nvidia_libnvcomp_cu13-*) cp "$w" .gpu/tp4/ ;;
        nvidia_nvimgcodec_cu13-* | nvidia_nvjpeg-* | nvidia_nvtiff_cu13-*) cp "$w" .gpu/tp5/ ;;
        *) cp "$w" .gpu/tp6/ ;;
    esac
done
mkdir -p .gpu/tp6/solo-learn && cp "$SOLO_LEARN_ROOT"/main_pretrain.py .gpu/tp6/solo-learn/
chmod -R u+w .gpu/tp*
du -sh .gpu/tp*
for d in .gpu/tp*; do
    size=$(du -sb "$d" | cut -f1)
    if [ "$size" -gt $((58 * 1024 * 1024)) ]; then echo "$d is over 58 MiB"; exit 1; fi
done
echo "ready: carry .gpu/tp1 ... .gpu/tp6 in six calls (benchmarks/gpu/README.md)"
