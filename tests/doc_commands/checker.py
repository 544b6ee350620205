"""The commands the docs show, and whether the tests ran them.

A doc command is a line of a fenced (```) or indented code block, or an inline code span, that runs a script
of tools/ or bench/ (``python tools/x.py ...``, ``.venv/bin/python bench/y.py ...``, ``tools/x.py ...`` with
arguments) or ``make TARGET``. Blocks are read as a shell reads them: ``\\`` continues a line, ``#`` starts a
comment, ``&&`` ``||`` ``;`` ``|`` separate commands, ``VAR=value`` before a command sets its environment.

What must agree between a doc command and a test's is its *shape*: the script, its subcommand (for scripts
that have them), its option names and its config keys (``MODEL.WEIGHTS``); values and paths may differ, so a
test runs the documented command on its own tiny data. A test covers a doc command when it ran the same
script and subcommand with at least the documented options and keys (tests add options that make a run
small: ``--bootstrap 20``, ``SOLVER.MAX_ITER 2``). Optional parts in brackets (``[--trusted]``) and ``...``
are not part of the shape. ``make TARGET`` stands for the tools/ or bench/ commands of TARGET's own recipe
in the Makefile; make variables (``make install PYTHON=python3.11``) are checked against the Makefile by
tests/test_docs.py instead.

So a full-size command (the paper's 45k-iteration training, `make demo`'s 15 minutes) is covered by a test
that runs the same command shape on tiny data with small overrides (tests/test_end_to_end.py,
tests/test_seeds.py). Commands no test can run at any size (eight GPUs, CUDA, the network, the suite itself)
are listed in EXEMPT with the test that covers the rest of their shape, or the reason.
"""
import glob
import json
import os
import re
import shlex
from typing import NamedTuple, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Scripts whose first positional argument is a subcommand (argparse add_subparsers).
SUBCOMMAND_SCRIPTS = {"tools/prepare_dataset.py", "tools/split_dataset.py", "tools/archive_runs.py"}
PYTHONS = {"python", "python3", ".venv/bin/python", "$(PY)"}
SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}
KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")
# The start of a command, as opposed to a script's name in prose: a script with arguments, python, or make
COMMAND_START = re.compile(r"\s*(\$\s+)?([A-Za-z_]\w*=\S*\s+)*(time\s+)?"
                           r"((python3?\s+|\.venv/bin/python\s+|\./)?(tools|bench)/\w+\.py\s+\S|"
                           r"(python3?|\.venv/bin/python|make)\s)")
SCRIPT = re.compile(r"(?:\./)?((?:tools|bench)/[A-Za-z0-9_]+\.py)")

# Documented commands no test runs, each with the test that covers its shape with smaller options, or why no
# test can run it. Keyed by a command of that exact shape (values do not matter); tests/test_docs.py fails on
# an entry that no longer matches any doc command.
EXEMPT = {
    "make install": "creates .venv and installs torch and detectron2 over the network: what every fresh "
                    "checkout runs first (.ci/run runs it through make test)",
    "make test": "the test suite itself",
    "make lint": "ruff over the repository, run first by make test",
    "make bench": "bench/run_all.py runs every benchmark at full size (minutes); "
                  "tests/test_docs.py::test_benchmarks_run_at_the_smallest_size runs its scripts small",
    "python bench/run_all.py --output output/bench": "make bench (above)",
    "python tools/train_net.py --config-file CFG --num-gpus 8 SOLVER.IMS_PER_BATCH 16":
        "8 GPUs; the paired loader over several processes is tests/test_paired_loader.py's 2-process gloo run "
        "through detectron2's launch",
    "python tools/train_net.py --config-file CFG --num-gpus 8 --num-machines 2 --machine-rank 0 "
    "--dist-url tcp://10.0.0.1:29500 SOLVER.IMS_PER_BATCH 32": "two machines with 8 GPUs each (as above)",
    "python tools/run_ablation.py --output OUT --num-gpus 8 --configs C --opts SOLVER.IMS_PER_BATCH 16":
        "8 GPUs per row; tests/test_experiments.py runs run_ablation.py --output --configs --opts on CPU",
    "python bench/train_step.py --device cuda --amp":
        "CUDA only; test_benchmarks_run_at_the_smallest_size runs train_step.py --device cpu",
}


