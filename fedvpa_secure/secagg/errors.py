"""Errors specific to secure aggregation, all subclasses of the project's hierarchy.

:class:`ClientRejected` is what the server raises when one client's message is illegal: it names
the offender, the stage and the reason, and the round goes on without that client (the gRPC layer
maps it to ``INVALID_ARGUMENT``). Integrity failures stay the opaque
:class:`~fedvpa_secure.errors.IntegrityError`.
"""

from __future__ import annotations

from fedvpa_secure.errors import DataError, ProtocolError


class ClientRejected(ProtocolError):
    """The server refused one client's message; the client is out of this round.

    The round lives on without it, except in the graph-seed stage, where the seed needs every
    member of U1 (``fatal``): the round then aborts when the stage closes.

    Attributes:
        client_id: the offender (the authenticated sender of the message).
        stage: the protocol stage name at which the message arrived.
        reason: a human-readable reason that contains no secret material.
        fatal: whether losing this client will abort the round.
    """

    def __init__(
        self, round_id: str, client_id: str, stage: str, reason: str, *, fatal: bool = False
    ) -> None:
        self.round_id = round_id
        self.client_id = client_id
        self.stage = stage
        self.reason = reason
        self.fatal = fatal
        outcome = (
            "the round will abort: it cannot fix its graph without this client"
            if fatal
            else "the round continues without this client"
        )
        super().__init__(
            f"round {round_id!r}: rejected the {stage} message of client {client_id!r}: {reason}; "
            f"{outcome}"
        )


class InvalidUpdateError(DataError):
    """A local update does not match the round's layout or holds non-finite values."""
