"""The wire contract (stemserve.proto) and its generated modules."""
