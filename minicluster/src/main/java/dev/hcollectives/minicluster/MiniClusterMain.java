package dev.hcollectives.minicluster;

import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.mapred.ShuffleHandler;
import org.apache.hadoop.mapreduce.v2.hs.JobHistoryServer;
import org.apache.hadoop.service.Service;
import org.apache.hadoop.util.VersionInfo;
import org.apache.hadoop.yarn.api.records.NodeReport;
import org.apache.hadoop.yarn.api.records.NodeState;
import org.apache.hadoop.yarn.client.api.YarnClient;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.server.MiniYARNCluster;
import org.apache.hadoop.yarn.server.nodemanager.ContainerExecutor;
import org.apache.hadoop.yarn.server.nodemanager.DefaultContainerExecutor;
import org.apache.hadoop.yarn.server.nodemanager.NodeManager;

/**
 * One-JVM Hadoop cluster for hcollectives integration tests.
 *
 * <p>HDFS (MiniDFSCluster: 1 NameNode + 1 DataNode), YARN (MiniYARNCluster: 1 ResourceManager
 * + N NodeManagers with the MapReduce shuffle service, DefaultContainerExecutor) and a
 * MapReduce JobHistoryServer, on fixed loopback ports.  Once everything accepts work it
 * writes client configuration (core/hdfs/yarn/mapred-site.xml) to {@code <home>/conf} and
 * then the ready marker {@code <home>/ready}.  SIGTERM stops everything (shutdown hook).
 *
 * <p>This is essentially what Hadoop's MiniMRYarnCluster does, minus its test-only choices
 * (4 local/log dirs per NM, a staging dir on the local disk, random JobHistory ports).
 *
 * <p>Options (all {@code --name value}): home, classpath-file, nodemanagers, nm-memory-mb,
 * nm-vcores, nn-port, nn-http-port, rm-port, rm-scheduler-port, rm-tracker-port,
 * rm-admin-port, rm-web-port, jhs-port, jhs-web-port, jhs-admin-port, and any number of
 * {@code -D key=value} overrides (applied last, to the cluster and the written client conf).
 */
public final class MiniClusterMain {

  private static final String NAME = "hcollectives-minicluster";
  private static final long STOP_BOUND_MS = 30_000;

  /** MiniYARNCluster with one local dir and one log dir per NodeManager. */
  static final class Yarn extends MiniYARNCluster {
    Yarn(int nodeManagers) {
      super(NAME, 1, nodeManagers, 1, 1);
    }
  }

  private final Map<String, String> opts = new LinkedHashMap<>();
  private final Map<String, String> overrides = new LinkedHashMap<>();

  private MiniDFSCluster dfs;
  private Yarn yarn;
  private JobHistoryServer jhs;
  private Path home;
  private Path readyFile;

  public static void main(String[] args) throws Exception {
    MiniClusterMain m = new MiniClusterMain();
    m.parse(args);
    try {
      m.start();
    } catch (Throwable t) {
      System.err.println("MINICLUSTER FAILED TO START: " + t);
      t.printStackTrace();
      m.stop();
      System.exit(1);
    }
    // SIGTERM/SIGINT: stop everything from an ordinary thread (not inside a JVM shutdown
    // hook, where Hadoop's own ShutdownHookManager calls fail), bounded by a watchdog.
    for (String sig : new String[] {"TERM", "INT", "HUP"}) {
      sun.misc.Signal.handle(new sun.misc.Signal(sig), s -> m.shutdownAndExit(sig));
    }
    new CountDownLatch(1).await();
  }

  private void shutdownAndExit(String sig) {
    Thread t = new Thread(() -> {
      log("SIG" + sig + " received; stopping");
      Thread watchdog = new Thread(() -> {
        try {
          Thread.sleep(STOP_BOUND_MS);
          log("stop took longer than " + STOP_BOUND_MS + " ms; halting");
          Runtime.getRuntime().halt(2);
        } catch (InterruptedException ignored) {
          // stopped in time
        }
      }, "minicluster-stop-watchdog");
      watchdog.setDaemon(true);
      watchdog.start();
      stop();
      System.exit(0);
    }, "minicluster-stop");
    t.start();
  }

