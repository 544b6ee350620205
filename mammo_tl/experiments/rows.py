"""Several configs trained and evaluated in sequence, then compared: the rows of the paper's Table 1 on any
data set (tools/run_ablation.py) and the demo (tools/demo.py).

Each config trains in its own process (tools/train_net.py's command line) into OUTPUT/<config name>. A run that finished
(mammo_tl.evaluation.runs.is_finished: inference/eval_results.json with the weights it belongs to and
model_final.pth; or a finished run restored from an archive, kept without its weights:
mammo_tl/experiments/archive.py) is reused, and an interrupted one resumed, only while its
saved config (OUTPUT/<name>/config.yaml) equals the one asked for; otherwise the run is refused, naming the
first differing keys, and only while the records of its DATASETS.TRAIN, TEST and VALIDATION sets are those it was
trained on and the image files they name hold the same content (the records' digest and each image's size,
mtime and SHA-256 in OUTPUT/<name>/run_inputs.json; a file whose size and mtime are unchanged is not hashed again),
so a report never mixes results of other settings or other data.

With ``seeds`` every config is trained once per training seed (config SEED) into OUTPUT/seed_<s>/<config name>,
under the same guarantees (a folder of another seed is a run of another config), each seed's report is written
to OUTPUT/seed_<s>/ and the aggregate over seeds (mammo_tl/evaluation/aggregate.py) to OUTPUT/. The data sets
are whatever the configs name, the same for every seed. The paper's rows (a)-(d) in miniature, over three seeds,
on the built-in synthetic mammograms (12 runs of about 7 minutes on a 2-core CPU, 3 on a GPU; the demo's form also
chooses each run's operating points on mammo_synth_val):

    python tools/demo.py --output output/ablation_synthetic --seeds 0 1 2 --validation-set mammo_synth_val \\
        --configs configs/synthetic/a_positives_only.yaml configs/synthetic/b_with_negatives.yaml \\
        configs/synthetic/c_top_likelihood.yaml configs/synthetic/d_tl_similarity.yaml

(``tools/run_ablation.py`` with the same arguments runs the same rows without the operating points.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import differing_keys, flatten_config, get_mammo_tl_cfg
from ..engine.run_inputs import RunMismatch, check_inputs, run_inputs
from ..evaluation.aggregate import write_aggregate_report
from ..evaluation.report import make_report
from ..evaluation.runs import is_finished, load_archive
from .archive import ArchiveError, check_archive

if TYPE_CHECKING:
    from detectron2.config import CfgNode

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_COMMAND = [sys.executable, "-m", "mammo_tl.engine.launcher"]  # what tools/train_net.py runs


def expected_config(config_file: str, opts: Sequence[str]) -> CfgNode:
    """The config train_net.py builds from ``config_file`` and ``opts`` (as plain nested dicts)."""
    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def load_saved_config(saved_yaml: str) -> CfgNode:
    """A run's saved config.yaml as a config (keys this version does not know are kept, not refused)."""
    saved = get_mammo_tl_cfg()
    saved.set_new_allowed(True)
    saved.merge_from_file(saved_yaml)
    return saved


def config_differences(saved_yaml: str, cfg: CfgNode) -> list[str]:
    """Keys whose values differ between a run's saved config.yaml and ``cfg`` (both as train_net saw them)."""
    return differing_keys(flatten_config(load_saved_config(saved_yaml)), flatten_config(cfg))


def config_name(config_file: str) -> str:
    return os.path.splitext(os.path.basename(config_file))[0]


SEED_DIR = "seed_{}"


def check_rows(configs: Sequence[str], output: str, extra_opts: Sequence[str], seeds: Sequence[int] | None) -> None:
    """Refuse what would mix layouts or seeds: two configs of one name, SEED in the opts together with
    ``seeds``, repeated or negative seeds, and an ``output`` that holds the other layout's runs."""
    names = [config_name(c) for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"configs with the same file name would share a run folder: {names}")
    if seeds is None:
        held = sorted(d for d in (os.listdir(output) if os.path.isdir(output) else [])
                      if d.startswith("seed_") and os.path.isdir(os.path.join(output, d)))
        if held:
            raise RunMismatch(f"{output} holds runs over seeds ({', '.join(held)}): run with the same --seeds, or "
                              "choose another --output for a single run per config")
        return
    if "SEED" in list(extra_opts)[0::2]:
        raise ValueError("give the training seeds with --seeds, not as SEED in the config overrides")
    if not seeds or len(set(seeds)) != len(seeds) or any(int(s) < 0 for s in seeds):
        raise ValueError(f"--seeds must be distinct non-negative integers, got {list(seeds)}")
    for name in names:
        if os.path.exists(os.path.join(output, name, "config.yaml")):
            raise RunMismatch(f"{os.path.join(output, name)} holds a run made without --seeds; runs over seeds go "
                              f"to {os.path.join(output, SEED_DIR.format('<s>'), name)}: choose another --output")


