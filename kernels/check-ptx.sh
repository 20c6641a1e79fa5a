#!/usr/bin/env bash
# Compiles every kernel in kernels/cuda/ to PTX for compute_80 and compute_90 with the
# flags build.rs uses, and assembles each PTX with ptxas for sm_80 and sm_90, so that
# the PTX the crate embeds is known to load on Ampere and Hopper GPUs. Needs nvcc and
# ptxas on PATH (eval "$(scripts/setup-cuda.sh)"). Prints each kernel's registers and
# stack, and fails if a sampler kernel contains a fused multiply-add (they must compute
# the Rust reference's separately rounded products and sums).
set -euo pipefail
cd "$(dirname "$0")/cuda"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for source in *.cu; do
    for cap in 80 90; do
        ptx="$out/${source%.cu}.$cap.ptx"
        nvcc --ptx "-arch=compute_$cap" -std=c++17 -fmad=false -prec-div=true -prec-sqrt=true -ftz=false \
            -o "$ptx" "$source"
        ptxas "-arch=sm_$cap" -O3 --warn-on-spills --verbose -o "$out/${source%.cu}.$cap.cubin" "$ptx" 2>&1 \
            | awk -v target="sm_$cap" 'match($0, /function .[a-z0-9_]+/) { name = substr($0, RSTART + 10, RLENGTH - 10) } /Used/ { sub(/.*: /, ""); print name, target ": " $0 }'
        if [[ "$source" == sampler.cu ]] && grep -q 'fma\.' "$ptx"; then
            echo "check-ptx: $ptx contains fused multiply-adds; build with -fmad=false" >&2
            exit 1
        fi
    done
done
echo "check-ptx: $(ls *.cu | wc -l) kernel sources compiled to PTX and assembled for sm_80 and sm_90"
