"""The frozen-mode embedding cache: exact round trip, persistence, and damaged chunks."""

from __future__ import annotations

import numpy as np

from fedvpa_secure.model.embedding_cache import EmbeddingCache, text_hash


def _find_text_whose_hash_ends_in_nul() -> str:
    i = 0
    while not text_hash(f"t{i}").endswith(b"\x00"):
        i += 1
    return f"t{i}"


def test_round_trip_survives_restart_and_hashes_ending_in_nul(tmp_path):
    texts = ["a", "b", _find_text_whose_hash_ends_in_nul()]
    vecs = np.arange(9, dtype=np.float32).reshape(3, 3)
    cache = EmbeddingCache(tmp_path, "key", 3)
    assert cache.missing(texts) == texts
    cache.add(texts, vecs)
    reopened = EmbeddingCache(tmp_path, "key", 3)
    assert reopened.missing(texts) == []
    np.testing.assert_array_equal(reopened.get(texts[::-1]), vecs[::-1])


def test_fill_embeds_only_missing_texts_once(tmp_path):
    cache = EmbeddingCache(tmp_path, "key", 2)
    calls = []

    def embed(batch):
        calls.extend(batch)
        return np.array([[len(t), 1.0] for t in batch], dtype=np.float32)

    assert cache.fill(["xx", "y", "xx"], embed, batch_size=1) == 2
    assert sorted(calls) == ["xx", "y"]
    assert cache.fill(["xx", "y", "zzz"], embed) == 1
    np.testing.assert_array_equal(cache.get(["zzz"]), [[3.0, 1.0]])


def test_other_backbones_and_damaged_chunks_are_not_trusted(tmp_path):
    cache = EmbeddingCache(tmp_path, "key-a", 2)
    cache.add(["a"], np.ones((1, 2), dtype=np.float32))
    assert EmbeddingCache(tmp_path, "key-b", 2).missing(["a"]) == ["a"]
    chunk = next(cache.directory.glob("chunk-*.npz"))
    chunk.write_bytes(b"not a zip file")
    assert EmbeddingCache(tmp_path, "key-a", 2).missing(["a"]) == ["a"]
