"""The gRPC edge: servicers, error mapping, method registration."""
