"""Logs the script and arguments of every Python process the tests start (tests/conftest.py puts this folder
on PYTHONPATH and names the log in MAMMO_TL_COMMAND_LOG; Python imports ``sitecustomize`` at start-up).

One JSON line per process that runs a script file or a module: {"script", "argv", "cwd", "direct", "test"},
``direct`` when a test process (MAMMO_TL_TEST_PID) started it rather than a command the test ran. Processes
started with ``-c`` (multiprocessing's workers among them) are not logged. Without MAMMO_TL_COMMAND_LOG this
does nothing. Another ``sitecustomize`` further down sys.path (a virtual environment's own) still runs.
"""
import os
import sys


def _log(path):
    import json

    argv = list(getattr(sys, "argv", None) or [])
    if not argv or argv[0] in ("", "-c"):
        return
    if argv[0] == "-m":  # the module's name is only in the original command line
        orig = list(getattr(sys, "orig_argv", []))
        module = orig[orig.index("-m") + 1] if "-m" in orig[:-1] else "?"
        script = f"-m {module}"
    else:
        script = os.path.abspath(argv[0])
    # started by a test itself, or by a command a test started (a tool's own subprocesses)
    direct = str(os.getppid()) == os.environ.get("MAMMO_TL_TEST_PID")
    line = json.dumps({"script": script, "argv": argv[1:], "cwd": os.getcwd(), "direct": direct,
                       "test": os.environ.get("PYTEST_CURRENT_TEST", "")}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write on an O_APPEND file: lines of concurrent processes never interleave
    finally:
        os.close(fd)


def _chain():
    """Run the next ``sitecustomize`` on sys.path, which this module shadows."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and os.path.abspath(spec.origin or "") != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get("MAMMO_TL_COMMAND_LOG"):
    try:
        _log(os.environ["MAMMO_TL_COMMAND_LOG"])
    except OSError as e:  # never break the process under test; say why its command is missing
        print(f"tests/doc_commands/sitecustomize.py: cannot log to {os.environ['MAMMO_TL_COMMAND_LOG']}: {e}",
              file=sys.stderr)
_chain()
