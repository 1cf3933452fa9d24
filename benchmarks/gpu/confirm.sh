#!/usr/bin/env bash
# PREPARED, NOT RUN: the longer confirmation of issue 11 (all 50,000 CIFAR-10 training images,
# 30 epochs = 5,850 steps, profile gpu-confirm): the best CueCo arm of the GPU study against the
# MoCo V2+ control, seed 5. One run takes about 4.5 minutes on an H200, so each runs in its own
# call, and it needs a session of its own (about 12 of the 15 device minutes). Prepare here with
# CONFIRM=1 bash benchmarks/gpu/study_prepare.sh, then, back to back (benchmarks/gpu/README.md):
#   call 1, carry [".gpu/study/c1"]:                   bash benchmarks/gpu/confirm.sh stage
#   call 2, carry [".gpu/study/c3"]:                   bash benchmarks/gpu/confirm.sh stage
#   call 3, carry [".gpu/study/whl", ".gpu/study/c2"]: bash benchmarks/gpu/confirm.sh control
#   call 4, no carry:                                  bash benchmarks/gpu/confirm.sh best [ARM]
# (timeout_s 60, 60, 560, 560). ARM defaults to the CueCo arm that
# benchmarks/results/gpu_study/results.csv reran with seed 6 (the study's pick). Call 4 reuses
# call 3's control run (study.py's resume) and writes the joint table to $OUT; copy it into
# benchmarks/results/gpu_confirm_study/. STUDY_TIMEOUT_S=540 is the hard stop of each run call.
if [ "${1:-}" = stage ]; then exec bash "$(dirname "$0")/study.sh" stage; fi
STUDY_TIMEOUT_S="${STUDY_TIMEOUT_S:-540}" exec bash "$(dirname "$0")/study.sh" confirm "$@"
