# Shared settings for minicluster/bin/{minicluster.sh,hadoop}. Sourced, not executed.
# MC_SRC = minicluster/ source dir, MC_HOME = runtime dir (default <repo>/.minicluster).
MC_SRC="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
MC_HOME="${HCOLLECTIVES_MINICLUSTER_HOME:-$(dirname "$MC_SRC")/.minicluster}"
MC_CLASSPATH_FILE="$MC_HOME/classpath.txt"
MC_CLASSES="$MC_HOME/target/classes"

# Java: JAVA_HOME if set, else whatever `java` on PATH resolves to.
if [ -z "${JAVA_HOME:-}" ]; then
  _java="$(command -v java || true)"
  if [ -n "$_java" ]; then
    JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$_java")")")"
  fi
fi
export JAVA_HOME
MC_JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

# JDK 17+: the module opens Hadoop daemons/clients need (as in Hadoop's own JDK17 support).
MC_JDK_OPTS="-Djava.net.preferIPv4Stack=true \
--add-opens=java.base/java.io=ALL-UNNAMED \
--add-opens=java.base/java.lang=ALL-UNNAMED \
--add-opens=java.base/java.lang.reflect=ALL-UNNAMED \
--add-opens=java.base/java.math=ALL-UNNAMED \
--add-opens=java.base/java.net=ALL-UNNAMED \
--add-opens=java.base/java.nio=ALL-UNNAMED \
--add-opens=java.base/java.security=ALL-UNNAMED \
--add-opens=java.base/java.text=ALL-UNNAMED \
--add-opens=java.base/java.time=ALL-UNNAMED \
--add-opens=java.base/java.util=ALL-UNNAMED \
--add-opens=java.base/java.util.concurrent=ALL-UNNAMED \
--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED \
--add-opens=java.base/java.util.regex=ALL-UNNAMED \
--add-opens=java.base/java.util.zip=ALL-UNNAMED \
--add-opens=java.base/sun.nio.ch=ALL-UNNAMED \
--add-opens=java.base/sun.security.util=ALL-UNNAMED \
--add-exports=java.base/sun.net.dns=ALL-UNNAMED \
--add-exports=java.base/sun.net.util=ALL-UNNAMED"

# Fixed loopback ports (documented in minicluster/README.md).
MC_NN_PORT="${MC_NN_PORT:-19000}"
MC_NN_HTTP_PORT="${MC_NN_HTTP_PORT:-19870}"
MC_RM_PORT="${MC_RM_PORT:-18032}"
MC_RM_SCHEDULER_PORT="${MC_RM_SCHEDULER_PORT:-18030}"
MC_RM_TRACKER_PORT="${MC_RM_TRACKER_PORT:-18031}"
MC_RM_ADMIN_PORT="${MC_RM_ADMIN_PORT:-18033}"
MC_RM_WEB_PORT="${MC_RM_WEB_PORT:-18088}"
MC_JHS_PORT="${MC_JHS_PORT:-18020}"
MC_JHS_WEB_PORT="${MC_JHS_WEB_PORT:-18888}"
MC_JHS_ADMIN_PORT="${MC_JHS_ADMIN_PORT:-18039}"
MC_PORTS="$MC_NN_PORT $MC_NN_HTTP_PORT $MC_RM_PORT $MC_RM_SCHEDULER_PORT $MC_RM_TRACKER_PORT \
$MC_RM_ADMIN_PORT $MC_RM_WEB_PORT $MC_JHS_PORT $MC_JHS_WEB_PORT $MC_JHS_ADMIN_PORT"
