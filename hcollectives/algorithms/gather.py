"""AllGather assembly as sans-IO state: one node collecting every task's rows.

Pieces (one `Block` per map task, keyed by task id) arrive in any order,
possibly more than once (retransmits, store fallback) and possibly from task
attempts that end up not counting (speculative or failed attempts). Which
pieces count is only known once the job tracker says which attempts
succeeded, so the expected set may be sealed after pieces have started
arriving: at that point pieces that are not expected are dropped.

The assembled result is merged in sorted piece-id order, so every node builds
the same block from the same pieces regardless of arrival order.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .block import Block
from .reduction import block_to_matrix, merge_disjoint


def _check_piece_id(piece_id: object) -> str:
    if not isinstance(piece_id, str):
        raise TypeError(f"piece id {piece_id!r} is not a str")
    return piece_id


class GatherAssembly:
    """Pieces of one AllGather held by one node, until every expected piece is in."""

    __slots__ = ("_expected", "_pieces", "_result")

    def __init__(self) -> None:
        self._expected: frozenset[str] | None = None
        self._pieces: dict[str, Block] = {}
        self._result: Block | None = None

    # -- state --------------------------------------------------------------

    @property
    def sealed(self) -> bool:
        """True once `expect` has fixed which pieces count."""
        return self._expected is not None

    @property
    def expected(self) -> frozenset[str] | None:
        return self._expected

    def held(self) -> tuple[str, ...]:
        """Ids of the pieces held now, sorted."""
        return tuple(sorted(self._pieces))

    @property
    def held_bytes(self) -> int:
        """Bytes of the pieces held now (the size of the result, once all are in)."""
        return sum(b.nbytes for b in self._pieces.values())

    def missing(self) -> tuple[str, ...]:
        """Expected pieces not held yet, sorted (what to fetch from the store)."""
        expected = self._require_sealed("missing()")
        return tuple(sorted(expected.difference(self._pieces)))

    @property
    def done(self) -> bool:
        return self._expected is not None and self._expected.issubset(self._pieces)

    # -- events -------------------------------------------------------------

    def expect(self, pieces: Iterable[str]) -> None:
        """Fix the set of piece ids that count; drop held pieces outside it.

        Calling it again with the same set is harmless (a re-announcement);
        with a different set it is a bug, because pieces dropped the first
        time cannot be brought back.
        """
        if isinstance(pieces, str):  # a bare str would be read as one id per character
            raise TypeError("pieces must be an iterable of piece ids, not a single str")
        expected = frozenset(_check_piece_id(p) for p in pieces)
        if self._expected is not None:
            if expected != self._expected:
                raise ValueError(
                    f"expected pieces already set to {len(self._expected)} ids; "
                    f"got a different set of {len(expected)} ids")
            return
        self._expected = expected
        for piece_id in [p for p in self._pieces if p not in expected]:
            del self._pieces[piece_id]  # from an attempt that did not count

    def add(self, piece_id: str, block: Block) -> bool:
        """Hold *block* as piece *piece_id*; False if that piece is already held.

        Before `expect`, any piece is held (it may turn out to count). After,
        a piece outside the expected set is an error: the caller should not
        be forwarding pieces of attempts it already knows did not count.
        """
        _check_piece_id(piece_id)
        if not isinstance(block, Block):
            raise TypeError(f"expected a Block, got {type(block).__name__}")
        if piece_id in self._pieces:
            return False  # retransmit or store fallback racing the network copy
        if self._expected is not None and piece_id not in self._expected:
            raise ValueError(f"piece {piece_id!r} is not one of the {len(self._expected)} expected pieces")
        self._pieces[piece_id] = block
        return True

    # -- result -------------------------------------------------------------

    def result(self) -> Block:
        """Union of all expected pieces, merged in sorted piece-id order."""
        if self._result is None:
            if not self.done:
                expected = self._require_sealed("result()")
                lacking = sorted(expected.difference(self._pieces))
                shown = ", ".join(map(repr, lacking[:5])) + (", ..." if len(lacking) > 5 else "")
                raise ValueError(f"AllGather not complete: {len(lacking)} piece(s) missing: {shown}")
            # Cached: once done nothing can change (a re-add is a duplicate,
            # anything else is rejected).
            self._result = merge_disjoint(self._pieces[p] for p in sorted(self._pieces))
        return self._result

    def matrix(self) -> np.ndarray:
        """The result as a 2-D array, one row per integer key in ascending order."""
        return block_to_matrix(self.result())

    def _require_sealed(self, what: str) -> frozenset[str]:
        if self._expected is None:
            raise ValueError(f"{what} needs the expected pieces; call expect() first")
        return self._expected

    def __repr__(self) -> str:
        expected = "?" if self._expected is None else str(len(self._expected))
        return f"GatherAssembly(held={len(self._pieces)}, expected={expected}, done={self.done})"
