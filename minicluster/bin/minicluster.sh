#!/usr/bin/env bash
# Start/stop the hcollectives Hadoop mini-cluster (see minicluster/README.md).
#
#   minicluster.sh build    resolve jars (first time: download into ~/.m2) + compile
#   minicluster.sh start    build if needed, start in background, wait until it accepts
#                           jobs, write .minicluster/env.sh   (no-op if already running)
#   minicluster.sh stop     SIGTERM, SIGKILL after a bound, then kill leftover container
#                           processes                          (no-op if not running)
#   minicluster.sh status   exit 0 iff running and ready
#
# Env: MINICLUSTER_START_TIMEOUT (s, default 300), MINICLUSTER_STOP_TIMEOUT (s, default 60),
#      MINICLUSTER_HEAP (default 1g), MINICLUSTER_NODEMANAGERS (default 2),
#      MINICLUSTER_NM_MEMORY_MB (default 4096), MINICLUSTER_PYTHON (the tasks' python_bin in mrjob.conf),
#      MINICLUSTER_EXTRA_ARGS (extra MiniClusterMain args, e.g. "-D key=value").
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/common.sh"

PID_FILE="$MC_HOME/minicluster.pid"
LOG_FILE="$MC_HOME/minicluster.log"
READY_FILE="$MC_HOME/ready"
ENV_FILE="$MC_HOME/env.sh"
MRJOB_CONF_FILE="$MC_HOME/mrjob.conf"
START_TIMEOUT="${MINICLUSTER_START_TIMEOUT:-300}"
STOP_TIMEOUT="${MINICLUSTER_STOP_TIMEOUT:-60}"
REPO="$(dirname "$MC_SRC")"
PYTHON_BIN="${MINICLUSTER_PYTHON:-$REPO/.venv/bin/python}"
MAIN_CLASS=dev.hcollectives.minicluster.MiniClusterMain

say() { echo "minicluster: $*"; }
die() { echo "minicluster: ERROR: $*" >&2; exit 1; }

running_pid() {  # prints the pid if the cluster JVM from PID_FILE is alive
  [ -f "$PID_FILE" ] || return 1
  local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # guard against pid reuse: must be our JVM
  { tr "\0" " " < "/proc/$pid/cmdline"; } 2>/dev/null | grep -F "$MAIN_CLASS" >/dev/null || return 1  # no -q: SIGPIPE + pipefail
  echo "$pid"
}

# Processes whose environment carries MINICLUSTER_TAG=$MC_HOME: the cluster JVM and every
# container process and its descendants (the NodeManagers add it to each container's env
# via yarn.nodemanager.admin-env). env.sh does not export it, so user shells are not hit.
tagged_pids() {
  local tag="MINICLUSTER_TAG=$MC_HOME" p a skip=" $$ "
  a=$$
  while [ "$a" -gt 1 ] 2>/dev/null; do
    a="$(awk '/^PPid:/{print $2}' "/proc/$a/status" 2>/dev/null || echo 0)"
    skip="$skip$a "
  done
  for p in /proc/[0-9]*; do
    p="${p#/proc/}"
    case "$skip" in *" $p "*) continue ;; esac
    if { tr "\0" "\n" < "/proc/$p/environ"; } 2>/dev/null | grep -xF "$tag" >/dev/null; then
      echo "$p"
    fi
  done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log_tail() {
  echo "----- last 40 lines of $LOG_FILE -----" >&2
  tail -n 40 "$LOG_FILE" >&2 || true
  echo "-----" >&2
}

needs_build() {
  [ -s "$MC_CLASSPATH_FILE" ] || return 0
  [ -f "$MC_CLASSES/${MAIN_CLASS//.//}.class" ] || return 0
  [ -n "$(find "$MC_SRC/pom.xml" "$MC_SRC/src" -newer "$MC_CLASSPATH_FILE" -type f 2>/dev/null)" ] && return 0
  return 1
}

cmd_build() {
  mkdir -p "$MC_HOME"
  if ! needs_build && [ "${1:-}" != force ]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  say "building (mvn; the first build downloads Hadoop jars into ~/.m2) ..."
  local t0=$SECONDS
  # build-classpath writes to a temp file first so an interrupted build is retried next time
  # (sed: Maven 3.8 -q still emits stray ANSI reset codes)
  mvn -B -q -f "$MC_SRC/pom.xml" package dependency:build-classpath \
      -Dmdep.outputFile="$MC_CLASSPATH_FILE.tmp" -Dmdep.includeScope=runtime 2>&1 \
    | sed -u 's/\x1b\[[0-9;]*m//g' \
    || die "maven build failed (see output above)"
  mv "$MC_CLASSPATH_FILE.tmp" "$MC_CLASSPATH_FILE"
  say "build done in $((SECONDS - t0))s"
}

