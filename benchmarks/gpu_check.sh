#!/usr/bin/env bash
# GPU check in one go: training-step timings at fp32 / bf16-mixed / 16-mixed, with scipy's matcher
# and with loss.matcher=enumerate (and, when AMR_OFFICIAL_SRC names the official baseline's src/,
# its bf16-mixed step beside ours), matching alone, an estimate of the seed's Table 1 grid from the
# step times, batches built on the GPU per second, 1 vs 2/4/8 stacked runs, the network compiled
# with and without CUDA graphs; then the `make run` recipe trained end to end at bf16-mixed and at
# 32-true, each as shipped and with the device path (enumerate, batches on the device, fixed
# shapes), and at bf16-mixed also with CUDA graphs and as 3 stacked seeds.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR] [all|bench|train]
# (logs and JSON land in OUT_DIR, default outputs/gpu_check)
set -euo pipefail
out=${1:-outputs/gpu_check}
part=${2:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, '| lightning', pl.__version__)" |
    tee -a "$out/gpu.txt"

if [[ $part != train ]]; then
    python3 -m benchmarks.bench_train --device cuda 2>&1 | tee "$out/bench_train.log"
    python3 -m benchmarks.bench_data 2>&1 | tee "$out/bench_data.log"
    # 1 vs N stacked runs per precision; the one-run step compiled, with and without CUDA graphs
    python3 -m benchmarks.bench_stacked --device cuda --compile 2>&1 | tee "$out/bench_stacked.log"
    cp outputs/bench/latest.json "$out/bench_train.json"
fi
[[ $part == bench ]] && exit 0

# the synthetic datasets first, so that neither timed run pays for writing them
python3 -c "from amr.data.synth import generate as g; g('data/synthetic/seed0_scale1.0', 'clotho_moment', 0, 1.0); g('data/synthetic/seed0_scale0.5', 'castella', 0, 0.5)"
recipe=(experiment=system1 data.synthetic.scale=0.5 pretrain.max_epochs=7 train.max_epochs=8 trainer=gpu logger=csv)
stamp=$(date +%Y%m%d-%H%M%S)
fast="loss.matcher=enumerate batches_on_device=true fixed_shapes=true"
for variant in "bf16-mixed" "32-true" "bf16-mixed $fast" "32-true $fast" \
               "bf16-mixed $fast compile=reduce-overhead" "bf16-mixed $fast stacked_runs=3"; do
    read -r precision extra <<<"$variant"
    name=$precision${extra:+-on-device}
    [[ $extra == *compile=* ]] && name+=-graphs
    [[ $extra == *stacked_runs=* ]] && name+=-stacked3
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086  # $extra holds whole overrides
    python3 -m amr.training.run "${recipe[@]}" "trainer.precision=$precision" $extra \
        "hydra.run.dir=outputs/runs/gpu_check/$stamp-$name" 2>&1 | tee "$out/train-$name.log"
    t1=$(date +%s.%N)
    python3 -c "print(f'train {\"$name\"}: {$t1 - $t0:.1f} s wall, pretrain + fine-tune + test, synthetic data')" |
        tee -a "$out/summary.txt"
    grep -A6 ", checkpoint " "$out/train-$name.log" | tee -a "$out/summary.txt"
done
