#!/usr/bin/env bash
# The ONE prepared GPU check (H100/H200), at most 300 s of per-step limits (under 5 minutes). Run from
# the repository root, with the wheels open_clip_torch, segment_anything, ftfy and wcwidth in .whl/
# (the device image has torch, timm, transformers, scipy, scikit-image, tqdm, pillow; not webdataset,
# omegaconf or jsonargparse, none of which these steps import):
#     bash benchmarks/gpu_check.sh
#     FULL=1 bash benchmarks/gpu_check.sh   # also SAM encoder timings and the swin.yaml train step (+105 s)
#     DRY_RUN=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh  # every step on the CPU, tiny settings
#                                           (tests/test_gpu_check.py)
# Every output line is also written to $OUT/gpu_bench.txt (./gpu_bench.txt when OUT is unset).
# All weights are random: timings and agreement checks only. Each step has its own time limit; a failing
# step is reported ("!!! step failed") and the next one still runs.
#  1. RSA bias gradients: SDPA (PyTorch's choice, and each backend) vs the explicit softmax, bf16 autocast
#     (cuDNN attention on Hopper must not drop the additive mask's gradient): benchmarks/rsa_grad_check.py
#  2. the transformers Qwen2.5-VL describer, tiny random model, on the GPU vs the CPU:
#     benchmarks/describer_gpu_check.py (vLLM cannot be installed there: tests/vllm_engine covers it)
#  3. train step full / bare (target <= 1.25x) and 4. batch-1 latency at L = 5 (target <= 1.5x)
#  5. where the batch-1 time goes, per block, and the MHF+RSA+head block under torch.compile
#     (CUDA graphs, mode reduce-overhead): benchmarks/block_profile.py
set -uo pipefail
PY=${PYTHON:-python3}  # the interpreter (the device image: python3)
if [ "${DRY_RUN:-0}" = 1 ]; then
  export PYTHONPATH=$PWD
  DEVICE=cpu BF16=() SWIN=test_efficientnet RESNET=test_efficientnet SIZE=64 TEXT=minilm
  TRAIN=(--batch 2 --steps 1 --warmup 0 --no-unfrozen) LAT=(--batch 2 --steps 1 --batch-steps 1 --warmup 0)
  PROFILE=(--steps 1 --warmup 0 --compile --compile-backend eager) SCALE=4
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
  DEVICE=cuda BF16=(--bf16) SWIN=swin_tiny_patch4_window7_224 RESNET=resnet50 SIZE=224 TEXT=clip
  TRAIN=(--batch 64 --steps 10 --warmup 3) LAT=(--batch 256 --steps 20 --batch-steps 5 --warmup 3)
  PROFILE=(--steps 30 --warmup 5 --compile) SCALE=1
fi
LOG="${OUT:-.}/gpu_bench.txt"

step() {  # step SECONDS COMMAND...: run COMMAND under a time limit (x SCALE); report a failure and go on
  local limit=$(($1 * SCALE))
  shift
  echo
  echo "### $(date +%T) (limit ${limit}s) $*"
  timeout "$limit" "$@"
  local rc=$?
  [ "$rc" -eq 0 ] || echo "!!! step failed or timed out (exit $rc): $*"
}

checks() {
  echo "### $(date +%T) environment"
  [ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import torch, timm, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| timm', timm.__version__, '| transformers', transformers.__version__, '| sdpa backends: flash', \
torch.backends.cuda.flash_sdp_enabled(), 'efficient', torch.backends.cuda.mem_efficient_sdp_enabled(), \
'cudnn', torch.backends.cuda.cudnn_sdp_enabled(), 'math', torch.backends.cuda.math_sdp_enabled())"

  local gpu=(--device "$DEVICE" "${BF16[@]}" --text "$TEXT")
  # 1. the RSA bias gradient through every SDPA backend vs the explicit path (bf16 autocast)
  step 30 "$PY" benchmarks/rsa_grad_check.py --device "$DEVICE" "${BF16[@]}"
  # 2. the HF Qwen2.5-VL describer path (tiny random model) on the GPU vs the CPU
  step 60 "$PY" benchmarks/describer_gpu_check.py --device "$DEVICE"
  # 3. one training step, full RSFIQA (L=5, frozen text with a warm cache; trainable text) vs bare
  step 40 "$PY" benchmarks/train_step.py --backbone "$SWIN" --image-size "$SIZE" "${TRAIN[@]}" "${gpu[@]}"
  step 40 "$PY" benchmarks/train_step.py --backbone "$RESNET" --image-size "$SIZE" "${TRAIN[@]}" "${gpu[@]}"
  # 4. inference latency (batch 1) and throughput at L = 5, warm and cold text cache
  step 35 "$PY" benchmarks/latency.py --backbone "$SWIN" --image-size "$SIZE" --regions 5 "${LAT[@]}" "${gpu[@]}"
  step 35 "$PY" benchmarks/latency.py --backbone "$RESNET" --image-size "$SIZE" --regions 5 "${LAT[@]}" "${gpu[@]}"
  # 5. batch-1 time per block, kernel launches, and the post-backbone block compiled (CUDA graphs)
  step 60 "$PY" benchmarks/block_profile.py --backbone "$SWIN" --image-size "$SIZE" "${PROFILE[@]}" "${gpu[@]}"
  if [ "${FULL:-0}" = 1 ]; then
    # SAM ViT-B / ViT-H with random weights: image encoder unbatched vs batched at 1024 px, automatic masks
    step 70 "$PY" benchmarks/annotation.py --sam-only --sam on --sam-models vit_b vit_h --sam-batch 4 \
      --sam-steps 5 --sam-images 2 --device "$DEVICE"
    # the paper configuration (configs/swin.yaml's model, batch and input size): one bf16 training step
    step 35 "$PY" benchmarks/train_step.py --config configs/swin.yaml --steps 10 --warmup 3 "${gpu[@]}"
  fi
  echo
  echo "### $(date +%T) done"
}

checks 2>&1 | tee "$LOG"