def run_rows(configs: Sequence[str], output: str, extra_opts: Sequence[str] = (), bootstrap: int = 1000,
             title: str = "mammo_tl results", num_gpus: int = 1, tag: str = "rows",
             after_training: Callable[[str, list[str], str], Any] | None = None, seeds: Sequence[int] | None = None,
             note: str | None = None, jobs: int = 1) -> dict[str, Any]:
    """Train and evaluate each config file into ``output/<name>``, then write the comparison report
    (tools/report.py's layout, the first config as baseline) to ``output``. ``after_training(config_file,
    opts, run_dir)`` runs for each row once it is trained (e.g. to choose its operating points). Returns the
    report's results.

    With ``seeds`` (a list of training seeds): each seed's rows into ``output/seed_<s>/<name>`` (config SEED
    set to s) with that seed's report in ``output/seed_<s>/``, then the aggregate over seeds (``note``: a
    sentence on the runs for it) in ``output``; returns the aggregate's results.

    ``jobs`` > 1 trains that many configs at once, each in its own process with the CPU cores shared out
    (:func:`train_at_once`): on a CPU, two one-thread trainings side by side take less time than one after
    the other with two threads each. With ``seeds`` every (seed, config) run is in one queue, seed by seed in the
    order of ``configs``, before the reports are written."""
    check_rows(configs, output, extra_opts, seeds)
    if jobs < 1 or (jobs > 1 and num_gpus > 1):
        raise ValueError(f"--jobs {jobs}: at least 1, and 1 when every training uses {num_gpus} GPUs")
    if seeds is None:
        return _run_configs(configs, output, extra_opts, bootstrap, title, num_gpus, tag, after_training, jobs)
    start = time.time()
    if jobs > 1:  # one queue over every seed and config, so no core waits at the end of a seed's rows
        seed_opts = {s: [*extra_opts, "SEED", str(int(s))] for s in seeds}
        queue = [(plan, c, s) for s in seeds for c in configs
                 for plan in [_plan_run(c, os.path.join(output, SEED_DIR.format(s)), seed_opts[s], bootstrap,
                                        num_gpus, tag)]]
        train_at_once([(f"{name} (seed {s})", out, cmd, int(expected_config(c, opts).SOLVER.MAX_ITER))
                       for (name, out, opts, cmd), c, s in queue if cmd is not None], jobs, tag)
    for s in seeds:
        print(f"[{tag}] training seed {s}: {len(configs)} config(s) into "
              f"{os.path.join(output, SEED_DIR.format(s))}", flush=True)
        _run_configs(configs, os.path.join(output, SEED_DIR.format(s)), [*extra_opts, "SEED", str(int(s))],
                     bootstrap, f"{title}, training seed {s}", num_gpus, tag, after_training, jobs)
    runs = {config_name(c): [os.path.join(output, SEED_DIR.format(s), config_name(c)) for s in seeds]
            for c in configs}
    results, md = write_aggregate_report(runs, output, bootstrap=bootstrap, title=f"{title}, over training seeds",
                                         per_seed_reports=[(s, f"{SEED_DIR.format(s)}/report.md") for s in seeds],
                                         note=note)
    print("\n" + md)
    print(f"[{tag}] aggregate over seeds {list(seeds)}: {os.path.join(output, 'report.md')} (and .html, "
          f"results.json); each seed's report in {os.path.join(output, SEED_DIR.format('<s>'))}/; "
          f"total {(time.time() - start) / 60:.1f} min", flush=True)
    return results


def _plan_run(config_file, output, extra_opts, bootstrap, num_gpus, tag):
    """(name, run folder, opts, training command or None when the run is finished and reused); refuses a folder
    that holds another config's run or one trained on other inputs."""
    name = config_name(config_file)
    out = os.path.join(output, name)
    opts = ["OUTPUT_DIR", out, "TEST.PATIENT.BOOTSTRAP", str(bootstrap), *extra_opts]
    cfg = expected_config(config_file, opts)
    saved = os.path.join(out, "config.yaml")
    if os.path.exists(saved):
        diff = config_differences(saved, cfg)
        if diff:
            raise RunMismatch(f"{out} holds a run of another config (differing keys: {diff[:8]}"
                              f"{' ...' if len(diff) > 8 else ''}): choose another --output or remove {out}")
    archived = load_archive(out) is not None
    finished = is_finished(out)
    check_inputs(out, run_inputs(cfg), finished)
    if finished and archived:  # a restored run is reused only as it was archived
        try:
            check_archive(out, allow_left_out=True)
        except ArchiveError as e:
            raise RunMismatch(f"{out} holds an archived run that changed since it was archived ({e}): restore it "
                              f"again with tools/archive_runs.py, or remove {out}") from None
    if finished:
        print(f"[{tag}] {name}: already trained and evaluated in {out} with this config, reusing it", flush=True)
        return name, out, opts, None
    cmd = [*TRAIN_COMMAND, "--config-file", config_file, "--num-gpus", str(num_gpus)]
    if os.path.exists(os.path.join(out, "last_checkpoint")):
        cmd.append("--resume")
    return name, out, opts, [*cmd, *opts]


