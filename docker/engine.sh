#!/usr/bin/env bash
# Install and run a Docker engine for docker/compose.yaml on a machine that has none.
#
#   docker/engine.sh install   apt-get install Debian's docker.io, docker-compose, debootstrap
#                              (only what is missing; needs root)
#   docker/engine.sh start     install if needed, start dockerd unless one answers already,
#                              wait (bounded) until it does                     (idempotent)
#   docker/engine.sh stop      stop the dockerd this script started (SIGTERM, then SIGKILL)
#   docker/engine.sh status    exit 0 iff an engine answers on /var/run/docker.sock
#
# Env: DOCKER_ENGINE_START_TIMEOUT (s, default 60), DOCKER_ENGINE_STOP_TIMEOUT (s, default 30),
#      DOCKER_ENGINE_HOME (pid file and log, default /var/lib/hcollectives-docker).
#
# Why these dockerd flags: the engine must not touch the host's firewall, routes or
# forwarding (other work shares this machine), so --iptables=false --ip6tables=false
# --ip-forward=false. Containers on one user-defined bridge still reach each other, which
# is all docker/compose.yaml needs (it publishes no port). overlay2, because vfs copies
# every layer (about 5x the disk). Started by hand rather than as a boot service: the
# machines this runs on have no systemd, and a boot service would change the host.
set -euo pipefail

HOME_DIR="${DOCKER_ENGINE_HOME:-/var/lib/hcollectives-docker}"
PID_FILE="$HOME_DIR/dockerd.pid"
LOG_FILE="$HOME_DIR/dockerd.log"
START_TIMEOUT="${DOCKER_ENGINE_START_TIMEOUT:-60}"
STOP_TIMEOUT="${DOCKER_ENGINE_STOP_TIMEOUT:-30}"
SOCKET=/var/run/docker.sock
# Debian's client, the same release as the engine; a newer client may sit first on PATH
# (/usr/local/bin/docker) and speak an API version dockerd 20.10 does not.
DOCKER=/usr/bin/docker

say() { echo "docker-engine: $*"; }
die() { echo "docker-engine: ERROR: $*" >&2; exit 1; }

answers() { [ -S "$SOCKET" ] && [ -x "$DOCKER" ] && timeout 10 "$DOCKER" version >/dev/null 2>&1; }

our_pid() {  # the pid from PID_FILE, if that process is still our dockerd
  [ -f "$PID_FILE" ] || return 1
  local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1  # pid reused by another program
  echo "$pid"
}

cmd_install() {
  local missing=()
  [ -x /usr/sbin/dockerd ] && [ -x "$DOCKER" ] || missing+=(docker.io)
  [ -x /usr/bin/docker-compose ] || missing+=(docker-compose)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root"
  say "installing ${missing[*]} from Debian's packages ..."
  # The packages' scripts would start and enable docker.service; a policy-rc.d that refuses
  # (exit 101) keeps the host's services as they were. The machine may already have one.
  local policy=/usr/sbin/policy-rc.d restore=""
  if [ -e "$policy" ]; then restore="$(mktemp)"; cp -p "$policy" "$restore"; fi
  printf '#!/bin/sh\n# hcollectives docker/engine.sh: no service starts during this install\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  local rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } || rc=$?
  if [ -n "$restore" ]; then mv "$restore" "$policy"; else rm -f "$policy"; fi
  [ "$rc" = 0 ] || die "apt-get failed ($rc)"
  # The packages also enable docker.service, docker.socket and containerd.service (and
  # docker's SysV links) for the next boot; policy-rc.d stops only the start now. Undo it,
  # so a reboot does not bring up a dockerd that configures iptables.
  if [[ " ${missing[*]} " == *" docker.io "* ]]; then
    disable_boot_services
  fi
}

disable_boot_services() {
  command -v systemctl >/dev/null || return 0
  # --root=/: offline mode, which works whether or not systemd runs (it does not here).
  systemctl --root=/ disable docker.service docker.socket containerd.service >/dev/null 2>&1 \
    || say "could not disable the docker/containerd boot services; check with systemctl"
}

cmd_start() {
  if answers; then
    say "engine already answers on $SOCKET"
    return 0
  fi
  cmd_install
  [ "$(id -u)" = 0 ] || die "dockerd needs root"
  local pid
  if ! pid="$(our_pid)"; then
    mkdir -p "$HOME_DIR"
    : > "$LOG_FILE"
    say "starting dockerd (log: $LOG_FILE) ..."
    # setsid + nohup: the engine outlives the shell (make, CI) that started it; its own
    # containerd is started and stopped by dockerd itself.
    (
      for fd in /proc/$BASHPID/fd/*; do  # don't hold the caller's pipes open
        fd="${fd##*/}"; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
      done
      exec nohup setsid /usr/sbin/dockerd --iptables=false --ip6tables=false --ip-forward=false \
        --storage-driver=overlay2 --host "unix://$SOCKET" < /dev/null >> "$LOG_FILE" 2>&1
    ) &
    pid=$!
    echo "$pid" > "$PID_FILE"
  fi
  local t0=$SECONDS
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      die "dockerd (pid $pid) exited during start-up"
    fi
    if [ $((SECONDS - t0)) -ge "$START_TIMEOUT" ]; then
      tail -n 30 "$LOG_FILE" >&2 || true
      cmd_stop >&2 || true
      die "dockerd did not answer within ${START_TIMEOUT}s (DOCKER_ENGINE_START_TIMEOUT); stopped it"
    fi
    sleep 0.5
  done
  say "dockerd ready in $((SECONDS - t0))s (pid $pid, $("$DOCKER" version -f '{{.Server.Version}}'))"
}

cmd_stop() {
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$PID_FILE"
    say "not running (or not started by this script)"
    return 0
  fi
  say "stopping dockerd (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true
  local t0=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - t0)) -ge "$STOP_TIMEOUT" ]; then
      say "still alive after ${STOP_TIMEOUT}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  rm -f "$PID_FILE"
  say "stopped"
}

cmd_status() {
  if answers; then say "running ($("$DOCKER" version -f '{{.Server.Version}}'))"; return 0; fi
  say "not running"; return 1
}

case "${1:-}" in
  install) cmd_install ;;
  start)   cmd_start ;;
  stop)    cmd_stop ;;
  status)  cmd_status ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
