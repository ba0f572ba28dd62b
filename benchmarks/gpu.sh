#!/usr/bin/env bash
# GPU benchmarks: candidates (benchmark 1) and end to end (benchmark 3) on a CUDA machine, fp32 stock path vs
# clipsam's path, plus clipsam under bf16 autocast; SAM 3 vs SAM + CLIP (benchmark 7); full-resolution masks vs stock
# at 2048 px and 12 MP and SAM 2.1's generator vs stock (issue 14). Writes JSON next to this script and prints a summary.
#   bash benchmarks/gpu.sh            (needs: nvidia-smi, a CUDA build of torch, the project installed)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/gpu-results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
common=(--sizes 1024,12mp --points-per-side 32 --points-per-batch 64 --device cuda)
python "$here/candidates.py" "${common[@]}" --precision fp32 --json "$out/candidates_fp32.json"
python "$here/candidates.py" "${common[@]}" --precision bf16 --json "$out/candidates_bf16.json"
python "$here/end_to_end.py" --points-per-side 32 --device cuda --precision fp32 --json "$out/end_to_end_fp32.json"
python "$here/end_to_end.py" --points-per-side 32 --device cuda --precision bf16 --json "$out/end_to_end_bf16.json"
python "$here/fullres.py" --points-per-side 32 --device cuda --json "$out/fullres.json"
python "$here/sam2_vs_vitb.py" --points-per-side 32 --device cuda --json "$out/sam2_vs_vitb.json"   # needs sam2
python "$here/sam3_vs_sam.py" --device cuda --json "$out/sam3_vs_sam.json"   # needs clipsam[sam3]
echo "results in $out"
