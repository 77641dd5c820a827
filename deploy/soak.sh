#!/usr/bin/env bash
# Soak test of `ceco serve` against a `ceco cloud` on loopback: --minutes of
# mixed traffic (streams, hang-ups, malformed bodies, slow clients, cloud
# restarts by kill -9), RSS and fds sampled from /proc, a summary table.
# The traffic and the checks are deploy/soak.py (python3, standard library);
# this wrapper keeps the promise that every process it started is stopped,
# by pid, however the driver ends.
#
#   deploy/soak.sh [--binary build/bin/ceco] [--minutes 10] [--json FILE] ...
#   deploy/soak.sh --minutes 0.5          # the short mode CI runs (about 1 minute)
#   deploy/soak.sh --help                 # every option, and what counts as answered
#
# Exits 0 when every check passed, 1 when one failed, 2 when the processes
# could not be started, 77 (skipped) where no loopback port can be bound.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v python3 >/dev/null 2>&1; then
  echo "soak: python3 is needed" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ceco-soak.XXXXXX")
export SOAK_PIDFILE="$work/pids"
driver=""

cleanup() {
  # The driver stops its processes itself; if it was killed first, the pids
  # it left in the file are stopped here (each checked to be still ours).
  if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM "$driver" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$driver" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$driver" 2>/dev/null
  fi
  if [ -s "$SOAK_PIDFILE" ]; then
    while read -r pid; do
      [ -n "$pid" ] || continue
      cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)
      if [[ "$cmd" == "$bin_path "* ]]; then
        kill -KILL "$pid" 2>/dev/null
      fi
    done < "$SOAK_PIDFILE"
  fi
  if [ "$keep_work" = 1 ]; then
    echo "soak: logs kept in $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The binary, as the driver will see it (for the check above).
bin_path="$(cd "$here/.." && pwd)/build/bin/ceco"
prev=""
keep_work=0
for a in "$@"; do
  [ "$a" = "--keep" ] && keep_work=1
  [ "$prev" = "--binary" ] && bin_path="$(readlink -f "$a")"
  case "$a" in --binary=*) bin_path="$(readlink -f "${a#--binary=}")" ;; esac
  prev="$a"
done

export SOAK_WORK="$work/logs"
python3 -u "$here/soak.py" "$@" &
driver=$!
wait "$driver"
rc=$?
driver=""
# Keep the logs of a failed run.
[ "$rc" != 0 ] && [ "$rc" != 77 ] && keep_work=1
exit "$rc"
