#!/usr/bin/env bash
# The ONE prepared GPU benchmark run (H100/H200; the script itself takes about 3-4 minutes, at most
# 285 s of per-step limits). Run from the repository root, with the wheels open_clip_torch,
# segment_anything, ftfy and wcwidth in .whl/:
#     bash benchmarks/gpu_check.sh
# Every output line is also written to $OUT/gpu_bench.txt (./gpu_bench.txt when OUT is unset).
# It imports only rsfiqa.model, open_clip, segment_anything, timm and torch (the device image has no
# webdataset, omegaconf or jsonargparse). All weights are random: timings only. Each step has its own
# time limit; a failing step is reported and the next one still runs.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -uo pipefail
LOG="${OUT:-.}/gpu_bench.txt"

step() {  # step SECONDS COMMAND...: run COMMAND under a time limit; report a failure and go on
  local limit=$1
  shift
  echo
  echo "### $(date +%T) (limit ${limit}s) $*"
  timeout "$limit" "$@"
  local rc=$?
  [ "$rc" -eq 0 ] || echo "!!! step failed or timed out (exit $rc): $*"
}

benchmarks() {
  echo "### $(date +%T) environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -c "import torch, timm, open_clip, segment_anything; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, '| timm', timm.__version__, '| open_clip', open_clip.__version__, '| device', \
torch.cuda.get_device_name())"

  local gpu=(--device cuda --bf16 --text clip)
  local train=(--batch 64 --image-size 224 --steps 10 --warmup 3)
  local lat=(--image-size 224 --batch 256 --steps 20 --batch-steps 5 --warmup 3)

  # 1. one training step: full RSFIQA (L=5; frozen CLIP text with a warm cache, and trainable text) vs bare
  step 40 python3 benchmarks/train_step.py --backbone swin_tiny_patch4_window7_224 "${train[@]}" "${gpu[@]}"
  step 40 python3 benchmarks/train_step.py --backbone resnet50 "${train[@]}" "${gpu[@]}"
  # 2. inference latency (batch 1) and throughput (batch 256) at L = 3..6, warm and cold text cache
  step 50 python3 benchmarks/latency.py --backbone swin_tiny_patch4_window7_224 "${lat[@]}" "${gpu[@]}"
  step 50 python3 benchmarks/latency.py --backbone resnet50 "${lat[@]}" "${gpu[@]}"
  # 3. SAM ViT-B / ViT-H with random weights: image encoder unbatched vs batched at 1024 px, automatic masks
  step 70 python3 benchmarks/annotation.py --sam-only --sam on --sam-models vit_b vit_h --sam-batch 4 \
    --sam-steps 5 --sam-images 2 --device cuda
  # 4. the paper configuration (configs/swin.yaml's model, batch and input size): one bf16 training step
  step 35 python3 benchmarks/train_step.py --config configs/swin.yaml --steps 10 --warmup 3 "${gpu[@]}"
  echo
  echo "### $(date +%T) done"
}

benchmarks 2>&1 | tee "$LOG"
