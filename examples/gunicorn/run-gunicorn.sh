#!/bin/sh
# Starts one generation of gunicorn under changeover:
#
#   changeover run --notify=false --health 'http://{health_addr}/' \
#       --env-file /srv/app/current/env -- /srv/app/current/run-gunicorn.sh
#
# TERM is gunicorn's graceful stop (the default --stop-signal). The env file
# sets LISTEN_ADDR (the shared address) and APP_VERSION. --reuse-port lets the
# new generation bind beside the old one; the second --bind is this
# generation's own health address, which changeover probes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONDONTWRITEBYTECODE=1
exec gunicorn --reuse-port --workers 3 --graceful-timeout 20 \
    --bind "$LISTEN_ADDR" --bind "$CHANGEOVER_HEALTH_ADDR" \
    --chdir "$here" app:app
