"""Where things are in the checkout: the one definition of the repository root for every test."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository (the directory holding `pyproject.toml`); worker subprocesses run with it as cwd."""

SRC = ROOT / "src" / "pydantic_ai_absurd"
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
FIXTURES = ROOT / "tests" / "fixtures"
"""Recorded data (checkpoints written by earlier builds): compatibility data, never regenerated."""
APPS = Path(__file__).resolve().parent / "apps"
"""The worker scripts and CLI targets the tests start or load (`tests.helpers.apps.<name>`)."""
