"""The one helpers package of the tests.

- `paths`: `ROOT` and the other places in the checkout.
- `polling`: `wait_until` (the one polling loop), `wait_until_sync`, `wait_terminal`, `WAIT`.
- `agents`: scripted models, `SimulatedCrash`, running queued work in the test's process.
- `sql`: what the tests read from Absurd's tables, through the package's own queries.
- `workers`: in-process workers and what `worker_app`'s steps record.
- `processes`: processes the system tests start (`Process`, `WorkerProcess`, the `workers` fixture's `Workers`).
- `children`, `events`, `inbox`, `inspection`, `infra`, `web_app`: helpers of one layer each.
- `examples`: `run_example`, the scripts of `examples/` run offline on a test database.
- `pgbouncer`: a real PgBouncer (transaction pooling) in front of a test database.
- `apps`: the worker scripts and CLI targets the tests start or load.
"""
