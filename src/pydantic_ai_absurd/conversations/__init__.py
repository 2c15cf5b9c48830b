"""Conversations on Postgres: `PostgresConversationStore`, and durable multi-turn chats with `AbsurdAgent`.

`PostgresConversationStore` implements Pydantic AI's `ConversationStore` in this package's own schema.
`AbsurdAgent(..., conversation_store=store)` loads a conversation before a run given `conversation_id=`
and saves what the run added; inside an Absurd task the load and the save are steps.
"""

from ._store import PostgresConversationStore, SavedTurn

__all__ = ["PostgresConversationStore", "SavedTurn"]
