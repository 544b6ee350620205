"""Every command the docs show is run by some test, as typed: the docs' commands (checker.py) against the
Python processes the tests started (logged by sitecustomize.py; tests/conftest.py wires both)."""
