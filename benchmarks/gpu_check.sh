#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a GPU machine without internet (see that script's docstring).
#   bash benchmarks/gpu_check.sh WHEELS_DIR [gpu_check.py options...]
# e.g. bash benchmarks/gpu_check.sh wheels --json $OUT/gpu_check.json
# First installs the carried wheels without their dependencies into a folder of their own (--target, put first on
# PYTHONPATH), as the device machine's Python environment is not ours to change; the packages they need beyond
# the wheels are in the device image. Then runs gpu_check.py from the repository root; its last line is one JSON
# object.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "gpu_check.sh: first argument must be the carried wheel folder (got '${1:-}'); e.g. bash benchmarks/gpu_check.sh wheels --json \$OUT/gpu_check.json" >&2
    exit 2
fi
WHEELS="$1"; shift
SITE="${TOKGEN_WHEEL_SITE:-/tmp/tokgen_site}"
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl; then
    echo "gpu_check.sh: installing the wheels of $WHEELS into $SITE failed" >&2
    exit 3
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 - <<'PY' >&2
import importlib
for name in ("diffusers", "lpips", "jsonargparse", "litdata"):
    try:
        importlib.import_module(name)
        print(f"gpu_check.sh: {name} importable")
    except Exception as err:  # report, gpu_check.py reports the recipes that need it
        print(f"gpu_check.sh: {name} NOT importable ({type(err).__name__}: {err})")
PY
exec python3 benchmarks/gpu_check.py "$@"
