"""Tongban gateway: the gRPC server, its services, persistence, delivery and the command line."""

__version__ = "0.1.0"
