"""The wire layer: protobuf <-> arrays and secagg messages (with checks), TLS, chunking.

Nothing here knows about rounds; the server and client packages use these helpers so that
servicers stay thin.
"""

from fedvpa_secure.transport.chunking import CHUNK_BYTES, iter_chunks, reassemble
from fedvpa_secure.transport.serde import (
    arrays_to_bundle,
    bundle_to_arrays,
    message_from_proto,
    message_to_proto,
    parse_secagg,
    state_hash,
)
from fedvpa_secure.transport.tls import (
    channel_credentials,
    peer_client_id,
    server_credentials,
)

__all__ = [
    "CHUNK_BYTES",
    "arrays_to_bundle",
    "bundle_to_arrays",
    "channel_credentials",
    "iter_chunks",
    "message_from_proto",
    "message_to_proto",
    "parse_secagg",
    "peer_client_id",
    "reassemble",
    "server_credentials",
    "state_hash",
]
