#!/usr/bin/env bash
# CTest driver of client_test.mjs: starts `ceco serve` (--local-cloud, or
# against a `ceco cloud` process it starts too) on free loopback ports and
# runs the official OpenAI client against it.
#
#   run.sh CECO_BINARY local|two-process|limits
#
# limits: limits_test.mjs against a server with an API key and a queue.
#
# Exits 77 (skipped) when node or the openai package (deploy/install-deps.sh
# installs both) is missing here; under CI (CI=true) that is a failure.
set -euo pipefail
ceco=$1
setup=$2
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v node >/dev/null 2>&1 || [ ! -f "$here/node_modules/openai/package.json" ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "node or the openai npm package is missing; deploy/install-deps.sh installs them" >&2
    exit 1
  fi
  echo "skipped: node or test/openai/node_modules/openai missing (bash deploy/install-deps.sh)"
  exit 77
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The port after the last ':' of the first line a process prints to `file`.
port_of() {
  local file=$1
  for _ in $(seq 1 600); do
    if [ -s "$file" ] && head -1 "$file" | grep -q ':'; then
      head -1 "$file" | sed 's/.*://; s/[^0-9].*//'
      return
    fi
    sleep 0.1
  done
  echo "no port printed in $file:" >&2
  cat "$file" >&2
  exit 1
}

serve_args=(serve --port 0 --set link.latency_ms=0)
if [ "$setup" = "limits" ]; then
  # An API key (from the environment), one completion at once and one queued,
  # a link slow enough to keep a stream running while the test looks.
  export CECO_API_KEY="ceco-test-key-$$"
  serve_args=(serve --port 0 --local-cloud --max-concurrent 1 --queue 1 --set link.latency_ms=20)
elif [ "$setup" = "local" ]; then
  serve_args+=(--local-cloud)
else
  "$ceco" cloud --set cloud.port=0 > "$work/cloud.out" 2> "$work/cloud.err" &
  pids+=($!)
  serve_args+=(--set "cloud.port=$(port_of "$work/cloud.out")")
fi
"$ceco" "${serve_args[@]}" > "$work/serve.out" 2> "$work/serve.err" &
pids+=($!)
port=$(port_of "$work/serve.out")
if [ "$setup" = "limits" ]; then
  node "$here/limits_test.mjs" "http://127.0.0.1:$port/v1" "$CECO_API_KEY"
else
  node "$here/client_test.mjs" "http://127.0.0.1:$port/v1"
fi
