"""The work behind tools/serve.py: a DICOM node that a modality or a PACS sends mammograms to (C-STORE) and
that sends its findings back (presentation states and TID 1500 reports, the objects of predict's --dicom-out).

Three parts share the spool (:mod:`.spool`): the Storage SCP (pynetdicom's threads, one per
association) stores each instance durably before answering success; the predicting thread predicts a study
once no instance of it has arrived for ``study_timeout`` seconds, with predict's own pieces (the predictor,
:func:`mammo_tl.inference.loader.predict_files`, :func:`mammo_tl.outputs.dicom.write_dicom_outputs`); the sending
thread sends every result to every destination (:mod:`.send`), retried with back-off until
acknowledged, then applies the retention rule. Logs name the calling AE title and host, the Study Instance
UID and the outcome; never a patient's name or id.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import ssl
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..data.dicom_header import uid_problem
from ..data.inputs import image_key
from ..files import FolderLock, FolderLocked, atomic_write_json, sha256_file
from ..inference.loader import predict_files
from ..inference.options import PredictError, build_cfg, check_device, dicom_config_name, load_operating_point
from .send import Destination, check_ae_title, send
from .spool import INSTANCES, RESULTS, Spool

logger = logging.getLogger("mammo_tl.serve")

# The image storage classes mammograms come as, and the transfer syntaxes they come in.
STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (SV1)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
)
VERIFICATION = "1.2.840.10008.1.1"
# C-STORE failure statuses (PS3.4 B.2.3): out of resources (the sender should retry), data set does not match
# the SOP class, cannot understand.
OUT_OF_RESOURCES, NOT_MATCHING, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
# Seconds before a study whose results could not be written to the spool is tried again.
SPOOL_RETRY_S = 60.0


class ServeError(PredictError):
    """A bad option or a spool that cannot be used; the message names the option or file."""


@dataclass
class ServeOptions:
    """tools/serve.py's options (see its --help)."""

    spool: str
    port: int
    ae_title: str = "MAMMO_TL"
    allow: Sequence[tuple[str, str | None]] = ()
    send_to: Sequence[Destination] = ()
    host: str = "0.0.0.0"
    study_timeout: float = 60.0
    min_score: float = 0.05
    max_pixels: int | None = None
    batch_size: int = 1
    max_associations: int = 8
    max_instance_mb: float = 512.0
    min_free_mb: float = 1024.0
    keep_hours: float = 24.0
    retry_max: float = 300.0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None


def parse_allow(text: str) -> tuple[str, str | None]:
    """--allow AE or AE@HOST."""
    ae, _, host = text.partition("@")
    return check_ae_title(ae, "--allow"), (host.strip() or None) if host else None


