"""Durable turns: an `AbsurdAgent` run that loads a stored conversation, runs, and saves what it added.

Inside an Absurd task the load and the save are steps of the task:

- `<agent>__conversation_load@<conversation id>` checkpoints the loaded conversation (history, usage,
  revision, pending deferred tool requests). A resumed turn continues from that checkpoint, so it sees
  exactly the history the first attempt saw, even if the conversation changed since.
- `<agent>__conversation_save@<conversation id>` saves once. With `PostgresConversationStore` the save
  also records the turn's identity in its own transaction, so a save step re-executed after a crash
  between the store's commit and the checkpoint's finds its own save instead of reporting a conflict.

A save that finds the conversation changed since the load (another turn of it finished first) fails the
turn with `ConversationConflictError`, which the worker does not retry: nothing is overwritten.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_ai.conversation import Conversation, ConversationTypeAdapter
from pydantic_ai.conversation_store import ConversationConflict, ConversationStore
from pydantic_ai.run import AgentRunResult

from .._digest import Asked
from .._execution import current_task_context
from .._extensions import AgentRunCall
from .._pydantic_ai import mark_result_saved
from .._step_names import ConversationStep, StepName
from .._steps import run_step
from ..errors import ConversationConflictError, ConversationUsageError
from ._store import PostgresConversationStore, saving_turn

__all__ = ["StoredConversations", "StoredTurn", "begin_turn", "uses_store"]

_NEW = "new"


def uses_store(store: ConversationStore | None, kwargs: Mapping[str, Any]) -> bool:
    """Whether a run with these arguments continues a stored conversation: a store and a `conversation_id`."""
    conversation_id = kwargs.get("conversation_id")
    if store is None or conversation_id is None or conversation_id == _NEW:
        return False
    given = [name for name in ("conversation", "message_history", "usage") if kwargs.get(name) is not None]
    if given:
        listed = " and ".join(f"`{name}=`" for name in given)
        raise ConversationUsageError(
            f"This AbsurdAgent loads conversation {conversation_id!r} from its `conversation_store`, so "
            f"{listed} cannot be passed too: pass only `conversation_id=` (or drop the store for this run)."
        )
    return True


def _conflict(conversation_id: str, cause: ConversationConflict) -> ConversationConflictError:
    error = ConversationConflictError(
        f"Conversation {conversation_id!r} was saved by another turn (or deleted) after this turn loaded it; "
        "this turn's messages were not saved and the task is not retried. Run the turn again to answer on "
        "the current history.",
        conversation_id=conversation_id,
    )
    error.__cause__ = cause
    return error


def mark_saved(result: AgentRunResult[Any], revision: str) -> None:
    """Make `result.conversation` continue from `revision`, as `ConversationStore.save(result)` does.

    Needed when the save is replayed from its checkpoint instead of running.
    """
    mark_result_saved(result, revision)


@dataclass
class StoredTurn:
    """One run continuing a stored conversation: what was loaded, and how to save the result."""

    store: ConversationStore
    conversation: Conversation
    agent_name: str
    scope: str | None
    durable: bool
    turn_id: str | None

    @property
    def conversation_id(self) -> str:
        """The conversation this turn continues."""
        return self.conversation.conversation_id

    async def save(self, result: AgentRunResult[Any]) -> None:
        """Save what the run added (a step inside a task, saved once)."""
        if not self.durable:
            await self._save_now(result)
            return
        outcome = await run_step(_step_name(self.agent_name, "save", self.conversation_id), lambda: self._save(result))
        if not outcome.executed:
            mark_saved(result, str(outcome.value["revision"]))

    async def _save(self, result: AgentRunResult[Any]) -> dict[str, object]:
        store, turn_id = self.store, self.turn_id
        if isinstance(store, PostgresConversationStore) and turn_id is not None:
            done = await store.saved_turn(turn_id)
            if done is not None:  # saved by an earlier attempt whose checkpoint was lost with its worker
                mark_saved(result, done.revision)
                return {"revision": done.revision, "entry_ids": done.entry_ids}
            with saving_turn(turn_id):
                entry_ids = await self._save_now(result)
        else:
            entry_ids = await self._save_now(result)
        return {"revision": result.conversation.revision, "entry_ids": entry_ids}

    async def _save_now(self, result: AgentRunResult[Any]) -> list[str]:
        try:
            entries = await self.store.save(result, scope=self.scope)
        except ConversationConflict as cause:
            raise _conflict(self.conversation_id, cause) from cause
        return [entry.id for entry in entries]


def _step_name(agent_name: str, action: Literal["load", "save"], conversation_id: str) -> str:
    return StepName(ConversationStep(action, conversation_id), agent_name).format()


async def _load(
    store: ConversationStore, conversation_id: str, scope: str | None, limit: int | None
) -> Conversation | None:
    loaded = await store.load(conversation_id, scope=scope, limit=limit)
    if loaded is None and scope is not None and await store.read_record(conversation_id) is not None:
        raise ConversationUsageError(
            f"Conversation {conversation_id!r} is stored with another scope than {scope!r}: a run may only "
            "continue a conversation of its own scope. Check the scope, or use a new conversation ID."
        )
    return loaded


async def begin_turn(
    store: ConversationStore,
    *,
    agent_name: str,
    conversation_id: str,
    scope: str | None,
    durable: bool,
    limit: int | None = None,
) -> StoredTurn:
    """Load `conversation_id` (or its last `limit` messages), or start it, for a run: a step when `durable`."""
    if not durable:
        loaded = await _load(store, conversation_id, scope, limit)
        conversation = loaded if loaded is not None else Conversation(conversation_id=conversation_id)
        return StoredTurn(store, conversation, agent_name, scope, durable=False, turn_id=None)
    live: list[Conversation | None] = []

    async def body() -> dict[str, object]:
        loaded = await _load(store, conversation_id, scope, limit)
        live.append(loaded)
        dumped = ConversationTypeAdapter.dump_python(loaded, mode="json") if loaded is not None else None
        return {"conversation": dumped}

    asked = Asked.of(
        {"conversation_id": conversation_id, "scope": scope, "limit": limit},
        f"conversation {conversation_id!r} (scope {scope!r}, limit {limit!r})",
    )
    outcome = await run_step(_step_name(agent_name, "load", conversation_id), body, asked=asked)
    if outcome.executed:
        # The object the store loaded: the same messages as the checkpoint, plus the store's note of which
        # of them are stored, so the save appends the new ones without comparing the history again.
        loaded = live[0]
    else:
        stored = outcome.value["conversation"]
        loaded = ConversationTypeAdapter.validate_python(stored) if stored is not None else None
    conversation = loaded if loaded is not None else Conversation(conversation_id=conversation_id)
    task_ctx = current_task_context()
    turn_id = f"{task_ctx.task_id}/{outcome.checkpoint_name}" if task_ctx is not None else None
    return StoredTurn(store, conversation, agent_name, scope, durable=True, turn_id=turn_id)


@dataclass(frozen=True)
class StoredConversations:
    """The `RunExtension` of `AbsurdAgent(..., conversation_store=store, conversation_limit=limit)`.

    A run given `conversation_id=` continues that stored conversation: loaded before the run, and what the
    run added saved after it (a run that fails or is left early saves nothing).
    """

    store: ConversationStore
    limit: int | None

    @asynccontextmanager
    async def around_run(self, call: AgentRunCall) -> AsyncGenerator[None]:
        """Load the conversation into the run's arguments, run, and save the result."""
        if not uses_store(self.store, call.kwargs):
            yield
            return
        turn = await begin_turn(
            self.store,
            agent_name=call.agent_name,
            conversation_id=call.kwargs.pop("conversation_id"),
            scope=call.scope,
            durable=call.durable,
            limit=self.limit,
        )
        call.kwargs["conversation"] = turn.conversation
        yield
        if call.result is not None:
            await turn.save(call.result)
