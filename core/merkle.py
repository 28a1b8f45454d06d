"""Merkle trees over events' hashes, the shape of RFC 6962 (Certificate Transparency).

A leaf is SHA-256(0x00 || position, 8 bytes big-endian || the event's chain hash); a node is
SHA-256(0x01 || left || right); a tree of n > 1 leaves splits at k, the largest power of two below
n: its root is node(root of the first k, root of the rest). An inclusion proof of leaf m is the
list of sibling roots from the leaf up (RFC 6962's PATH(m, D[n])); `included` checks one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

LEAF, NODE = b"\x00", b"\x01"


def leaf(position: int, event_hash: bytes) -> bytes:
    return hashlib.sha256(LEAF + position.to_bytes(8, "big") + event_hash).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two below n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """The root over `leaves` (at least one)."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    level = list(leaves)
    # Bottom-up, pairing from the left and carrying an odd last node up unpaired: the same root as
    # RFC 6962's recursive split (its left subtrees are always complete).
    while len(level) > 1:
        paired = [node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The inclusion proof of leaf `index` among `leaves`: sibling roots, from the leaf up."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*path(index, leaves[:k]), root(leaves[k:])]
    return [*path(index - k, leaves[k:]), root(leaves[:k])]


def included(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], expected_root: bytes) -> bool:
    """Whether `proof` shows leaf `index` (of a tree of `size`) under `expected_root`."""
    if not 0 <= index < size:
        return False
    return _climb(index, size, leaf_hash, list(proof)) == expected_root


def _climb(index: int, size: int, leaf_hash: bytes, proof: list[bytes]) -> bytes | None:
    if size == 1:
        return leaf_hash if not proof else None
    if not proof:
        return None
    k = _split(size)
    sibling = proof[-1]
    if index < k:
        below = _climb(index, k, leaf_hash, proof[:-1])
        return None if below is None else node(below, sibling)
    below = _climb(index - k, size - k, leaf_hash, proof[:-1])
    return None if below is None else node(sibling, below)
