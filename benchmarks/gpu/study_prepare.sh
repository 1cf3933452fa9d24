#!/usr/bin/env bash
# Run HERE (not on the device), once: fills the git-ignored .gpu/study/ for benchmarks/gpu/study.sh.
#   whl/  the `stack` group of benchmarks/gpu/wheels.txt, the one wheel list of the GPU calls
#         (throughput_prepare.sh carries the same group): solo-learn 1.0.6 (../shared/wheels), its
#         pins lightning 2.1.2 and torchmetrics 0.11.4, hydra-core, omegaconf, antlr4 (built here
#         from its sdist), setuptools < 81 (pkg_resources, imported by lightning 2.1.2)
#   c1/   cifar10_train_0.npz, cifar10_train_1.npz   (device call 1)
#   c2/   cifar10_train_2.npz, cifar10_test.npz      (device call 2, with whl/)
# CONFIRM=1 also fills c3/ (train_3, train_4) for benchmarks/gpu/confirm.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DATA=${CIFAR10_DIR:-../shared/datasets/cifar10}
W=.gpu/study/whl
mkdir -p "$W" .gpu/study/c1 .gpu/study/c2
"$PY" benchmarks/gpu/stack.py download --groups stack --dest "$W" --shared ../shared/wheels
cp "$DATA"/cifar10_train_0.npz "$DATA"/cifar10_train_1.npz .gpu/study/c1/
cp "$DATA"/cifar10_train_2.npz "$DATA"/cifar10_test.npz .gpu/study/c2/
if [ "${CONFIRM:-0}" = 1 ]; then
    mkdir -p .gpu/study/c3 && cp "$DATA"/cifar10_train_3.npz "$DATA"/cifar10_train_4.npz .gpu/study/c3/
fi
ls -la "$W"
du -sh .gpu/study/*
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "working tree that travels with every call: $((tree / 1024)) KiB (64 MiB per call in all)"
