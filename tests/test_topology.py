"""Tests for `hcollectives.algorithms.topology`: heap-shaped reduction trees and rank assignment."""

from __future__ import annotations

import random
from collections import deque

import pytest

from hcollectives.algorithms.topology import Tree, ranks_of
from hcollectives.errors import ConfigurationError

GRID = [(size, fanout) for size in range(1, 41) for fanout in range(1, 6)]


def minimal_depth(size: int, fanout: int) -> int:
    """Fewest levels below the root that can hold *size* nodes with this fanout."""
    depth, capacity, level_width = 0, 1, 1
    while capacity < size:
        level_width *= fanout
        capacity += level_width
        depth += 1
    return depth


@pytest.mark.parametrize("size, fanout", GRID)
def test_tree_structure(size: int, fanout: int) -> None:
    tree = Tree(size, fanout)
    assert tree.parent(0) is None
    child_lists = {r: tree.children(r) for r in range(size)}

    # every non-root rank is the child of exactly one rank, and that rank is its parent
    owners: dict[int, list[int]] = {}
    for rank, kids in child_lists.items():
        assert list(kids) == sorted(kids) and len(kids) <= fanout
        for kid in kids:
            owners.setdefault(kid, []).append(rank)
            assert tree.parent(kid) == rank
    assert sorted(owners) == list(range(1, size))
    assert all(len(v) == 1 for v in owners.values())
    for rank in range(1, size):
        parent = tree.parent(rank)
        assert parent is not None and 0 <= parent < rank
        assert rank in child_lists[parent]

    # all ranks reachable from the root; BFS levels agree with level() and depth
    levels = {0: 0}
    queue = deque([0])
    while queue:
        rank = queue.popleft()
        for kid in child_lists[rank]:
            assert kid not in levels  # a tree: no rank reached twice
            levels[kid] = levels[rank] + 1
            queue.append(kid)
    assert sorted(levels) == list(range(size))
    assert all(tree.level(r) == levels[r] for r in range(size))
    assert tree.depth == max(levels.values()) == minimal_depth(size, fanout)

    # only ranks on the last two levels can be leaves (heap shape = minimal depth)
    for rank in range(size):
        assert tree.is_leaf(rank) == (not child_lists[rank])
        if tree.is_leaf(rank):
            assert levels[rank] >= tree.depth - 1


@pytest.mark.parametrize("size, fanout", GRID)
def test_subtree_matches_graph_walk(size: int, fanout: int) -> None:
    tree = Tree(size, fanout)
    for rank in range(size):
        walked, stack = set(), [rank]
        while stack:
            node = stack.pop()
            walked.add(node)
            stack.extend(tree.children(node))
        assert tree.subtree(rank) == tuple(sorted(walked))
    assert tree.subtree(0) == tuple(range(size))


def test_known_shapes() -> None:
    tree = Tree(10, 3)
    assert tree.children(0) == (1, 2, 3)
    assert tree.children(2) == (7, 8, 9)
    assert tree.children(3) == ()
    assert tree.subtree(1) == (1, 4, 5, 6)
    assert tree.depth == 2
    chain = Tree(4, 1)
    assert [chain.children(r) for r in range(4)] == [(1,), (2,), (3,), ()]
    assert chain.depth == 3 and chain.subtree(2) == (2, 3)
    assert Tree(1, 2).depth == 0 and Tree(1, 2).children(0) == ()


@pytest.mark.parametrize("size, fanout", [(0, 2), (-1, 2), (3, 0), (3, -2), (2.0, 2), (2, None), (True, 2), (2, True)])
def test_tree_rejects_bad_parameters(size: object, fanout: object) -> None:
    with pytest.raises(ConfigurationError):
        Tree(size, fanout)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["parent", "children", "subtree", "level", "is_leaf"])
@pytest.mark.parametrize("rank", [-1, 5, 6, 1.0, None, True])
def test_rank_arguments_are_validated(method: str, rank: object) -> None:
    with pytest.raises(ValueError, match=r"rank .* size 5"):
        getattr(Tree(5, 2), method)(rank)


def test_tree_is_frozen_value() -> None:
    tree = Tree(5, 2)
    assert tree == Tree(5, 2) and hash(tree) == hash(Tree(5, 2))
    with pytest.raises(AttributeError):
        tree.size = 6  # type: ignore[misc]


def test_ranks_of_is_sorted_and_order_independent() -> None:
    members = [f"node-{i:03d}" for i in range(25)]
    expected = {m: i for i, m in enumerate(members)}
    rng = random.Random(7)
    for _ in range(20):
        shuffled = members[:]
        rng.shuffle(shuffled)
        assert ranks_of(shuffled) == expected
        assert ranks_of(tuple(shuffled)) == expected
    assert ranks_of(["b", "a", "c"]) == {"a": 0, "b": 1, "c": 2}
    assert ranks_of([]) == {}


def test_ranks_of_rejects_duplicates_and_bad_ids() -> None:
    with pytest.raises(ConfigurationError, match="'b'"):
        ranks_of(["a", "b", "c", "b"])
    with pytest.raises(ConfigurationError):
        ranks_of(["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        ranks_of("abc")
