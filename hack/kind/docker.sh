#!/usr/bin/env bash
# Starts and stops the Docker engine the kind clusters run on: Debian's
# dockerd, started by this script (no init system needed), beside anything
# else on the machine.
#
#   hack/kind/docker.sh start    start dockerd unless it runs already
#   hack/kind/docker.sh stop     delete the kind clusters on it, stop it by PID
#   hack/kind/docker.sh env      print `export DOCKER_HOST=...` for a shell
#   hack/kind/docker.sh status   say whether it runs
#
# It has its own data root (persistent, so node images survive between runs
# and CI reuses them), exec root, socket and pidfile; see lib.sh for the
# paths. It does not create docker0 (--bridge=none: kind uses its own
# network) and does not touch the host's IP forwarding (--ip-forward=false),
# which would set the FORWARD policy to DROP for every bridge on the host;
# kind's nodes talk over one bridge and need no forwarding on the host.
set -o errexit -o nounset -o pipefail

LOG_PREFIX="kind-docker"
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EXEC_ROOT=$DOCKER_STATE_DIR/exec
DOCKER_LOG=$DOCKER_STATE_DIR/dockerd.log
START_TIMEOUT=60
STOP_TIMEOUT=60

# dockerd_pid prints the PID of our dockerd if it is alive.
dockerd_pid() {
  local pid
  [[ -f $DOCKER_PIDFILE ]] || return 1
  pid=$(<"$DOCKER_PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && is_our_dockerd "$pid" && echo "$pid"
}

# alive PID: the process exists and is not a zombie (PID 1 on some machines
# reaps slowly; a zombie has exited).
alive() {
  local state
  state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# is_our_dockerd PID: the process is a dockerd with our exec root (a stale
# pidfile may name a recycled PID).
is_our_dockerd() {
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "dockerd .*--exec-root $EXEC_ROOT"
}

# close_fds CMD...: runs CMD with only stdin, stdout and stderr open.
close_fds() {
  local fd
  for fd in /proc/self/fd/*; do
    fd=${fd##*/}
    ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
  done
  exec "$@"
}

start() {
  is_root || die "dockerd needs root"
  command -v dockerd >/dev/null || die "dockerd not found (run hack/kind/deps.sh)"
  if dockerd_pid >/dev/null; then
    docker_running || die "dockerd (pid $(dockerd_pid)) runs but does not answer on $DOCKER_SOCK"
    return 0
  fi
  rm -f "$DOCKER_PIDFILE" "$DOCKER_SOCK"
  mkdir -p "$DOCKER_STATE_DIR" "$EXEC_ROOT" "$DOCKER_DATA_ROOT"
  # An empty config file, so a host /etc/docker/daemon.json has no say.
  echo '{}' >"$DOCKER_STATE_DIR/daemon.json"
  log "starting dockerd (data root $DOCKER_DATA_ROOT, socket $DOCKER_SOCK)"
  # A plain PATH: dockerd starts the containerd and runc it finds there, and
  # must get Debian's, not the containerd 2.x of our tools directory.
  # setsid: its own session, so it outlives this script and its terminal.
  # close_fds: it must not hold our caller's descriptors (a lock, a pipe
  # someone waits on) for as long as it runs.
  PATH=/usr/sbin:/usr/bin:/sbin:/bin close_fds setsid dockerd \
    --config-file "$DOCKER_STATE_DIR/daemon.json" \
    --data-root "$DOCKER_DATA_ROOT" \
    --exec-root "$EXEC_ROOT" \
    --pidfile "$DOCKER_PIDFILE" \
    -H "unix://$DOCKER_SOCK" \
    --bridge none --ip-forward=false \
    </dev/null >>"$DOCKER_LOG" 2>&1 &
  local pid=$! i
  for ((i = 0; i < START_TIMEOUT * 5; i++)); do
    docker_running && break
    if ! alive "$pid"; then
      tail -n 30 "$DOCKER_LOG" >&2
      die "dockerd exited (log: $DOCKER_LOG)"
    fi
    sleep 0.2
  done
  if ! docker_running; then
    tail -n 30 "$DOCKER_LOG" >&2
    kill "$pid" 2>/dev/null || true
    die "dockerd did not answer within ${START_TIMEOUT}s (log: $DOCKER_LOG)"
  fi
  log "dockerd runs (pid $(<"$DOCKER_PIDFILE"))"
}

# wait_exit PID SECONDS: waits until PID has exited.
wait_exit() {
  local pid=$1 i
  for ((i = 0; i < $2 * 5; i++)); do
    alive "$pid" || return 0
    sleep 0.2
  done
  return 1
}

stop() {
  local pid
  if ! pid=$(dockerd_pid); then
    log "dockerd is not running"
    cleanup_host
    return 0
  fi
  # Clusters cannot outlive their engine: delete them first, with their
  # networks and mounts.
  local c
  if docker_running; then
    for c in $(PATH="$KIND_BIN:$PATH" kind get clusters 2>/dev/null); do
      "$KIND_DIR/cluster.sh" delete "$c"
    done
  fi
  log "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  if ! wait_exit "$pid" "$STOP_TIMEOUT"; then
    log "dockerd did not exit within ${STOP_TIMEOUT}s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit "$pid" 10 || die "dockerd (pid $pid) does not exit"
  fi
  # dockerd stops the containerd it started; after a SIGKILL that one is
  # left, so stop it by its own pidfile.
  local cpid
  cpid=$(cat "$EXEC_ROOT/containerd/containerd.pid" 2>/dev/null || true)
  if [[ $cpid =~ ^[0-9]+$ ]] && alive "$cpid" &&
    tr '\0' ' ' <"/proc/$cpid/cmdline" | grep -q -- "$EXEC_ROOT"; then
    log "stopping dockerd's containerd (pid $cpid)"
    kill -TERM "$cpid"
    wait_exit "$cpid" 20 || kill -KILL "$cpid" 2>/dev/null || true
  fi
  cleanup_host
  log "dockerd stopped"
}

# cleanup_host undoes what a stopped dockerd leaves behind: mounts under its
# directories, its pidfile and socket, and its iptables chains.
cleanup_host() {
  local m
  # Deepest first.
  awk -v a="$DOCKER_DATA_ROOT/" -v b="$DOCKER_STATE_DIR/" \
    'index($5, a) == 1 || index($5, b) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  rm -f "$DOCKER_PIDFILE" "$DOCKER_SOCK"
  cleanup_iptables
}

# cleanup_iptables removes the DOCKER* chains dockerd created and the rules
# jumping to them, unless another dockerd on the machine still uses them.
cleanup_iptables() {
  command -v iptables >/dev/null || return 0
  local p
  for p in $(pgrep -x dockerd 2>/dev/null || true); do
    alive "$p" && {
      log "another dockerd (pid $p) runs: leaving the DOCKER iptables chains"
      return 0
    }
  done
  local table rule chain
  for table in filter nat; do
    iptables -t "$table" -S 2>/dev/null | awk '$1 == "-A" && $2 !~ /^DOCKER/ && / -j DOCKER/' |
      while read -r rule; do
        # shellcheck disable=SC2086
        iptables -t "$table" ${rule/-A/-D} 2>/dev/null || true
      done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

status() {
  local pid
  if pid=$(dockerd_pid); then
    echo "dockerd runs (pid $pid), DOCKER_HOST=$DOCKER_HOST"
  else
    echo "dockerd is not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|env|status" >&2
    exit 2
    ;;
esac
