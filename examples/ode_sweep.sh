#!/bin/sh
# The ODE sweep of ode_sweep.py as a plain `pilot sweep` command: each grid point runs
# `python ode_model.py ALPHA:BETA` on a worker (started with --allow sweep), and the rows
# come back in results.jsonl. Usage: examples/ode_sweep.sh [GRID] [OUT_DIR]
# Server and token come from PILOT_SERVER/PILOT_TOKEN or `pilot login`.
set -eu
GRID=${1:-6}
OUT=${2:-ode-sweep-results}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # the results folder is named from where the script was started
cd "$(dirname "$0")"
ITEMS=$(mktemp)
trap 'rm -f "$ITEMS"' EXIT
"$PYTHON" -c "import ode_model; print('\n'.join(f'{a}:{b}' for a, b in ode_model.grid($GRID)))" >"$ITEMS"
SUBMITTED=$(pilot sweep --items-file "$ITEMS" --file ode_model.py --collect 'out/*.json' \
            --no-wait --json -- "$PYTHON" ode_model.py '{item}')
JOB=$(echo "$SUBMITTED" | "$PYTHON" -c "import json, sys; print(json.load(sys.stdin)['job'])")
echo "submitted job $JOB"
pilot wait "$JOB"
pilot download "$JOB" --out "$OUT"
"$PYTHON" - "$OUT/results.jsonl" <<'PY'
import json, sys
import ode_model
rows = [json.loads(json.loads(line)["stdout"]) for line in open(sys.argv[1])]
print(ode_model.table(rows))
PY
