#!/bin/sh
# Starts the node agent (deploy/prometheus/agent.yml) with ${ESPER_REMOTE_WRITE_URL} and
# ${ESPER_NODE} filled in from the environment; extra arguments go to prometheus.
#   ESPER_REMOTE_WRITE_URL  the store's remote-write URL (required)
#   ESPER_NODE              this node's name (default: the host name)
#   ESPER_AGENT_CONFIG, ESPER_AGENT_DATA, PROMETHEUS   where things are (defaults: the image's)
set -eu
: "${ESPER_REMOTE_WRITE_URL:?set ESPER_REMOTE_WRITE_URL to the store's remote-write URL (docs/SCALING.md)}"
node="${ESPER_NODE:-$(hostname)}"
config="${ESPER_AGENT_CONFIG:-/etc/prometheus/agent.yml}"
data="${ESPER_AGENT_DATA:-/prometheus}"
filled="${TMPDIR:-/tmp}/esper-agent-$$.yml"
# Escape what sed's replacement would read as its own: \, & and the delimiter |.
quote() { printf '%s' "$1" | sed 's/[\\&|]/\\&/g'; }
sed -e "s|\${ESPER_REMOTE_WRITE_URL}|$(quote "$ESPER_REMOTE_WRITE_URL")|" \
    -e "s|\${ESPER_NODE}|$(quote "$node")|" "$config" > "$filled"
exec "${PROMETHEUS:-/bin/prometheus}" --config.file="$filled" --enable-feature=agent \
    --storage.agent.path="$data" --storage.agent.retention.max-time=2h "$@"
