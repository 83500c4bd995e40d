#!/usr/bin/env bash
# Start and stop docker/compose.yaml's Hadoop cluster (docs/docker.md).
#
#   docker/compose.sh up     start a Docker engine if none answers (docker/engine.sh), build what
#                            is missing (docker/build.sh), make the shared secret if there is none,
#                            `docker-compose up -d`, then wait until HDFS is out of safe mode with a
#                            live DataNode and at least two NodeManagers are RUNNING
#   docker/compose.sh wait   only the wait
#   docker/compose.sh down   remove the cluster's containers, network and volumes
#
# Env: HCOLLECTIVES_SECRET_FILE (default docker/secret.hex, as compose.yaml), COMPOSE_PROJECT_NAME
# (default hcollectives, from docker/.env), HCOLLECTIVES_COMPOSE_TIMEOUT (seconds, default 300).
set -euo pipefail

DOCKER_DIR="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
COMPOSE_FILE="$DOCKER_DIR/compose.yaml"
export HCOLLECTIVES_SECRET_FILE="${HCOLLECTIVES_SECRET_FILE:-$DOCKER_DIR/secret.hex}"  # compose.yaml mounts it
SECRET="$HCOLLECTIVES_SECRET_FILE"
TIMEOUT="${HCOLLECTIVES_COMPOSE_TIMEOUT:-300}"
MIN_NODEMANAGERS=2  # a collective needs two nodes

say() { echo "docker-compose-cluster: $*"; }
die() { echo "docker-compose-cluster: ERROR: $*" >&2; exit 1; }
# --project-directory: compose reads docker/.env (the project's name) wherever it is called from.
dc() { docker-compose --project-directory "$DOCKER_DIR" -f "$COMPOSE_FILE" "$@"; }

# Asked on the edge node over HTTP (a Hadoop CLI call costs a JVM start, seconds on a busy
# host): live DataNodes and safe mode from the NameNode's JMX servlet, RUNNING NodeManagers from
# the ResourceManager's REST API. Exits 0 when the cluster can run a job; prints what it saw.
STATE_PROBE='
import json, sys, urllib.request
def get(url):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)
nn = get("http://namenode:9870/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo")["beans"][0]
nodes = (get("http://resourcemanager:8088/ws/v1/cluster/nodes")["nodes"] or {}).get("node", [])
state = {"datanodes": len(json.loads(nn["LiveNodes"])), "safemode": nn["Safemode"],
         "nodemanagers": sorted(n["nodeHostName"] for n in nodes if n["state"] == "RUNNING")}
print(json.dumps(state))
sys.exit(0 if state["datanodes"] >= 1 and not state["safemode"] and len(state["nodemanagers"]) >= int(sys.argv[1]) else 1)
'

cmd_wait() {
  local deadline=$((SECONDS + TIMEOUT)) seen="" exited
  say "waiting (at most ${TIMEOUT} s) for HDFS out of safe mode and ${MIN_NODEMANAGERS} NodeManagers ..."
  while ((SECONDS < deadline)); do
    # A service that exited will not come back by waiting: show its log and stop.
    exited="$(comm -23 <(dc ps --services | sort) <(dc ps --services --filter status=running | sort))"
    if [ -n "$exited" ]; then
      dc logs --no-color --tail=40 $exited >&2 || true
      die "service(s) exited while starting: $(echo $exited)"
    fi
    if seen="$(timeout 60 docker-compose --project-directory "$DOCKER_DIR" -f "$COMPOSE_FILE" \
                 exec -T edge python -c "$STATE_PROBE" "$MIN_NODEMANAGERS" 2>&1)"; then
      say "ready after $((SECONDS - deadline + TIMEOUT)) s: $seen"
      return 0
    fi
    sleep 2
  done
  die "not ready after ${TIMEOUT} s; last answer: ${seen: -2000}"
}

cmd_up() {
  "$DOCKER_DIR/engine.sh" status >/dev/null 2>&1 || "$DOCKER_DIR/engine.sh" start
  "$DOCKER_DIR/build.sh" all
  if [ ! -s "$SECRET" ]; then
    # Readable in the containers by their `hadoop` user (compose bind-mounts the file).
    (umask 022 && python3 -c "import secrets; print(secrets.token_hex(32))" > "$SECRET")
    say "made the cluster's shared secret: $SECRET"
  fi
  dc up -d
  cmd_wait
  say "run jobs on the edge node: docker-compose -f $COMPOSE_FILE exec edge bash"
}

cmd_down() {
  dc down -v --remove-orphans --timeout 20
}

case "${1:-}" in
  up)   cmd_up ;;
  wait) cmd_wait ;;
  down) cmd_down ;;
  *) echo "usage: $0 up|wait|down" >&2; exit 2 ;;
esac
