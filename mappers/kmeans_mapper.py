#!/usr/bin/env python3
"""K-means as a plain Hadoop-streaming mapper (stdin -> ``cluster<TAB>sum... 1``).

Centroids come from the .npy named by $HCOLLECTIVES_LOOP_DATA. Run it with

    hcollectives run --mapper "python mappers/kmeans_mapper.py" --allreduce sum \
        --post-process "python mappers/kmeans_mapper.py --post-process" \
        --initial init.npy --max-iterations 10 --result sums.npz points.txt

With ``--post-process`` it is instead the post-process step: it turns the
AllReduce result ($HCOLLECTIVES_RESULT, .npz of [sum..., count] per cluster)
into new centroids ($HCOLLECTIVES_OUTPUT), keeping the previous centroid
($HCOLLECTIVES_LOOP_DATA) of an empty cluster.
"""

import os
import sys

import numpy as np


def map_points(stdin, stdout, centroids):
    for line in stdin:
        if not line.strip():
            continue
        x = np.array(line.split(), float)
        c = int(((centroids - x) ** 2).sum(1).argmin())
        stdout.write(f"{c}\t{' '.join(map(repr, x.tolist()))} 1\n")


def post_process(result_path, previous_path, output_path):
    centroids = np.load(previous_path, allow_pickle=False).copy()
    with np.load(result_path, allow_pickle=False) as sums:
        for key in sums.files:
            v = sums[key]
            centroids[int(key)] = v[:-1] / v[-1]
    np.save(output_path, centroids, allow_pickle=False)


if __name__ == "__main__":
    env = os.environ
    if "--post-process" in sys.argv[1:]:
        post_process(env["HCOLLECTIVES_RESULT"], env["HCOLLECTIVES_LOOP_DATA"], env["HCOLLECTIVES_OUTPUT"])
    else:
        map_points(sys.stdin, sys.stdout, np.load(env["HCOLLECTIVES_LOOP_DATA"], allow_pickle=False))
