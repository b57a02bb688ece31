"""Regenerate the secure-aggregation known-answer vectors - deliberately.

The JSON files next to this script freeze the PRG output and every domain-separation label of
the protocol. Changing either breaks interoperability with every deployed client, so the files
are only rewritten on purpose::

    python tests/protocol/vectors/regenerate.py           # check: exit 1 if the code disagrees
    python tests/protocol/vectors/regenerate.py --write   # rewrite after a deliberate change
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from fedvpa_secure.secagg import commitments, graph, kdf, keys, layout, prg, shamir
from fedvpa_secure.secagg.config import CONFIG_LABEL
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION

HERE = Path(__file__).resolve().parent
KEY_A = hashlib.sha256(b"fedvpa-secagg kat key A").digest()
KEY_B = bytes(range(32))
IKM = hashlib.sha256(b"fedvpa-secagg kat ikm").digest()
SALT = hashlib.sha256(b"fedvpa-secagg kat session").digest()


def _words(key: bytes, algorithm: str, offset: int, count: int) -> list[int]:
    out = np.empty(count, dtype=np.uint32)
    prg.keystream_into(key, out, algorithm=algorithm, offset=offset)
    return [int(w) for w in out]


def _digest(key: bytes, algorithm: str) -> str:
    out = np.empty(1 << 16, dtype=np.uint32)
    prg.keystream_into(key, out, algorithm=algorithm)
    return hashlib.sha256(out.astype("<u4").tobytes()).hexdigest()


def prg_vectors() -> dict:
    vectors = []
    for algorithm in prg.ALGORITHMS:
        for key, offset in ((KEY_A, 0), (KEY_B, 0), (KEY_A, 1_000_003)):
            vectors.append(
                {
                    "algorithm": algorithm,
                    "key": key.hex(),
                    "offset": offset,
                    "words": _words(key, algorithm, offset, 12),
                    "sha256_of_first_65536_words_le": _digest(key, algorithm)
                    if offset == 0
                    else None,
                }
            )
    return {
        "description": "mask PRG: keystream read as little-endian uint32 words from word `offset`",
        "vectors": vectors,
    }


def hkdf_vectors() -> dict:
    session_keys = {
        "c001": (hashlib.sha256(b"c1").digest(), hashlib.sha256(b"m1").digest()),
        "c000": (hashlib.sha256(b"c0").digest(), hashlib.sha256(b"m0").digest()),
    }
    digest_c = hashlib.sha256(b"config").digest()
    digest_l = hashlib.sha256(b"layout").digest()
    share = shamir.Share(3, 123456789)
    return {
        "description": "HKDF-SHA256 labels, derivations and hashed encodings of the protocol",
        "protocol_version": PROTOCOL_VERSION,
        "labels": {
            "share-key": kdf.LABEL_SHARE_KEY.decode(),
            "pair-mask": kdf.LABEL_PAIR_MASK.decode(),
            "self-mask": kdf.LABEL_SELF_MASK.decode(),
            "session": kdf.LABEL_SESSION.decode(),
            "advertise": keys.LABEL_ADVERTISE.decode(),
            "consistency": keys.LABEL_CONSISTENCY.decode(),
            "share-tag": shamir.LABEL_TAG.decode(),
            "share-commitment": commitments.LABEL_SHARE.decode(),
            "secret-commitment": commitments.LABEL_SECRET.decode(),
            "graph": graph.LABEL_GRAPH.decode(),
            "graph-nonce-commitment": graph.LABEL_NONCE_COMMITMENT.decode(),
            "key-directory": keys.LABEL_DIRECTORY.decode(),
            "layout": layout.LABEL_LAYOUT.decode(),
            "config": CONFIG_LABEL.decode(),
        },
        "ikm": IKM.hex(),
        "salt": SALT.hex(),
        "share_key": {
            "sender": "c001",
            "receiver": "c002",
            "out": kdf.share_key(IKM, SALT, "c001", "c002").hex(),
        },
        "share_key_reverse": {
            "sender": "c002",
            "receiver": "c001",
            "out": kdf.share_key(IKM, SALT, "c002", "c001").hex(),
        },
        "pair_mask_key": {
            "a": "c002",
            "b": "c001",
            "out": kdf.pair_mask_key(IKM, SALT, "c002", "c001").hex(),
        },
        "self_mask_key": {"owner": "c001", "out": kdf.self_mask_key(IKM, SALT, "c001").hex()},
        "session_id": {
            "round_id": "round-7",
            "config_digest": digest_c.hex(),
            "layout_digest": digest_l.hex(),
            "keys": {u: [c.hex(), m.hex()] for u, (c, m) in session_keys.items()},
            "out": kdf.session_id(
                version=PROTOCOL_VERSION,
                round_id="round-7",
                config_digest=digest_c,
                layout_digest=digest_l,
                keys=session_keys,
            ).hex(),
        },
        "advertisement_payload_sha256": hashlib.sha256(
            keys.advertisement_payload("round-7", "c001", digest_c, digest_l, KEY_A, KEY_B, IKM)
        ).hexdigest(),
        "directory_payload_sha256": hashlib.sha256(
            keys.directory_payload(SALT, {"c002": KEY_A, "c001": KEY_B})
        ).hexdigest(),
        "consistency_payload_sha256": hashlib.sha256(
            keys.consistency_payload(SALT, ["c002", "c000", "c001"])
        ).hexdigest(),
        "encoded_share": shamir.encode_share(share, shamir.share_context(SALT, "c001", "b")).hex(),
        "share_commitment": commitments.share_commitment(SALT, "c001", "c002", "b", b"xyz").hex(),
        "secret_commitment": commitments.secret_commitment(SALT, "c001", KEY_B).hex(),
    }


def graph_vectors() -> dict:
    members = [f"c{i:03d}" for i in range(12)]
    nonces = {u: hashlib.sha256(b"nonce " + u.encode()).digest() for u in members}
    seed = graph.graph_seed("round-7", nonces)
    nbrs = graph.neighbourhoods(members, 4, seed)
    return {
        "description": "SecAgg+ graph: nonce commitments, commit-reveal seed, seeded "
        "permutation, Harary H(12, 4)",
        "round_id": "round-7",
        "members": members,
        "nonces": {u: n.hex() for u, n in nonces.items()},
        "commitments": {
            u: graph.nonce_commitment("round-7", u, n).hex() for u, n in nonces.items()
        },
        "degree": 4,
        "seed": seed.hex(),
        "permutation": graph.permutation(members, seed),
        "neighbours": {u: sorted(v) for u, v in sorted(nbrs.items())},
    }


FILES = {"prg.json": prg_vectors, "hkdf_labels.json": hkdf_vectors, "graph.json": graph_vectors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the JSON files")
    args = parser.parse_args(argv)
    status = 0
    for name, build in FILES.items():
        text = json.dumps(build(), indent=1, sort_keys=True) + "\n"
        path = HERE / name
        if args.write:
            path.write_text(text)
            print(f"wrote {path}")
        elif not path.exists() or path.read_text() != text:
            print(f"MISMATCH {path}: the code no longer produces the stored vectors")
            status = 1
        else:
            print(f"ok {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
