"""`examples/approvals.py` runs offline: the run waits, a second process approves one call and denies the other."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.paths import ROOT


def test_the_approvals_example(absurd_dsn: str) -> None:
    env = {**os.environ, "ABSURD_DATABASE_URL": absurd_dsn}
    env.pop("PYDANTIC_AI_MODEL", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "approvals.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "[worker] task is sleeping; pending: 1" in result.stdout
    assert "[approver] approved ['del-1'], denied ['del-2']" in result.stdout
    assert "result: del-1: deleted /srv/cache/old.tmp; del-2: never delete customer data" in result.stdout
    assert "deleted: ['/srv/cache/old.tmp'] (each once); model calls: 2" in result.stdout
