"""On-disk cache of frozen-backbone embeddings, keyed by backbone and text hash.

Frozen mode embeds every text once: MiniLM manages 25-60 texts a second on two cores, so a 17 k
text pool costs minutes, and every later run reuses it. Entries are append-only chunk files, each
written to a temporary name and moved into place with ``os.replace``, so a crash mid-write never
leaves a half-written chunk that a later run would trust.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def text_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Maps text -> float32 vector for one backbone configuration."""

    def __init__(self, root: str | os.PathLike[str], backbone_key: str, dim: int) -> None:
        digest = hashlib.sha256(backbone_key.encode()).hexdigest()[:16]
        self.directory = Path(root) / digest
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "BACKBONE").write_text(backbone_key + "\n")
        self.dim = dim
        self._index: dict[bytes, tuple[int, int]] = {}
        self._chunks: list[np.ndarray] = []
        for path in sorted(self.directory.glob("chunk-*.npz")):
            self._load_chunk(path)

    def _load_chunk(self, path: Path) -> None:
        try:
            with np.load(path) as data:
                hashes, vectors = data["hashes"], data["vectors"].astype(np.float32)
            if hashes.dtype != np.uint8 or hashes.ndim != 2 or hashes.shape[1] != 32:
                raise ValueError(f"hashes have dtype {hashes.dtype} and shape {hashes.shape}")
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable embedding cache chunk %s (%s)", path, err)
            return
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(hashes) != len(vectors):
            log.warning("ignoring embedding cache chunk %s with shape %s", path, vectors.shape)
            return
        chunk_id = len(self._chunks)
        self._chunks.append(vectors)
        for row, h in enumerate(hashes):
            self._index[h.tobytes()] = (chunk_id, row)

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, texts: Sequence[str]) -> list[str]:
        """Distinct texts not yet cached, in first-seen order."""
        seen: set[bytes] = set()
        out = []
        for text in texts:
            h = text_hash(text)
            if h not in self._index and h not in seen:
                seen.add(h)
                out.append(text)
        return out

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Persist a batch atomically, then make it visible in memory."""
        if len(texts) == 0:
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        # raw uint8 rows: numpy's fixed-width bytes dtype would strip trailing NUL bytes
        hashes = np.frombuffer(b"".join(text_hash(t) for t in texts), dtype=np.uint8).reshape(
            -1, 32
        )
        final = self.directory / f"chunk-{uuid.uuid4().hex}.npz"
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, hashes=hashes, vectors=vectors)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._load_chunk(final)

    def get(self, texts: Sequence[str]) -> np.ndarray:
        """Stack cached vectors for ``texts``; every text must be cached."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            chunk_id, row = self._index[text_hash(text)]
            out[i] = self._chunks[chunk_id][row]
        return out

    def fill(
        self,
        texts: Sequence[str],
        embed_batch: Callable[[list[str]], np.ndarray],
        batch_size: int = 32,
        save_every: int = 1024,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Embed the missing texts (shortest first, to cut padding) and persist as it goes."""
        todo = sorted(self.missing(texts), key=len)
        pending_texts: list[str] = []
        pending_vecs: list[np.ndarray] = []
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            pending_texts.extend(batch)
            pending_vecs.append(embed_batch(batch))
            if progress is not None:
                progress(len(batch))
            if len(pending_texts) >= save_every:
                self.add(pending_texts, np.concatenate(pending_vecs))
                pending_texts, pending_vecs = [], []
        if pending_texts:
            self.add(pending_texts, np.concatenate(pending_vecs))
        return len(todo)
