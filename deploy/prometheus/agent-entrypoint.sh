#!/bin/sh
# Starts the node agent (deploy/prometheus/agent.yml) with ${ESPER_REMOTE_WRITE_URL} and
# ${ESPER_NODE} filled in from the environment; extra arguments go to prometheus.
#   ESPER_REMOTE_WRITE_URL  the store's remote-write URL (required)
#   ESPER_NODE              this node's name (default: the host name)
#   ESPER_AGENT_CONFIG, ESPER_AGENT_DATA, PROMETHEUS   where things are (defaults: the image's)
set -eu
: "${ESPER_REMOTE_WRITE_URL:?set ESPER_REMOTE_WRITE_URL to the store's remote-write URL (docs/SCALING.md)}"
node="${ESPER_NODE:-$(hostname)}"
# Checked before anything starts (exit 2, naming the variable): the values go into the agent's
# YAML, where a space, a quote or a colon would change what the config says.
case "$ESPER_REMOTE_WRITE_URL" in
    http://?*|https://?*) ;;
    *) echo "agent-entrypoint: error: ESPER_REMOTE_WRITE_URL=$ESPER_REMOTE_WRITE_URL: not an http(s) URL" >&2; exit 2 ;;
esac
case "$ESPER_REMOTE_WRITE_URL" in
    *[[:space:]\"\'\#]*) echo "agent-entrypoint: error: ESPER_REMOTE_WRITE_URL: holds a space, a quote or a #" >&2; exit 2 ;;
esac
if ! printf '%s' "$node" | grep -Eq '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'; then
    echo "agent-entrypoint: error: ESPER_NODE=$node: a node name is 1-63 letters, digits, '.', '_' or '-'" >&2
    exit 2
fi
config="${ESPER_AGENT_CONFIG:-/etc/prometheus/agent.yml}"
data="${ESPER_AGENT_DATA:-/prometheus}"
filled="${TMPDIR:-/tmp}/esper-agent-$$.yml"
# Escape what sed's replacement would read as its own: \, & and the delimiter |.
quote() { printf '%s' "$1" | sed 's/[\\&|]/\\&/g'; }
sed -e "s|\${ESPER_REMOTE_WRITE_URL}|$(quote "$ESPER_REMOTE_WRITE_URL")|" \
    -e "s|\${ESPER_NODE}|$(quote "$node")|" "$config" > "$filled"
exec "${PROMETHEUS:-/bin/prometheus}" --config.file="$filled" --enable-feature=agent \
    --storage.agent.path="$data" --storage.agent.retention.max-time=2h "$@"
