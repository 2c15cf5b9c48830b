"""The pytest plugin in a user's project: its own ini (pytest-asyncio strict mode), run in a subprocess."""

from __future__ import annotations

import re

import pytest

from pydantic_ai_absurd.testing.pytest_plugin import MISSING_ASYNCIO_PLUGIN, TEST_DATABASE_ENV
from tests.helpers.paths import DOCS

pytest_plugins = ["pytester"]

# pytest-asyncio itself warns when the fixture loop scope is unset; a project with
# `filterwarnings = error` sets it.
INI_TAIL = "asyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"

USER_TESTS = """
import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from pydantic_ai_absurd import AbsurdAgent
from pydantic_ai_absurd.testing import run_queued


def test_sync_fixtures(absurd_dsn: str, absurd_queue: str) -> None:
    with psycopg.connect(absurd_dsn) as conn:
        row = conn.execute("select 1 from absurd.queues where queue_name = %s", (absurd_queue,)).fetchone()
    assert row is not None


@pytest.mark.asyncio
async def test_client_runs_a_durable_agent(absurd_client: AsyncAbsurd) -> None:
    agent = AbsurdAgent(Agent(TestModel(custom_output_text="done"), name="user_agent"), absurd_client)

    @absurd_client.register_task(name="ask")
    async def ask(params: dict[str, str], ctx: AsyncTaskContext) -> dict[str, str]:
        result = await agent.run(params["prompt"])
        return {"output": result.output}

    spawned = await absurd_client.spawn("ask", {"prompt": "hi"})
    assert await run_queued(absurd_client) == 1
    snap = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snap is not None
    assert (snap.state, snap.result) == ("completed", {"output": "done"})
"""


DOCS_EXAMPLE = re.search(r"^```python\n(.*?)^```", (DOCS / "testing.md").read_text(), re.S | re.M)


BLOCK_PYTEST_ASYNCIO = """
import sys


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pytest_asyncio":
            raise ImportError("No module named 'pytest_asyncio'")
        return None


sys.meta_path.insert(0, _Block())
"""


@pytest.fixture
def user_project(pytester: pytest.Pytester, absurd_dsn: str, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The inner session uses this session's database (ABSURD_TEST_DATABASE_URL passes through).
    monkeypatch.setenv(TEST_DATABASE_ENV, absurd_dsn)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return pytester


def test_fixtures_work_in_strict_asyncio_mode(user_project: pytest.Pytester) -> None:
    user_project.makeini("[pytest]\nasyncio_mode = strict\n" + INI_TAIL)
    assert DOCS_EXAMPLE is not None
    user_project.makepyfile(test_user=USER_TESTS, test_docs_example=DOCS_EXAMPLE.group(1))
    result = user_project.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*asyncio: mode=Mode.STRICT*"])


def test_fixtures_work_in_auto_asyncio_mode(user_project: pytest.Pytester) -> None:
    user_project.makeini("[pytest]\nasyncio_mode = auto\n" + INI_TAIL)
    user_project.makepyfile(test_user=USER_TESTS)
    result = user_project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_without_pytest_asyncio_plugin_imports_and_client_fails_clearly(
    user_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest-asyncio cannot be imported at all: the plugin loads, the sync fixtures work and
    # `absurd_client` fails with one line naming the missing package.
    site = user_project.mkdir("site")
    (site / "sitecustomize.py").write_text(BLOCK_PYTEST_ASYNCIO)
    user_project.makeini("[pytest]\nfilterwarnings = error\n")
    user_project.makepyfile(
        test_user="""
def test_sync(absurd_dsn: str, absurd_queue: str) -> None:
    assert absurd_queue.startswith("test_")


def test_client(absurd_client: object) -> None:
    raise AssertionError("unreachable")
"""
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    # No entry-point autoloading (pytest would look into pytest-asyncio's distribution): load ours by name.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = user_project.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "pydantic_ai_absurd.testing.pytest_plugin"
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*{MISSING_ASYNCIO_PLUGIN}*"])
