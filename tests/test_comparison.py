"""Both ways side by side, traced: what the demo and the bench report."""

import json

import pytest

from hcollectives.bench import datagen
from hcollectives.bench import comparison
from hcollectives.bench.app_bench import runner_args, ways_for
from hcollectives.bench.breakdown import PARTS
from hcollectives.bench.comparison import compare, read_traces, trace_args

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kmeans_comparison(tmp_path_factory):
    data = datagen.kmeans(str(tmp_path_factory.mktemp("cmp")), points=800, dims=3, clusters=3, splits=3, seed=2)
    return compare("kmeans", inputs=data.inputs, initial=data.initial, iterations=3,
                   ways=["vanilla", "hcollectives", "resident"], runner_args=runner_args("local"), local_nodes=2,
                   stream=None)


def test_both_ways_give_the_same_centroids_and_a_speedup_figure(kmeans_comparison):
    hc, van = kmeans_comparison["hcollectives"], kmeans_comparison["vanilla"]
    assert hc["max_rel_diff_vs_vanilla"] < 1e-12
    assert hc["speedup_vs_vanilla"] == pytest.approx(van["steady_median_s"] / hc["steady_median_s"], rel=1e-2)
    assert len(hc["per_iteration_s"]) == len(van["per_iteration_s"]) == 3


def test_every_iterations_breakdown_adds_up_to_its_time_and_saw_the_tasks(kmeans_comparison):
    for way in ("vanilla", "hcollectives"):
        w = kmeans_comparison[way]
        for i, seconds in enumerate(w["per_iteration_s"], 1):
            parts = w["breakdown_per_iteration_s"][str(i)]
            assert set(parts) == set(PARTS)
            assert sum(parts.values()) == pytest.approx(seconds, abs=2e-3)
            # Traces were read: tasks' start-up and mapper time show up in every iteration.
            assert parts["map_overhead"] > 0 and parts["compute"] > 0, (way, i, parts)
    # When each collective iteration was submitted, started and done, in order.
    events = kmeans_comparison["hcollectives"]["events_per_iteration_s"]
    assert sorted(events) == ["1", "2", "3"] and "events_per_iteration_s" not in kmeans_comparison["vanilla"]
    for e in events.values():
        assert e["submitted"] <= e["first_task_started"] <= e["all_tasks_started"] <= e["result"], e
    # Plain mrjob's combiners, sort and reducers are its communication; they take real time.
    assert kmeans_comparison["vanilla"]["breakdown_mean_s"]["comm_reduction"] > 0.1


def test_a_resident_iterations_breakdown_adds_up_and_shows_compute_and_collective(kmeans_comparison):
    from hcollectives.bench.breakdown import RESIDENT_PARTS

    res = kmeans_comparison["resident"]
    assert res["max_rel_diff_vs_vanilla"] < 1e-12
    for i, seconds in enumerate(res["per_iteration_s"], 1):
        parts = res["breakdown_per_iteration_s"][str(i)]
        assert set(parts) == set(RESIDENT_PARTS)
        assert sum(parts.values()) == pytest.approx(seconds, abs=2e-3)
        if i > 1:  # the resident tasks' own phases were traced in every later iteration
            assert parts["compute"] > 0 and parts["collective"] > 0 and parts["task_reduction"] > 0, (i, parts)


def test_a_way_that_cannot_run_here_is_skipped_with_its_reason(tmp_path, monkeypatch):
    from hcollectives.bench import spark_bench

    monkeypatch.setattr(spark_bench, "spark_unavailable", lambda: "no Java runtime (test)")
    out = compare("kmeans", inputs=[], initial="", iterations=3, ways=["spark"], runner_args=runner_args("local"),
                  local_nodes=1, stream=None)
    assert out == {"spark": {"label": "PySpark MLlib KMeans.train", "skipped": "no Java runtime (test)"}}


def test_trace_args_run_tasks_under_the_tracer_and_bad_files_are_skipped(tmp_path):
    args = trace_args(str(tmp_path))
    assert args[0] == "--task-python-bin" and "hcollectives.launch.task_trace" in args[1]
    (tmp_path / "good.json").write_text(json.dumps({"kind": "map", "process": 1.0}))
    (tmp_path / "torn.json").write_text('{"kind": "ma')
    assert read_traces(str(tmp_path)) == [{"kind": "map", "process": 1.0}]


def test_demo_tables_and_chart(kmeans_comparison, tmp_path):
    from hcollectives.bench.demo import render_tables, write_chart

    results = {"kmeans": kmeans_comparison}
    text = render_tables(results)
    assert "| median of 2.. |" in text and "same result" in text and "comm + reduction" in text
    chart = tmp_path / "chart.png"
    write_chart(results, str(chart))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    assert "hcollectives --resident" in text and "task-level reduction" in text
    resident_chart = tmp_path / "chart-resident.png"
    assert resident_chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and resident_chart.stat().st_size > 10_000


def test_hadoop_runner_without_a_cluster_is_a_clear_error(monkeypatch, tmp_path):
    from hcollectives import ConfigurationError

    monkeypatch.setenv("MRJOB_CONF", str(tmp_path / "missing.conf"))
    monkeypatch.setattr("mrjob.conf.find_mrjob_conf", lambda: None)  # nor ~/.mrjob.conf, /etc/mrjob.conf
    with pytest.raises(ConfigurationError, match="make minicluster"):
        runner_args("hadoop")
    assert runner_args("local", 3) == ["-r", "local", "--num-cores", "3"]


def test_hadoop_runner_args_are_a_bare_runner_with_the_clusters_conf(monkeypatch, tmp_path):
    conf = tmp_path / "mrjob.conf"
    conf.write_text('{"runners": {"hadoop": {"python_bin": "/opt/py/bin/python"}}}')
    monkeypatch.setenv("MRJOB_CONF", str(conf))
    assert runner_args("hadoop") == ["-r", "hadoop"]


def test_ways_per_runner_and_a_clear_error_for_others():
    from hcollectives import ConfigurationError

    assert "no_fork_server" in ways_for("kmeans", "local", None)
    assert "fork_server" in ways_for("kmeans", "hadoop", None) and "no_fork_server" not in ways_for("kmeans", "hadoop", None)
    assert ways_for("mds", "hadoop", "vanilla,hadoop_fs_client") == ["vanilla", "hadoop_fs_client"]
    with pytest.raises(ConfigurationError, match="--ways: no_input_cache; kmeans on the local runner has"):
        ways_for("kmeans", "local", "vanilla,no_input_cache")
    with pytest.raises(ConfigurationError, match="none given"):
        ways_for("kmeans", "local", ",")


@pytest.mark.parametrize("before", [None, "0"])
def test_a_ways_environment_holds_for_its_run_only(monkeypatch, before):
    seen = []
    monkeypatch.setattr(comparison, "_run_way",
                        lambda app, way, trace_dir, **kw: seen.append(comparison.os.environ.get("HCOLLECTIVES_ZYGOTE")))
    if before is None:
        monkeypatch.delenv("HCOLLECTIVES_ZYGOTE", raising=False)
    else:
        monkeypatch.setenv("HCOLLECTIVES_ZYGOTE", before)
    comparison.run_way(comparison.APPS["kmeans"], comparison.WAYS["fork_server"], inputs=[], initial="",
                       iterations=1, runner_args=[], local_nodes=1, stream=None)
    assert seen == ["1"]
    assert comparison.os.environ.get("HCOLLECTIVES_ZYGOTE") == before