  private void parse(String[] args) {
    opts.put("home", ".minicluster");
    opts.put("classpath-file", "");
    opts.put("nodemanagers", "2");
    opts.put("nm-memory-mb", "4096");
    opts.put("nm-vcores", "8");
    opts.put("nn-port", "19000");
    opts.put("nn-http-port", "19870");
    opts.put("rm-port", "18032");
    opts.put("rm-scheduler-port", "18030");
    opts.put("rm-tracker-port", "18031");
    opts.put("rm-admin-port", "18033");
    opts.put("rm-web-port", "18088");
    opts.put("jhs-port", "18020");
    opts.put("jhs-web-port", "18888");
    opts.put("jhs-admin-port", "18039");
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      if (a.equals("-D") && i + 1 < args.length) {
        String kv = args[++i];
        int eq = kv.indexOf('=');
        if (eq <= 0) {
          throw new IllegalArgumentException("bad -D " + kv);
        }
        overrides.put(kv.substring(0, eq), kv.substring(eq + 1));
      } else if (a.startsWith("--") && i + 1 < args.length
          && opts.containsKey(a.substring(2))) {
        opts.put(a.substring(2), args[++i]);
      } else {
        throw new IllegalArgumentException("unknown argument " + a
            + " (known: " + opts.keySet() + ", -D key=value)");
      }
    }
  }

  private int intOpt(String k) {
    return Integer.parseInt(opts.get(k));
  }

  private static String lo(int port) {
    return "127.0.0.1:" + port;
  }

  private void start() throws Exception {
    long t0 = System.currentTimeMillis();
    home = Path.of(opts.get("home")).toAbsolutePath().normalize();
    readyFile = home.resolve("ready");
    Files.deleteIfExists(readyFile);
    Path data = home.resolve("data");
    deleteTree(data);
    Files.createDirectories(data);
    Path confDir = home.resolve("conf");
    Files.createDirectories(confDir);
    System.setProperty("test.build.data", data.resolve("yarn").toString());
    System.setProperty("hadoop.tmp.dir", data.resolve("tmp").toString());

    // Fallback for other exits (the signal handlers in main() are the normal path).
    Runtime.getRuntime().addShutdownHook(new Thread(this::stop, "minicluster-shutdown"));

    int nms = intOpt("nodemanagers");
    String classpath = readClasspath();

    // Everything a client must agree with goes into `client`; `conf` = client + server-only.
    Map<String, String> core = new LinkedHashMap<>();
    Map<String, String> hdfs = new LinkedHashMap<>();
    Map<String, String> yarnSite = new LinkedHashMap<>();
    Map<String, String> mapred = new LinkedHashMap<>();

    core.put("fs.defaultFS", "hdfs://" + lo(intOpt("nn-port")));
    core.put("hadoop.tmp.dir", data.resolve("tmp").toString());
    core.put("fs.permissions.umask-mode", "022");
    core.put("hadoop.security.authentication", "simple");
    core.put("ipc.client.connect.max.retries", "3");
    core.put("ipc.client.connect.retry.interval", "500");

    hdfs.put("dfs.replication", "1");
    hdfs.put("dfs.namenode.rpc-address", lo(intOpt("nn-port")));
    hdfs.put("dfs.namenode.http-address", lo(intOpt("nn-http-port")));
    hdfs.put("dfs.permissions.enabled", "false");
    hdfs.put("dfs.client.use.datanode.hostname", "false");
    hdfs.put("dfs.namenode.safemode.extension", "0");

    yarnSite.put("yarn.resourcemanager.hostname", "127.0.0.1");
    yarnSite.put("yarn.resourcemanager.address", lo(intOpt("rm-port")));
    yarnSite.put("yarn.resourcemanager.scheduler.address", lo(intOpt("rm-scheduler-port")));
    yarnSite.put("yarn.resourcemanager.resource-tracker.address",
        lo(intOpt("rm-tracker-port")));
    yarnSite.put("yarn.resourcemanager.admin.address", lo(intOpt("rm-admin-port")));
    yarnSite.put("yarn.resourcemanager.webapp.address", lo(intOpt("rm-web-port")));
    yarnSite.put("yarn.nodemanager.aux-services", ShuffleHandler.MAPREDUCE_SHUFFLE_SERVICEID);
    yarnSite.put("yarn.nodemanager.aux-services."
        + ShuffleHandler.MAPREDUCE_SHUFFLE_SERVICEID + ".class", ShuffleHandler.class.getName());
    yarnSite.put("yarn.nodemanager.container-executor.class",
        DefaultContainerExecutor.class.getName());
    yarnSite.put("yarn.nodemanager.resource.memory-mb", opts.get("nm-memory-mb"));
    yarnSite.put("yarn.nodemanager.resource.cpu-vcores", opts.get("nm-vcores"));
    yarnSite.put("yarn.scheduler.minimum-allocation-mb", "256");
    yarnSite.put("yarn.scheduler.maximum-allocation-mb", opts.get("nm-memory-mb"));
    yarnSite.put("yarn.scheduler.minimum-allocation-vcores", "1");
    yarnSite.put("yarn.scheduler.maximum-allocation-vcores", opts.get("nm-vcores"));
    yarnSite.put("yarn.scheduler.capacity.maximum-am-resource-percent", "0.5");
    yarnSite.put("yarn.nodemanager.vmem-check-enabled", "false");
    yarnSite.put("yarn.nodemanager.pmem-check-enabled", "false");
    yarnSite.put("yarn.nodemanager.disk-health-checker.enable", "false");
    yarnSite.put("yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage",
        "100.0");
    yarnSite.put("yarn.nodemanager.disk-health-checker.min-free-space-per-disk-mb", "0");
    yarnSite.put("yarn.resourcemanager.nodemanagers.heartbeat-interval-ms", "250");
    yarnSite.put("yarn.log-aggregation-enable", "false");
    yarnSite.put("yarn.timeline-service.enabled", "false");
    yarnSite.put("yarn.nodemanager.process-kill-wait.ms", "1000");
    yarnSite.put("yarn.nodemanager.sleep-delay-before-sigkill.ms", "250");
    yarnSite.put("yarn.resourcemanager.recovery.enabled", "false");
    yarnSite.put("yarn.nodemanager.recovery.enabled", "false");
    // Containers (MR AM + tasks) get the cluster's own jars; no $HADOOP_HOME exists.
    yarnSite.put("yarn.application.classpath", confDir + "," + classpath.replace(':', ','));

    mapred.put("mapreduce.framework.name", "yarn");
    mapred.put("yarn.app.mapreduce.am.staging-dir", "/tmp/hadoop-yarn/staging");
    mapred.put("mapreduce.jobhistory.address", lo(intOpt("jhs-port")));
    mapred.put("mapreduce.jobhistory.webapp.address", lo(intOpt("jhs-web-port")));
    mapred.put("mapreduce.jobhistory.admin.address", lo(intOpt("jhs-admin-port")));
    // yarn.application.classpath already has everything; a non-empty value here stops MR
    // from adding its $HADOOP_MAPRED_HOME/share/... defaults.
    mapred.put("mapreduce.application.classpath", confDir.toString());
    mapred.put("yarn.app.mapreduce.am.resource.mb", "512");
    // Short-lived JVMs on a 2-core box: C1 only + serial GC start noticeably faster.
    String fastJvm = " -XX:TieredStopAtLevel=1 -XX:+UseSerialGC";
    mapred.put("yarn.app.mapreduce.am.command-opts", "-Xmx384m" + fastJvm);
    mapred.put("mapreduce.map.memory.mb", "512");
    mapred.put("mapreduce.reduce.memory.mb", "512");
    mapred.put("mapreduce.map.java.opts", "-Xmx384m" + fastJvm);
    mapred.put("mapreduce.reduce.java.opts", "-Xmx384m" + fastJvm);
    mapred.put("mapreduce.task.io.sort.mb", "64");
    mapred.put("mapreduce.job.ubertask.enable", "false");
    // JDK 17: let the NM add the needed --add-opens to MR AM/task JVM command lines.
    mapred.put("mapreduce.jvm.add-opens-as-default", "true");
    mapred.put("yarn.app.mapreduce.am.scheduler.heartbeat.interval-ms", "200");
    mapred.put("mapreduce.client.progressmonitor.pollinterval", "250");
    mapred.put("mapreduce.shuffle.port", "0");
    mapred.put("mapreduce.job.reduce.slowstart.completedmaps", "1.0");

    // -D overrides land in the file that already has the key, else by prefix.
    for (Map.Entry<String, String> e : overrides.entrySet()) {
      String k = e.getKey();
      Map<String, String> target;
      if (core.containsKey(k) || hdfs.containsKey(k) || yarnSite.containsKey(k)
          || mapred.containsKey(k)) {
        target = core.containsKey(k) ? core : hdfs.containsKey(k) ? hdfs
            : yarnSite.containsKey(k) ? yarnSite : mapred;
      } else if (k.startsWith("dfs.")) {
        target = hdfs;
      } else if (k.startsWith("yarn.") && !k.startsWith("yarn.app.mapreduce.")) {
        target = yarnSite;
      } else if (k.startsWith("mapreduce.") || k.startsWith("yarn.app.mapreduce.")) {
        target = mapred;
      } else {
        target = core;
      }
      target.put(k, e.getValue());
    }

    Configuration conf = new YarnConfiguration();
    for (Map<String, String> m : List.of(core, hdfs, yarnSite, mapred)) {
      m.forEach(conf::set);
    }
    // Server-only settings.
    conf.setBoolean(YarnConfiguration.YARN_MINICLUSTER_FIXED_PORTS, true);
    conf.setInt(YarnConfiguration.YARN_MINICLUSTER_NM_PMEM_MB, intOpt("nm-memory-mb"));
    conf.setClass(YarnConfiguration.NM_CONTAINER_EXECUTOR, DefaultContainerExecutor.class,
        ContainerExecutor.class);
    conf.setClass("yarn.nodemanager.aux-services."
        + ShuffleHandler.MAPREDUCE_SHUFFLE_SERVICEID + ".class", ShuffleHandler.class,
        Service.class);
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, data.resolve("dfs").toString());
    // Tag every container (and whatever it spawns) so `minicluster.sh stop` can find leftovers.
    conf.set(YarnConfiguration.NM_ADMIN_USER_ENV,
        "MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX,MINICLUSTER_TAG=" + home);

    log("Hadoop " + VersionInfo.getVersion() + "; home " + home);

    // --- HDFS ---
    dfs = new MiniDFSCluster.Builder(conf, data.resolve("dfs").toFile())
        .numDataNodes(1)
        .nameNodePort(intOpt("nn-port"))
        .nameNodeHttpPort(intOpt("nn-http-port"))
        .format(true)
        .manageNameDfsDirs(true)
        .manageDataDfsDirs(true)
        .waitSafeMode(true)
        .build();
    dfs.waitActive();
    String fsUri = dfs.getFileSystem().getUri().toString();
    log("HDFS up at " + fsUri);
    FileSystem fs = dfs.getFileSystem();
    for (String dir : new String[] {"/tmp", "/tmp/hadoop-yarn/staging", "/user",
        "/user/" + System.getProperty("user.name")}) {
      org.apache.hadoop.fs.Path p = new org.apache.hadoop.fs.Path(dir);
      fs.mkdirs(p);
      fs.setPermission(p, new FsPermission((short) 01777));
    }

    // --- YARN + MR ---
    yarn = new Yarn(nms);
    yarn.init(conf);
    yarn.start();
    log("YARN up: RM " + yarn.getConfig().get(YarnConfiguration.RM_ADDRESS));

    Configuration jhsConf = new Configuration(yarn.getConfig());
    jhs = new JobHistoryServer();
    jhs.init(jhsConf);
    jhs.start();
    if (jhs.getServiceState() != Service.STATE.STARTED) {
      throw new IOException("JobHistoryServer failed to start");
    }
    log("JobHistoryServer up at " + mapred.get("mapreduce.jobhistory.address"));

    // --- client configuration (written before the readiness probe, which uses it) ---
    writeSite(confDir.resolve("core-site.xml"), core);
    writeSite(confDir.resolve("hdfs-site.xml"), hdfs);
    writeSite(confDir.resolve("yarn-site.xml"), yarnSite);
    writeSite(confDir.resolve("mapred-site.xml"), mapred);

    // --- readiness: all NodeManagers RUNNING as seen by an RPC client of the RM ---
    Configuration clientConf = new Configuration(false);
    for (Map<String, String> m : List.of(core, hdfs, yarnSite, mapred)) {
      m.forEach(clientConf::set);
    }
    List<NodeReport> nodes = waitForNodes(clientConf, nms, 120_000);
    FileSystem cfs = FileSystem.newInstance(clientConf);
    try {
      org.apache.hadoop.fs.Path probe = new org.apache.hadoop.fs.Path("/tmp/.minicluster-probe");
      try (OutputStream out = cfs.create(probe, true)) {
        out.write("ok\n".getBytes(StandardCharsets.UTF_8));
      }
      cfs.delete(probe, false);
    } finally {
      cfs.close();
    }

    // Stable paths to each NodeManager's container-log dir, laid out like a Hadoop
    // daemon log dir (<dir>/userlogs/<app>/<container>/{stdout,stderr,syslog}) so mrjob's
    // --hadoop-log-dirs can find task logs.
    Path logs = home.resolve("logs");
    deleteTree(logs);
    List<String> nmLines = new ArrayList<>();
    for (int i = 0; i < nms; i++) {
      NodeManager nm = yarn.getNodeManager(i);
      String logDir = nm.getConfig().get(YarnConfiguration.NM_LOG_DIRS);
      String localDir = nm.getConfig().get(YarnConfiguration.NM_LOCAL_DIRS);
      Path d = logs.resolve("nm-" + i);
      Files.createDirectories(d);
      Files.createSymbolicLink(d.resolve("userlogs"), Path.of(logDir));
      nmLines.add("nm." + i + ".log_dir=" + logDir);
      nmLines.add("nm." + i + ".local_dir=" + localDir);
    }
    for (NodeReport r : nodes) {
      nmLines.add("node=" + r.getNodeId() + " http=" + r.getHttpAddress()
          + " capability=" + r.getCapability());
    }

    StringBuilder sb = new StringBuilder();
    sb.append("hadoop_version=").append(VersionInfo.getVersion()).append('\n');
    sb.append("pid=").append(ProcessHandle.current().pid()).append('\n');
    sb.append("fs.defaultFS=").append(core.get("fs.defaultFS")).append('\n');
    sb.append("namenode.http=").append(hdfs.get("dfs.namenode.http-address")).append('\n');
    sb.append("rm=").append(yarnSite.get("yarn.resourcemanager.address")).append('\n');
    sb.append("rm.web=").append(yarnSite.get("yarn.resourcemanager.webapp.address"))
        .append('\n');
    sb.append("jhs=").append(mapred.get("mapreduce.jobhistory.address")).append('\n');
    sb.append("nodemanagers=").append(nms).append('\n');
    for (String l : nmLines) {
      sb.append(l).append('\n');
    }
    sb.append("startup_seconds=")
        .append(String.format("%.1f", (System.currentTimeMillis() - t0) / 1000.0)).append('\n');
    Path tmp = home.resolve("ready.tmp");
    Files.writeString(tmp, sb.toString());
    Files.move(tmp, readyFile, StandardCopyOption.ATOMIC_MOVE);
    log("READY (" + nodes.size() + " NodeManagers)\n" + sb);
  }

  private String readClasspath() throws IOException {
    String f = opts.get("classpath-file");
    String cp = f.isEmpty() ? System.getProperty("java.class.path")
        : Files.readString(Path.of(f)).trim();
    return cp;
  }

  private static List<NodeReport> waitForNodes(Configuration conf, int n, long timeoutMs)
      throws Exception {
    YarnClient yc = YarnClient.createYarnClient();
    yc.init(conf);
    yc.start();
    try {
      long deadline = System.currentTimeMillis() + timeoutMs;
      List<NodeReport> nodes = List.of();
      while (System.currentTimeMillis() < deadline) {
        nodes = yc.getNodeReports(NodeState.RUNNING);
        if (nodes.size() >= n) {
          return nodes;
        }
        Thread.sleep(200);
      }
      throw new IOException("only " + nodes.size() + " of " + n
          + " NodeManagers RUNNING after " + timeoutMs + " ms");
    } finally {
      yc.stop();
    }
  }

  private static void writeSite(Path file, Map<String, String> props) throws IOException {
    Configuration c = new Configuration(false);
    props.forEach(c::set);
    Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
    try (OutputStream out = new FileOutputStream(tmp.toFile())) {
      c.writeXml(out);
    }
    Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
  }

  private synchronized void stop() {
    try {
      if (readyFile != null) {
        Files.deleteIfExists(readyFile);
      }
    } catch (IOException ignored) {
      // best effort
    }
    if (jhs != null) {
      log("stopping JobHistoryServer");
      try {
        jhs.stop();
      } catch (Throwable t) {
        log("JobHistoryServer stop: " + t);
      }
      jhs = null;
    }
    if (yarn != null) {
      log("stopping YARN (kills running containers)");
      try {
        // NodeManagers one by one take ~7-10 s each (they wait for apps); stop them in parallel.
        List<Thread> ts = new ArrayList<>();
        for (int i = 0; i < intOpt("nodemanagers"); i++) {
          NodeManager nm = yarn.getNodeManager(i);
          Thread t = new Thread(nm::stop, "stop-nm-" + i);
          t.start();
          ts.add(t);
        }
        // Containers are killed within ~2 s; after that an NM only waits (10 s) for its
        // log-retention timers, which is pointless on exit, so don't wait beyond 5 s.
        long deadline = System.currentTimeMillis() + 5_000;
        boolean nmsStopped = true;
        for (Thread t : ts) {
          t.join(Math.max(1, deadline - System.currentTimeMillis()));
          nmsStopped &= !t.isAlive();
        }
        if (nmsStopped) {
          yarn.stop();
        } else {
          log("NodeManagers still winding down; stopping the ResourceManager and moving on");
          yarn.getResourceManager().stop();
        }
      } catch (Throwable t) {
        log("YARN stop: " + t);
      }
      yarn = null;
    }
    if (dfs != null) {
      log("stopping HDFS");
      try {
        dfs.shutdownDataNodes();
      } catch (Throwable t) {
        log("DataNode stop: " + t);
      }
      try {
        dfs.shutdownNameNodes();
      } catch (Throwable t) {
        log("NameNode stop: " + t);
      }
      dfs = null;
    }
    log("stopped");
  }

  private static void deleteTree(Path p) throws IOException {
    if (!Files.exists(p, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
      return;
    }
    org.apache.hadoop.fs.FileUtil.fullyDelete(p.toFile());
    if (Files.exists(p, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
      throw new IOException("could not delete " + p);
    }
  }

  private static void log(String msg) {
    System.out.println("[minicluster] " + msg);
    System.out.flush();
  }

  private MiniClusterMain() {
  }
}
