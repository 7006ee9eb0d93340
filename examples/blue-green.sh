#!/usr/bin/env bash
# blue-green.sh: blue-green deploys on one host with one resident supervisor.
#
#   $APP_DIR/releases/blue/{server,env}     one release
#   $APP_DIR/releases/green/{server,env}    the other (any name works)
#   $APP_DIR/current -> releases/blue       what `changeover run` starts
#
# `changeover run` is given paths through `current`; it resolves the symlink
# and reads the env file again at each reload, so a deploy is: flip `current`
# atomically, then `changeover reload`, which returns once the new release
# serves and the old one has drained (or fails, and the old one keeps serving).
#
#   blue-green.sh run              run the supervisor in the foreground (exec:
#                                  its PID is this script's); what a unit's
#                                  ExecStart or a container's entrypoint runs
#   blue-green.sh deploy RELEASE   flip current to releases/RELEASE and reload;
#                                  on failure flip back and exit with
#                                  changeover's code (3, 4, 5: the old release
#                                  keeps serving)
#   blue-green.sh rollback         deploy the release that served before the
#                                  last deploy
#   blue-green.sh active           print the release `current` points to
#
# Environment (defaults):
#   CHANGEOVER     /usr/local/bin/changeover
#   APP_DIR        /srv/demo
#   NAME           demo       the supervisor's name: its control socket is
#                             NAME.sock in $XDG_RUNTIME_DIR/changeover, else
#                             /run/changeover
#   SERVER_ARGS    -addr :8080   arguments of `server` (split on blanks)
#   DRAIN_TIMEOUT  30s
set -euo pipefail

changeover=${CHANGEOVER:-/usr/local/bin/changeover}
app_dir=${APP_DIR:-/srv/demo}
name=${NAME:-demo}
current=$app_dir/current
previous=$app_dir/previous # the release that served before the last deploy

usage() {
	echo "usage: $0 run | deploy RELEASE | rollback | active" >&2
	exit 2
}

active() {
	local target
	if ! target=$(readlink "$current"); then
		echo "$current is not a symlink to a release" >&2
		exit 1
	fi
	basename "$target"
}

# flip points link at releases/$1 atomically: a new symlink renamed over
# the old one, so that a reader sees the old target or the new one, never
# no link at all.
flip() {
	ln -sfn "releases/$1" "$2.tmp"
	mv -T "$2.tmp" "$2"
}

deploy() {
	local to=$1 from code=0
	if [[ ! -x $app_dir/releases/$to/server ]]; then
		echo "deploy $to: $app_dir/releases/$to/server is not an executable" >&2
		exit 2
	fi
	from=$(active)
	flip "$to" "$current"
	"$changeover" reload --name "$name" || code=$?
	if ((code == 0)); then
		flip "$from" "$previous"
		echo "deployed $to"
		return
	fi
	# The old release keeps serving; point current back at it, so that a
	# restart after a crash starts it and not the release that failed.
	flip "$from" "$current"
	echo "deploy $to failed (changeover exit $code); $from keeps serving" >&2
	exit "$code"
}

case ${1:-} in
run)
	[[ $# -eq 1 ]] || usage
	read -r -a server_args <<<"${SERVER_ARGS:--addr :8080}"
	exec "$changeover" run --name "$name" \
		--env-file "$current/env" --dir "$current" \
		--drain-timeout "${DRAIN_TIMEOUT:-30s}" \
		-- "$current/server" "${server_args[@]}"
	;;
deploy)
	[[ $# -eq 2 ]] || usage
	deploy "$2"
	;;
rollback)
	[[ $# -eq 1 ]] || usage
	if [[ ! -L $previous ]]; then
		echo "rollback: no previous release recorded in $previous" >&2
		exit 2
	fi
	deploy "$(basename "$(readlink "$previous")")"
	;;
active)
	[[ $# -eq 1 ]] || usage
	active
	;;
*) usage ;;
esac
