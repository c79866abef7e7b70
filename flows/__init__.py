"""Prefect flows of batchinfer."""
