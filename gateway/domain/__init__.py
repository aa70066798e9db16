"""The gateway's core without I/O: case lifecycle, routing, the ports the services need."""
