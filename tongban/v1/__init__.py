"""Generated gRPC stubs of the tongban.v1 API. Do not edit: run scripts/genproto.py."""
