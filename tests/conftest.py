import os
import tempfile

import pytest

# One torch (OpenMP) thread per process, in the test processes and in every process they start (set before
# torch is imported; a value set by the user is kept). On 2 cores shared with other processes (pytest-xdist's
# second worker, a training subprocess) two OpenMP threads wait on each other: the tiny model's forward pass
# took 0.94 s with 2 threads against 0.08 s with 1 on a loaded 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Built-in synthetic sets (if any test touches them) go to a temporary folder, never into the repo: one per
# process (pytest-xdist's workers inherit the controller's environment, and must not generate a set into the
# same folder at once); a folder the user set in MAMMO_TL_DATASETS is kept.
if os.environ.get("MAMMO_TL_DATASETS") in (None, os.environ.get("MAMMO_TL_TESTS_OWN_DATASETS")):
    os.environ["MAMMO_TL_DATASETS"] = os.environ["MAMMO_TL_TESTS_OWN_DATASETS"] = tempfile.mkdtemp(
        prefix="mammo_tl_datasets_")


@pytest.fixture(scope="session")
def tiny_datasets(tmp_path_factory):
    from tests.common import ensure_tiny_datasets

    root = os.environ.get("MAMMO_TL_TINY_ROOT") or str(tmp_path_factory.getbasetemp() / "tiny")
    ensure_tiny_datasets(root)
    return root


@pytest.fixture(autouse=True)
def _threads():
    from tests.common import set_threads

    set_threads()


def pytest_collection_modifyitems(config, items):
    """The end-to-end and slow tests first, in their collection order, then the rest: pytest-xdist hands tests
    out in this order, and a minute-long test handed out last would keep one worker busy while the other
    idles. The same order in every worker (xdist checks that they collected the same list). Tests marked
    @pytest.mark.xdist_group("name") go to one worker together (_keep_xdist_groups): a module fixture that
    exports or trains is then built once, not once per worker."""
    items[:] = sorted(items, key=lambda item: not (item.get_closest_marker("e2e") or item.get_closest_marker("slow")))
    _keep_xdist_groups(config, items)


def _keep_xdist_groups(config, items):
    """What pytest-xdist's --dist loadgroup does on each worker, done here because it no longer happens: xdist
    (3.8, xdist/remote.py) appends "@<group>" to the node id of each test marked xdist_group, and its scheduler
    sends the tests whose ids end in one group to one worker; it writes ``item._nodeid``, which pytest 9 no
    longer reads (node ids live in ``item._id``), so every test was scheduled alone and a module fixture built
    on both workers. A node id that already ends in a group (an xdist that sets it) is left alone."""
    if not getattr(config.option, "loadgroup", False):  # set by xdist on its workers for --dist loadgroup
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if not names or "@" in item.nodeid.rsplit("]", 1)[-1]:
            continue
        nodeid = f"{item.nodeid}@{'_'.join(names)}"
        if hasattr(item, "_id"):  # pytest 9: a NodeId
            item._id = type(item._id).parse(nodeid)
        else:
            item._nodeid = nodeid


# ==== documented commands: every command the docs show is run by some test (tests/doc_commands/) ==========
# Every Python process the tests start logs its script and arguments (tests/doc_commands/sitecustomize.py,
# put on PYTHONPATH here), as does runpy.run_path inside the test processes. After a full run (the whole of
# tests/ collected, nothing deselected, nothing failed) the run fails listing every command of README.md,
# datasets/README.md and docs/*.md that no test ran (tests/doc_commands/checker.py). With pytest-xdist each
# worker reports what it collected and deselected to the controller, which checks once, after all workers.
import glob as _dc_glob  # noqa: E402
import runpy as _dc_runpy  # noqa: E402
import sys as _dc_sys  # noqa: E402

_DC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "doc_commands")
if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller (or a run without xdist): a fresh log per session
    _dc_fd, _dc_log = tempfile.mkstemp(prefix="mammo_tl_commands_", suffix=".jsonl")
    os.close(_dc_fd)
    os.environ["MAMMO_TL_COMMAND_LOG"] = _dc_log