def threads_per_job(jobs: int, cpu_count: int | None = None) -> int:
    """Torch threads for each of ``jobs`` trainings run at once: the CPU cores shared out, at least 1."""
    return max(1, (cpu_count if cpu_count is not None else (os.cpu_count() or 1)) // max(1, jobs))


TRAINING_LOG = "training_output.log"  # a training's stdout and stderr when several run at once


def _last_iteration(run_dir):
    """The last iteration detectron2's metrics.json records in ``run_dir`` (-1 before the first)."""
    last = -1
    try:
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
            for line in f:
                try:
                    last = max(last, int(json.loads(line).get("iteration", -1)))
                except (ValueError, AttributeError):
                    continue
    except OSError:
        pass
    return last


def train_at_once(trainings: Sequence[tuple[str, str, list[str], int]], jobs: int, tag: str = "rows",
                  poll: float = 0.5) -> None:
    """Run the training commands ``trainings`` ((name, run folder, command, iterations)) ``jobs`` at a time,
    each with OMP_NUM_THREADS = cores / jobs unless the caller's environment sets it; each one's output goes to
    <run folder>/training_output.log, and a progress bar per running training follows its metrics.json. When a
    training fails, the others are stopped and CalledProcessError names the failing command and its log."""
    from tqdm import tqdm

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_job(jobs)))
    pending, running = list(trainings), []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                name, out, cmd, iters = pending.pop(0)
                os.makedirs(out, exist_ok=True)
                log = open(os.path.join(out, TRAINING_LOG), "ab")
                print(f"[{tag}] training {name} ({env['OMP_NUM_THREADS']} thread(s)): {' '.join(cmd)}; output in "
                      f"{log.name}", flush=True)
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                bar = tqdm(total=iters, desc=name, unit="it", position=len(running), leave=True)
                running.append((name, out, cmd, proc, log, bar, time.time()))
            time.sleep(poll)
            for item in list(running):
                name, out, cmd, proc, log, bar, t = item
                bar.update(max(0, _last_iteration(out) + 1 - bar.n))
                code = proc.poll()
                if code is None:
                    continue
                running.remove(item)
                log.close()
                bar.close()
                if code != 0:
                    raise subprocess.CalledProcessError(code, cmd, output=f"see {log.name}")
                print(f"[{tag}] {name}: trained and evaluated in {(time.time() - t) / 60:.1f} min", flush=True)
    finally:
        for _, _, _, proc, log, bar, _ in running:  # a failure or an interrupt: stop the others
            proc.terminate()
            proc.wait()
            log.close()
            bar.close()


def _run_configs(configs, output, extra_opts, bootstrap, title, num_gpus, tag, after_training, jobs=1):
    start = time.time()
    plans = [_plan_run(c, output, extra_opts, bootstrap, num_gpus, tag) for c in configs]
    runs = {name: out for name, out, _, _ in plans}
    if jobs > 1:
        train_at_once([(name, out, cmd, int(expected_config(c, opts).SOLVER.MAX_ITER))
                       for c, (name, out, opts, cmd) in zip(configs, plans) if cmd is not None], jobs, tag)
    for config_file, (name, out, opts, cmd) in zip(configs, plans):
        if cmd is not None and jobs <= 1:
            print(f"[{tag}] training {name}: {' '.join(cmd)}", flush=True)
            t = time.time()
            subprocess.run(cmd, check=True)
            print(f"[{tag}] {name}: trained and evaluated in {(time.time() - t) / 60:.1f} min", flush=True)
        if after_training is not None:
            after_training(config_file, opts, out)
    results, md = make_report(runs, output, bootstrap=bootstrap, title=title)
    print("\n" + md)
    print(f"[{tag}] results: {os.path.join(output, 'results.json')}; report: {os.path.join(output, 'report.md')}"
          f" (and .html, roc.png, froc.png); total {(time.time() - start) / 60:.1f} min", flush=True)
    return results
