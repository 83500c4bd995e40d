#!/usr/bin/env python3
"""Power iteration as a plain Hadoop-streaming mapper, for Map-AllGather.

Input lines are ``i a_i0 a_i1 ...`` (row i of A); x comes from the .npy named
by $HCOLLECTIVES_LOOP_DATA. Output: ``i<TAB>(A x)_i``. Normalising y into the
next x is the post-process step (``--post-process``):

    hcollectives run --mapper "python mappers/power_mapper.py" --allgather \
        --post-process "python mappers/power_mapper.py --post-process" \
        --initial x0.npy --max-iterations 20 --result y.npy matrix.txt
"""

import os
import sys

import numpy as np


def map_rows(stdin, stdout, x):
    for line in stdin:
        if line.strip():
            row = np.array(line.split(), float)
            stdout.write(f"{int(row[0])}\t{float(row[1:] @ x)!r}\n")


def post_process(result_path, output_path):
    y = np.load(result_path, allow_pickle=False)[:, 0]
    np.save(output_path, y / np.linalg.norm(y), allow_pickle=False)


if __name__ == "__main__":
    env = os.environ
    if "--post-process" in sys.argv[1:]:
        post_process(env["HCOLLECTIVES_RESULT"], env["HCOLLECTIVES_OUTPUT"])
    else:
        map_rows(sys.stdin, sys.stdout, np.load(env["HCOLLECTIVES_LOOP_DATA"], allow_pickle=False))
