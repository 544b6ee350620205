"""The work behind tools/predict.py.

Images are decoded and prepared in torch DataLoader workers (``workers``) while the model runs on batches
of them (``batch_size``) in this process; results come back in input order. Results are written as the
run goes: one line per input in ``predictions.jsonl`` (flushed), so a killed run keeps what it finished and
``--resume`` continues it; ``predictions.json``, ``patients.csv``, ``skipped.json``, ``summary.json`` and
the DICOM outputs (``dicom_out``) are written at the end from the .jsonl. ``run.json`` records the config,
the weights' SHA-256 and the options, which ``--resume`` must match.

The parts: :mod:`.predict_options` (options checked before any work), :mod:`.predict_output` (the folders:
lock, manifest, previous run, resume keyed by file content), :mod:`.predict_loader` (the DataLoader and the
batch loop); here :func:`run_predict` ties them together and :func:`_finish` writes the tables.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence

from tqdm import tqdm

from ..data.image_io import DEFAULT_MAX_PIXELS
from ..data.inputs import IMAGE_SUFFIXES, image_key, list_inputs
from ..files import sha256_file
from ..outputs import OutputError, tables, write_json, write_text
from .predict_loader import predict_files, prepared_inputs  # noqa: F401  (public: bench/inference.py)
from .predict_options import (PredictError, _build_cfg, _check_device, _config_name, _operating_point,
                              _patients_table, check_batch_size, check_max_pixels, check_min_score, check_workers,
                              default_workers)
from .predict_output import (FINAL_FILES, JSONL, OVERLAYS, RUN, _DicomFolder, _jsonl_records_or_none, _Output,
                             _resumable_records, _run_record, reusable_records)
from .predictor import MammoPredictor

logger = logging.getLogger(__name__)


def run_predict(config_file: str, inputs: Sequence[str], output: str, opts: Sequence[str] = (), overlay: bool = False,
                min_score: float = 0.05, max_pixels: int | None = None, resume: bool = False, overwrite: bool = False,
                *, dicom_out: str | None = None, patients: str | None = None, workers: int | None = None,
                batch_size: int = 1, device: str | None = None, amp: bool = False, operating_point: str | None = None,
                operating_points: str | None = None) -> tuple[list[dict], list[dict]]:
    """Predict every input file; see tools/predict.py. Returns (predictions, skipped) as written to
    predictions.json and skipped.json. Raises PredictError (or WeightsError) naming what is wrong."""
    min_score = check_min_score(min_score)
    max_pixels = check_max_pixels(DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    workers = default_workers() if workers is None else check_workers(workers)
    batch_size = check_batch_size(batch_size)
    if resume and overwrite:
        raise PredictError("--resume and --overwrite exclude each other: continue the previous run, or replace it")
    if operating_points and not operating_point:
        raise PredictError(f"--operating-points {operating_points}: name the point to use with --operating-point")
    if dicom_out and os.path.realpath(dicom_out) == os.path.realpath(output):
        raise PredictError(f"--dicom-out {dicom_out} is the --output folder: give the DICOM outputs a folder of "
                           f"their own (e.g. {os.path.join(output, 'dicom')})")
    cfg = _build_cfg(config_file, list(opts) + (["MODEL.DEVICE", device] if device else []), min_score)
    _check_device(cfg, amp)
    try:
        files, in_output_folders = list_inputs(inputs, exclude=(output, dicom_out))
    except FileNotFoundError as e:
        raise PredictError(f"--input: {e}") from None
    if not files:
        left_out = f"; {in_output_folders} inside --output or --dicom-out left out" if in_output_folders else ""
        raise PredictError(f"--input {' '.join(inputs)}: no image files found (looked for "
                           f"{', '.join(IMAGE_SUFFIXES)}{left_out})")
    entries, patients_summary, patients_sha256 = _patients_table(patients, files) if patients else ({}, None, None)
    point = _operating_point(operating_point, operating_points, cfg.MODEL.WEIGHTS, min_score) \
        if operating_point else None
    out = _Output(output)
    dicom = _DicomFolder(dicom_out) if dicom_out else None
    with contextlib.ExitStack() as held:
        # one writer per folder, for the whole run (a second predict is refused, naming this one)
        held.callback(out.lock().release)
        if dicom:
            held.callback(dicom.lock().release)
        options = {"min_score": min_score, "max_pixels": max_pixels, "overlay": bool(overlay), "amp": bool(amp),
                   "patients_sha256": patients_sha256,
                   "operating_point": [point["name"], point["threshold"]] if point else None}
        run = _Run(config_file, cfg, files, out, dicom, _run_record(cfg, options), point, patients_summary,
                   in_output_folders)
        return run.predict(resume, overwrite, entries=entries, overlay=overlay, min_score=min_score,
                           max_pixels=max_pixels, workers=workers, batch_size=batch_size, amp=amp)


class _Run:
    """One run of tools/predict.py, its folders locked: the previous run checked, resumed or removed, the
    images predicted, then the tables and DICOM outputs written (:func:`_finish`)."""

    def __init__(self, config_file, cfg, files, out, dicom, record, point, patients_summary, in_output_folders):
        self.config_file, self.cfg, self.files, self.out, self.dicom = config_file, cfg, files, out, dicom
        self.record, self.point, self.patients_summary = record, point, patients_summary
        self.in_output_folders = in_output_folders
        self.owner = os.path.realpath(out.folder)

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
        done = _resumable_records(out, self.record) if resume and previous else {}
        not_inputs = len(set(done) - set(self.files))
        if not_inputs and dicom:
            names = sorted(set(done) - set(self.files))
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
        predictor = MammoPredictor(self.cfg, amp=amp)  # refuses missing or partial weights before any change
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

            algorithm = Algorithm(_config_name(self.config_file), self.record["weights_sha256"], min_score,
                                  (point["name"], point["threshold"]) if point else None)
        counts = {"from_previous_run": len(files) - len(todo), "previous_run_not_in_inputs": not_inputs,
                  "changed_since_previous_run": len(changed), "inputs_in_output_folders": self.in_output_folders}
        return _finish(out, files, records, counts, point=point, patients_summary=self.patients_summary,
                       dicom=dicom, algorithm=algorithm, owner=self.owner)


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
            owner=None):
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
    recalled = (f"; at operating point {point['name']} (recall above {point['threshold']:g}): "
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
    if not predictions:
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
