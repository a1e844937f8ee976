#!/usr/bin/env bash
# Prepare HRNet's lib/ for the reference engine, the same way in both images and locally
# (`make reference-lib`): copy lib/ out of a checkout of the pinned commit, apply every file in
# patches/ in order (one that does not apply stops everything), build the NMS extensions so that a
# compiler error stops the build (HRNet's own Makefile always exits 0), and prove they import.
#
# usage: scripts/prepare-hrnet-lib.sh SRC DEST
#   SRC   a git checkout of HRNet/HRNet-Human-Pose-Estimation at the pinned commit
#   DEST  the folder to create; it becomes HRNET_LIB
# environment:
#   HRNET_COMMIT           the commit SRC must be at (default: the pinned one below)
#   PYTHON                 interpreter that builds and imports the extensions (default: python3)
#   HRNET_REQUIRE_GPU_NMS  1: fail unless gpu_nms imports (the images); else a CPU-only build is allowed
#   HRNET_NMS_NVCC_ARCH    nvcc -arch for gpu_nms (patch 0002; default sm_35, which CUDA 12 rejects)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pinned=00d7bf72f56382165e504b10ff0dddb82dca6fd2
commit=${HRNET_COMMIT:-$pinned}
python=${PYTHON:-python3}

fail() {
    echo "prepare-hrnet-lib: error: $*" >&2
    exit 1
}

[ $# -eq 2 ] || fail "usage: $0 SRC DEST"
src=$1
dest=${2%/}
[ -d "$src/lib" ] || fail "$src has no lib/ folder; pass a checkout of HRNet-Human-Pose-Estimation"
head=$(git -C "$src" rev-parse HEAD 2>/dev/null) || fail "$src is not a git checkout; clone the repository and check out $commit"
[ "$head" = "$commit" ] || fail "$src is at $head, expected $commit; run: git -C $src checkout $commit"
command -v patch >/dev/null || fail "the patch tool is missing (apt-get install patch)"

mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "$dest.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -R "$src/lib/." "$work/"

applied=()
for file in "$root"/patches/*.patch; do
    name=$(basename "$file")
    patch --dry-run --forward --batch -p2 -d "$work" <"$file" >/dev/null ||
        fail "patch $name does not apply to $src at $commit"
    patch --forward --batch --silent -p2 -d "$work" <"$file"
    applied+=("$name")
done
[ ${#applied[@]} -gt 0 ] || fail "no patches found in $root/patches"

(cd "$work/nms" && "$python" setup_linux.py build_ext --inplace) ||
    fail "building the NMS extensions failed (with CUDA 12 or newer set HRNET_NMS_NVCC_ARCH=compute_80)"
rm -rf "$work/nms/build"

PYTHONPATH=$work "$python" -c "import nms.cpu_nms" || fail "nms.cpu_nms was built but does not import"
if PYTHONPATH=$work "$python" -c "import nms.gpu_nms" 2>/dev/null; then
    gpu="built"
elif [ "${HRNET_REQUIRE_GPU_NMS:-0}" = 1 ]; then
    fail "nms.gpu_nms does not import (is nvcc on PATH or CUDAHOME set?)"
else
    gpu="not built: no CUDA toolkit here (the COCO evaluation path never calls it)"
fi

printf '%s\n' "$commit" >"$work/HRNET_COMMIT"
printf '%s\n' "${applied[@]}" >"$work/PATCHES"
rm -rf "$dest"
mv "$work" "$dest"
trap - EXIT
echo "prepare-hrnet-lib: $dest is ready: HRNet $commit, patches ${applied[*]}; cpu_nms built; gpu_nms $gpu"
