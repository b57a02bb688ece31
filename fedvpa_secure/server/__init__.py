"""The federation server: settings, coordinator (round state machine), checkpoints, servicer.

``serve(settings)`` runs it; the servicer only validates, converts, delegates to the
:class:`~fedvpa_secure.server.coordinator.Coordinator` and maps errors to gRPC status codes.
"""
