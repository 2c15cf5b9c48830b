"""Fast tests that start no process, one package per module or subpackage of `pydantic_ai_absurd`."""
