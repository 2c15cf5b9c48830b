"""Fixtures come from the `pydantic_ai_absurd.testing.pytest_plugin` pytest plugin (entry point `pytest11`)."""
