"""Benchmarks (issue 7): peers, serving overhead, block round trip, live capacity,
batching gain, latency budget, growth with file length.

Each item is one module with ``run(options) -> dict``; ``stemserve bench ITEM``
(:mod:`bench.cli`) prints its table, and writes ``<out>/<item>.json`` and
``<out>/<item>.png``. These are measurements, not tests: CI only runs them with
``--tiny``. Peer packages (``openunmix``, ``demucs``) are imported here only,
inside :mod:`bench.peers`, and only when installed.
"""