os.environ["MAMMO_TL_TEST_PID"] = str(os.getpid())  # this test process (controller or worker): its children are direct
if _DC_DIR not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_DC_DIR, os.environ.get("PYTHONPATH")) if p)
_dc_state = {"deselected": set(), "files": set(), "workers": [], "skipped_for_programs": set()}
_dc_run_path = _dc_runpy.run_path


def _dc_logged_run_path(path_name, *args, **kwargs):
    """runpy.run_path, logged like a process (tests that run a tool in-process, with sys.argv set)."""
    import json

    entry = {"script": os.path.abspath(str(path_name)), "argv": list(_dc_sys.argv[1:]), "cwd": os.getcwd(),
             "direct": True, "test": os.environ.get("PYTEST_CURRENT_TEST", "")}
    with open(os.environ["MAMMO_TL_COMMAND_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    return _dc_run_path(path_name, *args, **kwargs)


_dc_runpy.run_path = _dc_logged_run_path


def pytest_runtest_logreport(report):
    """Tests skipped for a missing system program (tests/pacs.py's require()): with pytest-xdist the controller
    sees every worker's reports."""
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2]).removeprefix("Skipped: ")
        from tests.doc_commands.checker import MISSING_PROGRAM

        if MISSING_PROGRAM in message:
            _dc_state["skipped_for_programs"].add(message)


def pytest_deselected(items):
    _dc_state["deselected"].update(item.nodeid for item in items)


def pytest_collection_finish(session):
    _dc_state["files"].update(os.path.realpath(str(item.path)) for item in session.items)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # pytest-xdist, on the controller: what a worker collected and deselected
    _dc_state["workers"].append(node.workeroutput.get("doc_commands", {"files": [], "deselected": []}))


def _dc_unchecked_because(session, exitstatus):
    """Why this run cannot say which documented commands the tests run (None: it can)."""
    if session.config.option.collectonly:
        return "only collected"
    if exitstatus != 0:
        return "not every test passed"
    deselected = _dc_state["deselected"].union(*(w["deselected"] for w in _dc_state["workers"]))  # each worker
    if deselected:  # collects (and deselects) every test
        return f"{len(deselected)} tests deselected"
    files = _dc_state["files"].union(*(w["files"] for w in _dc_state["workers"]))
    here = os.path.dirname(os.path.abspath(__file__))
    left_out = sorted(os.path.relpath(p, here) for p in _dc_glob.glob(os.path.join(here, "**", "test_*.py"),
                                                                      recursive=True)
                      if os.path.realpath(p) not in files)
    if left_out:
        return f"{len(left_out)} test files not collected ({', '.join(left_out[:3])}{', ...' * (len(left_out) > 3)})"
    return None


def pytest_sessionfinish(session, exitstatus):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: report to the controller, which checks
        workeroutput["doc_commands"] = {"files": sorted(_dc_state["files"]),
                                        "deselected": sorted(_dc_state["deselected"])}
        return
    from tests.doc_commands import checker

    log = os.environ["MAMMO_TL_COMMAND_LOG"]
    why = _dc_unchecked_because(session, exitstatus)
    if why is not None:
        _dc_state["summary"] = [f"documented commands not checked: {why} (a full run of tests/ checks them)"]
        if os.path.exists(log):
            os.unlink(log)
        return
    commands = checker.doc_commands()
    runs = checker.read_log(log)
    missing = checker.not_run(commands, runs, checker.make_recipes(os.path.join(checker.REPO, "Makefile")))
    doc_text = "\n".join(open(f, encoding="utf-8").read() for f in checker.doc_files())
    hidden = checker.undocumented(runs, commands, doc_text)
    lines = [f"documented commands: {len(commands)} in {len(checker.doc_files())} docs, "
             f"{len(runs)} tools/bench runs by the tests"]
    found, failed = checker.verdict(missing, hidden, sorted(_dc_state["skipped_for_programs"]),
                                    os.environ.get("CI", "").lower() == "true")
    lines += found
    if failed:
        lines += [f"the tests' command log: {log}"]
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        os.unlink(log)
    _dc_state["summary"] = lines


def pytest_terminal_summary(terminalreporter):
    if _dc_state.get("summary"):
        terminalreporter.section("documented commands")
        for line in _dc_state["summary"]:
            terminalreporter.write_line(line)
# ==== end of documented commands ==========================================================================
