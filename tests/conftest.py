"""Fixtures come from the `pydantic_ai_absurd.pytest_plugin` pytest plugin (entry point `pytest11`)."""
