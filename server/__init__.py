"""Adapters over the streaming engine: gRPC servicer, OSC control, app wiring, CLI."""
