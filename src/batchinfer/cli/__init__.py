"""The ``batchinfer`` command: one module per command group; ``main`` parses and dispatches."""

from batchinfer.cli.main import main

__all__ = ["main"]
