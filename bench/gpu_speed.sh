#!/usr/bin/env bash
# Issue 15's GPU measurements in one call, as run on a lent GPU: `bench.bench_gpu` (model-only against
# the CLI against torchvision's RetinaNet, fp32 against bf16, NCHW against channels-last), the
# two-node torchrun command of docs/benchmarks.md on the GPU (NCCL), then `bench.bench_train --device cuda`.
# Usage (repo root; raredet's dependencies importable, e.g. PYTHONPATH=src): bench/gpu_speed.sh OUT_DIR
# QUICK=1: tiny sizes (a smoke test of this script on any machine; the torchrun part then runs on CPU).
set -u
out=${1:?usage: bench/gpu_speed.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
quick=${QUICK:-}
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
t0=$(date +%s)
timeout "${BENCH_GPU_TIMEOUT:-420}" python3 -m bench.bench_gpu ${quick:+--quick} --out "$out/gpu.json" \
  2>&1 | tee "$out/bench_gpu.log"
echo "bench_gpu: $(( $(date +%s) - t0 )) s" | tee -a "$out/bench_gpu.log"

# Two nodes of one process each, rendezvous on 127.0.0.1, as docs/benchmarks.md writes the command.
device=cuda; [ -n "$quick" ] && device=cpu
tmp=$(mktemp -d)
python3 -m raredet synth --out "$tmp/synth" --images 40 > "$out/nccl_synth.log" 2>&1
launch="python3 -m torch.distributed.run"
for rank in 0 1; do
  timeout 90 $launch --nnodes 2 --node_rank $rank --nproc_per_node 1 --master_addr 127.0.0.1 \
    --master_port 29511 -m raredet train --pipeline_config_path "$tmp/synth/pipeline.config" \
    --model_dir "$tmp/runs/two_nodes" --num_train_steps 4 --device $device > "$out/two_nodes_rank$rank.log" 2>&1 &
  pids[$rank]=$!
done
wait "${pids[0]}"; rc0=$?; wait "${pids[1]}"; rc1=$?
echo "two nodes: node 0 exit $rc0, node 1 exit $rc1; checkpoints: $(ls "$tmp/runs/two_nodes" 2>/dev/null | tr '\n' ' ')" \
  | tee "$out/two_nodes.txt"
# One node, one process: the NCCL process group on this GPU, whatever the two-node attempt gave.
timeout 90 $launch --nnodes 1 --nproc_per_node 1 --master_addr 127.0.0.1 --master_port 29512 \
  -m raredet train --pipeline_config_path "$tmp/synth/pipeline.config" --model_dir "$tmp/runs/one_node" \
  --num_train_steps 4 --device $device > "$out/one_node.log" 2>&1
echo "one node: exit $?; checkpoints: $(ls "$tmp/runs/one_node" 2>/dev/null | tr '\n' ' ')" | tee -a "$out/two_nodes.txt"

t1=$(date +%s)
timeout "${BENCH_TRAIN_TIMEOUT:-120}" python3 -m bench.bench_train ${quick:+--quick} --device $device \
  2>&1 | tee "$out/bench_train.log"
echo "bench_train: $(( $(date +%s) - t1 )) s; all: $(( $(date +%s) - t0 )) s" | tee -a "$out/bench_train.log"
cp bench/results/gpu.json bench/results/train.json "$out/" 2>/dev/null
ls -la "$out"
