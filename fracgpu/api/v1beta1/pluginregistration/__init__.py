"""Generated gRPC code (scripts/gen_proto.sh); do not edit the *_pb2* modules by hand."""
