#!/bin/sh
# Grafana's entrypoint in the compose stack: refuse to start without an admin password.
# (Grafana would otherwise create the account with the well-known default "admin".)
case "${GF_SECURITY_ADMIN_PASSWORD:-}" in
  "" | admin)
    echo "grafana: set GRAFANA_ADMIN_PASSWORD (in .env, see .env.example) to a password other than 'admin'" >&2
    exit 78
    ;;
esac
exec "${GRAFANA_RUN:-/run.sh}" "$@"
