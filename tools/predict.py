#!/usr/bin/env python
"""Detect malignant masses in DICOM or PNG mammograms.

    python tools/predict.py --config-file configs/synthetic/d_tl_similarity.yaml \\
        --input scans/ more.dcm --output out/ [--overlay] [--dicom-out out/dicom] \\
        MODEL.WEIGHTS output/.../model_final.pth
    python tools/predict.py --model exported/model.onnx --input scans/ --output out/
    python tools/predict.py --config-file CFG --input scans/ --output out/2 --shard 2/8 MODEL.WEIGHTS W
    python tools/predict.py --merge out/1 out/2 ... out/8 --output out/all [--dicom-out out/dicom]

Writes, in OUTPUT: predictions.jsonl as it goes (one line per image), then predictions.json (per image:
file_name, patient_id, laterality, view, source (where each of those three came from), boxes [x1, y1, x2, y2]
in the original image's pixels, scores, max_score, and file_size, file_mtime_ns, file_sha256 of the bytes that
were decoded), patients.csv (patient_id, score = highest box score), skipped.json (file_name, kind, reason),
summary.json (counts), manifest.json (every file written, with its sha256) and, with --overlay,
overlays/<name>_<hash>.png. MODEL.WEIGHTS must be a trained model's checkpoint.

Reported boxes: every box scoring at least --min-score; the JSON, the overlays and the DICOM outputs all
show exactly these.

Patient, side and view come from, in this order: --patients CSV (columns file, patient_id and optionally
laterality, view; file absolute or relative to the CSV's folder), the DICOM header (ImageLaterality,
Laterality; View Code Sequence, ViewPosition; PatientID, where a CBIS-DDSM id such as
Mass-Test_P_00820_LEFT_CC gives patient P_00820, side and view), the file name (<patient>_<L|R>_<CC|MLO>, or a
CBIS-DDSM id). An image without a patient id is its own patient "unknown:<name>_<hash>".

--dicom-out DIR: per DICOM input a Grayscale Softcopy Presentation State (the reported boxes with their
scores) and per study a TID 1500 measurement report (Comprehensive 3D SR), referencing the source images and
carrying the source's patient module: these are the only outputs that identify the patient. Inputs that are
not DICOM or lack the study/series/instance UIDs are predicted and counted in summary.json, without DICOM
output.

--operating-point NAME: recall decisions at a threshold chosen on validation (tools/operating_points.py),
read from --operating-points FILE (default: operating_points.json beside MODEL.WEIGHTS, which must be the
weights it was chosen for). A patient, or a breast (patient and side), is recalled when its highest box score
is above the threshold; predictions.json and patients.csv then carry the decisions, and overlay boxes above
the threshold are red, the others amber (without an operating point: above 0.5).

Images are decoded by --workers processes while the model runs on --batch-size images at a time on --device
(default: MODEL.DEVICE); --amp runs the model in mixed precision (CUDA only).
An OUTPUT holding a previous run needs --resume (continue it, same config, weights and options; an image is
reused only while its file has the size, modification time and sha256 it was predicted from, and predicted
again otherwise) or --overwrite (removes only the files listed in the folders' manifest.json with an unchanged
sha256; anything else is left and named). OUTPUT and --dicom-out are locked for the run: a second predict
into either stops, naming the first. A --dicom-out belongs to the OUTPUT that first wrote it; another OUTPUT is
refused there. Image files inside OUTPUT or --dicom-out are not inputs.
A --patients laterality that the DICOM header contradicts is not used (nor the header's): the image's side is
unknown, named in predictions.json (laterality_conflict) and counted in summary.json. Likewise a --patients
patient_id that the header's PatientID contradicts: the image is a patient of its own (patient_conflict).
Patients are grouped by PatientID and IssuerOfPatientID: one id from two issuers is two patients. Text cells of
patients.csv that a spreadsheet would take for a formula (=, +, -, @, tab, CR first) get a leading '.

--model DIR/model.onnx (or .ts): an exported model (tools/export_model.py) run by ONNX Runtime or TorchScript,
with the preparation its export.json records, instead of --config-file and MODEL.WEIGHTS; refused when
export.json is missing or does not describe the file, or the file's sha256 differs from the one recorded.
A model.ts is code (it runs with your rights): it is refused unless --trust-torchscript; ONNX is data.
--shard I/N: predict only shard I of N: a DICOM study's images share a shard (hash of StudyInstanceUID),
other files go by their --patients patient_id, else by their folder. Each shard needs its own --output; then
--merge SHARD_OUTPUT ... --output OUT [--dicom-out DIR] writes what one unsharded run would have written
(refused when the shards differ in model, options, config, N or inputs, or one is missing or unfinished).
Exit status 1 with a message on any error, 2 on a bad argument.
"""
import argparse
import sys

