"""The bench's `spark` way: PySpark MLlib K-means on the same files, from the same centroids.

What users would otherwise pick for iterative work. `KMeans.train` runs the
whole loop inside one call, so its seconds per iteration are measured as a
marginal cost: two runs from the same initial centroids, *low* and *high*
iterations (3 and 13 by default), (t_high - t_low) / (high - low) -- the
job start, reading and caching the input and the first iterations cancel out.
The input RDD is cached and counted first, as a Spark user would, and one
warm-up run goes before both.
`epsilon=0` (Spark's convergence test) stops a run early only at an exact
fixed point; the result note says how many iterations ran.

Needs pyspark (``pip install hcollectives[spark]``) and Java; otherwise the
way is skipped with `spark_unavailable()`'s reason.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from typing import Any

import numpy as np


def spark_unavailable() -> str | None:
    """Why the spark way cannot run here (None if it can)."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install 'hcollectives[spark]')"
    java_home = os.environ.get("JAVA_HOME")
    if not (shutil.which("java") or (java_home and os.path.exists(os.path.join(java_home, "bin", "java")))):
        return "no Java runtime (java on PATH or $JAVA_HOME) for PySpark"
    return None


def kmeans_marginal(inputs: list[str], initial: str, *, low: int = 3, high: int = 13,
                    master: str = "local[2]") -> dict[str, Any]:
    """Seconds per iteration of MLlib KMeans.train, marginal between *low* and *high* iterations."""
    if not 0 < low < high:
        raise ValueError("need 0 < low < high iterations")
    from pyspark.mllib.clustering import KMeans, KMeansModel
    from pyspark.sql import SparkSession

    centres = np.load(initial, allow_pickle=False)
    # Spark's Python workers must be this interpreter (it has numpy); bind to loopback as we do.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    spark = (SparkSession.builder.master(master).appName("hcollectives-bench-kmeans")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").config("spark.driver.memory", "2g").getOrCreate())
    try:
        sc = spark.sparkContext
        sc.setLogLevel("ERROR")
        points = sc.textFile(",".join(os.path.abspath(p) for p in inputs)) \
            .map(lambda line: np.array(line.split(), dtype=float)).cache()
        count = points.count()
        seconds, models = {}, {}
        # A warm-up run first: the first call also pays the JVM's JIT and
        # py4j's start-up, which would not cancel out of the difference.
        KMeans.train(points, len(centres), maxIterations=1, epsilon=0.0, initialModel=KMeansModel(list(centres)))
        for n in (low, high):
            t0 = time.perf_counter()
            models[n] = KMeans.train(points, len(centres), maxIterations=n, epsilon=0.0,
                                     initialModel=KMeansModel(list(centres)))
            seconds[n] = time.perf_counter() - t0
        return {
            "label": f"PySpark {spark.version} MLlib KMeans.train, {master}, cached RDD "
                     f"(marginal: ({high} iterations - {low}) / {high - low})",
            "points": count,
            "seconds": {str(n): round(t, 4) for n, t in seconds.items()},
            "marginal_per_iteration_s": round((seconds[high] - seconds[low]) / (high - low), 4),
            "loop_data": np.array(models[high].clusterCenters, dtype=float),
        }
    finally:
        spark.stop()
