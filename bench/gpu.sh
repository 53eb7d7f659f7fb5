#!/usr/bin/env bash
# Decode speed on a machine with an NVIDIA GPU (bench/gpu.py says what is measured), for a
# machine that has PyTorch's Python but no package registry and none of llorch's own
# dependencies: the CUDA build of llama_cpp and the few wheels llorch needs travel in one
# folder (bench/README.md says how to fill it), are installed into a scratch folder, and the
# checkout itself is put on PYTHONPATH (llorch/ links worker/ and convert/).
#
#   bash bench/gpu.sh [bench/gpu.py options]      # e.g. --doc; --cpu --small for a dry run
#
# LLORCH_GPU_WHEEL_DIR  the folder (default .gpu): llama_cpp_python-*.tar.* and *.whl
# PYTHON                the interpreter (default python3)
# OUT                   where gpu.md, gpu.json and gpu.log go (default build/out)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${LLORCH_GPU_WHEEL_DIR:-.gpu}
py=${PYTHON:-python3}
site=${LLORCH_GPU_SITE:-/tmp/llorch-gpu-site}
out=${OUT:-build/out}
mkdir -p "$out"
started=$(date +%s)

shopt -s nullglob
archives=("$dir"/llama_cpp_python-*.tar*)
if [ ${#archives[@]} -ne 1 ]; then
    echo "need exactly one llama_cpp_python-*.tar* in $dir (found ${#archives[@]})" >&2
    exit 2
fi
rm -rf "$site" && mkdir -p "$site"
tar xf "${archives[0]}" -C "$site"

# Always from the folder: llorch's pin of gguf, and diskcache (llama_cpp imports it; the
# GPU machine's image lacks both). The rest only where the interpreter cannot import the
# module named first in a row, and then the whole row: the image holds most (numpy, PyYAML,
# Jinja2, httpx, ...) but not pydantic (the in-process bench no longer imports it; the row
# stays for a bench that goes through the HTTP layer). pip picks, among the folder's wheels,
# the one built for this Python.
wanted=(diskcache gguf)
for row in "yaml PyYAML" "jinja2 Jinja2 MarkupSafe" "markupsafe MarkupSafe" \
    "typing_extensions typing_extensions" "httpx httpx httpcore h11 anyio idna certifi" \
    "pydantic pydantic pydantic-core annotated-types typing-inspection typing_extensions" \
    "numpy numpy"; do
    read -r module dists <<<"$row"
    "$py" -c "import $module" 2>/dev/null || wanted+=($dists)
done
mapfile -t wanted < <(printf '%s\n' "${wanted[@]}" | sort -u)
echo "installing from $dir into $site: ${wanted[*]}"
"$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --find-links "$dir" --target "$site" "${wanted[@]}"

# PyTorch's NVIDIA wheels hold the CUDA 13 libraries the CUDA build links (libcublas.so.13,
# libcudart.so.13): /work/shared/gpu/README.md. Nothing is found where there is no GPU stack.
nvidia=$("$py" -c "import glob, os, site
dirs = {os.path.dirname(p) for s in site.getsitepackages()
        for p in glob.glob(os.path.join(s, 'nvidia', '**', 'lib*.so*'), recursive=True)}
print(':'.join(sorted(dirs)))")
export LD_LIBRARY_PATH=${nvidia:+$nvidia:}/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
echo "set up in $(($(date +%s) - started)) s"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
fi
"$py" -c "import llama_cpp as ll; print('llama_cpp', ll.__version__, 'GPU offload:',
ll.llama_supports_gpu_offload())"
set -o pipefail
"$py" bench/gpu.py --out "$out" "$@" 2>&1 | tee "$out/gpu.log"
echo "bench/gpu.sh: $(($(date +%s) - started)) s in all"
