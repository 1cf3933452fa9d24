#!/usr/bin/env bash
# CueCo pretraining with NVIDIA DALI on one GPU, beside solo-learn's torchvision loader.
#
# WHAT IT NEEDS (nothing is downloaded; the device machine reaches no network)
#   - One NVIDIA GPU (H100/H200) with its driver; python3 with a CUDA build of torch (the lent
#     machine has torch 2.11) and torchvision matching it (carry its wheel in $WHEELS if absent).
#   - $WHEELS (default .whl/, git-ignored): every wheel below and its dependencies, for the
#     device's Python version and manylinux x86_64. Installed with
#     `pip install --no-index --find-links $WHEELS`, so a missing wheel stops the script with
#     pip's list of what is missing:
#       hydra-core omegaconf antlr4-python3-runtime lightning==2.1.2 torchmetrics==0.11.4
#       lightning-utilities timm huggingface_hub safetensors einops scipy tqdm pillow
#       nvidia-dali-cuda120 (CUDA 12.x driver; use DALI_PKG=nvidia-dali-cuda130 for a 13.x one)
#       with DALI's own dependencies: nvidia-nvimgcodec-cu12 nvidia-libnvcomp-cu12 nvtx optree
#       libcst makefun gast astunparse six (the -cu13 variants for nvidia-dali-cuda130).
#     Prepare it on a machine with PyPI access, e.g. for a Python 3.11 device:
#       pip download -d .whl --only-binary=:all: --python-version 3.11 \
#           --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#           hydra-core omegaconf "lightning==2.1.2" "torchmetrics==0.11.4" timm einops scipy \
#           nvidia-dali-cuda120 --no-deps   # then the dependencies listed above, same flags
#     THE DALI WHEEL IS SEVERAL HUNDRED MiB (DALI 2.4 installs to ~790 MiB), more than one
#     64 MiB device-tool call can carry: split it (`split -b 60M <wheel> .whl/<wheel>.part-`),
#     carry the parts over several calls while the machine stays warm (ignored folders survive
#     between calls), and this script joins `<wheel>.part-*` back into `<wheel>`.
#   - $SOLO_LEARN_ROOT (default .gpu/solo-learn): a solo-learn 1.0.6 checkout (its `solo/`
#     package is enough, ~7 MiB); it is put on PYTHONPATH, not installed.
#   - Data (git-ignored .gpu/): $IMAGENETTE (default .gpu/imagenette-small/train, the real
#     Imagenette JPEGs from ../shared/datasets, ~10 MiB) and $CIFAR_NPZ (default
#     .gpu/cifar10/cifar10_train_0.npz, 10,000 real CIFAR-10 images, 27 MiB), exported here to
#     PNGs with cueco-cifar-to-folder. Set CIFAR_NPZ= (empty) to skip CIFAR.
#   - About 3-4 minutes on an H100 with the defaults below (plus the pip install): an estimate,
#     this script has not run on a GPU yet.
#   Note: imagenette-small has 600 training images (4 batches of 128 per epoch), so epoch
#   turnover (solo-learn's DataLoader re-spawns its workers every epoch) weighs more than on a
#   real dataset; the 10,000-image CIFAR folder (78 batches per epoch) is closer to real use.
#
# WHAT IT DOES
#   installs the wheels, checks that DALI sees the GPU, then runs
#   benchmarks/loader_throughput.py --device cuda --dali-device gpu: images/s of the loaders
#   alone (torchvision num_workers swept, DALI on the GPU) and CueCo pretraining through
#   trainer.fit (ResNet-18, 16-mixed, batch $BATCH, $STEPS measured steps after $WARMUP) with
#   each loader, with peak torch and whole-device GPU memory. Results:
#   benchmarks/results/loader_throughput_<gpu name>.{json,md}.
#
# Usage (from the repository root): bash benchmarks/gpu/dali_pretrain.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEELS=${WHEELS:-.whl}
DALI_PKG=${DALI_PKG:-nvidia-dali-cuda120}
SOLO_LEARN_ROOT=${SOLO_LEARN_ROOT:-.gpu/solo-learn}
IMAGENETTE=${IMAGENETTE:-.gpu/imagenette-small/train}
CIFAR_NPZ=${CIFAR_NPZ-.gpu/cifar10/cifar10_train_0.npz}
BATCH=${BATCH:-128}
WARMUP=${WARMUP:-10}
STEPS=${STEPS:-40}
WORKERS=${WORKERS:-"4 14"}
DALI_THREADS=${DALI_THREADS:-8}
E2E_WORKERS=${E2E_WORKERS:-14}

fail() { echo "dali_pretrain.sh: $*" >&2; exit 1; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || fail "no nvidia-smi/GPU"
python3 -c "import torch, sys; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -c "import torchvision" 2>/dev/null \
    || fail "torchvision missing: carry the torchvision wheel that matches this torch in $WHEELS"
[ -d "$SOLO_LEARN_ROOT/solo" ] || fail "no solo-learn at $SOLO_LEARN_ROOT (set SOLO_LEARN_ROOT)"
[ -d "$IMAGENETTE" ] || fail "no image folder at $IMAGENETTE (set IMAGENETTE)"
[ -d "$WHEELS" ] || fail "no wheel folder $WHEELS (set WHEELS)"

# join wheels that were carried in parts
for first in "$WHEELS"/*.whl.part-aa; do
    [ -e "$first" ] || continue
    whole=${first%.part-aa}
    [ -f "$whole" ] || cat "${whole}".part-* > "$whole"
done
python3 -m pip install --no-index --find-links "$WHEELS" --quiet \
    hydra-core omegaconf "lightning==2.1.2" "torchmetrics==0.11.4" timm einops scipy tqdm \
    pillow "$DALI_PKG" \
    || fail "pip could not install from $WHEELS (see the missing names above)"

# solo-learn and this package from source (not installed)
export PYTHONPATH="$PWD:$PWD/$SOLO_LEARN_ROOT${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'EOF'
import nvidia.dali as dali
from nvidia.dali import fn, pipeline_def

@pipeline_def(batch_size=2, num_threads=1, device_id=0)
def probe():
    return fn.random.uniform(shape=[4]).gpu()

pipe = probe()
pipe.build()
pipe.run()
print("DALI", dali.__version__, "runs on GPU 0")
EOF

datasets=(imagenette)
extra=()
if [ -n "$CIFAR_NPZ" ]; then
    [ -f "$CIFAR_NPZ" ] || fail "no CIFAR .npz at $CIFAR_NPZ (set CIFAR_NPZ, or CIFAR_NPZ= to skip)"
    if [ ! -d .gpu/cifar10-folder/train ]; then
        python3 -m cueco_plugin.cifar_folder "train=$CIFAR_NPZ" -o .gpu/cifar10-folder --no-progress
    fi
    datasets+=(cifar)
    extra+=(--cifar-dir .gpu/cifar10-folder/train --batch-cifar "$BATCH")
fi

# shellcheck disable=SC2086
python3 benchmarks/loader_throughput.py \
    --device cuda --dali-device gpu \
    --datasets "${datasets[@]}" "${extra[@]}" \
    --imagenette-dir "$IMAGENETTE" --batch-imagenette "$BATCH" \
    --workers $WORKERS --dali-threads "$DALI_THREADS" \
    --warmup 5 --batches 20 \
    --e2e-batch-size "$BATCH" --e2e-warmup "$WARMUP" --e2e-steps "$STEPS" \
    --e2e-clusters 100 --e2e-workers "$E2E_WORKERS" \
    --work-dir .gpu/loader_bench
