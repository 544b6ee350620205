"""Config files are data: a YAML tag that would construct a Python object (run code) is refused, naming the file and
line, by the config loader and by every command that reads a config, typed as a user types it."""
import os
import subprocess
import sys

import pytest
import yaml

from mammo_tl.config import ConfigFileError, add_mammo_tl_config, get_mammo_tl_cfg, load_yaml_file
from tests.common import REPO, all_config_files, run_in_process

TAG = '!!python/object/apply:os.system ["touch {marker}"]'


def _evil_chain(tmp_path):
    """child.yaml -> _BASE_ base.yaml, whose line 4 (column 7) holds the tag. Returns (child, base, marker)."""
    marker = tmp_path / "marker"
    base = tmp_path / "base.yaml"
    base.write_text("# a base config\nMODEL:\n  DEVICE: cpu\nSEED: " + TAG.format(marker=marker) + "\n")
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "base.yaml"\nSOLVER:\n  MAX_ITER: 3\n')
    return str(child), str(base), marker


def test_detectron2_alone_would_run_the_tag(tmp_path):
    """Why this matters: detectron2's CfgNode falls back to yaml.unsafe_load and runs the command."""
    from detectron2.config import get_cfg

    child, _, marker = _evil_chain(tmp_path)
    get_cfg().merge_from_file(child)
    assert marker.exists()


def test_loader_refuses_the_tag_naming_file_and_line(tmp_path):
    child, base, marker = _evil_chain(tmp_path)
    cfg = get_mammo_tl_cfg()
    with pytest.raises(ConfigFileError) as e:
        cfg.merge_from_file(child, allow_unsafe=True)  # the caller's allow_unsafe does not reopen the door
    assert str(e.value).startswith(f"{base}, line 4, column 7: could not determine a constructor for the tag "
                                   "'tag:yaml.org,2002:python/object/apply:os.system'")
    assert not marker.exists()
    with pytest.raises(ConfigFileError, match="line 4, column 7"):
        type(cfg).load_yaml_with_base(base, allow_unsafe=True)
    assert not marker.exists()


def test_saved_config_and_clones_stay_safe(tmp_path):
    """A run's saved config.yaml is read by a clone or a fresh config of the same class."""
    _, base, marker = _evil_chain(tmp_path)
    cfg = get_mammo_tl_cfg().clone()
    cfg.set_new_allowed(True)
    with pytest.raises(ConfigFileError, match=r"base\.yaml, line 4"):
        cfg.merge_from_file(base)
    assert type(cfg.MODEL.RPN).__name__ == "SafeCfgNode"
    assert not marker.exists()


@pytest.mark.parametrize("text, where, what", [
    ("MODEL:\n  DEVICE: cpu\nMODEL:\n  WEIGHTS: x.pth\n", "line 3, column 1", "found key 'MODEL' a second time "
                                                                            "(first on line 1)"),
    ("SOLVER:\n  BASE_LR: [0.1\n", "line 3, column 1", "expected ',' or ']'"),
    ("SEED: !!python/name:os.system\n", "line 1, column 7", "python/name:os.system"),
])
def test_other_bad_yaml_named_by_line(tmp_path, where, what, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as e:
        load_yaml_file(str(path))
    assert str(e.value).startswith(f"{path}, {where}: ") and what in str(e.value)


def test_base_cycle_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ConfigFileError, match="_BASE_ cycle"):
        get_mammo_tl_cfg().merge_from_file(str(tmp_path / "a.yaml"))


def test_every_shipped_config_reads_as_before():
    """The safe loader gives exactly what detectron2's loader gives for every config of the repository."""
    from detectron2.config import get_cfg

    files = all_config_files()
    assert len(files) >= 10
    for f in files:
        mine = get_mammo_tl_cfg()
        mine.merge_from_file(f)
        theirs = add_mammo_tl_config(get_cfg())
        theirs.merge_from_file(f)
        assert yaml.safe_load(mine.dump()) == yaml.safe_load(theirs.dump()), f


def _run_dir(tmp_path, marker):
    """A training run folder whose saved config.yaml holds the tag on line 2."""
    run = tmp_path / "run"
    (run / "inference").mkdir(parents=True)
    (run / "config.yaml").write_text("OUTPUT_DIR: run\nSEED: " + TAG.format(marker=marker) + "\n")
    return str(run)


