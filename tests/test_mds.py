"""SMACOF MDS three ways -- MRCollectiveJob (AllGather), plain mrjob, streaming
mapper -- against a numpy reference and scikit-learn's smacof."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import MAPPERS
from hcollectives.bench import datagen
from hcollectives.bench.examples import load_example

ITERATIONS = 3
e2e = pytest.mark.e2e


def smacof_reference(delta: np.ndarray, x0: np.ndarray, iterations: int) -> np.ndarray:
    """Unweighted SMACOF, whole matrices at once: X <- (1/N) B(X) X, *iterations* times."""
    x = np.array(x0, float)
    n = len(x)
    diag = np.diag_indices(n)
    for _ in range(iterations):
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        b = np.zeros_like(d)
        nonzero = d != 0
        b[nonzero] = -delta[nonzero] / d[nonzero]
        b[diag] = 0.0
        b[diag] = -b.sum(1)
        x = b @ x / n
    return x


def assert_rel_close(actual, expected, rtol=1e-9):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err <= rtol, f"max relative error {err:.3g} > {rtol:g}"


@pytest.fixture(scope="module")
def mds_data(tmp_path_factory):
    return datagen.mds(str(tmp_path_factory.mktemp("mds-data")), n=80, dims=3, splits=4, seed=2)


@pytest.fixture(scope="module")
def delta(mds_data):
    return load_example("mds").load_delta(mds_data.inputs)


@pytest.fixture(scope="module")
def expected(mds_data, delta):
    return smacof_reference(delta, np.load(mds_data.initial), ITERATIONS)


@pytest.fixture(scope="module")
def sklearn_smacof(mds_data, delta):
    """scikit-learn's X and raw stress after ITERATIONS Guttman transforms from the same init.

    scikit-learn >= 1.7 is a test dependency (pyproject's test extras): a
    missing or older one fails here rather than skipping the comparison."""
    import sklearn
    from sklearn.manifold import smacof

    # Iteration counting: since sklearn 1.7 each pass does the Guttman transform
    # and *then* computes the stress of the new X, so max_iter=K returns X_K and
    # sigma(X_K), as we do. Before 1.7 the stress was computed first, i.e. the
    # returned stress was sigma(X_{K-1}) while X was X_K: not comparable as is.
    assert tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 7), sklearn.__version__

    x0 = np.load(mds_data.initial)
    # eps=0: sklearn stops early only if the stress *rose* (SMACOF never lets it).
    x, stress, n_iter = smacof(delta, metric=True, n_components=x0.shape[1], init=x0, n_init=1,
                               max_iter=ITERATIONS, eps=0.0, normalized_stress=False, return_n_iter=True)
    assert n_iter == ITERATIONS
    return x, stress


def check(x, expected, delta, sklearn_smacof):
    """X after ITERATIONS equals the numpy reference; its stress equals sklearn's."""
    assert_rel_close(x, expected)
    stress = load_example("mds").stress(delta, x)
    assert stress == pytest.approx(sklearn_smacof[1], rel=1e-9, abs=0)


def test_datagen_mds_rows_are_a_symmetric_distance_matrix(mds_data, delta):
    assert len(mds_data.inputs) == 4
    first = open(mds_data.inputs[0]).readline().split()
    assert first[0] == "0" and len(first) == 81
    assert delta.shape == (80, 80)
    assert np.array_equal(delta, delta.T) and not np.diag(delta).any() and (delta + np.eye(80) > 0).all()
    assert np.load(mds_data.initial).shape == (80, 3)


def test_reference_matches_sklearn_and_stress_decreases(mds_data, delta, expected, sklearn_smacof):
    stress = load_example("mds").stress
    assert_rel_close(sklearn_smacof[0], expected, rtol=1e-12)
    assert stress(delta, expected) == pytest.approx(sklearn_smacof[1], rel=1e-12, abs=0)
    sigmas = [stress(delta, smacof_reference(delta, np.load(mds_data.initial), k)) for k in range(ITERATIONS + 1)]
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))  # SMACOF's monotone descent


@e2e
@pytest.mark.parametrize("nodes", ["1", "2"])
def test_collective_allgather_matches_reference(mds_data, delta, expected, sklearn_smacof, nodes,
                                                no_orphan_daemons):
    module = load_example("mds")
    job = module.MRMDS(args=["-r", "local", "-q", "--initial", mds_data.initial, "--max-iterations",
                             str(ITERATIONS), "--tolerance", "0", "--local-nodes", nodes, *mds_data.inputs])
    out = job.iterate()
    assert out.iterations == ITERATIONS and not out.converged
    check(out.loop_data, expected, delta, sklearn_smacof)


