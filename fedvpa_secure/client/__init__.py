"""The client process: mTLS channel, its own data and budget, the secure-aggregation stages.

:class:`~fedvpa_secure.client.runtime.FederatedClient` polls the server for work, trains with the
learner's :func:`~fedvpa_secure.train.federation.client_round`, then masks the update with a
:class:`~fedvpa_secure.secagg.ClientSession`; it never sends a clear-text update in secure mode
and refuses to contribute twice to one model version.
"""
