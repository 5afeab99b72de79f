#!/usr/bin/env bash
# `make demo`: start `dagengine serve` with the example workflows and triggers, submit one run
# through the API and print its result, then stop the server with SIGTERM. Ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${DEMO_PORT:-8080}"
export DAGENGINE_URL="http://127.0.0.1:${PORT}"
log="$(mktemp)"
server=""

cleanup() {
    if [[ -n "$server" ]] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server"
        wait "$server" || true
    fi
    rm -f "$log"
}
trap cleanup EXIT INT TERM

dagengine serve --workflows examples --config examples/serve.yaml --port "$PORT" >"$log" 2>&1 &
server=$!

# Wait for the one "listening" line (the server exits early on a taken port or bad config).
for _ in $(seq 1 300); do
    if grep -q "dagengine serve listening on" "$log"; then
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        cat "$log" >&2
        echo "demo: dagengine serve did not start" >&2
        exit 1
    fi
    sleep 0.1
done
grep "dagengine serve listening on" "$log" || { cat "$log" >&2; echo "demo: timed out" >&2; exit 1; }

echo "\$ dagengine submit example-pipeline --input factor=3 --wait"
dagengine submit example-pipeline --input factor=3 --wait
echo "\$ dagengine runs --workflow example-pipeline"
dagengine runs --workflow example-pipeline --limit 5
echo "\$ curl -X POST $DAGENGINE_URL/hooks/pipeline -d '{\"inputs\": {\"factor\": 2}}'"
python3 - <<PY
import json, urllib.request
req = urllib.request.Request("$DAGENGINE_URL/hooks/pipeline", data=b'{"inputs": {"factor": 2}}', method="POST")
body = json.load(urllib.request.urlopen(req))
print(json.dumps({k: body[k] for k in ("trigger_id", "success", "duration_ns")}))
print("load:", json.dumps(body["outputs"]["load"]))
PY
echo "demo: stopping the server (SIGTERM)"
