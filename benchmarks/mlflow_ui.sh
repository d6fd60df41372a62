#!/usr/bin/env bash
# The MLflow UI as a study's users see it: `mlflow ui` on a study folder's runs, served on 127.0.0.1, then one
# screenshot of the experiment's run list by headless Chromium (Debian's /usr/bin/chromium).
#   bash benchmarks/mlflow_ui.sh STUDY_FOLDER OUT.png [PORT]
set -euo pipefail
study=$(cd "$1" && pwd); out=$2; port=${3:-5057}
uri="sqlite:///$study/mlflow.db"
mlflow ui --backend-store-uri "$uri" --host 127.0.0.1 --port "$port" > /tmp/mlflow-ui.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 1; done
id=$(python - "$uri" "$study" <<'PY'
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
print(next(e.experiment_id for e in client.search_experiments() if e.name.startswith("featx study")))
PY
)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --window-size=${WIDTH:-1600},1000 \
  --virtual-time-budget=20000 --screenshot="$out" "http://127.0.0.1:$port/#/experiments/$id/runs${QUERY:-}" 2>/dev/null
echo "$out"
