"""Generated protobuf and gRPC code for ``protos/fedvpa/v1`` (do not edit; run
``python scripts/gen_protos.py``; ``tests/unit/test_proto_drift.py`` fails on drift)."""
