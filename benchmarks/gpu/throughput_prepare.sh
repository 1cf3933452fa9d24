#!/usr/bin/env bash
# Prepares, on the development machine (PyPI reachable), the six carry folders .gpu/tp1 .. .gpu/tp6
# for benchmarks/gpu/throughput.sh: the wheels a bare H100/H200 machine with Python 3.12 and
# torch 2.11 + CUDA 13 (no DALI, no hydra, its own newer lightning/torchmetrics) needs, DALI's
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

platform=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform any)
# DALI and what its wheel requires (nvidia-libnvcomp-cu13==5.3.0.16, nvimgcodec[all] < 0.10),
# solo-learn's pins (lightning==2.1.2, torchmetrics<0.12), hydra-core/omegaconf as tested here.
"$PY" -m pip download -q --no-deps "${platform[@]}" -d "$WHEELS" \
    nvidia-dali-cuda130==2.4.0 nvidia-libnvcomp-cu13==5.3.0.16 nvidia-nvimgcodec-cu13==0.9.0.20 \
    nvidia-nvjpeg==13.3.2.43 nvidia-nvjpeg2k-cu13==0.11.0.51 nvidia-nvtiff-cu13==0.8.0.82 \
    astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0 libcst==1.9.0 \
    lightning==2.1.2 torchmetrics==0.11.4 hydra-core==1.3.8 omegaconf==2.3.1
# antlr4-python3-runtime 4.9.3 (hydra-core's pin) is published as an sdist only: build its wheel
if ! ls "$WHEELS"/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d .gpu/sdist antlr4-python3-runtime==4.9.3
    "$PY" -m pip wheel -q --no-deps --no-build-isolation .gpu/sdist/antlr4-python3-runtime-4.9.3.tar.gz -w "$WHEELS"
fi
cp "$SHARED"/wheels/solo_learn-1.0.6-py3-none-any.whl "$WHEELS"/

rm -rf .gpu/tp1 .gpu/tp2 .gpu/tp3 .gpu/tp4 .gpu/tp5 .gpu/tp6
mkdir -p .gpu/tp1 .gpu/tp2 .gpu/tp3 .gpu/tp4 .gpu/tp5 .gpu/tp6
dali=$(ls "$WHEELS"/nvidia_dali_cuda130-2.4.0-*.whl)
split -b 57M -a 2 "$dali" ".gpu/tp1/$(basename "$dali").part-"
mv .gpu/tp1/*.part-ab .gpu/tp2/ && mv .gpu/tp1/*.part-ac .gpu/tp3/ && mv .gpu/tp1/*.part-ad .gpu/tp4/
(cd "$WHEELS" && sha256sum "$(basename "$dali")") > .gpu/tp4/dali.sha256
cp "$WHEELS"/nvidia_libnvcomp_cu13-*.whl .gpu/tp4/
cp -r "$SHARED"/datasets/imagenette-small .gpu/tp4/
cp "$SHARED"/datasets/cifar10/cifar10_train_0.npz .gpu/tp5/
cp "$WHEELS"/nvidia_nvimgcodec_cu13-*.whl "$WHEELS"/nvidia_nvjpeg-*.whl "$WHEELS"/nvidia_nvtiff_cu13-*.whl .gpu/tp5/
cp "$SHARED"/datasets/cifar10/cifar10_train_1.npz .gpu/tp6/
for w in nvidia_nvjpeg2k_cu13 nvtx libcst lightning torchmetrics optree hydra_core omegaconf \
         antlr4_python3_runtime astunparse gast makefun solo_learn; do
    cp "$WHEELS"/"$w"-*.whl .gpu/tp6/
done
mkdir -p .gpu/tp6/solo-learn && cp "$SOLO_LEARN_ROOT"/main_pretrain.py .gpu/tp6/solo-learn/
chmod -R u+w .gpu/tp*
du -sh .gpu/tp*
for d in .gpu/tp*; do
    size=$(du -sb "$d" | cut -f1)
    if [ "$size" -gt $((58 * 1024 * 1024)) ]; then echo "$d is over 58 MiB"; exit 1; fi
done
echo "ready: carry .gpu/tp1 ... .gpu/tp6 in six calls (benchmarks/gpu/README.md)"
