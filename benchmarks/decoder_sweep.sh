#!/usr/bin/env bash
# Every decoder, the calibrator and the seed ensemble on the checkpoints of a finished sweep, each
# choice made on validation and test decoded once; then one report per experiment with paired
# tests against its official (detr) decoding.
#
#   benchmarks/decoder_sweep.sh SWEEP_DIR OUT_DIR [EXPERIMENT...]
#
# SWEEP_DIR holds the runs of `amr-train -m experiment=... seed=...` (folders `<n>_<experiment>,seed=<s>`).
set -euo pipefail
sweep=${1:?sweep folder}; out=${2:?output folder}; shift 2
experiments=("${@:-baseline system1}")
read -r -a experiments <<<"${experiments[*]}"
amr=${AMR:-.venv/bin/amr}
[ -e "$out" ] && { echo "error: $out: output exists" >&2; exit 2; }
for exp in "${experiments[@]}"; do
    runs=("$sweep"/*_"$exp",seed=*)
    d="$out/$exp"
    "$amr" decode "${runs[@]}" --out "$d/saliency" --decode saliency --choose threshold_k=0,0.5,1,1.5
    "$amr" decode "${runs[@]}" --out "$d/segmental" --decode segmental --choose penalty=-8,-4,-2,0 --choose threshold_k=0,0.5,1
    "$amr" decode "${runs[@]}" --out "$d/hybrid" --decode hybrid --choose detr_weight=0,0.25,0.5,0.75,1
    "$amr" calibrate "${runs[@]}" --out "$d/calibrated" --decode detr
    "$amr" ensemble "${runs[@]}" --out "$d/ensemble"
    "$amr" report "${runs[@]}" "$d" --reference "$exp" --out "$d/report"
done