streaming_jar() {
  tr ':' '\n' < "$MC_CLASSPATH_FILE" | grep -E '/hadoop-streaming-[0-9][^/]*\.jar$' | head -n1
}

# A HADOOP_HOME look-alike for tools (mrjob) that search $HADOOP_HOME/bin/hadoop and the
# streaming jar under $HADOOP_HOME.
make_home() {
  local jar; jar="$(streaming_jar)"
  [ -n "$jar" ] || die "hadoop-streaming jar not on $MC_CLASSPATH_FILE"
  rm -rf "$MC_HOME/home"
  mkdir -p "$MC_HOME/home/bin" "$MC_HOME/home/share/hadoop/tools/lib"
  ln -s "$MC_SRC/bin/hadoop" "$MC_HOME/home/bin/hadoop"
  ln -s "$jar" "$MC_HOME/home/share/hadoop/tools/lib/$(basename "$jar")"
}

# The cluster's mrjob configuration, as a cluster's admin would write it: what every
# `-r hadoop` job needs and nothing job-specific. python_bin matters most: tasks run
# on the NodeManagers' hosts, whose bare `python3` has neither numpy nor mrjob nor
# hcollectives. That python has mrjob (hcollectives needs it), so mrjob need not
# ship and unpack its own zip for every job (bootstrap_mrjob: false: one upload
# less per iteration). JSON, which mrjob reads with or without PyYAML.
write_mrjob_conf() {
  local jar="$1" tmp="$MRJOB_CONF_FILE.tmp"
  cat > "$tmp" <<CONF
{
  "runners": {
    "hadoop": {
      "hadoop_bin": "$MC_HOME/home/bin/hadoop",
      "hadoop_streaming_jar": "$jar",
      "python_bin": "$PYTHON_BIN",
      "hadoop_log_dirs": ["$MC_HOME/logs/nm-0", "$MC_HOME/logs/nm-1"],
      "bootstrap_mrjob": false
    }
  }
}
CONF
  mv "$tmp" "$MRJOB_CONF_FILE"
}

