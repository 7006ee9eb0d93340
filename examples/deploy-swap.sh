#!/usr/bin/env bash
# deploy-swap.sh: deploy a release of a server with `changeover swap`, with no
# resident supervisor. Each run starts the release beside the serving
# instance, waits until it is ready, then tells the old instance to drain and
# returns once it listens no more (the handover); the old instance finishes
# its requests in the background, SIGKILLed at the drain deadline by a keeper
# swap leaves behind if it is still there. The pidfile always names the
# instance that serves.
#
#   deploy-swap.sh RELEASE
#
# RELEASE is a directory under $APP_DIR/releases holding `server` (the
# executable) and optionally `env` (KEY=VALUE lines added to its environment).
# The first deploy just starts it; every later one hands over to it.
#
# Exit status (changeover swap's): 0 deployed; 3 the new version exited before
# it was ready, 4 it was not ready in time, 5 the CHECK command refused it:
# in 3, 4 and 5 the new instance has been killed and the old one keeps serving,
# untouched. 2 a usage error or a garbage pidfile (nothing touched), 1 another
# error (e.g. the server cannot be started).
#
# Environment (defaults):
#   CHANGEOVER     /usr/local/bin/changeover
#   APP_DIR        /srv/demo         holds releases/ and the `current` symlink
#   PIDFILE        /run/demo/demo.pid  (the instances' output goes to demo.log beside it)
#   SERVER_ARGS    -addr :8080       arguments of `server` (split on blanks)
#   CHECK          (none)            shell command run in the release directory,
#                                    with its environment, before it starts;
#                                    non-zero refuses the deploy (exit 5)
#   READY_TIMEOUT  30s
#   DRAIN_TIMEOUT  30s
#
# The pidfile holds the serving instance's PID alone (its start time, process
# group and generation are in PIDFILE.state beside it), so the usual tools read
# it: `kill -0 "$(cat "$PIDFILE")"` (is it up?), `pgrep -F "$PIDFILE"`, systemd's
# PIDFile=, and `kill "$(cat "$PIDFILE")"` to stop it. swap signals only a
# process it can verify as one it started; to take over from a pidfile written
# by another tool, run changeover swap once by hand with --takeover.
#
# Nothing restarts a crashed instance between deploys: for that, run the server
# under `changeover run` (see blue-green.sh and systemd/).
set -euo pipefail

changeover=${CHANGEOVER:-/usr/local/bin/changeover}
app_dir=${APP_DIR:-/srv/demo}
pidfile=${PIDFILE:-/run/demo/demo.pid}
read -r -a server_args <<<"${SERVER_ARGS:--addr :8080}"

if [[ $# -ne 1 ]]; then
	echo "usage: $0 RELEASE (a directory under $app_dir/releases)" >&2
	exit 2
fi
name=$1
release=$app_dir/releases/$name
if [[ ! -x $release/server ]]; then
	echo "deploy $name: $release/server is not an executable" >&2
	exit 2
fi

args=(swap --pidfile "$pidfile" --dir "$release"
	--ready-timeout "${READY_TIMEOUT:-30s}" --drain-timeout "${DRAIN_TIMEOUT:-30s}")
if [[ -f $release/env ]]; then
	args+=(--env-file "$release/env")
fi
if [[ -n ${CHECK:-} ]]; then
	args+=(--check "$CHECK")
fi
mkdir -p "$(dirname "$pidfile")"
if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
	echo "deploy $name: replacing pid $(cat "$pidfile")"
fi

code=0
"$changeover" "${args[@]}" -- "$release/server" "${server_args[@]}" || code=$?
case $code in
0)
	# Remember what serves (for people and for the next script).
	ln -sfn "releases/$name" "$app_dir/current.tmp"
	mv -T "$app_dir/current.tmp" "$app_dir/current"
	echo "deployed $name (pid $(cat "$pidfile"))"
	;;
3) echo "deploy $name failed: it exited before it was ready; the old version keeps serving" >&2 ;;
4) echo "deploy $name failed: not ready within ${READY_TIMEOUT:-30s}; the old version keeps serving" >&2 ;;
5) echo "deploy $name refused by CHECK ($CHECK); the old version keeps serving" >&2 ;;
2) echo "deploy $name: usage error or unreadable pidfile $pidfile; nothing touched" >&2 ;;
*) echo "deploy $name: changeover failed (exit $code)" >&2 ;;
esac
exit "$code"
