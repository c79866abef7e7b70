"""Engines: one Protocol (``base.Engine``), one typed config class per engine, and a registry."""
