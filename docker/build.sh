#!/usr/bin/env bash
# Build the images of docker/compose.yaml without any container registry.
#
#   docker/build.sh base    hcollectives-base:bookworm: Debian bookworm (debootstrap --variant=minbase
#                           from the mirror apt already uses) imported into Docker   (~2 min, once)
#   docker/build.sh jars    Hadoop's jars from Maven Central (docker/pom.xml) into docker/build/hadoop
#   docker/build.sh image   hcollectives-hadoop:local from docker/Dockerfile (Java 17, Python 3.11,
#                           the jars, hcollectives from this checkout)
#   docker/build.sh [all]   all three, each skipped when its result exists and is up to date
#   docker/build.sh clean   remove both images and docker/build/
#
# Env: HCOLLECTIVES_DEBIAN_MIRROR (default: the URI apt uses for bookworm), FORCE=1 (rebuild).
# Needs a running engine (docker/engine.sh start), root (debootstrap), mvn and Java.
set -euo pipefail

DOCKER_DIR="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
ROOT="$(dirname "$DOCKER_DIR")"
BUILD="$DOCKER_DIR/build"          # ignored by git (docker/.gitignore)
BASE_IMAGE=hcollectives-base:bookworm
IMAGE=hcollectives-hadoop:local
DOCKER=/usr/bin/docker             # Debian's client, matching the engine (see engine.sh)
FORCE="${FORCE:-0}"

say() { echo "docker-build: $*"; }
die() { echo "docker-build: ERROR: $*" >&2; exit 1; }
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# The first URI apt uses for a suite, from one-line (.list) or deb822 (.sources) files, so the
# base image comes from the same mirror (or proxy, or snapshot) as the host's own packages.
apt_uri() {
  local suite="$1" f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v s="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                                     if ($(i + 1) == s) { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v s="$suite" 'BEGIN { RS = "" } {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        n = split($0, lines, "\n")
        for (j = 1; j <= n; j++) {
          if (lines[j] ~ /^#/) continue
          if (lines[j] ~ /^Types:/) types = lines[j]
          if (lines[j] ~ /^URIs:/) uris = lines[j]
          if (lines[j] ~ /^Suites:/) suites = lines[j]
          if (lines[j] ~ /^Enabled: *no/) enabled = "no"
        }
        if (enabled == "yes" && types ~ /[ :]deb( |$)/ && (" " suites " ") ~ (" " s " ")) {
          split(uris, u, " "); print u[2]; exit
        }
      }' "$f"
  done
}

cmd_base() {
  if have_image "$BASE_IMAGE" && [ "$FORCE" != 1 ]; then
    say "$BASE_IMAGE exists"; return 0
  fi
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  command -v debootstrap >/dev/null || die "debootstrap missing (docker/engine.sh install)"
  local mirror security
  mirror="${HCOLLECTIVES_DEBIAN_MIRROR:-$(apt_uri bookworm | head -n1)}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  security="$(apt_uri bookworm-security | head -n1)"
  local dir; dir="$(mktemp -d /var/tmp/hcollectives-base.XXXXXX)"
  # shellcheck disable=SC2064
  trap "rm -rf '$dir'" EXIT
  say "debootstrap --variant=minbase bookworm from $mirror ..."
  local t0=$SECONDS
  debootstrap --variant=minbase bookworm "$dir" "$mirror" > "$dir.log" 2>&1 \
    || { tail -n 30 "$dir.log" >&2; rm -f "$dir.log"; die "debootstrap failed"; }
  rm -f "$dir.log"
  # apt inside the images: the same mirror, plus updates and security (Java's fixes come there).
  {
    echo "deb $mirror bookworm main"
    echo "deb $mirror bookworm-updates main"
    [ -z "$security" ] || echo "deb $security bookworm-security main"
  } > "$dir/etc/apt/sources.list"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | "$DOCKER" import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" > /dev/null
  rm -rf "$dir"; trap - EXIT
  say "$BASE_IMAGE imported in $((SECONDS - t0))s"
}

