"""Provider rate limits: a model step waits for the provider's `retry-after` and calls again as the same step.

A model request that fails with a provider error carrying a retry-after (Pydantic AI's public
`model_error_retry_after`) is not a task failure: the step waits that long, in the worker for a short wait or
suspended in Postgres for a long one, and runs its body again under the same checkpoint name. No task attempt is
used and no committed step runs again. The first time a step is throttled is recorded (step
`<model step>.provider_wait`, the model step's checkpoint name escaped), so the waits of all executions of the
step add up; once they would pass `max_wait`, the error fails the run as it would without this.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic_ai.durable_exec import model_error_retry_after

from ._execution import require_task_context
from ._step_names import ProviderWait, StepName
from ._steps import RetryAfterFailure
from ._time import DEFAULT_SUSPEND_THRESHOLD, now, recorded_time, sleep_until

__all__ = ["DEFAULT_MAX_PROVIDER_WAIT", "ProviderWaitPolicy", "provider_retry"]

logger = logging.getLogger("pydantic_ai_absurd")

DEFAULT_MAX_PROVIDER_WAIT = 900.0
"""How long, in all, one model step waits for a provider that keeps asking to retry later (15 minutes)."""


@dataclass(frozen=True)
class ProviderWaitPolicy:
    """How a model step waits for a provider's retry-after."""

    suspend_threshold: float = DEFAULT_SUSPEND_THRESHOLD
    """Waits of at least this many seconds suspend the task in Postgres; shorter ones sleep in the worker."""
    max_wait: float = DEFAULT_MAX_PROVIDER_WAIT
    """The longest total wait for one step; past it the provider's error fails the run as without waiting."""


def provider_retry(policy: ProviderWaitPolicy) -> RetryAfterFailure:
    """The `retry` of one model step's `run_step`: wait for the provider's retry-after, then run the body again."""
    throttled_since: datetime | None = None

    async def retry(error: Exception, checkpoint_name: str) -> bool:
        nonlocal throttled_since
        delay = model_error_retry_after(error, maximum=math.inf)
        if delay is None:
            return False
        if throttled_since is None:
            step = StepName(ProviderWait(StepName.parse(checkpoint_name))).format()
            throttled_since = await recorded_time(step, now)
        wake_at = now() + timedelta(seconds=max(delay, 0.0))
        if (wake_at - throttled_since).total_seconds() > policy.max_wait:
            logger.warning(
                "Step %s: the provider asked to retry in %.1f s, past the %.0f s this step may wait in all; failing",
                checkpoint_name,
                delay,
                policy.max_wait,
            )
            return False
        logger.info("Step %s: the provider asked to retry in %.1f s; waiting", checkpoint_name, delay)
        await sleep_until(require_task_context(), wake_at, suspend_threshold=policy.suspend_threshold)
        return True

    return retry
