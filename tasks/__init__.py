"""Prefect tasks of batchinfer: thin wrappers over the pure modules."""
