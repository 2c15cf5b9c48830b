"""`MODULE:ATTRIBUTE` target for the CLI tests: the verify app of the variant named by `VERIFY_VARIANT`."""

from __future__ import annotations

import os

from tests.helpers.apps.verify_app import build_app

app = build_app(os.environ["VERIFY_DSN"], os.environ["VERIFY_QUEUE"], variant=os.environ.get("VERIFY_VARIANT", "same"))
absurd = app.absurd
