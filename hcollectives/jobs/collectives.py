"""The two collectives a job can declare, and the default post-process.

Kept free of mrjob and trio: streaming map tasks import this on every start.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..algorithms.block import Block
from ..algorithms.reduction import block_to_matrix, check_op
from ..errors import ConfigurationError


class AllReduce:
    """Map-AllReduce: values are combined per key with *op* across all tasks."""

    name = "allreduce"

    def __init__(self, op: str = "sum", *, allow_nonfinite: bool = False) -> None:
        self.op = check_op(op)
        self.allow_nonfinite = allow_nonfinite

    def result(self, block: Block) -> dict[Any, np.ndarray]:
        return block.to_dict()

    def __repr__(self) -> str:
        return f"AllReduce({self.op!r})"


class AllGather:
    """Map-AllGather: each task's rows (keyed by integer row index) reach every node."""

    name = "allgather"
    op = "none"

    def __init__(self, *, allow_nonfinite: bool = False) -> None:
        self.allow_nonfinite = allow_nonfinite

    def result(self, block: Block) -> np.ndarray:
        return block_to_matrix(block)

    def __repr__(self) -> str:
        return "AllGather()"


def default_post_process(collective: AllReduce | AllGather, result: Any) -> np.ndarray:
    """Loop data when the job defines no post_process: the result as an array."""
    if isinstance(result, np.ndarray):
        return result
    keys = sorted(result, key=lambda k: (isinstance(k, str), k))
    try:
        return np.stack([np.asarray(result[k]) for k in keys]) if keys else np.zeros((0, 0))
    except ValueError:
        raise ConfigurationError("AllReduce values differ in length per key; define post_process() "
                                 "to turn the {key: array} result into loop data") from None
