"""Adapters: the mapping engine (``adapters.mapping``) and transports to partner systems."""