# Options a script passes only to a copy of itself that it starts (hidden from --help), never typed by a user:
# (script, option) -> who passes it.
INTERNAL_OPTIONS = {
    ("bench/train_step.py", "--only"): "train_step.py --memory measures each variant in a process of its own",
}


class Shape(NamedTuple):
    script: str            # "tools/train_net.py", or "make"
    sub: Optional[str]     # subcommand, or make's target
    flags: frozenset       # option names: "--config-file"
    keys: frozenset        # config keys: "MODEL.WEIGHTS"

    def covered_by(self, run):
        """``run`` (a test's command) is this doc command with possibly more options or keys."""
        return (run.script, run.sub) == (self.script, self.sub) and self.flags <= run.flags and self.keys <= run.keys

    def __str__(self):
        return " ".join(x for x in (self.script, self.sub, *sorted(self.flags), *sorted(self.keys)) if x)


class DocCommand(NamedTuple):
    path: str     # relative to the repository
    line: int     # where the command starts
    text: str     # as written (continuations joined)
    shape: Shape

    def __str__(self):
        return f"{self.path}:{self.line}: {self.text}"


class DocError(ValueError):
    """A doc command that cannot be read (unbalanced quotes); the message names file and line."""


def _drop_optional(args):
    """``args`` without ``...`` and bracketed optional parts (``[--trusted]``, ``[KEY VALUE ...]``)."""
    out, depth = [], 0
    for a in args:
        if depth or a.startswith("["):
            depth += a.count("[") - a.count("]")
            continue
        if a.strip(".") or not a:
            out.append(a)
    return out


def script_shape(script, args, written=False):
    """The shape of ``script`` (repository-relative) run with ``args``; ``written``: args as a doc writes them,
    with optional parts in brackets (a process's own arguments are taken as they are)."""
    args = _drop_optional(list(args)) if written else [str(a) for a in args]
    sub = args[0] if script in SUBCOMMAND_SCRIPTS and args and not args[0].startswith("-") else None
    flags = frozenset(a.split("=", 1)[0] for a in args if re.match(r"--?[A-Za-z]", a))
    keys = frozenset(a for a in args if KEY.fullmatch(a))
    return Shape(script, sub, flags, keys)


def command_shape(tokens):
    """The shape of one shell command (a token list), or None when it runs no tools/ or bench/ script and is
    no ``make``."""
    tokens = list(tokens)
    while tokens and (tokens[0] in ("$", "time") or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0])):
        tokens.pop(0)  # a prompt, `time`, environment assignments
    if not tokens:
        return None
    if tokens[0] == "make":
        targets = [t for t in _drop_optional(tokens[1:]) if not t.startswith("-") and "=" not in t]
        return Shape("make", targets[0], frozenset(), frozenset()) if targets else None
    if tokens[0] in PYTHONS or tokens[0].endswith("/python"):
        tokens = tokens[1:]
    m = SCRIPT.fullmatch(tokens[0]) if tokens else None
    return script_shape(m.group(1), tokens[1:], written=True) if m else None