class Node:
    """The DICOM node: see the module's doc. :meth:`start` starts it, :meth:`stop` stops it."""

    def __init__(self, config_file: str, opts: Sequence[str], options: ServeOptions, *, device: str | None = None,
                 operating_point: str | None = None, operating_points: str | None = None):
        from ..data.image_io import DEFAULT_MAX_PIXELS
        from ..outputs.dicom import Algorithm
        from ..inference.predictor import MammoPredictor

        o = self.options = options
        if not o.allow:
            raise ServeError("--allow: name at least one calling AE title (AE or AE@HOST) that may send studies")
        if not o.send_to:
            raise ServeError("--send-to: name at least one destination for the results")
        for name, value, low in (("--study-timeout", o.study_timeout, 0.0), ("--keep-hours", o.keep_hours, 0.0),
                                 ("--retry-max", o.retry_max, 0.1), ("--max-instance-mb", o.max_instance_mb, 0.001),
                                 ("--min-free-mb", o.min_free_mb, 0.0), ("--max-associations", o.max_associations, 1)):
            if not value >= low:
                raise ServeError(f"{name} {value}: must be at least {low}")
        self.max_pixels = DEFAULT_MAX_PIXELS if o.max_pixels is None else o.max_pixels
        self.cfg = build_cfg(config_file, list(opts) + (["MODEL.DEVICE", device] if device else []), o.min_score)
        check_device(self.cfg, False)
        point = load_operating_point(operating_point, operating_points, self.cfg.MODEL.WEIGHTS, o.min_score) \
            if operating_point else None
        self.threshold = point["threshold"] if point else None
        weights = self.cfg.MODEL.WEIGHTS
        self.algorithm = Algorithm(dicom_config_name(config_file),
                                   sha256_file(weights) if weights and os.path.isfile(weights) else None,
                                   o.min_score, (point["name"], point["threshold"]) if point else None)
        self.predictor = MammoPredictor(self.cfg)  # refuses missing or partial weights before the port opens
        if (o.tls_key or o.tls_ca) and not o.tls_cert:
            raise ServeError("--tls-key and --tls-ca need --tls-cert (the node's certificate)")
        self.tls = self._tls_context() if o.tls_cert else None
        try:
            self.lock = FolderLock(o.spool, "tools/serve.py").acquire()
        except FolderLocked as e:
            raise ServeError(f"--spool {e}") from None
        except OSError as e:
            raise ServeError(f"--spool {o.spool}: cannot be used ({type(e).__name__}: {e})") from None
        try:
            # what the results are made by: a study predicted by another model, config or options is predicted again
            made_by = {"weights_sha256": self.algorithm.weights_sha256, "config": self.cfg.dump(),
                       "min_score": o.min_score, "operating_point": self.algorithm.operating_point,
                       "version": self.algorithm.version}
            self.spool = Spool(o.spool, made_by=json.loads(json.dumps(made_by)))
        except OSError as e:
            self.lock.release()
            raise ServeError(f"--spool {o.spool}: cannot be used ({type(e).__name__}: {e})") from None
        self.counts: Counter = Counter()
        self.last_arrival: dict[str, float] = {}
        self.failed: set[str] = set()  # studies whose prediction failed in this process: not tried again here
        self.to_send: set[str] = set()
        self.state = threading.Lock()
        self.stopping = threading.Event()
        self.backoff = {d.key: (0.0, 0.0) for d in o.send_to}  # destination -> (delay, next attempt)
        now = time.monotonic()
        for study in self.spool.studies():  # what a stopped node left: predicted after the quiet time, or sent
            done = self.spool.done(study)
            if self.spool.pending(study) or (done and done.get("error")):
                self.last_arrival[study] = now
            if done:
                self.to_send.add(study)
        if self.last_arrival or self.to_send:
            logger.info("spool %s: %d study(ies) to predict, %d with results to send or keep", self.spool.folder,
                        len(self.last_arrival), len(self.to_send))
        self.server = None
        self.threads = []

    def _tls_context(self):
        o = self.options
        if not o.tls_key:
            raise ServeError("--tls-cert needs --tls-key")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(o.tls_cert, o.tls_key)
            if o.tls_ca:
                ctx.load_verify_locations(o.tls_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED  # only senders with a certificate that CA signed
        except (OSError, ssl.SSLError) as e:
            raise ServeError(f"--tls-cert {o.tls_cert} / --tls-key {o.tls_key} / --tls-ca {o.tls_ca}: {e}") from None
        return ctx

    # ---- receiving ---------------------------------------------------------------------------------------
    def start(self) -> Node:
        from pynetdicom import AE, evt

        o = self.options
        ae = AE(ae_title=o.ae_title)
        ae.maximum_associations = o.max_associations
        ae.maximum_pdu_size = 0  # no limit on the PDUs senders may send; the instance size is checked instead
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION)
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_ECHO, lambda event: 0x0000), (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self.server = ae.start_server((o.host, o.port), block=False, evt_handlers=handlers,
                                          ssl_context=self.tls)
        except OSError as e:
            self.lock.release()
            raise ServeError(f"--port {o.port}: cannot listen on {o.host}:{o.port} ({e.strerror})") from None
        for target, name in ((self._predict_loop, "predict"), (self._send_loop, "send")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)
        logger.info("listening on %s:%d as %s; allowed: %s; sending to: %s; study timeout %gs", o.host, o.port,
                    o.ae_title, ", ".join(a + (f"@{h}" if h else "") for a, h in o.allow),
                    ", ".join(d.text for d in o.send_to), o.study_timeout)
        return self

    def _allowed(self, ae_title, host):
        return any(ae_title == a and (h is None or h == host) for a, h in self.options.allow)

    def _on_requested(self, event):
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = assoc.requestor.address
        if not self._allowed(calling, host):
            self.count("associations_rejected")
            logger.warning("association from %s@%s rejected: calling AE title (and host) not in --allow",
                           calling, host)
            assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected permanent, calling AE title not recognised

    def _on_rejected(self, event):
        if event.assoc.requestor.primitive is not None and self._allowed(
                str(event.assoc.requestor.primitive.calling_ae_title).strip(), event.assoc.requestor.address):
            self.count("associations_rejected_busy")
            logger.warning("association from %s@%s rejected: --max-associations %d reached",
                           event.assoc.requestor.ae_title, event.assoc.requestor.address,
                           self.options.max_associations)

    def count(self, key: str, n: int = 1) -> None:
        with self.state:
            self.counts[key] += n

    def _on_store(self, event):
        who = f"{str(event.assoc.requestor.ae_title).strip()}@{event.assoc.requestor.address}"
        try:
            status, outcome = self._store(event)
        except Exception as e:  # never lets one instance stop the node
            status, outcome = OUT_OF_RESOURCES, f"refused (unexpected {type(e).__name__}: {e})"
            self.count("instances_refused:error")
        log = logger.info if status == 0 else logger.warning
        log("C-STORE from %s: %s", who, outcome)
        return status

    def _refuse(self, status, reason, why):
        self.count(f"instances_refused:{reason}")
        return status, f"refused ({why})"

    def _store(self, event):
        import pydicom
        from pydicom.errors import InvalidDicomError

        o = self.options
        raw = event.request.DataSet
        size = len(raw.getbuffer()) if raw is not None else 0
        if size > o.max_instance_mb * 1e6:
            return self._refuse(CANNOT_UNDERSTAND + 1, "too_large",
                                f"{size} bytes, over --max-instance-mb {o.max_instance_mb:g}")
        data = event.encoded_dataset(include_meta=True)
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            study, series, sop = (str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                                "SOPInstanceUID"))
            sop_class = str(ds.get("SOPClassUID", ""))
            has_pixels = "PixelData" in ds
            rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        except (InvalidDicomError, ValueError, TypeError, AttributeError, KeyError, EOFError, OSError) as e:
            return self._refuse(CANNOT_UNDERSTAND, "unreadable", f"not a readable DICOM data set: {type(e).__name__}")
        bad = [f"{k} {why}" for k, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series),
                                         ("SOPInstanceUID", sop)) if (why := uid_problem(v))]
        if bad:
            return self._refuse(CANNOT_UNDERSTAND, "invalid_uids", "; ".join(bad))
        if sop != str(event.request.AffectedSOPInstanceUID) or sop_class != str(event.request.AffectedSOPClassUID):
            return self._refuse(NOT_MATCHING, "not_matching_request",
                                f"study {study}: the data set's SOP Class/Instance UID differ from the request's")
        if sop_class not in STORAGE_CLASSES or not has_pixels or rows <= 0 or cols <= 0:
            return self._refuse(NOT_MATCHING, "not_an_image", f"study {study}: not an image (no pixel data, rows "
                                                              "or columns, or not an image storage class)")
        free = shutil.disk_usage(self.spool.folder).free
        if free - len(data) < o.min_free_mb * 1e6:
            return self._refuse(OUT_OF_RESOURCES, "disk_floor",
                                f"study {study}: {free / 1e6:.0f} MB free in the spool, --min-free-mb "
                                f"{o.min_free_mb:g}")
        try:
            written = self.spool.store(study, sop, data)
        except OSError as e:
            return self._refuse(OUT_OF_RESOURCES, "write_failed",
                                f"study {study}: cannot be written to the spool ({type(e).__name__}: {e.strerror})")
        with self.state:
            self.last_arrival[study] = time.monotonic()
            self.counts["instances_stored" if written else "instances_received_again"] += 1
        return 0x0000, f"study {study}: instance {'stored' if written else 'already stored (same bytes)'}"

    # ---- predicting --------------------------------------------------------------------------------------
    def _predict_loop(self):
        while not self.stopping.is_set():
            now = time.monotonic()
            with self.state:
                due = sorted(s for s, t in self.last_arrival.items() if now - t >= self.options.study_timeout)
                for s in due:
                    del self.last_arrival[s]
            for study in due:
                if self.stopping.is_set():
                    return
                try:
                    done = self.spool.done(study)
                    if self.spool.pending(study) or (done and done.get("error") and study not in self.failed):
                        self.predict_study(study)
                except Exception as e:  # the spool itself failed (a full disk, say): tried again in a minute
                    logger.error("study %s: its results cannot be written to the spool (%s: %s); tried again in "
                                 "%gs", study, type(e).__name__, e, SPOOL_RETRY_S)
                    with self.state:
                        self.last_arrival.setdefault(study, time.monotonic() + SPOOL_RETRY_S)
            self.stopping.wait(0.1)

    def predict_study(self, study: str) -> dict:
        """Predict every instance of ``study`` and commit its results to the spool; returns done.json."""
        from ..outputs.dicom import write_dicom_outputs

        started = time.monotonic()
        earlier = self._current_report(study)
        inputs = self.spool.instances(study)
        files = [self.spool.study(study, INSTANCES, n) for n in inputs]
        folder = self.spool.new_results(study)
        info = {"study": study, "error": None}
        outputs = []
        try:
            records = list(predict_files(self.predictor, files, max_pixels=self.max_pixels,
                                         min_score=self.options.min_score, workers=0,
                                         batch_size=self.options.batch_size, threshold=self.threshold))
            predicted = [r for r in records if r["status"] == "predicted"]
            skipped = [{"instance": os.path.basename(r["file_name"]), "kind": r["kind"], "reason": r["reason"]}
                       for r in records if r["status"] != "predicted"]
            per_image, summary = write_dicom_outputs(folder, [(r, image_key(r["file_name"])) for r in predicted],
                                                     self.algorithm, {study: earlier} if earlier else {}) \
                if predicted else ({}, {})
            for r in predicted:  # presentation states in instance order, then the report
                name = per_image[r["file_name"]].get("presentation_state")
                if name:
                    outputs.append(name)
            outputs += sorted({v["report"] for v in per_image.values() if v.get("report")})
            without = {os.path.basename(p): v for p, v in per_image.items() if "skipped" in v or "report_skipped" in v}
            info.update(predicted=len(predicted), boxes=sum(len(r["boxes"]) for r in predicted), skipped=skipped,
                        without_dicom_output=without, dicom=summary)
        except Exception as e:  # a study that cannot be predicted is reported and kept; the node goes on
            info["error"] = f"{type(e).__name__}: {e}"
            outputs = []
            self.failed.add(study)
        done = self.spool.commit_results(study, inputs, outputs, info)
        with self.state:
            self.to_send.add(study)
            self.counts["studies_failed" if info["error"] else "studies_predicted"] += 1
            self.counts["instances_skipped"] += len(info.get("skipped", []))
        if info["error"]:
            logger.error("study %s: prediction failed (%s); kept in the spool, tried again at the next start or "
                         "when an instance of it arrives", study, info["error"])
        else:
            reasons = Counter(s["kind"] for s in info["skipped"])
            logger.info("study %s: %d instance(s) predicted, %d box(es)%s; %d result(s) to send (%.1fs)", study,
                        info["predicted"], info["boxes"],
                        f", {len(info['skipped'])} skipped ({', '.join(f'{n} {k}' for k, n in reasons.items())})"
                        if info["skipped"] else "", len(outputs), time.monotonic() - started)
        return done

    def _current_report(self, study):
        """The header of the report the study's current results hold (the one a new report replaces), or None."""
        from ..outputs.dicom import report_reference

        done = self.spool.done(study)
        names = [o["name"] for o in (done or {}).get("outputs", []) if o["name"].startswith("SR_")]
        return report_reference(self.spool.study(study, RESULTS, names[0])) if names else None

    # ---- sending -----------------------------------------------------------------------------------------
    def _send_loop(self):
        last_retention = 0.0
        while not self.stopping.is_set():
            try:
                self.send_round()
            except Exception as e:  # e.g. results replaced while being read: tried again next round
                logger.warning("sending interrupted (%s: %s); tried again", type(e).__name__, e)
            if time.monotonic() - last_retention > min(60.0, self.options.keep_hours * 3600 / 4 + 0.5):
                self.apply_retention()
                last_retention = time.monotonic()
            self.stopping.wait(0.2)

    def send_round(self) -> None:
        """Send every unsent result to every destination not waiting out a back-off, one association per
        destination; then mark the studies whose every result every destination acknowledged as processed."""
        with self.state:
            studies = sorted(self.to_send)
        ready = []
        for study in studies:
            done = self.spool.done(study)
            if done is None or done.get("error"):  # nothing to send; a failed study is kept, never "processed"
                with self.state:
                    self.to_send.discard(study)
            else:
                ready.append(study)
        complete = set(ready)
        for d in self.options.send_to:
            unsent = [(study, o) for study in ready for o in self.spool.unsent(study, d.key)]
            if not unsent:
                continue
            delay, next_try = self.backoff[d.key]
            if time.monotonic() < next_try:
                complete -= {study for study, _ in unsent}
                continue
            paths = [self.spool.study(study, "results", o["name"]) for study, o in unsent]
            acknowledged = send(d, paths, self.options.ae_title)
            sent = Counter()
            for (study, o), ok in zip(unsent, acknowledged):
                if ok:
                    self.spool.mark_sent(study, d.key, o["sop_instance_uid"])
                    sent[study] += 1
                else:
                    complete.discard(study)
            self.count("results_sent", sum(sent.values()))
            for study, n in sorted(sent.items()):
                logger.info("study %s: %d result(s) sent to %s", study, n, d.text)
            failed = len(unsent) - sum(sent.values())
            if failed:
                delay = min(self.options.retry_max, max(1.0, 2 * delay))
                self.backoff[d.key] = (delay, time.monotonic() + delay)
                logger.warning("%d result(s) of %d study(ies) not acknowledged by %s; next try in %gs", failed,
                               len({s for (s, _), ok in zip(unsent, acknowledged) if not ok}), d.text, delay)
            else:
                self.backoff[d.key] = (0.0, 0.0)
        for study in sorted(complete):
            with self.state:
                arriving = study in self.last_arrival
                if not arriving:
                    self.to_send.discard(study)
            if not arriving:
                self.spool.mark_processed(study)
                if self.options.keep_hours == 0:
                    self.apply_retention([study])

    def apply_retention(self, studies: Sequence[str] | None = None) -> int:
        """Remove the processed studies (every result acknowledged by every destination) older than
        --keep-hours; returns how many were removed."""
        removed = 0
        for study in self.spool.studies() if studies is None else studies:
            path = self.spool.study(study, "processed")
            try:
                with open(path, encoding="utf-8") as f:
                    processed = float(f.read())
            except (FileNotFoundError, ValueError):
                continue
            with self.state:
                if study in self.last_arrival or study in self.to_send:
                    continue
            if time.time() - processed >= self.options.keep_hours * 3600 and self.spool.remove_study(study):
                removed += 1
                self.count("studies_removed")
                logger.info("study %s: removed from the spool (--keep-hours %g after its results were delivered)",
                            study, self.options.keep_hours)
        return removed

    # ---- status and stopping -----------------------------------------------------------------------------
    def write_status(self) -> None:
        """spool/status.json: the counts since this node started (instances stored, refused by reason, ...)."""
        with self.state:
            counts = dict(sorted(self.counts.items()))
        atomic_write_json({"pid": os.getpid(), "counts": counts}, os.path.join(self.spool.folder, "status.json"))

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
        for t in self.threads:
            t.join(timeout=60)
        self.write_status()
        self.lock.release()

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, writing status.json every few seconds."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(2.0):
            self.write_status()
        logger.info("stopping: %s", ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "nothing done")
        self.stop()
