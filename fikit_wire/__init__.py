"""FIKIT wire format: the gRPC service (generated from proto/) and the msgpack call codec."""
