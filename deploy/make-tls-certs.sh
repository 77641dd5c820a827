#!/bin/sh
# Makes what `cloud.tls` with certificates needs, in DIR (default: tls/):
# a private CA (ca.pem, ca-key.pem) and a certificate and key per node
# (cloud.pem, cloud-key.pem, edge.pem, edge-key.pem), signed by the CA.
# Copy ca.pem and the node's own pair to each node, then set
#   cloud.tls = true, cloud.tls_ca_file = "ca.pem",
#   cloud.tls_certificate = "<node>.pem", cloud.tls_key = "<node>-key.pem".
#
# Node names after DIR replace "cloud edge": a cluster's own CA, apart from
# the edges' (docs/cluster.md), is
#   deploy/make-tls-certs.sh cluster-tls gateway worker1 worker2
# and each cloud node sets cluster.tls_ca_file = "ca.pem",
#   cluster.tls_certificate = "<node>.pem", cluster.tls_key = "<node>-key.pem".
# Needs the openssl command (Debian: apt-get install openssl).
set -eu
dir=${1:-tls}
[ $# -gt 0 ] && shift
nodes=${*:-cloud edge}
days=${DAYS:-825}
command -v openssl >/dev/null || { echo "make-tls-certs: the openssl command is missing (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=ceco CA" \
  -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
for node in $nodes; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=ceco $node" \
    -keyout "$dir/$node-key.pem" -out "$dir/$node.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$node.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
    -CAcreateserial -days "$days" -out "$dir/$node.pem" 2>/dev/null
  rm -f "$dir/$node.csr"
done
rm -f "$dir/ca.srl"
written=""
for node in $nodes; do written="$written, $dir/$node.pem + $node-key.pem"; done
echo "make-tls-certs: wrote $dir/ca.pem$written"
