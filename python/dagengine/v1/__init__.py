"""Generated gRPC/protobuf modules for ``dagengine.v1`` (``make proto``; do not edit)."""