# Every command that reads a config, as a user types it (the config is refused before any model is built), run in
# the test's process (tests/common.py run_in_process: the same arguments, folder, exit status and standard error;
# thirteen Python start-ups with torch and detectron2 saved): a tag that got through would run its command here
# as in a process of its own, and the marker file it writes fails the test the same way.
COMMANDS = {
    "train_net": lambda c, r, o: ["tools/train_net.py", "--config-file", c, "OUTPUT_DIR", o],
    "train_net_resume": lambda c, r, o: ["tools/train_net.py", "--config-file", c, "--resume", "OUTPUT_DIR", o],
    "train_net_eval_only": lambda c, r, o: ["tools/train_net.py", "--config-file", c, "--eval-only",
                                            "MODEL.WEIGHTS", "w.pth"],
    "predict": lambda c, r, o: ["tools/predict.py", "--config-file", c, "--input", r, "--output", o],
    "predict_saved_config": lambda c, r, o: ["tools/predict.py", "--config-file", os.path.join(r, "config.yaml"),
                                             "--input", r, "--output", o],
    "operating_points": lambda c, r, o: ["tools/operating_points.py", "--config-file", c, "--dataset",
                                         "mammo_synth_val", "MODEL.WEIGHTS", "w.pth"],
    "run_ablation": lambda c, r, o: ["tools/run_ablation.py", "--output", o, "--configs", c],
    "cross_validate": lambda c, r, o: ["tools/cross_validate.py", "--config-file", c, "--folds-dir", r,
                                       "--output", o],
    "demo": lambda c, r, o: ["tools/demo.py", "--output", o, "--configs", c],
    "report_aggregate": lambda c, r, o: ["tools/report.py", "--aggregate", f"a={r}", "--output", o],
    "phantom_difficulty": lambda c, r, o: ["tools/phantom_difficulty.py", "--config-file", c, "--output", o],
    "phantom_difficulty_run": lambda c, r, o: ["tools/phantom_difficulty.py", "--run", r, "--output", o],
}
SAVED = ("predict_saved_config", "report_aggregate", "phantom_difficulty_run")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_the_tag(tmp_path, command):
    child, base, marker = _evil_chain(tmp_path)
    run = _run_dir(tmp_path, marker)
    out = str(tmp_path / "out")
    script, *args = COMMANDS[command](child, run, out)
    p = run_in_process([os.path.join(REPO, script), *args], cwd=str(tmp_path))
    where = f"{os.path.join(run, 'config.yaml')}, line 2, column 7" if command in SAVED else \
        f"{base}, line 4, column 7"
    assert p.returncode != 0, p.stdout + p.stderr
    assert where in p.stderr, p.stderr
    assert "python/object/apply:os.system" in p.stderr
    assert not marker.exists()
    if command.startswith(("train_net", "phantom_difficulty")) or command in ("run_ablation", "demo", "cross_validate",
                                                                              "operating_points"):
        assert "Traceback" not in p.stderr, p.stderr  # a message, not a crash


