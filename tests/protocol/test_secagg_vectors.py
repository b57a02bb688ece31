"""Known-answer vectors for the PRG, the HKDF labels and the SecAgg+ graph, stored as files.

The files in ``vectors/`` are written only by ``vectors/regenerate.py --write``; a change in the
code that alters any output fails here. ``test_secagg_primitives.py`` checks the same functions
against independent oracles (AES-ECB counter blocks, a hand-written RFC 5869 HKDF).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fedvpa_secure.secagg import commitments, graph, kdf, keys, layout, prg, shamir
from fedvpa_secure.secagg.config import CONFIG_LABEL

VECTORS = Path(__file__).resolve().parent / "vectors"


def _load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


@pytest.mark.parametrize(
    "vector", _load("prg.json")["vectors"], ids=lambda v: f"{v['algorithm']}@{v['offset']}"
)
def test_prg_known_answers(vector: dict) -> None:
    key = bytes.fromhex(vector["key"])
    out = np.empty(len(vector["words"]), dtype=np.uint32)
    prg.keystream_into(key, out, algorithm=vector["algorithm"], offset=vector["offset"])
    assert out.tolist() == vector["words"]
    if vector["sha256_of_first_65536_words_le"]:
        full = np.empty(1 << 16, dtype=np.uint32)
        prg.keystream_into(key, full, algorithm=vector["algorithm"])
        digest = hashlib.sha256(full.astype("<u4").tobytes()).hexdigest()
        assert digest == vector["sha256_of_first_65536_words_le"]


def test_hkdf_labels_and_derivations() -> None:
    v = _load("hkdf_labels.json")
    assert v["labels"] == {
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
    }
    assert all(label.startswith("fedvpa-secagg/v1/") for label in v["labels"].values())
    ikm, salt = bytes.fromhex(v["ikm"]), bytes.fromhex(v["salt"])
    for name in ("share_key", "share_key_reverse"):
        s = v[name]
        assert kdf.share_key(ikm, salt, s["sender"], s["receiver"]).hex() == s["out"]
    assert v["share_key"]["out"] != v["share_key_reverse"]["out"]  # one key per direction
    p = v["pair_mask_key"]
    assert kdf.pair_mask_key(ikm, salt, p["a"], p["b"]).hex() == p["out"]
    assert kdf.pair_mask_key(ikm, salt, p["b"], p["a"]).hex() == p["out"]  # symmetric
    assert (
        kdf.self_mask_key(ikm, salt, v["self_mask_key"]["owner"]).hex() == v["self_mask_key"]["out"]
    )
    s = v["session_id"]
    session = kdf.session_id(
        version=v["protocol_version"],
        round_id=s["round_id"],
        config_digest=bytes.fromhex(s["config_digest"]),
        layout_digest=bytes.fromhex(s["layout_digest"]),
        keys={u: (bytes.fromhex(c), bytes.fromhex(m)) for u, (c, m) in s["keys"].items()},
    )
    assert session.hex() == s["out"]


def test_hashed_encodings_known_answers() -> None:
    v = _load("hkdf_labels.json")
    salt = bytes.fromhex(v["salt"])
    key_a = hashlib.sha256(b"fedvpa-secagg kat key A").digest()
    digest_c, digest_l = hashlib.sha256(b"config").digest(), hashlib.sha256(b"layout").digest()
    ikm = bytes.fromhex(v["ikm"])
    payload = keys.advertisement_payload(
        "round-7", "c001", digest_c, digest_l, key_a, bytes(range(32)), ikm
    )
    assert hashlib.sha256(payload).hexdigest() == v["advertisement_payload_sha256"]
    payload = keys.directory_payload(salt, {"c002": key_a, "c001": bytes(range(32))})
    assert hashlib.sha256(payload).hexdigest() == v["directory_payload_sha256"]
    payload = keys.consistency_payload(salt, ["c002", "c000", "c001"])
    assert hashlib.sha256(payload).hexdigest() == v["consistency_payload_sha256"]
    share = shamir.encode_share(shamir.Share(3, 123456789), shamir.share_context(salt, "c001", "b"))
    assert share.hex() == v["encoded_share"]
    assert (
        commitments.share_commitment(salt, "c001", "c002", "b", b"xyz").hex()
        == v["share_commitment"]
    )
    assert (
        commitments.secret_commitment(salt, "c001", bytes(range(32))).hex()
        == v["secret_commitment"]
    )


def test_graph_known_answers() -> None:
    v = _load("graph.json")
    nonces = {u: bytes.fromhex(n) for u, n in v["nonces"].items()}
    assert sorted(nonces) == sorted(v["members"])
    for u, n in nonces.items():
        assert graph.nonce_commitment(v["round_id"], u, n).hex() == v["commitments"][u]
    seed = graph.graph_seed(v["round_id"], nonces)
    assert seed.hex() == v["seed"]
    assert graph.permutation(v["members"], seed) == v["permutation"]
    nbrs = graph.neighbourhoods(v["members"], v["degree"], seed)
    assert {u: sorted(n) for u, n in nbrs.items()} == v["neighbours"]


def test_regenerate_script_agrees_with_the_files() -> None:
    spec = importlib.util.spec_from_file_location("secagg_regenerate", VECTORS / "regenerate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 0