def _split(text):
    """Shell tokens of ``text``, split into commands at ``&&``, ``||``, ``;``, ``|``."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands = [[]]
    for token in lexer:
        if token in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _commands_in(text, path, line, inline):
    """The doc commands in one logical line (code) or one inline code span."""
    looks_like_one = COMMAND_START.match(text)
    if inline and not looks_like_one:
        return []  # a name in prose (`tools/predict.py`), not a command
    try:
        commands = _split(text)
    except ValueError as e:
        if inline or not looks_like_one:
            return []  # not a command (a tree of files in a block)
        raise DocError(f"{path}:{line}: cannot read the command {text!r} as a shell does: {e}") from None
    found = []
    for tokens in commands:
        shape = command_shape(tokens)
        if shape is not None:
            found.append(DocCommand(path, line, " ".join(text.split()), shape))
    return found


def extract(text, path="<doc>"):
    """Every doc command in the markdown ``text``, in order."""
    lines = text.splitlines()
    found, para, para_start = [], [], 0
    fence = None            # the opening fence (``` or ~~~) while inside a fenced block
    shell_block = False     # that block is shell (no language, bash, sh, shell, console)
    pending, pending_line = "", 0   # a code line continued with a backslash
    prev_blank, in_indented = True, False

    def flush_para():
        if para:
            joined = "\n".join(para)
            for m in re.finditer(r"(`+)(.+?)\1", joined, re.S):
                ln = para_start + joined.count("\n", 0, m.start())
                found.extend(_commands_in(m.group(2).replace("\n", " "), path, ln, inline=True))
            para.clear()

    def code(ln, content):
        nonlocal pending, pending_line
        if not pending:
            pending_line = ln
        if content.rstrip().endswith("\\"):
            pending += content.rstrip()[:-1] + " "
            return
        found.extend(_commands_in(pending + content, path, pending_line, inline=False))
        pending = ""

    for i, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if fence is not None:
            if stripped.startswith(fence) and not stripped[len(fence):].strip():
                fence = None
            elif shell_block:
                code(i, raw)
            continue
        m = re.match(r"\s{0,3}(```+|~~~+)\s*([\w+-]*)", raw)
        if m:
            flush_para()
            fence, shell_block = m.group(1), m.group(2).lower() in ("", "bash", "sh", "shell", "console")
            in_indented = False
            continue
        indented = raw.startswith(("    ", "\t")) and bool(stripped)
        if indented and (prev_blank or in_indented) and not para:
            in_indented = True
            code(i, raw)
        elif not stripped:
            flush_para()
            in_indented = in_indented and bool(pending)
        else:
            in_indented = False
            if not para:
                para_start = i
            para.append(raw)
        prev_blank = not stripped
    flush_para()
    if pending:
        found.extend(_commands_in(pending, path, pending_line, inline=False))
    return found


def doc_files(repo=REPO):
    """The docs that hold commands: README.md, datasets/README.md and docs/*.md (not docs/measurements/,
    which records the commands of past measurements as they were run)."""
    files = [os.path.join(repo, "README.md"), os.path.join(repo, "datasets", "README.md")]
    return files + sorted(glob.glob(os.path.join(repo, "docs", "*.md")))


def doc_commands(repo=REPO):
    out = []
    for f in doc_files(repo):
        with open(f, encoding="utf-8") as fh:
            out.extend(extract(fh.read(), os.path.relpath(f, repo)))
    return out


def make_recipes(makefile):
    """{target: the tools/ and bench/ command shapes of its own recipe} for every rule of ``makefile``."""
    recipes, target, pending = {}, None, ""
    with open(makefile, encoding="utf-8") as f:
        for line in f:
            if line.startswith("\t") and target is not None:
                pending += line.strip()
                if pending.endswith("\\"):
                    pending = pending[:-1] + " "
                    continue
                recipe, pending = pending, ""
                if not re.search(r"(tools|bench)/\w+\.py", recipe):
                    continue
                for tokens in _split(recipe):
                    shape = command_shape(tokens)
                    if shape is not None:
                        recipes[target].append(shape)
            elif re.match(r"[^\s#=:][^=:]*:(?!=)", line):
                target = line.split(":", 1)[0].strip()
                recipes.setdefault(target, [])
            elif line.strip() and not line.startswith("\t"):
                target = None
    return recipes


def exempt_shapes(exempt=EXEMPT):
    out = {}
    for text in exempt:
        shapes = [command_shape(t) for t in _split(text)]
        assert len(shapes) == 1 and shapes[0] is not None, f"EXEMPT entry is not one command: {text!r}"
        out[shapes[0]] = text
    return out


def read_log(path, repo=REPO):
    """The shapes of the tools/ and bench/ scripts the tests ran, with the tests that ran them: the processes a
    test started itself (not those a tool started in turn, such as bench/train_step.py --memory's)."""
    runs = []
    if not os.path.exists(path):
        return runs
    real_repo = os.path.realpath(repo)
    with open(path, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if not entry.get("direct", True):
                continue
            script = os.path.relpath(os.path.realpath(entry["script"]), real_repo) \
                if not entry["script"].startswith("-m ") else entry["script"]
            if SCRIPT.fullmatch(script):
                runs.append((script_shape(script, entry["argv"]), entry.get("test", "")))
    return runs


def not_run(commands, runs, recipes, exempt=EXEMPT):
    """The doc commands that no run covers and no exemption names: [(command, why)]."""
    exempt = exempt_shapes(exempt)
    shapes = [r[0] for r in runs]
    missing = []
    for c in commands:
        if c.shape in exempt:
            continue
        if c.shape.script == "make":
            needed = recipes.get(c.shape.sub)
            if needed is None:
                missing.append((c, f"the Makefile has no target {c.shape.sub!r}"))
                continue
            if not needed:
                missing.append((c, "its recipe runs no tools/ or bench/ script a test could run: add it to EXEMPT"))
                continue
        else:
            needed = [c.shape]
        for n in needed:
            if not any(n.covered_by(s) for s in shapes):
                ran = sorted({str(s) for s in shapes if (s.script, s.sub) == (n.script, n.sub)})
                missing.append((c, f"no test ran {n}" + (f"; tests ran: {'; '.join(ran)}" if ran else "")))
    return missing


def undocumented(runs, commands, doc_text):
    """Test runs of a script, or options of it, that no doc shows: [(shape, test, why)]. An option counts as
    documented when some doc mentions it (in a command or in prose)."""
    documented = {(c.shape.script, c.shape.sub) for c in commands}
    problems, seen = [], set()
    for shape, test in runs:
        if (shape.script, shape.sub) not in documented:
            why = f"no doc shows {shape.script}" + (f" {shape.sub}" if shape.sub else "")
        else:
            hidden = sorted(f for f in shape.flags if f != "--help" and (shape.script, f) not in INTERNAL_OPTIONS
                            and not re.search(re.escape(f) + r"\b", doc_text))
            why = f"options no doc mentions: {' '.join(hidden)}" if hidden else None
        if why and (shape.script, shape.sub, why) not in seen:
            seen.add((shape.script, shape.sub, why))
            problems.append((shape, test, why))
    return problems


# A test skipped because a system program is missing says so in this form (tests/pacs.py's require()).
MISSING_PROGRAM = " is not installed ("


def verdict(missing: list, hidden: list, skipped_for_programs: list, ci: bool) -> tuple[list, bool]:
    """(summary lines, whether the run fails) for documented commands no test ran (``missing``: (command, why)),
    test runs no doc shows (``hidden``: (shape, test, why)) and the skip messages of tests skipped for a missing
    system program. Commands left unrun while such tests were skipped do not fail a run outside CI: they are
    listed, with what to install for the full check. Under CI (which installs every program) they fail, and so
    does anything hidden."""
    lines, failed = [], False
    if missing and skipped_for_programs and not ci:
        lines += [f"NOT CHECKED: {len(missing)} documented commands no test ran, because {len(skipped_for_programs)} "
                  "tests were skipped for a program this machine lacks:"]
        lines += [f"  skipped: {m}" for m in sorted(set(skipped_for_programs))]
        lines += [f"  {c}\n      {why}" for c, why in missing]
        lines += ["  install those programs (or run `bash .ci/run` as root, which installs them and runs make test "
                  "with CI=true) for the full check"]
    elif missing:
        failed = True
        lines += [f"FAILED: {len(missing)} documented commands no test ran (run them in a test, or add them to "
                  "EXEMPT in tests/doc_commands/checker.py with the reason):"]
        lines += [f"  {c}\n      {why}" for c, why in missing]
    if hidden:
        failed = True
        lines += [f"FAILED: {len(hidden)} test runs no doc shows (document them):"]
        lines += [f"  {shape}  ({test.split(' ')[0]})\n      {why}" for shape, test, why in hidden]
    return lines, failed
