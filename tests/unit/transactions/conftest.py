"""Fixtures of the `durable_transaction` tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.helpers.transactions import refunds_table


@pytest.fixture
async def table(absurd_dsn: str) -> AsyncIterator[str]:
    """A refunds table of this test's own."""
    async for name in refunds_table(absurd_dsn, f"refunds_{uuid.uuid4().hex[:10]}"):
        yield name
