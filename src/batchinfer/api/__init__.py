"""The HTTP adapter: the seed contract over FastAPI."""