from mammo_tl.checkpoint import WeightsError
from mammo_tl.inference.command import (PredictError, check_shard, check_workers, default_workers, run_merge,
                                             run_predict)
from mammo_tl.inference.options import add_model_options, argparse_type


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", help="the trained model's config (or --model)")
    p.add_argument("--model", metavar="DIR/model.onnx",
                   help="an exported model (tools/export_model.py: model.onnx or model.ts beside its export.json) "
                        "instead of --config-file and MODEL.WEIGHTS")
    p.add_argument("--trust-torchscript", action="store_true",
                   help="run a TorchScript --model (model.ts): it is code and runs with your rights; ONNX is data")
    p.add_argument("--input", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="the folder the results go to (predictions.json, patients.csv, ...; created if missing)")
    p.add_argument("--shard", type=argparse_type(check_shard), metavar="I/N",
                   help="predict only shard I of N (whole studies, patients or folders per shard); see --merge")
    p.add_argument("--merge", nargs="+", metavar="SHARD_OUTPUT",
                   help="write the outputs of shards 1..N (their --output folders) to --output as one run")
    p.add_argument("--overlay", action="store_true", help="also write PNGs with the boxes drawn")
    p.add_argument("--dicom-out", metavar="DIR",
                   help="also write DICOM presentation states (per image) and TID 1500 reports (per study)")
    p.add_argument("--patients", metavar="CSV",
                   help="who each file shows: columns file, patient_id[, laterality, view]")
    p.add_argument("--workers", type=argparse_type(check_workers), default=default_workers(),
                   help=f"processes decoding images beside the model (default min(4, CPUs) = {default_workers()})")
    add_model_options(p)
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in OUTPUT: skip the images in its predictions.jsonl")
    mode.add_argument("--overwrite", action="store_true", help="remove the results of a previous run in OUTPUT")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    a = p.parse_args()
    if a.merge:
        given = [f"--{k.replace('_', '-')}" for k in ("config_file", "model", "trust_torchscript", "input", "shard",
                                                      "patients",
                                                      "operating_point", "operating_points", "overlay", "resume",
                                                      "amp", "opts") if getattr(a, k)]
        typed = [t.split("=")[0] for t in sys.argv[1:] if t.startswith("--") and len(t) > 2]  # abbreviations too
        given += [o for o in ("--min-score", "--max-pixels", "--workers", "--batch-size", "--device")
                  if any(o.startswith(t) for t in typed)]
        if given:
            p.error(f"--merge writes the shards' results as they were predicted: {', '.join(given)} do(es) not "
                    f"apply")
    elif not a.input:
        p.error("the following arguments are required: --input")
    elif not (a.config_file or a.model):
        p.error("the following arguments are required: --config-file (or --model)")
    try:
        if a.merge:
            run_merge(a.merge, a.output, dicom_out=a.dicom_out, overwrite=a.overwrite)
        else:
            run_predict(a.config_file, a.input, a.output, a.opts, overlay=a.overlay, min_score=a.min_score,
                        max_pixels=a.max_pixels, resume=a.resume, overwrite=a.overwrite, dicom_out=a.dicom_out,
                        patients=a.patients, workers=a.workers, batch_size=a.batch_size, device=a.device,
                        amp=a.amp, operating_point=a.operating_point, operating_points=a.operating_points,
                        model=a.model, shard=a.shard, trust_torchscript=a.trust_torchscript)
    except (PredictError, WeightsError) as e:
        sys.exit(f"predict.py: error: {e}")
