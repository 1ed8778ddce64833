#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a GPU machine without internet (see that script's docstring).
#   bash benchmarks/gpu_check.sh WHEELS_DIR [gpu_check.py options...]
# e.g. bash benchmarks/gpu_check.sh wheels --json $OUT/gpu_check.json
# First installs the packages the machine lacks (diffusers, lpips, jsonargparse with its signature extras,
# litdata) from the carried wheel folder with `pip install --no-index --find-links`, resolving against what is
# already installed; if that resolution fails, every wheel of the folder is installed on its own without its
# dependencies. Then runs gpu_check.py from the repository root; its last line is one JSON object.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "gpu_check.sh: first argument must be the carried wheel folder (got '${1:-}'); e.g. bash benchmarks/gpu_check.sh wheels --json \$OUT/gpu_check.json" >&2
    exit 2
fi
WHEELS="$1"; shift
PACKAGES="diffusers lpips jsonargparse docstring-parser typeshed-client litdata"
if ! pip install -q --no-index --find-links "$WHEELS" $PACKAGES; then
    echo "gpu_check.sh: resolving the wheels failed; installing each wheel in $WHEELS without dependencies" >&2
    for wheel in "$WHEELS"/*.whl; do
        pip install -q --no-index --no-deps "$wheel" || echo "gpu_check.sh: could not install $wheel" >&2
    done
fi
python - <<'PY' >&2
import importlib
for name in ("diffusers", "lpips", "jsonargparse", "litdata"):
    try:
        importlib.import_module(name)
        print(f"gpu_check.sh: {name} importable")
    except Exception as err:  # report, gpu_check.py reports the recipes that need it
        print(f"gpu_check.sh: {name} NOT importable ({type(err).__name__}: {err})")
PY
exec python benchmarks/gpu_check.py "$@"
