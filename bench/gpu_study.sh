#!/usr/bin/env bash
# The imbalance study on one GPU (issue 14), as it was run on a lent H200: every run of the study at
# once, sharing the GPU through CUDA MPS where the machine allows it (else plain time-slicing).
# Usage (repo root; raredet's dependencies importable, e.g. PYTHONPATH=src): bench/gpu_study.sh OUT_DIR
set -u
out=${1:?usage: bench/gpu_study.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi -L || true
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
  if python3 -c "import torch; torch.zeros(1, device='cuda').sum().item()"; then
    echo "CUDA MPS: on"
  else
    echo quit | nvidia-cuda-mps-control; echo "CUDA MPS: clients failed; off"
  fi
else
  echo "CUDA MPS: not available"
fi
start=$(date +%s)
timeout "${STUDY_TIMEOUT:-450}" python3 -m bench.imbalance --device cuda --parallel "${STUDY_PARALLEL:-40}" \
  ${STUDY_ARGS:-} 2>&1 | tee "$out/study.log"
echo "study: $(( $(date +%s) - start )) s" | tee -a "$out/study.log"
cp bench/results/imbalance.json docs/imbalance.md docs/imbalance_rare_ap50.png "$out/" 2>/dev/null
# Every run's logs and evaluation inputs (not checkpoints or plots), to finish a cut-short study with
# `python -m bench.imbalance --resume` elsewhere.
tar cJf "$out/runs.txz" --exclude='*.pt' --exclude='*.png' --exclude='report.html' \
  -C bench/results/tmp imbalance/runs 2>/dev/null
split -b 15m -d "$out/runs.txz" "$out/runs.txz.part" && rm "$out/runs.txz"
ls -la "$out"
