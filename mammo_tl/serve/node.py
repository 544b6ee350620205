"""The work behind tools/serve.py: a DICOM node that a modality or a PACS sends mammograms to (C-STORE) and
that sends its findings back (presentation states and TID 1500 reports, the objects of predict's --dicom-out).

Three parts share the spool (:mod:`.spool`): the Storage SCP (pynetdicom's threads, one per
association) stores each instance durably before answering success; the predicting thread predicts a study
once no instance of it has arrived for ``study_timeout`` seconds, with predict's own pieces (the predictor,
:func:`mammo_tl.inference.loader.predict_files`, :func:`mammo_tl.outputs.dicom.write_dicom_outputs`); the sending
threads (one per destination, so that a destination that hangs delays only itself) send every result to
every destination (:mod:`.send`), retried with back-off per study until acknowledged (a study a
destination refuses --retry-limit times is given up there, with an error), and the retention rule is applied.
Logs name the calling AE title and host, the Study Instance UID and the outcome; never a patient's name or id.

What a sender can make the node hold is bounded before it is read: a connection must finish its TLS handshake
and send its association request within --request-timeout seconds (it holds no association slot until then);
no PDU longer than :data:`MAX_PDU` is read (the connection is closed); the allow list and the called AE title
are checked on the association request, before any data set; an instance's bytes beyond --max-instance-mb are
discarded as they arrive (the instance is then refused), so an association holds at most that much of one.
"""
from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import select
import shutil
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..data.dicom_header import uid_problem
from ..data.inputs import image_key
from ..files import FolderLock, FolderLocked, sha256_file
from ..inference.loader import predict_files
from ..inference.options import PredictError, build_cfg, check_device, dicom_config_name, load_operating_point
from .send import Destination, check_ae_title, send
from .spool import FILE_MODE, INSTANCES, RESULTS, Spool, make_folder

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
TOO_LARGE, NOT_A_MAMMOGRAM = CANNOT_UNDERSTAND + 1, CANNOT_UNDERSTAND + 2  # the node's own C-STORE failures
# Seconds before a study whose results could not be written to the spool is tried again.
SPOOL_RETRY_S = 60.0
# The longest PDU the node reads (also the Maximum Length it asks senders to keep to): a longer one, an
# association request included, ends the connection unread.
MAX_PDU = 1 << 20
# Connections of one host that may wait for their association request at once: one host cannot take every
# waiting place (max(64, 8 x --max-associations) in all).
MAX_WAITING_PER_HOST = 16
# Seconds an association may stay silent once it is established (pynetdicom's network timeout).
NETWORK_TIMEOUT_S = 60.0
# The first wait before a result is tried again; doubled at each try, up to --retry-max.
RETRY_FIRST_S = 1.0


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
    request_timeout: float = 5.0
    retry_limit: int = 10
    send_backlog: bool = False


def parse_allow(text: str) -> tuple[str, str | None]:
    """--allow AE or AE@HOST."""
    ae, _, host = text.partition("@")
    return check_ae_title(ae, "--allow"), (host.strip() or None) if host else None


