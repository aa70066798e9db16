"""The service layer: case exchange, delivery, dead letters. No gRPC types leak below it."""
