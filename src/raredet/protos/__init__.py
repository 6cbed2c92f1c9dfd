"""raredet's config schema: our own .proto files (TF OD API field names and defaults) and their
generated Python (`*_pb2.py`, committed; `make protos` regenerates them)."""
