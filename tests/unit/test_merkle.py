"""core/merkle.py against RFC 6962's definitions (MTH and PATH, section 2.1), written here recursively."""

import hashlib

import pytest

from core import merkle


def mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


LEAVES = [merkle.leaf(1000 + i, hashlib.sha256(bytes([i])).digest()) for i in range(33)]


def test_a_leaf_binds_position_and_hash() -> None:
    event_hash = bytes(range(32))
    assert merkle.leaf(7, event_hash) == hashlib.sha256(b"\x00" + (7).to_bytes(8, "big") + event_hash).digest()
    assert merkle.leaf(8, event_hash) != merkle.leaf(7, event_hash)


@pytest.mark.parametrize("size", range(1, 34))
def test_root_and_every_inclusion_proof_agree_with_the_rfc(size: int) -> None:
    leaves = LEAVES[:size]
    root = merkle.root(leaves)
    assert root == mth(leaves)
    for index in range(size):
        proof = merkle.path(index, leaves)
        assert merkle.included(index, size, leaves[index], proof, root)
        assert not merkle.included(index, size, b"x" * 32, proof, root)
        if size > 1:
            assert not merkle.included((index + 1) % size, size, leaves[index], proof, root)
            assert not merkle.included(index, size, leaves[index], proof[:-1], root)


def test_an_empty_tree_has_no_root() -> None:
    with pytest.raises(ValueError):
        merkle.root([])
