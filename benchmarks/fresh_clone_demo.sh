#!/usr/bin/env bash
# Measures what a newcomer pays: a fresh clone, then `make demo` (venv + install + pipeline),
# under /usr/bin/time -v for wall time and peak memory (max RSS of the largest process).
# Usage: bash benchmarks/fresh_clone_demo.sh [REPO]   (default: this checkout's committed HEAD)
set -euo pipefail
repo=${1:-$(git rev-parse --show-toplevel)}
work=$(mktemp -d)
git clone -q "$repo" "$work/p"
cd "$work/p"
unset DAGSTER_HOME RAR_DATA_ROOT RAR_ARTIFACTS_DIR MLFLOW_TRACKING_URI
/usr/bin/time -v make demo > "$work/demo.log" 2> "$work/time.log" || { tail -40 "$work/demo.log" "$work/time.log"; exit 1; }
tail -8 "$work/demo.log"
grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$work/time.log"
echo "commit: $(git rev-parse --short HEAD)  clone: $work/p"