def _address(text: str) -> str:
    """An IP address as the node compares them (an IPv4-mapped IPv6 address as IPv4); ValueError otherwise."""
    ip = ipaddress.ip_address(text.split("%", 1)[0].strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def resolve_allow(allow: Sequence[tuple[str, str | None]]) -> list[tuple[str, frozenset[str] | None, str | None]]:
    """--allow entries as (AE title, the addresses its host has, or None for any host, the host as given): a
    host name is resolved once, here (at start-up); one that does not resolve is a ServeError."""
    out = []
    for ae, host in allow:
        if host is None:
            out.append((ae, None, None))
            continue
        try:
            addresses = frozenset({_address(host)})
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            except (socket.gaierror, UnicodeError) as e:
                raise ServeError(f"--allow {ae}@{host}: the host name does not resolve "
                                 f"({getattr(e, 'strerror', None) or e}); give its IP address, or a name this "
                                 "machine resolves") from None
            addresses = frozenset(_address(i[4][0]) for i in infos)
        out.append((ae, addresses, host))
    return out


def _request_handler(node: Node):
    """pynetdicom's handler of a new connection, admitting it first (:meth:`Node._admit`), bounding what its
    association reads (:meth:`Node._bound_reading`) and, when it ends, freeing its association slot."""
    from pynetdicom.transport import RequestHandler

    class Handler(RequestHandler):
        assoc = None

        def _create_association(self):
            self.assoc = super()._create_association()
            node._bound_reading(self.assoc)
            return self.assoc

        def handle(self) -> None:
            if not node._admit(self):
                try:
                    self.request.close()  # with TLS, the wrapped socket socketserver does not know
                except OSError:
                    pass
                return
            try:
                super().handle()
                if self.assoc is not None:
                    self.assoc.join()
            finally:
                with node.state:
                    node.active.discard(self.assoc)

    return Handler


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
                                 ("--min-free-mb", o.min_free_mb, 0.0), ("--max-associations", o.max_associations, 1),
                                 ("--request-timeout", o.request_timeout, 0.1), ("--retry-limit", o.retry_limit, 1)):
            if not value >= low:
                raise ServeError(f"{name} {value}: must be at least {low}")
        self.allow = resolve_allow(o.allow)
        for ae, addresses, host in self.allow:
            if host and {host} != addresses:
                logger.info("--allow %s@%s: %s (resolved at start-up)", ae, host, ", ".join(sorted(addresses)))
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
            make_folder(o.spool)  # 0700 from the start (the lock would make it with the umask's mode)
            self.lock = FolderLock(o.spool, "tools/serve.py").acquire()
            os.chmod(self.lock.path, FILE_MODE)
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
            new = self.spool.register_destinations([d.key for d in o.send_to], backlog=o.send_backlog)
        except OSError as e:
            self.lock.release()
            raise ServeError(f"--spool {o.spool}: cannot be used ({type(e).__name__}: {e})") from None
        self.counts: Counter = Counter()
        self.last_arrival: dict[str, float] = {}
        self.failed: set[str] = set()  # studies whose prediction failed in this process: not tried again here
        self.to_send: set[str] = set()
        self.state = threading.Lock()
        self.stopping = threading.Event()
        self.backoff = {d.key: (0.0, 0.0) for d in o.send_to}  # destination -> (delay, next attempt): no answer
        self.study_backoff: dict[tuple[str, str], tuple[float, float, int]] = {}  # refused: (delay, next, tries)
        self.given_up: set[tuple[str, str]] = set()  # (destination, study) refused --retry-limit times
        self.active: set = set()  # the associations accepted and not yet ended
        self.waiting: Counter = Counter()  # host -> connections that have not sent their association request yet
        self.max_waiting = max(64, 8 * o.max_associations)
        self.status_failing = False
        retained = sum(1 for study in self.spool.studies() if self.spool.done(study))
        for d in o.send_to:
            if d.key in new and retained:
                logger.info("destination %s is new to this spool: it gets the results made from now on, not those of "
                            "the %d study(ies) retained (--send-backlog sends them)", d.text, retained)
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
        from pynetdicom.transport import ThreadedAssociationServer

        o = self.options
        ae = AE(ae_title=o.ae_title)
        # the node counts associations itself (:meth:`_on_requested`): pynetdicom's own count includes connections
        # that have not sent their request yet, so its limit only backs ours up
        ae.maximum_associations = o.max_associations + self.max_waiting + 16
        ae.maximum_pdu_size = MAX_PDU
        ae.acse_timeout = o.request_timeout  # the association request must arrive within it
        ae.network_timeout = NETWORK_TIMEOUT_S
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION)
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_ECHO, lambda event: 0x0000)]
        try:
            # TLS is negotiated in each connection's own thread (_admit), under --request-timeout, not in the
            # accepting thread, where one silent connection would hold every other
            self.server = ae.make_server((o.host, o.port), evt_handlers=handlers,
                                         server_class=ThreadedAssociationServer,
                                         request_handler=_request_handler(self))
        except OSError as e:
            self.lock.release()
            raise ServeError(f"--port {o.port}: cannot listen on {o.host}:{o.port} ({e.strerror})") from None
        self.server.daemon_threads, self.server.block_on_close = True, False
        ae._servers.append(self.server)  # as ae.start_server does: server.shutdown() removes it
        t = threading.Thread(target=self.server.serve_forever, name="accept", daemon=True)
        t.start()
        for target, name in [(self._predict_loop, "predict"), (self._send_loop, "send")] + [
                ((lambda d=d: self._destination_loop(d)), f"send {d.text}") for d in o.send_to]:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)
        logger.info("listening on %s:%d as %s; allowed: %s; sending to: %s; study timeout %gs", o.host, o.port,
                    o.ae_title, ", ".join(a + (f"@{h}" if h else "") for a, h in o.allow),
                    ", ".join(d.text for d in o.send_to), o.study_timeout)
        return self

    def _allowed(self, ae_title, host):
        try:
            address = _address(host)
        except ValueError:
            address = host
        return any(ae_title == a and (addresses is None or address in addresses) for a, addresses, _ in self.allow)

    def _admit(self, handler) -> bool:
        """A new connection: True once it has finished its TLS handshake (with --tls-cert) and has data to read
        (its association request) within --request-timeout; else it is closed, logged and counted."""
        timeout = self.options.request_timeout
        host = handler.client_address[0]
        sock = handler.request
        with self.state:
            busy = sum(self.waiting.values()) >= self.max_waiting or self.waiting[host] >= MAX_WAITING_PER_HOST
            if not busy:
                self.waiting[host] += 1
        if busy:
            self.count("connections_refused_busy")
            logger.warning("connection from %s closed: %d of its connections (%d in all) already wait for their "
                           "association request", host, self.waiting[host], sum(self.waiting.values()))
            return False
        try:
            sock.settimeout(timeout)
            if self.tls:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (OSError, ValueError) as e:  # ssl.SSLError, a timeout, a reset
                    self.count("connections_refused_tls")
                    logger.warning("connection from %s refused: TLS handshake failed (%s: %s)", host,
                                   type(e).__name__, e)
                    return False
                handler.request = sock
            ready = (self.tls and sock.pending()) or select.select([sock], [], [], timeout)[0]
            if not ready:
                self.count("connections_closed_idle")
                logger.warning("connection from %s closed: no association request within --request-timeout %gs",
                               host, timeout)
                return False
            return True
        except OSError as e:
            logger.warning("connection from %s closed (%s: %s)", host, type(e).__name__, e)
            return False
        finally:
            with self.state:
                self.waiting[host] -= 1
                if not self.waiting[host]:
                    del self.waiting[host]

    def _bound_reading(self, assoc) -> None:
        """What one association can make the node hold: no PDU over MAX_PDU is read (the connection is closed),
        and an instance's data set bytes past --max-instance-mb are discarded as they arrive (its C-STORE is
        then refused, :meth:`_on_store`)."""
        from pynetdicom.dimse_messages import DIMSEMessage

        node, sock, dimse = self, assoc.dul.socket, assoc.dimse
        recv, receive_primitive = sock.recv, dimse.receive_primitive
        limit = int(self.options.max_instance_mb * 1e6)
        received = [0]  # data set bytes of the message being received
        assoc.too_large = {}  # MessageID -> data set bytes, for the C-STORE handler

        def bounded_recv(nr_bytes: int) -> bytearray:
            if nr_bytes > MAX_PDU:
                node.count("connections_refused_pdu_too_large")
                logger.warning("connection from %s closed: a PDU of %d bytes announced, over the node's %d",
                               assoc.requestor.address, nr_bytes, MAX_PDU)
                try:
                    sock.socket.shutdown(socket.SHUT_RDWR)
                except (OSError, AttributeError):
                    pass
                return bytearray()  # read as a connection closed
            return recv(nr_bytes)

        def bounded_receive(primitive: object) -> None:
            if dimse.message is None:
                dimse.message = DIMSEMessage()
            message = dimse.message
            received[0] += sum(len(data) - 1 for _, data in primitive.presentation_data_value_list
                               if data and not data[0] & 1)
            receive_primitive(primitive)
            if dimse.message is message:  # more to come
                if received[0] > limit and message.data_set is not None and message.data_set.tell():
                    message.data_set = io.BytesIO()  # discarded: the instance is refused once complete
            else:
                if received[0] > limit:
                    assoc.too_large[getattr(message.command_set, "MessageID", None)] = received[0]
                received[0] = 0

        sock.recv, dimse.receive_primitive = bounded_recv, bounded_receive

    def _on_requested(self, event):
        """The association request: refused (A-ASSOCIATE-RJ, sent before the connection closes) for a calling
        AE title (and host) not in --allow, a called AE title other than --ae-title, or --max-associations
        already open; else counted among the open associations until it ends."""
        o = self.options
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        host = assoc.requestor.address
        if not self._allowed(calling, host):
            key, reason, rsd = "associations_rejected", "calling AE title (and host) not in --allow", (0x01, 0x01, 0x03)
        elif called != o.ae_title:
            key, reason, rsd = ("associations_rejected_called_ae", f"called AE title {called!r} is not this node's "
                                f"(--ae-title {o.ae_title})", (0x01, 0x01, 0x07))
        else:
            with self.state:
                busy = len(self.active) >= o.max_associations
                if not busy:
                    self.active.add(assoc)
            if not busy:
                try:  # the request is in: from here on, pynetdicom's network timeout
                    assoc.dul.socket.socket.settimeout(NETWORK_TIMEOUT_S)
                except (OSError, AttributeError):
                    pass
                return
            key, reason, rsd = ("associations_rejected_busy", f"--max-associations {o.max_associations} reached",
                                (0x02, 0x03, 0x02))  # transient, local limit exceeded: the sender retries
        self.count(key)
        logger.warning("association from %s@%s to %s rejected: %s", calling, host, called, reason)
        assoc.acse.send_reject(*rsd)
        assoc.kill()  # returns once the A-ASSOCIATE-RJ is sent and the connection closed

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
        size = getattr(event.assoc, "too_large", {}).pop(event.request.MessageID, None)  # its excess discarded
        if size is None:
            size = len(raw.getbuffer()) if raw is not None else 0
        if size > o.max_instance_mb * 1e6:
            return self._refuse(TOO_LARGE, "too_large", f"{size} bytes, over --max-instance-mb {o.max_instance_mb:g}")
        data = event.encoded_dataset(include_meta=True)
        try:
            ds = pydicom.dcmread(io.BytesIO(data), defer_size=4096)  # large values (pixels) not copied
            study, series, sop = (str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                                "SOPInstanceUID"))
            sop_class = str(ds.get("SOPClassUID", ""))
            has_pixels = "PixelData" in ds
            rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
            modality, body_part = (str(ds.get(k) or "").strip().upper() for k in ("Modality", "BodyPartExamined"))
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
        if modality != "MG" and body_part != "BREAST":
            return self._refuse(NOT_A_MAMMOGRAM, "not_a_mammogram",
                                f"study {study}: not a mammogram (Modality {modality or 'absent'}, BodyPartExamined "
                                f"{body_part or 'absent'}; the node takes Modality MG or BodyPartExamined BREAST)")
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
        without = info.get("without_dicom_output") or {}
        with self.state:
            self.to_send.add(study)
            # new results: the destinations that gave up on the earlier ones try these
            self.given_up -= {g for g in self.given_up if g[1] == study}
            for key in [k for k in self.study_backoff if k[1] == study]:
                del self.study_backoff[key]
            self.counts["studies_failed" if info["error"] else "studies_predicted"] += 1
            self.counts["instances_skipped"] += len(info.get("skipped", []))
            if not info["error"] and not outputs:
                self.counts["studies_without_results"] += 1
            if any("skipped" in v for v in without.values()):
                self.counts["instances_without_results"] += sum("skipped" in v for v in without.values())
        if info["error"]:
            logger.error("study %s: prediction failed (%s); kept in the spool, tried again at the next start or "
                         "when an instance of it arrives", study, info["error"])
        elif not outputs:
            reasons = Counter([s["kind"] for s in info["skipped"]] + [
                v.get("skipped") or v.get("report_skipped") for v in without.values()])
            logger.error("study %s: no result could be made from its %d instance(s) (%s); nothing is sent (see its "
                         "done.json in the spool)", study, len(inputs),
                         ", ".join(f"{n} {k}" for k, n in reasons.items()) or "no image predicted")
        else:
            if without:
                logger.warning("study %s: %d image(s) without a presentation state or not in the report (%s)", study,
                               len(without),
                               ", ".join(f"{n} {k}" for k, n in Counter(
                                   v.get("skipped") or v.get("report_skipped") for v in without.values()).items()))
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
        """Marks the studies every destination has acknowledged, applies retention (the destinations' own
        threads send)."""
        last_retention = 0.0
        while not self.stopping.is_set():
            try:
                self.settle()
            except Exception as e:  # e.g. results replaced while being read: tried again next round
                logger.warning("sending interrupted (%s: %s); tried again", type(e).__name__, e)
            if time.monotonic() - last_retention > min(60.0, self.options.keep_hours * 3600 / 4 + 0.5):
                try:
                    self.apply_retention()
                except OSError as e:
                    logger.error("retention: %s: %s; tried again", type(e).__name__, e)
                last_retention = time.monotonic()
            self.stopping.wait(0.2)

    def _destination_loop(self, destination: Destination) -> None:
        while not self.stopping.is_set():
            try:
                self.send_to(destination)
            except Exception as e:  # e.g. results replaced while being read: tried again next round
                logger.warning("sending to %s interrupted (%s: %s); tried again", destination.text,
                               type(e).__name__, e)
            self.stopping.wait(0.2)

    def send_round(self) -> None:
        """Send every unsent result to every destination, one after the other (the running node does this in
        one thread per destination), then :meth:`settle`."""
        for d in self.options.send_to:
            self.send_to(d)
        self.settle()

    def _next_delay(self, delay: float) -> float:
        return min(self.options.retry_max, max(RETRY_FIRST_S, 2 * delay))

    def send_to(self, d: Destination) -> None:
        """Send the results ``d`` has not acknowledged, in one association, except while ``d`` waits out its
        back-off (it did not answer) and those of studies waiting out theirs (``d`` refused them); a study ``d``
        refused --retry-limit times is given up there (an error, counted as results_given_up)."""
        now = time.monotonic()
        if now < self.backoff[d.key][1]:
            return
        with self.state:
            studies = sorted(self.to_send)
        unsent = []
        for study in studies:
            with self.state:
                waits = (d.key, study) in self.given_up or now < self.study_backoff.get((d.key, study), (0, 0, 0))[1]
            if waits:
                continue
            done = self.spool.done(study)
            if done and not done.get("error"):
                unsent += [(study, o) for o in self.spool.unsent(study, d.key)]
        if not unsent:
            return
        paths = [self.spool.study(study, RESULTS, o["name"]) for study, o in unsent]
        answers = send(d, paths, self.options.ae_title)
        sent, refused, unanswered = Counter(), Counter(), Counter()
        for (study, o), ok in zip(unsent, answers):
            if ok:
                self.spool.mark_sent(study, d.key, o["sop_instance_uid"])
                sent[study] += 1
            elif ok is None:
                unanswered[study] += 1
            else:
                refused[study] += 1
        self.count("results_sent", sum(sent.values()))
        for study, n in sorted(sent.items()):
            logger.info("study %s: %d result(s) sent to %s", study, n, d.text)
        given_up = []
        with self.state:  # shared with the predicting thread, which clears a study's when it makes new results
            for study in sent.keys() - refused.keys():
                self.study_backoff.pop((d.key, study), None)
            for study, n in sorted(refused.items()):
                delay, _, tries = self.study_backoff.get((d.key, study), (0.0, 0.0, 0))
                tries += 1
                if tries >= self.options.retry_limit:
                    self.study_backoff.pop((d.key, study), None)
                    self.given_up.add((d.key, study))
                    self.counts["results_given_up"] += n
                    given_up.append((study, n, tries))
                else:
                    delay = self._next_delay(delay)
                    self.study_backoff[(d.key, study)] = (delay, time.monotonic() + delay, tries)
                    logger.warning("study %s: %d result(s) refused by %s (try %d of --retry-limit %d); next try in "
                                   "%gs", study, n, d.text, tries, self.options.retry_limit, delay)
        for study, n, tries in given_up:
            logger.error("study %s: %d result(s) refused by %s %d times (--retry-limit); given up there (kept in the "
                         "spool, tried again at the next start)", study, n, d.text, tries)
        if unanswered:
            delay = self._next_delay(self.backoff[d.key][0])
            self.backoff[d.key] = (delay, time.monotonic() + delay)
            logger.warning("%d result(s) of %d study(ies) not acknowledged by %s; next try in %gs",
                           sum(unanswered.values()), len(unanswered), d.text, delay)
        else:
            self.backoff[d.key] = (0.0, 0.0)

    def settle(self) -> None:
        """Mark as processed the studies whose every result every destination acknowledged (then retention
        applies), and stop trying those with nothing more to send in this process (failed, or given up)."""
        with self.state:
            studies = sorted(self.to_send)
        for study in studies:
            done = self.spool.done(study)
            if done is None or done.get("error"):  # nothing to send; a failed study is kept, never "processed"
                with self.state:
                    self.to_send.discard(study)
                continue
            waiting = [d for d in self.options.send_to if self.spool.unsent(study, d.key)]
            with self.state:
                trying = any((d.key, study) not in self.given_up for d in waiting)
            if trying:
                continue
            with self.state:
                arriving = study in self.last_arrival
                if not arriving:
                    self.to_send.discard(study)
            if not arriving and not waiting:
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
        """spool/status.json: the counts since this node started (instances stored, refused by reason, ...). A
        write that fails (a full disk) is logged, once until one succeeds again, and the node goes on."""
        with self.state:
            counts = dict(sorted(self.counts.items()))
        try:
            self.spool.write_status({"pid": os.getpid(), "counts": counts})
        except OSError as e:
            if not self.status_failing:
                logger.error("status.json cannot be written (%s: %s); the node goes on, and says when it can again",
                             type(e).__name__, e.strerror or e)
            self.status_failing = True
            return
        if self.status_failing:
            logger.info("status.json written again")
        self.status_failing = False

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