class _Unpickled:
    """Unpickling this creates the marker file: what a crafted .pkl could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _trusting_chain(tmp_path):
    """child.yaml -> _BASE_ base.yaml, which names a crafted evil.pkl as MODEL.WEIGHTS and (line 4) switches on
    MODEL.WEIGHTS_TRUSTED_PICKLE; a run folder whose saved config.yaml does the same. Returns (child, base, run,
    marker)."""
    import pickle

    marker = tmp_path / "unpickled"
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"w": _Unpickled(marker)}, "__author__": "x"}, f)
    base = tmp_path / "base.yaml"
    base.write_text(f"MODEL:\n  DEVICE: cpu\n  WEIGHTS: {evil}\n  WEIGHTS_TRUSTED_PICKLE: True\n")
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "base.yaml"\nSOLVER:\n  MAX_ITER: 3\n')
    run = tmp_path / "run"
    (run / "inference").mkdir(parents=True)
    (run / "config.yaml").write_text(f"MODEL:\n  WEIGHTS: {evil}\n  WEIGHTS_TRUSTED_PICKLE: true\n")
    (tmp_path / "in").mkdir()
    return str(child), str(base), str(run), marker


# Every command that loads MODEL.WEIGHTS, as typed, with the switch in a config file.
TRUST_COMMANDS = {
    "train_net": lambda c, r, o: ["tools/train_net.py", "--config-file", c, "OUTPUT_DIR", o],
    "train_net_eval_only": lambda c, r, o: ["tools/train_net.py", "--config-file", c, "--eval-only",
                                            "OUTPUT_DIR", o],
    "train_net_resume": lambda c, r, o: ["tools/train_net.py", "--config-file", c, "--resume", "OUTPUT_DIR", o],
    "predict": lambda c, r, o: ["tools/predict.py", "--config-file", c, "--input", "in", "--output", o],
    "predict_saved_config": lambda c, r, o: ["tools/predict.py", "--config-file", os.path.join(r, "config.yaml"),
                                             "--input", "in", "--output", o],
    "export": lambda c, r, o: ["tools/export_model.py", "--config-file", c, "--output", o],
    "export_saved_config": lambda c, r, o: ["tools/export_model.py", "--config-file",
                                            os.path.join(r, "config.yaml"), "--output", o],
}


@pytest.mark.parametrize("command", sorted(TRUST_COMMANDS))
def test_a_config_file_cannot_switch_on_unpickling(tmp_path, command):
    """MODEL.WEIGHTS_TRUSTED_PICKLE True in a config's _BASE_ or in a run's saved config.yaml is refused, naming
    the file, and the .pkl is never unpickled; the same key on the command line is what says "trusted"."""
    from tests.common import run_in_process

    child, base, run, marker = _trusting_chain(tmp_path)
    script, *args = TRUST_COMMANDS[command](child, run, str(tmp_path / "out"))
    p = run_in_process([os.path.join(REPO, script), *args], cwd=str(tmp_path))
    named = os.path.join(run, "config.yaml") if command.endswith("saved_config") else base
    assert p.returncode != 0, p.stdout + p.stderr
    assert f"{named}: sets MODEL.WEIGHTS_TRUSTED_PICKLE True, which a config file may not" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert not marker.exists()


def test_trust_switch_from_the_command_line_only(tmp_path):
    _trusting_chain(tmp_path)
    plain = tmp_path / "plain.yaml"
    plain.write_text("MODEL:\n  WEIGHTS_TRUSTED_PICKLE: false\n")  # False, as every saved config.yaml holds it
    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(str(plain))
    cfg.merge_from_list(["MODEL.WEIGHTS_TRUSTED_PICKLE", "True"])
    assert cfg.MODEL.WEIGHTS_TRUSTED_PICKLE is True
    for value in ("yes", "1", '"True"'):  # whatever YAML makes of it
        plain.write_text(f"MODEL:\n  WEIGHTS_TRUSTED_PICKLE: {value}\n")
        with pytest.raises(ConfigFileError, match=r"plain\.yaml: sets MODEL\.WEIGHTS_TRUSTED_PICKLE"):
            get_mammo_tl_cfg().merge_from_file(str(plain))


def test_a_run_started_trusting_a_pickle_saves_its_config_without_the_switch(tmp_path):
    """The run's config.yaml (what predict, export and --resume read) says False; --resume with the switch on the
    command line again is the same run."""
    from detectron2.engine import default_argument_parser

    from mammo_tl.engine.launcher import check_resume, setup
    from tests.common import TINY_OPTS, config_path

    out = tmp_path / "run"
    args = default_argument_parser().parse_args(
        ["--config-file", config_path("synthetic/a_positives_only.yaml"), "OUTPUT_DIR", str(out), *TINY_OPTS,
         "MODEL.WEIGHTS_TRUSTED_PICKLE", "True"])
    cfg = setup(args)
    assert cfg.MODEL.WEIGHTS_TRUSTED_PICKLE is True
    assert yaml.safe_load((out / "config.yaml").read_text())["MODEL"]["WEIGHTS_TRUSTED_PICKLE"] is False
    check_resume(cfg)  # raises on any key that differs
    again = get_mammo_tl_cfg()
    again.merge_from_file(str(out / "config.yaml"))
    assert again.MODEL.WEIGHTS_TRUSTED_PICKLE is False


def _alias_bomb(path, levels=9):
    """About 500 bytes whose aliases expand to 10**levels numbers (YAML's "billion laughs") as MODEL.PIXEL_MEAN,
    which building the model turns into a tensor (before, train_net and predict hung there). Returns the column
    (from 1) of line 2 where the first value of more than 100000 YAML values starts (&a4: 10**5 numbers in
    11111 lists)."""
    items = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    line = "  PIXEL_MEAN: [" + ", ".join(items) + "]"
    path.write_text("MODEL:\n" + line + "\n")
    return line.index("&a4") + 1


BAD_CONFIGS = {
    # name: (file text or None for the shipped tiny config, overrides, the message after "train_net.py: ")
    "unknown_key": ("MODEL:\n  NOPE: 1\n", [], "{f}: Non-existent config key: MODEL.NOPE (a key mammo_tl and "
                                                "detectron2 do not know"),
    "wrong_type": ("SOLVER:\n  MAX_ITER: abc\n", [], "{f}: Type mismatch (<class 'int'> vs. <class 'str'>) with "
                                                     "values (40000 vs. abc) for config key: SOLVER.MAX_ITER"),
    "deep_nesting": ("SEED: " + "[" * 5000 + "]" * 5000 + "\n", [], "{f}: nested too deeply to be a config"),
    "odd_overrides": ("SEED: 1\n", ["SOLVER.MAX_ITER"], "config overrides OUTPUT_DIR {o} SOLVER.MAX_ITER: Override "
                                                        "list has odd length"),
    "unknown_override": ("SEED: 1\n", ["SOLVER.NOPE", "3"], "config overrides OUTPUT_DIR {o} SOLVER.NOPE 3: "
                                                            "Non-existent key: SOLVER.NOPE"),
    "alias_bomb": (None, [], "{f}, line 2, column {c}: its aliases expand to more than 100000 values"),
}


# read in the test's process (tests/common.py run_in_process: the same arguments, folder, exit status and standard
# error; a Python start-up with torch and detectron2 saved each): the plain mistakes, whose reading cannot hang
IN_PROCESS = {"unknown_key", "wrong_type", "odd_overrides", "unknown_override"}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_train_net_says_what_is_wrong_with_a_config_without_a_traceback(tmp_path, case):
    """As predict does: an unknown key, a value of the wrong type, a nesting deeper than Python's recursion, an
    override list of odd length and an alias bomb (which hung the loader) each end in one message."""
    text, opts, message = BAD_CONFIGS[case]
    config = tmp_path / "bad.yaml"
    column = None
    if text is None:
        column = _alias_bomb(config)
    else:
        config.write_text(text)
    out = str(tmp_path / "out")
    argv = [os.path.join(REPO, "tools", "train_net.py"), "--config-file", str(config), "OUTPUT_DIR", out, *opts]
    if case in IN_PROCESS:
        p = run_in_process(argv, cwd=str(tmp_path))
    else:  # a config that hung the loader or exhausts recursion: a process of its own, with a timeout
        p = subprocess.run([sys.executable, *argv], cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=REPO),
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "train_net.py: " + message.format(f=config, o=out, c=column) in p.stderr, p.stderr[-3000:]
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_a_fifo_in_the_base_chain_is_refused_not_waited_on(tmp_path):
    """A _BASE_ naming a FIFO (or the config itself being one) blocked every command forever, waiting for a
    writer; now it is refused at once, naming it."""
    fifo = tmp_path / "base.yaml"
    os.mkfifo(fifo)
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "base.yaml"\n')
    for config in (child, fifo):
        p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
                            str(config), "OUTPUT_DIR", str(tmp_path / "out")], cwd=str(tmp_path),
                           env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=120)
        assert p.returncode == 1, p.stderr[-3000:]
        assert f"train_net.py: {fifo}: not a regular file (a FIFO, socket or device)" in p.stderr, p.stderr[-3000:]
    with pytest.raises(ConfigFileError, match=r"base\.yaml: not a regular file"):
        get_mammo_tl_cfg().merge_from_file(str(child))


def test_alias_bomb_is_refused_in_linear_time_and_ordinary_aliases_still_read(tmp_path):
    import time

    bomb = tmp_path / "bomb.yaml"
    column = _alias_bomb(bomb, levels=30)  # 10**30 values: expanded, no machine finishes
    start = time.monotonic()
    with pytest.raises(ConfigFileError, match=rf"bomb\.yaml, line 2, column {column}: its aliases expand to more "
                                              r"than 100000 values"):
        load_yaml_file(str(bomb))
    assert time.monotonic() - start < 5
    ok = tmp_path / "ok.yaml"
    ok.write_text("steps: &s [100, 200]\nSOLVER:\n  STEPS: *s\n")
    assert load_yaml_file(str(ok)) == {"steps": [100, 200], "SOLVER": {"STEPS": [100, 200]}}
    rec = tmp_path / "recursive.yaml"
    rec.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigFileError, match=r"recursive\.yaml.*(recursive anchor|found undefined alias)"):
        load_yaml_file(str(rec))
