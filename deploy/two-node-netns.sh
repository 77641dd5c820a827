#!/usr/bin/env bash
# Runs a two-node deployment on one Linux machine: `ceco cloud` in one
# network namespace, `ceco edge` in another, joined by a veth pair whose
# bandwidth is shaped with tbf. This kernel has no netem, so the link's delay
# is added in user space by the edge's own link emulation (link.latency_ms).
#
#   sudo deploy/two-node-netns.sh [--profile lan|wan|paper] [--binary build/bin/ceco] [edge args...]
#
# Needs root and iproute2; exits 77 ("skipped") with a message where network
# namespaces are not available. Cleans up its namespaces on exit.
set -euo pipefail

profile=paper
binary="$(cd "$(dirname "$0")/.." && pwd)/build/bin/ceco"
edge_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) edge_args+=("$1"); shift ;;
  esac
done

script=two-node-netns
# shellcheck source=deploy/netns-common.sh
. "$(dirname "$0")/netns-common.sh"

tag="ceco$$"
ns_cloud="${tag}_cloud"; ns_edge="${tag}_edge"
ip netns add "$ns_cloud" 2>/dev/null || skip "cannot create network namespaces here"
cleanup() {
  [ -n "${cloud_pid:-}" ] && kill "$cloud_pid" 2>/dev/null || true
  ip netns del "$ns_cloud" 2>/dev/null || true
  ip netns del "$ns_edge" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns_edge"
ip link add "${tag}e" type veth peer name "${tag}c"
ip link set "${tag}e" netns "$ns_edge"
ip link set "${tag}c" netns "$ns_cloud"
ip -n "$ns_edge" addr add 10.77.0.1/24 dev "${tag}e"
ip -n "$ns_cloud" addr add 10.77.0.2/24 dev "${tag}c"
for ns in "$ns_edge" "$ns_cloud"; do ip -n "$ns" link set lo up; done
ip -n "$ns_edge" link set "${tag}e" up
ip -n "$ns_cloud" link set "${tag}c" up
# Bandwidth in both directions; tbf is what this kernel offers.
ip netns exec "$ns_edge" tc qdisc add dev "${tag}e" root tbf rate "$rate" burst 64kb latency 50ms
ip netns exec "$ns_cloud" tc qdisc add dev "${tag}c" root tbf rate "$rate" burst 64kb latency 50ms

log=$(mktemp)
ip netns exec "$ns_cloud" "$binary" cloud --insecure --set cloud.host=10.77.0.2 --set cloud.port=7070 >"$log" 2>&1 &
cloud_pid=$!
for _ in $(seq 1 100); do
  grep -q "serving" "$log" && break
  kill -0 "$cloud_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
grep -q "serving" "$log" || { echo "two-node-netns: the cloud did not start" >&2; cat "$log" >&2; exit 1; }
echo "two-node-netns: profile $profile ($rate shaped by tbf, ${delay_ms} ms added by the edge); $(head -1 "$log")" >&2

# The delay is the link's one-way latency, added in user space on the edge;
# the bandwidth is the kernel's, so the edge adds none.
ip netns exec "$ns_edge" "$binary" edge --set cloud.host=10.77.0.2 --set cloud.port=7070 \
  --set link.latency_ms="$delay_ms" --set link.bandwidth_mbps=0 "${edge_args[@]}"
