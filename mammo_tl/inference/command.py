"""The work behind tools/predict.py.

Images are decoded and prepared in torch DataLoader workers (``workers``) while the model runs on batches
of them (``batch_size``) in this process; results come back in input order. Results are written as the
run goes: one line per input in ``predictions.jsonl`` (flushed), so a killed run keeps what it finished and
``--resume`` continues it; ``predictions.json``, ``patients.csv``, ``skipped.json``, ``summary.json`` and
the DICOM outputs (``dicom_out``) are written at the end from the .jsonl. ``run.json`` records the config,
the weights' SHA-256 and the options, which ``--resume`` must match.

The parts: :mod:`.options` (options checked before any work), :mod:`.folders` (the folders:
lock, manifest, previous run, resume keyed by file content), :mod:`.loader` (the DataLoader and the
batch loop); here :func:`run_predict` ties them together and :func:`_finish` writes the tables.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence

from tqdm import tqdm

from ..data.image_io import DEFAULT_MAX_PIXELS
from ..data.inputs import IMAGE_SUFFIXES, image_key, list_inputs
from ..evaluation.operating_points import describe_threshold
from ..files import sha256_file
from ..outputs import OutputError, tables, write_json, write_text
from ..export.runtime import ExportedPredictor, ExportError, load_exported, model_identity, read_export_json
from .loader import predict_files, prepared_inputs  # noqa: F401  (public: bench/inference.py)
from .options import (PredictError, build_cfg, check_device, dicom_config_name, load_operating_point,
                              _patients_table, check_batch_size, check_max_pixels, check_min_score, check_shard,
                              check_workers, default_workers, inputs_digest, select_shard, warn_if_trained_on_phantoms)
from .folders import (FINAL_FILES, JSONL, MANIFEST, OVERLAYS, RUN, _DicomFolder, _jsonl_records_or_none,
                             _Output, _resume_differences, _resumable_records, _run_record, reusable_records)
from .predictor import MammoPredictor

logger = logging.getLogger(__name__)


def decode_mode(fixed_size: bool) -> str:
    """How predict decodes JPEG 2000 inputs: at the coarsest level covering a fixed input size, else in full."""
    from ..data.resolution import DEFAULT_OVERSAMPLE

    return f"jpeg2000 reduced, oversample {DEFAULT_OVERSAMPLE}" if fixed_size else "full"


def _locked_outputs(held, output, dicom_out):
    """--output (and --dicom-out) locked for the whole run, released by ``held``: one writer per folder (a
    second predict is refused, naming this one)."""
    out = _Output(output)
    dicom = _DicomFolder(dicom_out) if dicom_out else None
    held.callback(out.lock().release)
    if dicom:
        held.callback(dicom.lock().release)
    return out, dicom


def run_predict(config_file: str | None, inputs: Sequence[str], output: str, opts: Sequence[str] = (),
                overlay: bool = False, min_score: float = 0.05, max_pixels: int | None = None, resume: bool = False,
                overwrite: bool = False, *, dicom_out: str | None = None, patients: str | None = None,
                workers: int | None = None, batch_size: int = 1, device: str | None = None, amp: bool = False,
                operating_point: str | None = None, operating_points: str | None = None, model: str | None = None,
                shard: tuple[int, int] | str | None = None,
                trust_torchscript: bool = False) -> tuple[list[dict], list[dict]]:
    """Predict every input file; see tools/predict.py. Returns (predictions, skipped) as written to
    predictions.json and skipped.json. Raises PredictError (or WeightsError) naming what is wrong.

    ``model``: an exported model (DIR/model.onnx or DIR/model.ts, tools/export_model.py) instead of
    ``config_file`` and MODEL.WEIGHTS. ``shard`` (I, N) or "I/N": predict only shard I's inputs
    (:func:`~.options.select_shard`), for :func:`run_merge`. A TorchScript ``model`` (model.ts) is a
    program, not data: it is run only with ``trust_torchscript`` (--trust-torchscript)."""
    min_score = check_min_score(min_score)
    max_pixels = check_max_pixels(DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    workers = default_workers() if workers is None else check_workers(workers)
    batch_size = check_batch_size(batch_size)
    if shard is not None:
        try:
            shard = check_shard(shard)
        except ValueError as e:
            raise PredictError(str(e)) from None
    if resume and overwrite:
        raise PredictError("--resume and --overwrite exclude each other: continue the previous run, or replace it")
    if operating_points and not operating_point:
        raise PredictError(f"--operating-points {operating_points}: name the point to use with --operating-point")
    if dicom_out and os.path.realpath(dicom_out) == os.path.realpath(output):
        raise PredictError(f"--dicom-out {dicom_out} is the --output folder: give the DICOM outputs a folder of "
                           f"their own (e.g. {os.path.join(output, 'dicom')})")
    if model:
        exported = _exported_model(model, config_file, opts, min_score, device, amp, operating_point,
                                   trust_torchscript)
        device = device or "cpu"
    else:
        if not config_file:
            raise PredictError("--config-file: required (or --model, an exported model)")
        cfg = build_cfg(config_file, list(opts) + (["MODEL.DEVICE", device] if device else []), min_score)
        check_device(cfg, amp)
    try:
        files, in_output_folders = list_inputs(inputs, exclude=(output, dicom_out))
    except FileNotFoundError as e:
        raise PredictError(f"--input: {e}") from None
    if not files:
        left_out = f"; {in_output_folders} inside --output or --dicom-out left out" if in_output_folders else ""
        raise PredictError(f"--input {' '.join(inputs)}: no image files found (looked for "
                           f"{', '.join(IMAGE_SUFFIXES)}{left_out})")
    if not model:
        warn_if_trained_on_phantoms(cfg, files)
    entries, patients_summary, patients_sha256 = _patients_table(patients, files) if patients else ({}, None, None)
    point = load_operating_point(operating_point, operating_points, cfg.MODEL.WEIGHTS, min_score) \
        if operating_point else None
    all_files = files
    if shard:
        files, positions, kinds = select_shard(all_files, entries, shard)
        print(f"--shard {shard[0]}/{shard[1]}: {len(files)} of {len(all_files)} input(s) (kept together by "
              + ", ".join(f"{k} {n}" for k, n in kinds.items()) + ")", flush=True)
    with contextlib.ExitStack() as held:
        out, dicom = _locked_outputs(held, output, dicom_out)
        options = {"min_score": min_score, "max_pixels": max_pixels, "overlay": bool(overlay), "amp": bool(amp),
                   "patients_sha256": patients_sha256,
                   "operating_point": [point["name"], point["threshold"]] if point else None,
                   "model": model_identity(exported.meta) if model else None,
                   # how JPEG 2000 inputs were decoded (mammo_tl.data.resolution): a run decoded otherwise is not
                   # resumed or merged with this one
                   "decode": decode_mode(model or cfg.INPUT.RESIZE_MODE == "fixed"),
                   "shard": {"index": shard[0], "count": shard[1], "inputs": len(all_files),
                             "inputs_sha256": inputs_digest(all_files)} if shard else None}
        if model:
            record = {"weights": os.path.abspath(model), "weights_sha256": exported.meta["model_sha256"],
                      "options": options, "config": exported.meta["config"]}
            config_name = dicom_config_name(exported.meta["source"]["config_file"])
            make_predictor = exported.load
        else:
            record = _run_record(cfg, options)
            config_name = dicom_config_name(config_file)
            make_predictor = functools.partial(MammoPredictor, cfg, amp=amp)
        if shard:  # what run_merge needs besides the records
            record["shard"] = {"files": files, "positions": positions, "keys": kinds, "config_name": config_name,
                               "operating_point": point, "patients_csv": patients_summary,
                               "inputs_in_output_folders": in_output_folders}
        run = _Run(config_name, make_predictor, files, out, dicom, record, point, patients_summary,
                   in_output_folders, sharded=bool(shard))
        return run.predict(resume, overwrite, entries=entries, overlay=overlay, min_score=min_score,
                           max_pixels=max_pixels, workers=workers, batch_size=batch_size, amp=amp)


class _Exported:
    """An exported model's export.json, checked where --model enters; :meth:`load` checks the model file's
    sha256 and loads it (when the run starts, as MammoPredictor checks the weights)."""

    def __init__(self, path, meta, device):
        self.path, self.meta, self.device = path, meta, device

    def load(self) -> ExportedPredictor:
        try:
            return load_exported(self.path, self.device, self.meta)
        except ExportError as e:
            raise PredictError(str(e)) from None


def _exported_model(model, config_file, opts, min_score, device, amp, operating_point, trust_torchscript=False):
    """--model: refuses options that do not apply to an exported model, a TorchScript one without
    --trust-torchscript, and checks its export.json."""
    if str(model).endswith(".ts") and not trust_torchscript:
        raise PredictError(f"--model {model}: a TorchScript file is a program, not data: loading and running it "
                           f"runs whatever code it holds (it can read and write your files), and export.json's "
                           f"sha256 only says the file is the one that export.json describes, not who wrote them. "
                           f"Use an ONNX export (tools/export_model.py --format onnx, the default), or pass "
                           f"--trust-torchscript for a model.ts you exported yourself")
    if config_file:
        raise PredictError(f"--model {model} and --config-file {config_file}: an exported model carries its "
                           f"preparation and settings (export.json); give one of them")
    if opts:
        raise PredictError(f"--model {model}: config overrides ({' '.join(map(str, opts))}) do not change an "
                           f"exported model; export again with them (tools/export_model.py)")
    if amp:
        raise PredictError(f"--model {model}: --amp applies to the PyTorch model only")
    if operating_point:
        raise PredictError(f"--model {model}: --operating-point is checked against MODEL.WEIGHTS and is not "
                           f"available with an exported model; predict with --config-file and MODEL.WEIGHTS")
    try:
        meta = read_export_json(model)
    except ExportError as e:
        raise PredictError(str(e)) from None
    if min_score < meta["score_threshold"]:
        raise PredictError(f"--min-score {min_score:g} is below the score threshold inside the exported model "
                           f"({meta['score_threshold']:g}, {meta['path']}): boxes between them were never kept; "
                           f"pass --min-score {meta['score_threshold']:g} or more, or export with "
                           f"MODEL.ROI_HEADS.SCORE_THRESH_TEST {min_score:g}")
    return _Exported(model, meta, device or "cpu")


class _Run:
    """One run of tools/predict.py, its folders locked: the previous run checked, resumed or removed, the
    images predicted, then the tables and DICOM outputs written (:func:`_finish`)."""

    def __init__(self, config_name, make_predictor, files, out, dicom, record, point, patients_summary,
                 in_output_folders, sharded=False):
        self.config_name, self.make_predictor, self.sharded = config_name, make_predictor, sharded
        self.files, self.out, self.dicom = files, out, dicom
        self.record, self.point, self.patients_summary = record, point, patients_summary
        self.in_output_folders = in_output_folders
        self.owner = os.path.realpath(out.folder)
        self.previous_skips = {}

    def _previous(self, resume, overwrite):
        """(previous records to reuse, {file: why predicted again}, previous records not among the inputs)."""
        out, dicom = self.out, self.dicom
        previous = out.previous_run()
        old_dicom = dicom.previous_run() if dicom else []
        if (previous or old_dicom) and not (resume or overwrite):
            where = [f"--output {out.folder} holds a previous run's results ({', '.join(previous)})"] \
                if previous else []
            if old_dicom:
                where.append(f"--dicom-out {dicom.folder} holds a previous run's presentation states and reports "
                             f"({len(old_dicom)} file(s))")
            raise PredictError(f"{'; '.join(where)}: pass --resume to continue it or --overwrite to replace it")
        if dicom:
            dicom.check_owner(self.owner, resume)
        done, skipped = _resumable_records(out, self.record) if resume and previous else ({}, {})
        # the records by the file's real path: an input folder given as /data/in then as in (or through a link)
        # names the same files; the records reused take the names given now
        inputs = {os.path.realpath(f): f for f in self.files}
        by_path = {os.path.realpath(k): r for k, r in done.items()}
        self.previous_skips = {inputs[p]: r for p, r in ((os.path.realpath(k), r) for k, r in skipped.items())
                               if p in inputs}
        gone = sorted(r["file_name"] for p, r in by_path.items() if p not in inputs)
        done = {inputs[p]: {**r, "file_name": inputs[p]} for p, r in by_path.items() if p in inputs}
        not_inputs = len(gone)
        if not_inputs and dicom:
            names = gone
            raise PredictError(
                f"--resume with --dicom-out: {not_inputs} image(s) predicted in {out.folder} are not among the "
                f"inputs now (e.g. {', '.join(names[:3])}); the reports written now would no longer cover them. "
                f"Give every input of the previous run again (and the new ones), or use another --output and "
                f"--dicom-out")
        reuse, changed = reusable_records(done, self.files)
        return reuse, changed, not_inputs

    def predict(self, resume: bool, overwrite: bool, *, entries: Mapping[str, dict], overlay: bool, min_score: float,
                max_pixels: int, workers: int, batch_size: int, amp: bool) -> tuple[list[dict], list[dict]]:
        out, dicom, files, point = self.out, self.dicom, self.files, self.point
        done, changed, not_inputs = self._previous(resume, overwrite)
        predictor = self.make_predictor()  # refuses missing or partial weights, or a changed model, before any change
        continuing = resume and os.path.exists(out.path(RUN))
        if overwrite:
            out.remove_previous_run()
            if dicom:
                dicom.remove_previous_run()
        if continuing:
            out.write_manifest(self.owner, {**out.listed(), JSONL: None})
        else:
            write_json(out.path(RUN), self.record)
            out.write_manifest(self.owner, {RUN: sha256_file(out.path(RUN)), JSONL: None})
        if dicom:
            dicom.write_manifest(self.owner, dicom.listed())
        if overlay:
            try:
                os.makedirs(out.path(OVERLAYS), exist_ok=True)
            except OSError as e:
                raise PredictError(f"{out.path(OVERLAYS)}: cannot be created ({e})") from None

        todo = [p for p in files if p not in done]
        if done or changed:
            print(f"--resume: {len(files) - len(todo)} of {len(files)} input(s) already predicted in "
                  f"{out.path(JSONL)}" + (f"; {len(changed)} predicted before but changed since, predicted again"
                                          if changed else ""), flush=True)
        records = {p: done[p] for p in files if p in done}
        if not_inputs:
            logger.warning("--resume: %d image(s) predicted by the previous run are not among the inputs now; "
                           "left out of the results", not_inputs)
        threshold = point["threshold"] if point else None
        try:
            log = open(out.path(JSONL), "a")
        except OSError as e:
            raise PredictError(f"{out.path(JSONL)}: cannot be opened for writing ({e})") from None
        with log, tqdm(total=len(todo), desc="predict", unit="image") as progress:
            for r in predict_files(predictor, todo, max_pixels=max_pixels, min_score=min_score, workers=workers,
                                   batch_size=batch_size, patients=entries,
                                   output=out.folder if overlay else None, threshold=threshold):
                before = self.previous_skips.get(r["file_name"]) if continuing else None
                if before is not None and r["status"] == "skipped" and _same_skip(before, r):
                    # skipped again for the same reason: its line is in the log already (not one more per --resume)
                    records[r["file_name"]] = r
                    progress.update(1)
                    continue
                try:
                    log.write(json.dumps(r) + "\n")
                    log.flush()
                except OSError as e:
                    raise PredictError(f"{out.path(JSONL)}: cannot be written ({type(e).__name__}: {e})") from None
                records[r["file_name"]] = r
                progress.update(1)
        algorithm = None
        if dicom:
            from ..outputs.dicom import Algorithm

            algorithm = Algorithm(self.config_name, self.record["weights_sha256"], min_score,
                                  (point["name"], point["threshold"]) if point else None)
        counts = {"from_previous_run": len(files) - len(todo), "previous_run_not_in_inputs": not_inputs,
                  "changed_since_previous_run": len(changed), "inputs_in_output_folders": self.in_output_folders}
        return _finish(out, files, records, counts, point=point, patients_summary=self.patients_summary,
                       dicom=dicom, algorithm=algorithm, owner=self.owner, allow_empty=self.sharded)


def _same_skip(before, now):
    """A previous skip record that says what ``now`` says (same kind and reason), under whatever name."""
    return (before.get("kind"), before.get("reason")) == (now.get("kind"), now.get("reason"))


def _changed_after_prediction(records):
    """The predicted files whose size or modification time differ now from when they were read: their
    results describe the content they had (file_sha256), not the file as it is now."""
    changed = []
    for p, r in records.items():
        if r.get("status") != "predicted" or "file_size" not in r:
            continue
        try:
            st = os.stat(p)
            same = (st.st_size, st.st_mtime_ns) == (r["file_size"], r["file_mtime_ns"])
        except OSError:
            same = False
        if not same:
            changed.append(p)
    if changed:
        logger.warning("%d image(s) changed after they were predicted; their results describe the content that "
                       "was read (file_sha256), and --resume predicts them again: %s", len(changed),
                       ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else ""))
    return changed


def _dicom_files(dicom, per_image):
    """The --dicom-out manifest after a run: the files written now, with their sha256; files an earlier run of
    this --output wrote that this one did not write again (e.g. a report no longer made) are removed when
    unchanged, else left listed and named."""
    written = sorted({v[k] for v in per_image.values() for k in ("presentation_state", "report") if v.get(k)})
    files = {n: sha256_file(dicom.path(n)) for n in written}
    stale = {n: h for n, h in dicom.listed().items() if n not in files}
    remove, changed, _ = dicom.removal_plan(stale)
    for n in remove:
        try:
            os.remove(dicom.path(n))
        except OSError as e:
            raise PredictError(f"--dicom-out {dicom.path(n)}: an earlier run's file, no longer written, cannot be "
                               f"removed ({type(e).__name__}: {e.strerror})") from None
    if remove:
        logger.warning("--dicom-out %s: %d file(s) of an earlier run that this run no longer writes removed: %s",
                       dicom.folder, len(remove), ", ".join(remove[:5]))
    if changed:
        logger.warning("--dicom-out %s: %d file(s) of an earlier run, no longer written, changed since: left in "
                       "place: %s", dicom.folder, len(changed), ", ".join(changed[:5]))
    for n in changed:
        files[n] = stale[n]
    return files


def _finish(out, files, records, counts, point=None, patients_summary=None, dicom=None, algorithm=None,
            owner=None, allow_empty=False):
    """Write the tables (and DICOM outputs) of a run from its records. ``allow_empty``: a shard whose inputs
    were all skipped, or that has none, is not an error (its merge decides)."""
    t = tables.build(files, records, point["threshold"] if point else None)
    predictions, skipped, patients, summary = t["predictions"], t["skipped"], t["patients"], t["summary"]
    resumed, not_inputs = counts["from_previous_run"], counts["previous_run_not_in_inputs"]
    summary.update(counts)
    summary["changed_after_prediction"] = len(_changed_after_prediction({p: records[p] for p in files}))
    if patients_summary:
        summary["patients_csv"] = patients_summary
    if point:
        summary["operating_point"] = {**point, **tables.recall_counts(patients)}
    dicom_note = ""
    if dicom:
        from ..outputs.dicom import write_dicom_outputs

        dicom_out = dicom.folder
        predicted = [(records[p], image_key(p)) for p in files if records[p]["status"] == "predicted"]
        try:
            per_image, summary["dicom"] = write_dicom_outputs(dicom_out, predicted, algorithm)
        except OutputError as e:
            raise PredictError(str(e)) from None
        dicom.write_manifest(owner, _dicom_files(dicom, per_image))
        for e in predictions:
            e["dicom"] = per_image[e["file_name"]]
        d = summary["dicom"]
        dicom_note = (f"; DICOM: {d['presentation_states']} presentation state(s), {d['reports']} report(s) in "
                      f"{dicom_out}" + (f", {d['images_without_dicom_output']} image(s) without (see summary.json)"
                                        if d["images_without_dicom_output"] else "")
                      + (f", {d['studies_with_several_patients']} study(ies) of several patients without a report"
                         if d.get("studies_with_several_patients") else ""))
    try:
        write_json(out.path("predictions.json"), predictions)
        write_text(out.path("patients.csv"), tables.patients_csv(patients, with_decisions=point is not None))
        write_json(out.path("skipped.json"), skipped)
        write_json(out.path("summary.json"), summary)
    except OutputError as e:
        raise PredictError(str(e)) from None
    _write_output_manifest(out, owner)
    reasons = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in summary["skipped_by_reason"].items())
    recalled = (f"; at operating point {point['name']} ({describe_threshold(point['threshold'])}): "
                f"{summary['operating_point']['patients_recalled']} of {len(patients)} patient(s) recalled"
                if point else "")
    print(f"{summary['inputs']} input(s): {summary['predicted']} predicted"
          f"{f' ({resumed} in the previous run)' if resumed else ''}, {summary['skipped']} skipped"
          f"{f' ({reasons}; see skipped.json)' if skipped else ''}; {summary['unknown_patient']} image(s) with "
          f"unknown patient (each counted as its own patient), {summary['unknown_laterality']} with unknown "
          f"laterality"
          f"{f'; {not_inputs} image(s) of the previous run not among the inputs, left out' if not_inputs else ''}"
          f"{recalled}{dicom_note}. Wrote {out.folder}/predictions.json, patients.csv, skipped.json, summary.json",
          flush=True)
    if summary["laterality_conflicts"]:
        print(f"{summary['laterality_conflicts']} image(s) whose --patients laterality its header contradicts: no "
              f"side stated for them (see laterality_conflict in predictions.json)", flush=True)
    if summary["patient_conflicts"]:
        print(f"{summary['patient_conflicts']} image(s) whose --patients patient_id its header's PatientID "
              f"contradicts: each filed as a patient of its own, merged with neither (see patient_conflict in "
              f"predictions.json); give the header's PatientID in --patients, or leave those files out of it",
              flush=True)
    if summary["patient_ids_with_several_issuers"]:
        print(f"{summary['patient_ids_with_several_issuers']} PatientID(s) given by more than one issuer "
              f"(IssuerOfPatientID): kept as separate patients (see issuer_of_patient_id in patients.csv)", flush=True)
    if not predictions and not allow_empty:
        raise PredictError(f"no image could be predicted: all {len(files)} input(s) skipped ({reasons}); see "
                           f"{out.path('skipped.json')}")
    return predictions, skipped


def _write_output_manifest(out, owner):
    """--output's manifest at the end of a run: every file of the run with its sha256, the overlays of every
    record of predictions.jsonl included."""
    files = {n: sha256_file(out.path(n)) for n in (RUN, JSONL) + FINAL_FILES if os.path.isfile(out.path(n))}
    for r in (_jsonl_records_or_none(out.path(JSONL)) or {}).values():
        if r.get("overlay") and r.get("overlay_sha256") and os.path.isfile(out.path(r["overlay"])):
            files[r["overlay"]] = r["overlay_sha256"]
    out.write_manifest(owner, files)


def _read_shard(folder):
    """A finished shard's run.json record and its records by file name, checked complete and unchanged since
    (its manifest's sha256 of predictions.jsonl and run.json); PredictError naming the folder otherwise."""
    shard_out = _Output(folder)
    lock = shard_out.lock()  # a shard still running holds it: refused, naming the run
    try:
        listed = shard_out.listed()
        if not os.path.isfile(shard_out.path(RUN)):
            raise PredictError(f"--merge {folder}: no {RUN}, not the --output of a tools/predict.py --shard run")
        with open(shard_out.path(RUN)) as f:
            record = json.load(f)
        if not (record.get("options") or {}).get("shard") or "shard" not in record:
            raise PredictError(f"--merge {folder}: predicted without --shard ({shard_out.path(RUN)})")
        for name in (RUN, JSONL, "summary.json"):
            if listed.get(name) is None or not os.path.isfile(shard_out.path(name)):
                raise PredictError(f"--merge {folder}: the shard's run has not finished ({name} is not complete "
                                   f"in its {MANIFEST}); rerun it with --resume")
            if sha256_file(shard_out.path(name)) != listed[name]:
                raise PredictError(f"--merge {shard_out.path(name)}: changed since the shard's run wrote it "
                                   f"(sha256 differs from its {MANIFEST})")
        records = _jsonl_records_or_none(shard_out.path(JSONL))
        if records is None:
            raise PredictError(f"--merge {shard_out.path(JSONL)}: holds lines that are not prediction records")
    except (OSError, ValueError) as e:
        raise PredictError(f"--merge {folder}: {RUN} cannot be read ({type(e).__name__}: {e})") from None
    finally:
        lock.release()
    return record, records


def _shard_mismatch(first, other):
    """How ``other`` shard's run differs from ``first``'s beyond its index (model, options, config, N,
    inputs), in words; [] when they are shards of one run."""
    a = {**first, "options": {**first["options"], "shard": {**first["options"]["shard"], "index": None}}}
    b = {**other, "options": {**other["options"], "shard": {**other["options"]["shard"], "index": None}}}
    diffs = _resume_differences(a, b)
    for k in ("config_name", "operating_point", "patients_csv"):
        if first["shard"].get(k) != other["shard"].get(k):
            diffs.append(f"{k} ({first['shard'].get(k)!r}, {other['shard'].get(k)!r})")
    return diffs


def run_merge(shards: Sequence[str], output: str, *, dicom_out: str | None = None,
              overwrite: bool = False) -> tuple[list[dict], list[dict]]:
    """--merge SHARD_OUTPUT ...: the outputs of the shards 1..N of one run (tools/predict.py --shard I/N, the
    same model, options and inputs) written to ``output`` (and ``dicom_out``) as one unsharded run writes
    them: predictions.jsonl and .json in input order, patients.csv, skipped.json, summary.json, the overlays
    (copied, checked by sha256), and the DICOM presentation states and reports written from the merged
    records. Refused, naming the folders, when the shards differ in model, options, config, N or inputs, when
    one is missing, given twice or unfinished."""
    if not shards:
        raise PredictError("--merge: give the --output folders of every shard")
    if dicom_out and os.path.realpath(dicom_out) == os.path.realpath(output):
        raise PredictError(f"--dicom-out {dicom_out} is the --output folder: give the DICOM outputs a folder of "
                           f"their own (e.g. {os.path.join(output, 'dicom')})")
    for s in shards:
        if os.path.realpath(s) in (os.path.realpath(output), os.path.realpath(dicom_out or output)):
            raise PredictError(f"--merge {s}: a shard's folder cannot be the merged --output or --dicom-out")
    read = [(s, *_read_shard(s)) for s in shards]
    first_folder, first, _ = read[0]
    n = first["options"]["shard"]["count"]
    by_index = {}
    for folder, record, _ in read:
        diffs = _shard_mismatch(first, record)
        if diffs:
            raise PredictError(f"--merge: {folder} and {first_folder} are not shards of one run: "
                               f"{'; '.join(diffs)}")
        i = record["options"]["shard"]["index"]
        if i in by_index:
            raise PredictError(f"--merge: {by_index[i]} and {folder} are both shard {i}/{n}")
        by_index[i] = folder
    missing = [i for i in range(1, n + 1) if i not in by_index]
    if missing:
        raise PredictError(f"--merge: shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing (given "
                           f"{', '.join(f'{i}/{n}' for i in sorted(by_index))})")
    total = first["options"]["shard"]["inputs"]
    files, records = [None] * total, {}
    for folder, record, shard_records in read:
        part = record["shard"]
        # by real path: a shard resumed with its inputs named another way (relative, absolute) logged them so
        by_path = {os.path.realpath(k): r for k, r in shard_records.items()}
        for f, pos in zip(part["files"], part["positions"]):
            if os.path.realpath(f) not in by_path:
                raise PredictError(f"--merge {folder}: no prediction record for {f}; rerun the shard with --resume")
            if not 0 <= pos < total or files[pos] is not None:
                raise PredictError(f"--merge {folder}: {RUN} gives input {f} position {pos}, taken or outside the "
                                   f"{total} inputs")
            files[pos], records[f] = f, {**by_path[os.path.realpath(f)], "file_name": f}
    if None in files:
        raise PredictError(f"--merge: the shards cover {total - files.count(None)} of the run's {total} inputs")
    with contextlib.ExitStack() as held:
        out, dicom = _locked_outputs(held, output, dicom_out)
        owner = os.path.realpath(out.folder)
        previous = out.previous_run()
        old_dicom = dicom.previous_run() if dicom else []
        if (previous or old_dicom) and not overwrite:
            raise PredictError(f"--merge: {output if previous else dicom_out} holds a previous run's results: pass "
                               f"--overwrite to replace them")
        if dicom:
            dicom.check_owner(owner, False)
        if overwrite:
            out.remove_previous_run()
            if dicom:
                dicom.remove_previous_run()
        merged = {k: v for k, v in first.items() if k != "shard"}
        merged["options"] = {**first["options"], "shard": None}
        merged["merged_from"] = [{"folder": os.path.abspath(by_index[i]), "shard": [i, n]} for i in range(1, n + 1)]
        write_json(out.path(RUN), merged)
        out.write_manifest(owner, {RUN: sha256_file(out.path(RUN)), JSONL: None})
        _copy_overlays(read, out)
        try:
            with open(out.path(JSONL), "w") as log:
                for f in files:
                    log.write(json.dumps(records[f]) + "\n")
        except OSError as e:
            raise PredictError(f"{out.path(JSONL)}: cannot be written ({type(e).__name__}: {e})") from None
        part = first["shard"]
        point = part["operating_point"]
        algorithm = None
        if dicom:
            from ..outputs.dicom import Algorithm

            algorithm = Algorithm(part["config_name"], first["weights_sha256"], first["options"]["min_score"],
                                  (point["name"], point["threshold"]) if point else None)
        counts = {"from_previous_run": 0, "previous_run_not_in_inputs": 0, "changed_since_previous_run": 0,
                  "inputs_in_output_folders": max(r["shard"]["inputs_in_output_folders"] for _, r, _ in read)}
        return _finish(out, files, records, counts, point=point, patients_summary=part["patients_csv"],
                       dicom=dicom, algorithm=algorithm, owner=owner)


def _copy_overlays(read, out):
    """The shards' overlays into the merged --output, each checked against its record's sha256."""
    made = False
    for folder, _, shard_records in read:
        for r in shard_records.values():
            name = r.get("overlay")
            if not name:
                continue
            if not (isinstance(name, str) and os.path.dirname(name) == OVERLAYS
                    and os.path.basename(name) not in ("", ".", "..") and name == os.path.normpath(name)):
                raise PredictError(f"--merge {os.path.join(folder, JSONL)}: the record of {r.get('file_name')} names "
                                   f"its overlay {name!r}, not a file in {OVERLAYS}/: refused (it would be copied "
                                   f"outside the merged --output)")
            src = os.path.join(folder, name)
            if not os.path.isfile(src) or sha256_file(src) != r.get("overlay_sha256"):
                raise PredictError(f"--merge {src}: missing or changed since the shard wrote it (its record in "
                                   f"{os.path.join(folder, JSONL)} has another sha256)")
            if not made:
                os.makedirs(out.path(OVERLAYS), exist_ok=True)
                made = True
            shutil.copyfile(src, out.path(name))
