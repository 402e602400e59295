#!/usr/bin/env bash
# GPU check: instruct-pix2pix `base` training (brainsynth vs a bare loop, samples/s and peak GPU
# memory, bf16), `edit` seconds per 256x256 slice and per volume, and ldm 3D `generate` seconds
# per volume (DDIM 50 vs DPM-Solver++ 20), in one run on one GPU; nothing is downloaded.
# Writes a JSON file and prints a markdown table. What is measured: benchmarks/gpu_bench.py.
#
#   benchmarks/gpu.sh [--out FILE] [--work DIR] [--dry-run]
#
#   --out FILE   JSON result (default: gpu-check-<UTC time>.json in the current folder)
#   --work DIR   keep the data and models there (default: a temporary folder, removed)
#   --dry-run    toy sizes on the CPU, under a minute, no GPU needed (CPU numbers, not GPU ones)
#
# PYTHON names the interpreter (default: python3); it needs the project's dependencies
# (pip install -e ".[diffusion]"). The checkout's code is run, whatever is installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
out="$PWD/gpu-check-$(date -u +%Y%m%dT%H%M%SZ).json"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) args+=(--dry-run) ;;
        --out) [ $# -ge 2 ] || { echo "gpu.sh: --out needs a file" >&2; exit 2; }; out="$2"; shift ;;
        --out=*) out="${1#--out=}" ;;
        --work) [ $# -ge 2 ] || { echo "gpu.sh: --work needs a folder" >&2; exit 2; }; args+=(--work "$2"); shift ;;
        --work=*) args+=(--work "${1#--work=}") ;;
        -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

mkdir -p "$(dirname "$out")"
export PYTHONPATH="$repo:$repo/plugins${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${PYTHON:-python3}" "$here/gpu_bench.py" --out "$out" ${args[@]+"${args[@]}"}
