"""Reproducible inputs (seeded), written as split files a job reads as its input.

    hcollectives datagen kmeans --points 20000 --dims 8 --clusters 8 --splits 4 --out data/
    hcollectives datagen power --n 400 --splits 4 --out data/
    hcollectives datagen mds --n 1000 --dims 3 --splits 4 --out data/
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Dataset:
    inputs: list[str]  # split files, in order
    initial: str  # .npy loop data of the first iteration


def _write_splits(out: str, stem: str, lines: list[str], splits: int) -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = []
    for s, chunk in enumerate(np.array_split(np.arange(len(lines)), splits)):
        path = os.path.join(out, f"{stem}-{s:03d}.txt")
        with open(path, "w") as f:
            f.writelines(lines[i] for i in chunk)
        paths.append(path)
    return paths


def kmeans(out: str, *, points: int, dims: int, clusters: int, splits: int = 4, seed: int = 0) -> Dataset:
    """Gaussian blobs around random centres; the first *clusters* points seed the centroids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(clusters, dims))
    x = centres[rng.integers(clusters, size=points)] + rng.normal(size=(points, dims))
    lines = [" ".join(repr(v) for v in row) + "\n" for row in x.tolist()]
    inputs = _write_splits(out, "points", lines, splits)
    initial = os.path.join(out, "kmeans-init.npy")
    np.save(initial, x[:clusters], allow_pickle=False)
    return Dataset(inputs, initial)


def power(out: str, *, n: int, splits: int = 4, seed: int = 0) -> Dataset:
    """A symmetric matrix with a clear dominant eigenvalue; rows as ``i a_i0 ...``."""
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(n, n))
    a = (b + b.T) / 2 + n * np.outer(np.ones(n), np.ones(n)) / n
    lines = [f"{i} " + " ".join(repr(v) for v in row) + "\n" for i, row in enumerate(a.tolist())]
    inputs = _write_splits(out, "matrix", lines, splits)
    initial = os.path.join(out, "power-init.npy")
    np.save(initial, np.ones(n) / np.sqrt(n), allow_pickle=False)
    return Dataset(inputs, initial)


def mds(out: str, *, n: int, dims: int = 3, splits: int = 4, seed: int = 0) -> Dataset:
    """A distance matrix for SMACOF MDS, rows as ``i d_i0 ... d_i(n-1)``.

    The distances are Euclidean between *n* points drawn around 5 Gaussian
    centres in 10-D (so a *dims*-D embedding has real work to do); the matrix
    is exactly symmetric with an exactly zero diagonal. The initial loop data
    is a seeded random (n x dims) configuration.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(5, 10))
    points = centres[rng.integers(len(centres), size=n)] + rng.normal(size=(n, 10))
    lines = []
    for start in range(0, n, 256):  # row blocks: never an (n x n x 10) temporary
        block = points[start:start + 256]
        delta = np.sqrt(((block[:, None, :] - points[None, :, :]) ** 2).sum(-1))
        lines += [f"{start + k} " + " ".join(repr(v) for v in row) + "\n" for k, row in enumerate(delta.tolist())]
    inputs = _write_splits(out, "distances", lines, splits)
    initial = os.path.join(out, "mds-init.npy")
    np.save(initial, rng.normal(size=(n, dims)), allow_pickle=False)
    return Dataset(inputs, initial)


def load_points(paths: list[str]) -> np.ndarray:
    return np.concatenate([np.loadtxt(p, ndmin=2) for p in paths])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", required=True)
    km = sub.add_parser("kmeans", help="points around Gaussian centres")
    km.add_argument("--points", type=int, default=20000)
    km.add_argument("--dims", type=int, default=8)
    km.add_argument("--clusters", type=int, default=8)
    pw = sub.add_parser("power", help="a dense symmetric matrix, one row per line")
    pw.add_argument("--n", type=int, default=400)
    md = sub.add_parser("mds", help="a Euclidean distance matrix for SMACOF MDS, one row per line")
    md.add_argument("--n", type=int, default=1000, help="number of points (rows)")
    md.add_argument("--dims", type=int, default=3, help="embedding dimensions (columns of the initial X)")
    for p in (km, pw, md):
        p.add_argument("--splits", type=int, default=4, help="number of input files")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True, help="output directory")


def main(args: argparse.Namespace) -> int:
    if args.dataset == "kmeans":
        ds = kmeans(args.out, points=args.points, dims=args.dims, clusters=args.clusters,
                    splits=args.splits, seed=args.seed)
    elif args.dataset == "mds":
        ds = mds(args.out, n=args.n, dims=args.dims, splits=args.splits, seed=args.seed)
    else:
        ds = power(args.out, n=args.n, splits=args.splits, seed=args.seed)
    print(f"wrote {len(ds.inputs)} input file(s) and {ds.initial}")
    return 0