write_env() {
  local jar; jar="$MC_HOME/home/share/hadoop/tools/lib/$(basename "$(streaming_jar)")"
  write_mrjob_conf "$jar"
  local tmp="$ENV_FILE.tmp"
  cat > "$tmp" <<ENV
# Generated by 'make minicluster' ($(date -u +%FT%TZ)). Source it:  . $ENV_FILE
export HCOLLECTIVES_MINICLUSTER_HOME='$MC_HOME'
export HADOOP_HOME='$MC_HOME/home'
export HADOOP_CONF_DIR='$MC_HOME/conf'
export JAVA_HOME='$JAVA_HOME'
case ":\$PATH:" in *":$MC_HOME/home/bin:"*) ;; *) export PATH='$MC_HOME/home/bin':"\$PATH" ;; esac
# The cluster's mrjob configuration (hadoop_bin, streaming jar, python_bin, log dirs):
# with it a job needs nothing but '-r hadoop':   python job.py -r hadoop hdfs:///path/to/input
export MRJOB_CONF='$MRJOB_CONF_FILE'
# mrjob does NOT read this variable; it is here for scripts.
export HADOOP_STREAMING_JAR='$jar'
# Per-NodeManager container logs (<dir>/userlogs/<app>/<container>/stderr); mrjob reads
# HADOOP_LOG_DIR and YARN_LOG_DIR when looking for the cause of a failed task.
export HADOOP_LOG_DIR='$MC_HOME/logs/nm-0'
export YARN_LOG_DIR='$MC_HOME/logs/nm-1'
export MINICLUSTER_FS_DEFAULT='hdfs://127.0.0.1:$MC_NN_PORT'
export MINICLUSTER_RM='127.0.0.1:$MC_RM_PORT'
ENV
  mv "$tmp" "$ENV_FILE"
}

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    if [ -f "$READY_FILE" ]; then
      make_home; write_env
      say "already running (pid $pid); env: . $ENV_FILE"
      return 0
    fi
    say "already starting (pid $pid); waiting for it"
  else
    rm -f "$PID_FILE" "$READY_FILE" "$ENV_FILE" "$MRJOB_CONF_FILE"
    cmd_build
    local leftovers; leftovers="$(tagged_pids | tr '\n' ' ')"
    [ -z "${leftovers// /}" ] || die "processes from a previous cluster are still running ($leftovers); run 'make minicluster-stop'"
    local p busy=""
    for p in $MC_PORTS; do port_busy "$p" && busy="$busy $p"; done
    [ -z "$busy" ] || die "port(s)$busy on 127.0.0.1 already in use by another process (ss -ltnp)"
    make_home
    : > "$LOG_FILE"
    say "starting (log: $LOG_FILE) ..."
    # setsid: own session/process group, detached from the caller's terminal.
    # In a non-interactive shell the background child is not a group leader, so setsid
    # execs java in place and $! is the JVM's pid.
    (
      # don't leak the caller's extra file descriptors (pipes) into the daemon
      for fd in /proc/$BASHPID/fd/*; do
        fd="${fd##*/}"; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
      done
      cd "$MC_HOME"
      export MINICLUSTER_TAG="$MC_HOME"
      export HADOOP_HOME="$MC_HOME/home"
      unset HADOOP_CONF_DIR
      # shellcheck disable=SC2086
      exec nohup setsid "$MC_JAVA" -Xms256m -Xmx"${MINICLUSTER_HEAP:-1g}" $MC_JDK_OPTS \
        -Dlog4j.configuration="file:$MC_SRC/conf/log4j-server.properties" \
        -cp "$MC_CLASSES:$(cat "$MC_CLASSPATH_FILE")" "$MAIN_CLASS" \
        --home "$MC_HOME" --classpath-file "$MC_CLASSPATH_FILE" \
        --nodemanagers "${MINICLUSTER_NODEMANAGERS:-2}" \
        --nm-memory-mb "${MINICLUSTER_NM_MEMORY_MB:-4096}" \
        --nn-port "$MC_NN_PORT" --nn-http-port "$MC_NN_HTTP_PORT" \
        --rm-port "$MC_RM_PORT" --rm-scheduler-port "$MC_RM_SCHEDULER_PORT" \
        --rm-tracker-port "$MC_RM_TRACKER_PORT" --rm-admin-port "$MC_RM_ADMIN_PORT" \
        --rm-web-port "$MC_RM_WEB_PORT" --jhs-port "$MC_JHS_PORT" \
        --jhs-web-port "$MC_JHS_WEB_PORT" --jhs-admin-port "$MC_JHS_ADMIN_PORT" \
        ${MINICLUSTER_EXTRA_ARGS:-} \
        < /dev/null >> "$LOG_FILE" 2>&1
    ) &
    pid=$!
    echo "$pid" > "$PID_FILE"
  fi
  local t0=$SECONDS
  while [ ! -f "$READY_FILE" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log_tail
      rm -f "$PID_FILE"
      die "cluster JVM (pid $pid) exited during startup"
    fi
    if [ $((SECONDS - t0)) -ge "$START_TIMEOUT" ]; then
      log_tail
      cmd_stop >&2 || true
      die "cluster not ready after ${START_TIMEOUT}s (MINICLUSTER_START_TIMEOUT); stopped it"
    fi
    sleep 1
  done
  write_env
  say "ready in $((SECONDS - t0))s (pid $pid): HDFS hdfs://127.0.0.1:$MC_NN_PORT, RM 127.0.0.1:$MC_RM_PORT, $(grep -c '^node=' "$READY_FILE") NodeManagers"
  say "use it:  . $ENV_FILE   # then: hadoop fs -ls /   |   python job.py -r hadoop hdfs:///in"
}

kill_leftovers() {
  local pids
  pids="$(tagged_pids | tr '\n' ' ')"
  [ -n "${pids// /}" ] || return 0
  say "terminating leftover container/daemon processes: $pids"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  local i
  for i in $(seq 1 50); do
    pids="$(tagged_pids | tr '\n' ' ')"
    [ -n "${pids// /}" ] || return 0
    sleep 0.1
  done
  say "SIGKILL: $pids"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  sleep 0.5
  pids="$(tagged_pids | tr '\n' ' ')"
  [ -z "${pids// /}" ] || die "could not kill: $pids"
}

cmd_stop() {
  local pid
  if pid="$(running_pid)"; then
    say "stopping pid $pid (SIGTERM; SIGKILL after ${STOP_TIMEOUT}s) ..."
    kill -TERM "$pid" 2>/dev/null || true
    local t0=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
      if [ $((SECONDS - t0)) -ge "$STOP_TIMEOUT" ]; then
        say "still alive after ${STOP_TIMEOUT}s; SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        sleep 1
        break
      fi
      sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && die "pid $pid survived SIGKILL"
    say "cluster JVM stopped after $((SECONDS - t0))s"
  else
    say "not running"
  fi
  kill_leftovers
  rm -f "$PID_FILE" "$READY_FILE" "$ENV_FILE" "$MRJOB_CONF_FILE"
}

cmd_status() {
  local pid
  if pid="$(running_pid)" && [ -f "$READY_FILE" ]; then
    say "running (pid $pid)"; cat "$READY_FILE"; return 0
  elif [ -n "${pid:-}" ]; then
    say "starting (pid $pid), not ready yet"; return 1
  fi
  say "not running"; return 1
}

case "${1:-}" in
  build)  cmd_build "${2:-}" ;;
  start)  cmd_start ;;
  stop)   cmd_stop ;;
  status) cmd_status ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
