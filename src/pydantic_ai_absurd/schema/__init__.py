"""Install and migrate Absurd's schema and this package's own tables; create and check queues.

`setup()` (or `pydantic-ai-absurd init`) is idempotent and safe to run from several processes at
once: everything runs in one transaction under an advisory lock.
"""

from .._dsn import redact_dsn, resolve_dsn
from ._install import (
    ABSURD_SCHEMA_VERSION,
    MAX_QUEUE_NAME_BYTES,
    SchemaInfo,
    check_schema,
    check_schema_sync,
    create_queue_sync,
    drop_queue_sync,
    ensure_queue_exists,
    ensure_queue_exists_sync,
    setup,
    setup_sync,
    validate_queue_name,
)
from ._tables import OWN_SCHEMA

__all__ = [
    "ABSURD_SCHEMA_VERSION",
    "MAX_QUEUE_NAME_BYTES",
    "OWN_SCHEMA",
    "SchemaInfo",
    "check_schema",
    "check_schema_sync",
    "create_queue_sync",
    "drop_queue_sync",
    "ensure_queue_exists",
    "ensure_queue_exists_sync",
    "redact_dsn",
    "resolve_dsn",
    "setup",
    "setup_sync",
    "validate_queue_name",
]
