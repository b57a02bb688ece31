"""The mask PRG: a stream-cipher keystream read as little-endian uint32 words.

Why a keystream and not a seeded numpy generator: a mask must be unpredictable to anyone without
the 256-bit seed. AES-256-CTR (or ChaCha20) keyed with an HKDF output is a standard PRG; reading its
bytes as uint32 gives uniform ring elements with no modulo bias (Bonawitz et al. 2017, Sec. 3,
"pseudorandom generator"). Flower's fold of the seed to 32 bits for Mersenne Twister (issue 7522)
is exactly what this avoids.

Speed matters because the server regenerates one stream per surviving client and one per
(dropped, surviving) neighbour pair. Three things make it fast:

* the cipher writes straight into preallocated buffers (``update_into``); a fresh buffer per call
  costs ~10x;
* streams are added into the accumulator chunk by chunk (64 Ki words), so each accumulator chunk
  stays in cache while every stream passes over it;
* both ciphers are seekable (counter mode), so the vector is split into ranges that threads fill
  independently; ``cryptography`` releases the GIL while it encrypts and numpy while it adds.

Every key is used for exactly one stream, so the counter starts at zero with a zero nonce.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

ALGORITHMS = ("aes-256-ctr", "chacha20")
KEY_BYTES = 32
_WORDS_PER_BLOCK = {"aes-256-ctr": 4, "chacha20": 16}
CHUNK_WORDS = 1 << 16
"""Words generated per cipher call: 256 KiB, a cache-resident slice of the accumulator."""
_ZEROS = bytes(4 * CHUNK_WORDS)  # read-only plaintext; encrypting zeros yields the keystream
_MIN_WORDS_PER_THREAD = 1 << 18  # below this, thread start-up costs more than it saves
_local = threading.local()
_LITTLE = np.little_endian

Stream = tuple[bytes, int]
"""A mask stream: (32-byte key, sign +1 to add or -1 to subtract)."""


def _scratch() -> np.ndarray:
    buf = getattr(_local, "scratch", None)
    if buf is None:
        buf = np.empty(CHUNK_WORDS, dtype=np.uint32)
        _local.scratch = buf
    return buf


def _check(key: bytes, algorithm: str) -> None:
    if algorithm not in _WORDS_PER_BLOCK:
        raise ValueError(f"unknown keystream algorithm {algorithm!r}; use one of {ALGORITHMS}")
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError("a keystream key is exactly 32 bytes")


def _encryptor(key: bytes, algorithm: str, block: int) -> CipherContext:
    if algorithm == "aes-256-ctr":
        return Cipher(algorithms.AES(key), modes.CTR(block.to_bytes(16, "big"))).encryptor()
    # cryptography's ChaCha20 nonce is a 32-bit little-endian block counter + a 96-bit nonce
    nonce = block.to_bytes(4, "little") + bytes(12)
    return Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()


def _positioned(key: bytes, algorithm: str, offset: int) -> CipherContext:
    """An encryptor whose next output byte is keystream word ``offset``."""
    per_block = _WORDS_PER_BLOCK[algorithm]
    enc = _encryptor(key, algorithm, offset // per_block)
    skip = offset % per_block
    if skip:
        enc.update(bytes(4 * skip))
    return enc


def keystream_into(
    key: bytes, out: np.ndarray, *, algorithm: str = "aes-256-ctr", offset: int = 0
) -> None:
    """Overwrite the uint32 vector ``out`` with keystream words ``offset .. offset + len(out)``.

    Args:
        key: the 32-byte stream key (an HKDF output; never reused for another stream).
        out: a C-contiguous uint32 vector, written in place.
        algorithm: ``"aes-256-ctr"`` or ``"chacha20"``.
        offset: the index of the first word, so a stream can be produced in independent ranges.
    """
    _check(key, algorithm)
    if out.dtype != np.uint32 or out.ndim != 1 or not out.flags.c_contiguous:
        raise ValueError("keystream_into needs a C-contiguous 1-D uint32 buffer")
    enc = _positioned(key, algorithm, offset)
    view = memoryview(out).cast("B")
    zeros = memoryview(_ZEROS)
    for start in range(0, out.size, CHUNK_WORDS):
        stop = min(out.size, start + CHUNK_WORDS)
        enc.update_into(zeros[: 4 * (stop - start)], view[4 * start : 4 * stop])
    if not _LITTLE:
        out.byteswap(inplace=True)  # words are little-endian by definition


def _accumulate_range(
    acc: np.ndarray, streams: Sequence[Stream], algorithm: str, start: int, stop: int
) -> None:
    scratch = _scratch()
    sview = memoryview(scratch).cast("B")
    zeros = memoryview(_ZEROS)
    encs = [(_positioned(key, algorithm, start), sign) for key, sign in streams]
    for lo in range(start, stop, CHUNK_WORDS):
        hi = min(stop, lo + CHUNK_WORDS)
        m = hi - lo
        nbytes = 4 * m
        target = acc[lo:hi]
        words = scratch[:m]
        for enc, sign in encs:
            enc.update_into(zeros[:nbytes], sview[:nbytes])
            if not _LITTLE:
                words.byteswap(inplace=True)
            if sign > 0:
                np.add(target, words, out=target)
            else:
                np.subtract(target, words, out=target)


def default_workers() -> int:
    """Threads for stream accumulation: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def accumulate(
    acc: np.ndarray,
    streams: Sequence[Stream],
    *,
    algorithm: str = "aes-256-ctr",
    workers: int | None = None,
) -> None:
    """Add (sign +1) or subtract (sign -1) each stream's keystream into ``acc``, mod 2^32, in place.

    Args:
        acc: the C-contiguous uint32 accumulator.
        streams: ``(key, sign)`` pairs.
        algorithm: the keystream cipher.
        workers: threads; ``None`` picks :func:`default_workers`. Each thread owns a contiguous,
            block-aligned range of ``acc`` and runs every stream over it, so no two threads write
            the same word and the result is identical for any number of workers.
    """
    if acc.dtype != np.uint32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ValueError("accumulate needs a C-contiguous 1-D uint32 accumulator")
    for key, sign in streams:
        _check(key, algorithm)
        if sign not in (1, -1):
            raise ValueError("a stream sign is +1 or -1")
    if not streams or acc.size == 0:
        return
    n_workers = default_workers() if workers is None else max(1, int(workers))
    n_workers = max(1, min(n_workers, acc.size // _MIN_WORDS_PER_THREAD))
    if n_workers == 1:
        _accumulate_range(acc, streams, algorithm, 0, acc.size)
        return
    align = _WORDS_PER_BLOCK[algorithm]
    bounds = [((acc.size * w) // n_workers) // align * align for w in range(n_workers)]
    bounds.append(acc.size)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="secagg-prg") as pool:
        futures = [
            pool.submit(_accumulate_range, acc, streams, algorithm, bounds[w], bounds[w + 1])
            for w in range(n_workers)
        ]
        for future in futures:
            future.result()
