"""Worker scripts and CLI targets the tests start (`python -m tests.helpers.apps.<name>`) or load."""
