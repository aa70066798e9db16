"""Generated protobuf and gRPC stubs of the Tongban API."""
