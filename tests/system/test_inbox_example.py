"""`examples/approvals.py` runs offline: the run waits, a second process approves one call and denies the other."""

from __future__ import annotations

from tests.helpers.examples import run_example


def test_the_approvals_example(absurd_dsn: str) -> None:
    out = run_example("approvals", dsn=absurd_dsn).stdout
    assert "[worker] task is sleeping; pending: 1" in out
    assert "[approver] approved ['del-1'], denied ['del-2']" in out
    assert "result: del-1: deleted /srv/cache/old.tmp; del-2: never delete customer data" in out
    assert "deleted: ['/srv/cache/old.tmp'] (each once); model calls: 2" in out
