"""Prefect flows: thin shells that call the library's stages as tasks."""
