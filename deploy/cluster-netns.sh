#!/usr/bin/env bash
# Runs a cloud cluster on one Linux machine (docs/cluster.md): a gateway and
# two workers, each in its own network namespace, and N edges in another,
# all joined by a bridge. The cloud nodes talk over CAF's network layer with
# mutual TLS (certificates made here by deploy/make-tls-certs.sh); the edges'
# link is shaped with tbf, its delay added in user space by the edges' link
# emulation (link.latency_ms), as in two-node-netns.sh.
#
#   sudo deploy/cluster-netns.sh [--edges 8] [--profile lan|wan|paper] [--binary build/bin/ceco] [edge args...]
#
# Needs root, iproute2 and openssl; exits 77 ("skipped") with a message where
# network namespaces are not available. Cleans up its namespaces on exit.
set -euo pipefail

profile=paper
edges=8
here="$(cd "$(dirname "$0")" && pwd)"
binary="$here/../build/bin/ceco"
edge_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --edges) edges="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) edge_args+=("$1"); shift ;;
  esac
done

script=cluster-netns
# shellcheck source=deploy/netns-common.sh
. "$(dirname "$0")/netns-common.sh"
command -v openssl >/dev/null || skip "openssl is not installed (the cluster's certificates)"

tag="cc$$"
nodes=(gateway worker1 worker2 edges)
declare -A addr=([gateway]=10.78.0.1 [worker1]=10.78.0.2 [worker2]=10.78.0.3 [edges]=10.78.0.10)
work=$(mktemp -d)
pids=()
ip netns add "${tag}_net" 2>/dev/null || skip "cannot create network namespaces here"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for n in "${nodes[@]}" net; do ip netns del "${tag}_$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# One bridge in a namespace of its own; every node a veth into it.
ip -n "${tag}_net" link add br0 type bridge
ip -n "${tag}_net" link set br0 up
i=0
for n in "${nodes[@]}"; do
  ns="${tag}_$n"
  ip netns add "$ns"
  ip link add "${tag}n$i" type veth peer name "${tag}b$i"
  ip link set "${tag}n$i" netns "$ns"
  ip link set "${tag}b$i" netns "${tag}_net"
  ip -n "${tag}_net" link set "${tag}b$i" master br0 up
  ip -n "$ns" addr add "${addr[$n]}/24" dev "${tag}n$i"
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "${tag}n$i" up
  if [ "$n" = edges ]; then
    # The edges' link, both ways; the cloud nodes share a data centre's.
    ip netns exec "$ns" tc qdisc add dev "${tag}n$i" root tbf rate "$rate" burst 64kb latency 50ms
    ip netns exec "${tag}_net" tc qdisc add dev "${tag}b$i" root tbf rate "$rate" burst 64kb latency 50ms
  fi
  i=$((i + 1))
done

sh "$here/make-tls-certs.sh" "$work/tls" gateway worker1 worker2 >/dev/null
tls() {
  echo "--set cluster.tls_certificate=$work/tls/$1.pem --set cluster.tls_key=$work/tls/$1-key.pem --set cluster.tls_ca_file=$work/tls/ca.pem"
}
wait_for() {  # log, text, pid
  for _ in $(seq 1 150); do
    grep -q "$2" "$1" && return 0
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  echo "cluster-netns: no '$2' in $1:" >&2
  cat "$1" >&2
  exit 1
}

for w in worker1 worker2; do
  # shellcheck disable=SC2046
  ip netns exec "${tag}_$w" "$binary" cloud --role worker --set cluster.host="${addr[$w]}" \
    --set cluster.port=7171 $(tls "$w") >"$work/$w.log" 2>&1 &
  pids+=($!)
  wait_for "$work/$w.log" "worker serving" "$!"
done
# shellcheck disable=SC2046
ip netns exec "${tag}_gateway" "$binary" cloud --role gateway --insecure --set cloud.host="${addr[gateway]}" \
  --set cloud.port=7070 $(tls gateway) \
  --set "cluster.workers=[\"${addr[worker1]}:7171\",\"${addr[worker2]}:7171\"]" >"$work/gateway.log" 2>&1 &
pids+=($!)
gw=$!
wait_for "$work/gateway.log" "${addr[worker1]}:7171 joined" "$gw"
wait_for "$work/gateway.log" "${addr[worker2]}:7171 joined" "$gw"
echo "cluster-netns: profile $profile ($rate shaped by tbf, ${delay_ms} ms added by the edges); gateway ${addr[gateway]}:7070, workers ${addr[worker1]}:7171 and ${addr[worker2]}:7171 over mutual TLS; $edges edges" >&2

ip netns exec "${tag}_edges" "$binary" edge --set cloud.host="${addr[gateway]}" --set cloud.port=7070 \
  --set link.latency_ms="$delay_ms" --set link.bandwidth_mbps=0 --sessions "$edges" "${edge_args[@]}"