@e2e
def test_vanilla_mrjob_matches_reference(mds_data, delta, expected, sklearn_smacof):
    vanilla = load_example("mds_vanilla")
    assert len(mds_data.inputs) >= 2  # >= 2 map tasks: the combiners' records meet in the reducer
    x, iterations, converged, times = vanilla.iterate(["-r", "local", "-q", *mds_data.inputs],
                                                      np.load(mds_data.initial), ITERATIONS,
                                                      tolerance=0.0, stream=None)
    assert iterations == ITERATIONS and not converged and len(times) == ITERATIONS
    check(x, expected, delta, sklearn_smacof)


@e2e
def test_vanilla_step_combines_every_map_task_in_one_reducer(mds_data, delta, tmp_path):
    """One iteration's job: one output record, the whole X_new, assembled from every map task's combiner."""
    vanilla = load_example("mds_vanilla")
    x0 = np.load(mds_data.initial)
    np.save(tmp_path / "x.npy", x0)
    job = vanilla.MRMDSStep(args=["-r", "local", "-q", "--x", str(tmp_path / "x.npy"), *mds_data.inputs])
    with job.make_runner() as runner:
        runner.run()
        records = list(job.parse_output(runner.cat_output()))
        counters = runner.counters()
    assert [key for key, _ in records] == ["X"]
    assert_rel_close(records[0][1], smacof_reference(delta, x0, 1))
    # One record per map task reached the reducer (the combiner ran), and each input file is at least one task.
    assert counters[0]["mds_vanilla"]["reducer input records"] >= len(mds_data.inputs) >= 2


def test_vanilla_assemble_names_missing_duplicated_and_stray_rows():
    assemble = load_example("mds_vanilla").assemble
    rows = [[i, [float(i), -float(i)]] for i in range(5)]
    assert np.array_equal(assemble(rows[::-1], 5), [[i, -i] for i in range(5)])
    with pytest.raises(ValueError, match=r"missing row\(s\) \[1, 3\]"):
        assemble([rows[0], rows[2], rows[4]], 5)
    with pytest.raises(ValueError, match=r"duplicated row\(s\) \[2\]"):
        assemble(rows + [rows[2]], 5)
    with pytest.raises(ValueError, match=r"missing row\(s\) \[4\].*outside 0..4: \[7\]"):
        assemble(rows[:4] + [[7, [0.0, 0.0]]], 5)
    with pytest.raises(ValueError, match=r"missing row\(s\) \[0, 1, .*\(30 in all\)"):
        assemble([], 30)


@e2e
def test_vanilla_mrjob_fails_naming_a_missing_row(mds_data, tmp_path, caplog):
    from mrjob.step import StepFailedException

    vanilla = load_example("mds_vanilla")
    missing = 17
    inputs = []
    for k, path in enumerate(mds_data.inputs):  # the same splits, without row 17
        lines = open(path).read().splitlines(keepends=True)
        inputs.append(tmp_path / f"distances-{k}.txt")
        inputs[-1].write_text("".join(line for line in lines if line.split(None, 1)[0] != str(missing)))
    assert sum(len(p.read_text().splitlines()) for p in inputs) == 79
    with caplog.at_level("ERROR"), pytest.raises(StepFailedException):
        vanilla.iterate(["-r", "local", "-q", *map(str, inputs)], np.load(mds_data.initial), 1,
                        tolerance=0.0, stream=None)
    # The reducer's error, as mrjob reports a failed task ("Probable cause of failure").
    assert f"missing row(s) [{missing}]" in caplog.text


@e2e
def test_streaming_mapper_matches_reference(mds_data, delta, expected, sklearn_smacof, tmp_path,
                                            no_orphan_daemons):
    result = tmp_path / "x.npy"
    done = subprocess.run([sys.executable, "-m", "hcollectives", "run", "-q",
                           "--mapper", f"{sys.executable} {MAPPERS / 'mds_bc_mapper.py'}", "--allgather",
                           "--initial", mds_data.initial, "--max-iterations", str(ITERATIONS),
                           "--local-nodes", "2", "--result", str(result), *mds_data.inputs],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    check(np.load(result), expected, delta, sklearn_smacof)  # the last AllGather result is X_K


@e2e
def test_collective_stops_when_x_stops_moving(mds_data, delta, no_orphan_daemons):
    # The first iteration whose relative change of X is below the tolerance.
    tolerance, x = 0.105, np.load(mds_data.initial)
    for k in range(1, 30):
        new = smacof_reference(delta, x, 1)
        if np.linalg.norm(new - x) < tolerance * np.linalg.norm(x):
            break
        x = new
    assert 1 < k < 6  # a few iterations: this test must stay quick
    module = load_example("mds")
    out = module.MRMDS(args=["-r", "local", "-q", "--initial", mds_data.initial, "--max-iterations", "30",
                             "--tolerance", str(tolerance), *mds_data.inputs]).iterate()
    assert out.converged and out.iterations == k
    assert_rel_close(out.loop_data, new)
