#!/bin/sh
# Starts one generation of nginx under changeover:
#
#   changeover run --notify=false --health 'http://{health_addr}/' \
#       --stop-signal QUIT --env-file /srv/web/current/env -- /srv/web/current/run-nginx.sh
#
# The env file sets LISTEN_ADDR (the shared address, e.g. 0.0.0.0:80), APP_VERSION,
# UPSTREAM_ADDR (the application behind nginx), NGINX_RUN_DIR (pid and temporary
# files) and optionally NGINX_WORKERS (worker_processes, default 3).
# changeover sets CHANGEOVER_HEALTH_ADDR and CHANGEOVER_GENERATION.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$NGINX_RUN_DIR"
conf=$NGINX_RUN_DIR/nginx-$CHANGEOVER_GENERATION.conf
sed -e "s|@LISTEN_ADDR@|$LISTEN_ADDR|g" \
    -e "s|@HEALTH_ADDR@|$CHANGEOVER_HEALTH_ADDR|g" \
    -e "s|@VERSION@|$APP_VERSION|g" \
    -e "s|@UPSTREAM_ADDR@|$UPSTREAM_ADDR|g" \
    -e "s|@RUN_DIR@|$NGINX_RUN_DIR|g" \
    -e "s|@GENERATION@|$CHANGEOVER_GENERATION|g" \
    -e "s|@WORKERS@|${NGINX_WORKERS:-3}|g" \
    "$here/nginx.conf.in" > "$conf"
# exec: nginx's master is the main process changeover signals (QUIT: graceful stop).
exec nginx -e stderr -p "$NGINX_RUN_DIR" -c "$conf"