cmd_jars() {
  local lib="$BUILD/hadoop/lib" stamp="$BUILD/hadoop/.resolved"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$DOCKER_DIR/pom.xml" ] && [ "$FORCE" != 1 ]; then
    say "jars in ${lib#"$ROOT"/} are up to date"; return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  say "resolving Hadoop's jars with Maven (docker/pom.xml) ..."
  local t0=$SECONDS
  rm -rf "$BUILD/hadoop"; mkdir -p "$lib"
  # sed: Maven 3.8's -q still prints stray ANSI reset codes.
  mvn -B -q -f "$DOCKER_DIR/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$lib" 2>&1 | sed -u 's/\x1b\[[0-9;]*m//g'
  [ "${PIPESTATUS[0]}" = 0 ] || die "maven failed (see above)"
  ls "$lib"/hadoop-streaming-*.jar >/dev/null 2>&1 || die "no hadoop-streaming jar in $lib"
  # HDFS's web applications come in hadoop-hdfs's test-jar (see docker/pom.xml): keep its
  # webapps/ (a directory on the image's classpath), not its test classes.
  local tests; tests="$(ls "$lib"/hadoop-hdfs-*-tests.jar)" || die "no hadoop-hdfs test-jar in $lib"
  python3 - "$tests" "$BUILD/hadoop/hdfs" <<'PY' || die "cannot extract webapps/ from $tests"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as jar:
    jar.extractall(sys.argv[2], [n for n in jar.namelist() if n.startswith("webapps/")])
PY
  rm -f "$tests"
  [ -d "$BUILD/hadoop/hdfs/webapps/datanode" ] || die "no webapps/datanode in $tests"
  touch "$stamp"
  say "$(ls "$lib" | wc -l) jars ($(du -sh "$lib" | cut -f1)) in $((SECONDS - t0))s"
}

# The image's inputs, from the repository root: an allowlist, so nothing else (the
# virtualenv, the mini-cluster's state, docker/secret.hex) ever reaches the build.
context_paths() {
  local p
  for p in pyproject.toml README.md hcollectives examples mappers \
           docker/Dockerfile docker/image docker/build/hadoop/lib docker/build/hadoop/hdfs \
           docker/build/ca-certificates.crt; do
    echo "$p"
  done
}

# A digest of the inputs, stored as a label: `image` rebuilds only when they changed.
context_digest() {
  (cd "$ROOT" && find $(context_paths) -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
     | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

cmd_image() {
  have_image "$BASE_IMAGE" || die "$BASE_IMAGE missing: docker/build.sh base"
  [ -f "$BUILD/hadoop/.resolved" ] || die "Hadoop jars missing: docker/build.sh jars"
  # pip and apt inside the build check TLS against the host's CA bundle, which may hold
  # a CA the host's network needs and Debian's own bundle lacks.
  cp /etc/ssl/certs/ca-certificates.crt "$BUILD/ca-certificates.crt"
  local digest current
  digest="$(context_digest)"
  current="$("$DOCKER" image inspect -f '{{index .Config.Labels "hcollectives.context"}}' "$IMAGE" 2>/dev/null || true)"
  if [ "$current" = "$digest" ] && [ "$FORCE" != 1 ]; then
    say "$IMAGE is up to date ($digest)"; return 0
  fi
  say "building $IMAGE ..."
  local t0=$SECONDS
  # The context is a tar of the allowlist (no .dockerignore needed, and the legacy builder
  # of Docker 20.10 reads none beside the Dockerfile). --network host: apt and PyPI.
  (cd "$ROOT" && tar -c --exclude='__pycache__' --exclude='*.pyc' $(context_paths)) \
    | "$DOCKER" build --network host -f docker/Dockerfile --label "hcollectives.context=$digest" \
        -t "$IMAGE" - \
    || die "docker build failed"
  # The previous build's image, if any, is now untagged: don't let them pile up.
  "$DOCKER" image prune -f --filter "label=hcollectives.context" > /dev/null || true
  say "$IMAGE built in $((SECONDS - t0))s"
}

cmd_clean() {
  "$DOCKER" image rm -f "$IMAGE" "$BASE_IMAGE" 2>/dev/null || true
  "$DOCKER" image prune -f --filter "label=hcollectives.context" > /dev/null || true
  rm -rf "$BUILD"
}

case "${1:-all}" in
  base)  cmd_base ;;
  jars)  cmd_jars ;;
  image) cmd_image ;;
  all)   cmd_base; cmd_jars; cmd_image ;;
  clean) cmd_clean ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
