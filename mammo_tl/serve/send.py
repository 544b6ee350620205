"""Where the DICOM node (tools/serve.py) sends its results: a DICOM Storage SCP by C-STORE (``AE@HOST:PORT``)
or a DICOMweb server by STOW-RS (``http(s)://host:port/dicom-web``). A result counts as delivered only when
the destination acknowledged it (C-STORE status success or warning; STOW-RS 200, or 202 without the instance
among the failed ones); anything else is retried later by the node. Per file, :func:`send` tells a refusal (the
destination answered and did not store it: counted towards the node's --retry-limit) from no answer (no
association, no HTTP answer: the destination is retried, without limit)."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: 16 characters, no backslash, no controls
GSPS_CLASS, COMPREHENSIVE_3D_SR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.88.34"


class DestinationError(ValueError):
    """A --send-to value that is not AE@HOST:PORT or an http(s) URL."""


def check_ae_title(text: str, option: str) -> str:
    """An AE title as PS3.5 allows it (1-16 characters, no backslash or control character), stripped."""
    title = text.strip()
    if not _AE.match(title):
        raise DestinationError(f"{option} {text!r}: not an AE title (1 to 16 printable characters, no backslash)")
    return title


@dataclass(frozen=True)
class Destination:
    """One --send-to: ``url`` for STOW-RS, else ``ae_title``, ``host``, ``port`` for C-STORE."""

    text: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    @property
    def key(self) -> str:
        """A folder name for the spool's record of what this destination acknowledged."""
        readable = re.sub(r"[^A-Za-z0-9_.-]", "_", self.text)[:40]
        return f"{readable}_{hashlib.sha1(self.text.encode()).hexdigest()[:8]}"


def parse_destination(text: str) -> Destination:
    """``AE@HOST:PORT`` or ``http(s)://host[:port]/path`` (the DICOMweb root); DestinationError otherwise."""
    if text.startswith(("http://", "https://")):
        return Destination(text, url=text.rstrip("/"))
    m = re.match(r"^(.+)@([^@:]+|\[[0-9a-fA-F:]+\]):(\d+)$", text)
    if not m:
        raise DestinationError(f"--send-to {text!r}: expected AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242) or a "
                               "DICOMweb URL (e.g. http://127.0.0.1:8042/dicom-web)")
    port = int(m.group(3))
    if not 0 < port < 65536:
        raise DestinationError(f"--send-to {text!r}: port {port} is not in 1-65535")
    return Destination(text, check_ae_title(m.group(1), "--send-to"), m.group(2).strip("[]"), port)


def send(destination: Destination, paths: Sequence[str], calling_ae: str, *, timeout: float = 30.0,
         tls: ssl.SSLContext | None = None) -> list[bool | None]:
    """Send the DICOM files ``paths`` to ``destination``; per file True when acknowledged, False when the
    destination answered and refused it, None when it did not answer (not reached, association rejected or
    aborted, no HTTP answer). Never raises for a destination that cannot be reached or refuses (the reason is
    logged)."""
    if destination.url:
        return _stow(destination, paths, timeout)
    return _c_store(destination, paths, calling_ae, timeout, tls)


def _c_store(destination, paths, calling_ae, timeout, tls):
    """One association for every file. A file goes as its bytes are (pynetdicom's chunked sending: no decoding
    and encoding again, which took most of a sending's time for a report of many boxes) where the destination
    accepts explicit VR little endian, the syntax the files are written in; else decoded and encoded in the
    syntax it accepted."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # for paths only: datasets are sent as before
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in (GSPS_CLASS, COMPREHENSIVE_3D_SR_CLASS):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
        ae.add_requested_context(sop_class, [ImplicitVRLittleEndian])
    acknowledged: list[bool | None] = [None] * len(paths)
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                             tls_args=(tls, None) if tls else None)
    except (OSError, RuntimeError, ValueError) as e:
        logger.warning("send to %s: no association (%s: %s)", destination.text, type(e).__name__, e)
        return acknowledged
    if not assoc.is_established:
        logger.warning("send to %s: association %s", destination.text,
                       "rejected" if assoc.is_rejected else "not established (no answer, or aborted)")
        return acknowledged
    explicit = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts
                if cx.transfer_syntax[0] == ExplicitVRLittleEndian}
    try:
        for i, path in enumerate(paths):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            written_explicit = ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            try:
                status = assoc.send_c_store(path if written_explicit and str(ds.SOPClassUID) in explicit
                                            else pydicom.dcmread(path))
            except (ValueError, AttributeError) as e:  # no context for the class: the destination refused it
                logger.warning("send to %s: %s not sent (%s)", destination.text, ds.SOPInstanceUID, e)
                acknowledged[i] = False
                continue
            code = getattr(status, "Status", None)
            # success 0x0000, warnings 0x0001 and 0xB000-0xBFFF (stored, with a remark); no answer: None
            acknowledged[i] = None if code is None else code in (0x0000, 0x0001) or 0xB000 <= code <= 0xBFFF
            if not acknowledged[i]:
                logger.warning("send to %s: %s not stored (%s)", destination.text, ds.SOPInstanceUID,
                               f"status 0x{code:04X}" if code is not None else "no answer")
                if not assoc.is_established:
                    break
    finally:
        if assoc.is_established:
            assoc.release()
    return acknowledged


def _stow(destination, paths, timeout):
    """One STOW-RS request (PS3.18 10.5) of every file; 200: all stored; 202: all but the Failed SOP
    Sequence's; anything else: none."""
    boundary = f"mammo_tl-{uuid.uuid4().hex}"
    parts, uids = [], []
    import pydicom

    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        uids.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{destination.url}/studies", data=body, method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            code, answer = response.status, response.read()
    except urllib.error.HTTPError as e:  # answered: refused (a server error or a busy one: not answered)
        logger.warning("send to %s: HTTP %d %s", destination.text, e.code, e.reason)
        return [None if e.code >= 500 or e.code in (408, 429) else False] * len(paths)
    except (OSError, ValueError) as e:
        logger.warning("send to %s: no answer (%s: %s)", destination.text, type(e).__name__, e)
        return [None] * len(paths)
    if code == 200:
        return [True] * len(paths)
    if code != 202:
        logger.warning("send to %s: HTTP %d", destination.text, code)
        return [False] * len(paths)
    try:
        failed = {item["00081155"]["Value"][0]
                  for item in json.loads(answer).get("00081198", {}).get("Value", [])}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        logger.warning("send to %s: HTTP 202 without a readable answer: nothing counted as stored", destination.text)
        return [False] * len(paths)
    return [uid not in failed for uid in uids]
