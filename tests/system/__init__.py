"""Tests that start workers, CLIs, examples, servers or a browser, and kill them."""
