"""The integration tests are a package so that their helpers (harness, outside_client)
have one module name each, for pytest and mypy alike (`from integration.harness import`)."""
