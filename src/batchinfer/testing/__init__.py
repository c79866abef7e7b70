"""Test doubles at the model boundary, shared by tests, benchmarks and the demo."""
