#!/bin/sh
# The edge on Fly.io: Fly secrets are environment variables, the mesh's TLS loader reads
# files. Write the CA and the edge's certificate and key (set with `fly secrets set
# MESH_CA_PEM=… MESH_EDGE_PEM=… MESH_EDGE_KEY=…`) to AIDA_TLS__DIR, drop them from the
# environment, and run the edge.
set -eu
dir="${AIDA_TLS__DIR:-/run/aida-certs}"
umask 077
mkdir -p "$dir"
for name in MESH_CA_PEM MESH_EDGE_PEM MESH_EDGE_KEY; do
  eval "value=\${$name:-}"
  if [ -z "$value" ]; then
    echo "aida-fly-start: the Fly secret $name is not set (fly secrets set $name=\"\$(cat …)\")" >&2
    exit 1
  fi
done
printf '%s\n' "$MESH_CA_PEM" > "$dir/ca.pem"
printf '%s\n' "$MESH_EDGE_PEM" > "$dir/edge.pem"
printf '%s\n' "$MESH_EDGE_KEY" > "$dir/edge.key"
unset MESH_CA_PEM MESH_EDGE_PEM MESH_EDGE_KEY
# No "$@": Fly may pass the image CMD (`up`) to an overridden entrypoint.
exec aida serve edge
