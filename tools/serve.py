#!/usr/bin/env python
"""A DICOM node: a PACS or a modality sends it mammograms (C-STORE), it sends back the findings.

    python tools/serve.py --config-file CFG --spool DIR --port 11112 --ae-title MAMMO_TL --allow STORESCU \\
        --send-to ORTHANC@127.0.0.1:4242 MODEL.WEIGHTS W

Accepts C-ECHO and C-STORE of Digital Mammography (For Presentation, For Processing), Secondary Capture, CR and
DX images (of Modality MG or BodyPartExamined BREAST) in explicit/implicit VR little endian, RLE, JPEG 2000 and
JPEG lossless; other classes are refused at negotiation, calling AE titles (and hosts) not in --allow and called
AE titles other than --ae-title at association. An instance is answered
"success" only once it is written, fsynced and renamed into --spool; otherwise a failure status. A study is
predicted once none of its instances has arrived for --study-timeout seconds; its results (a Grayscale
Softcopy Presentation State per image and a TID 1500 report per study, as tools/predict.py --dicom-out
writes them) are sent to every --send-to (AE@HOST:PORT by C-STORE, or a DICOMweb root URL by STOW-RS),
retried with back-off up to --retry-max seconds until acknowledged (a study a destination refuses
--retry-limit times is given up there, with an error). After a crash, starting again with the
same --spool finishes every study and sends every unsent result; the same instances give the same result
UIDs, and a later report of a study names the earlier ones it replaces (Predecessor Documents Sequence). A
study whose results every destination acknowledged is removed from the spool --keep-hours later. See
docs/deploy.md. Stop it with SIGTERM or Ctrl-C. Exit status 1 with a message on any error, 2 on a bad
argument.
"""
import argparse
import logging
import os
import sys

from mammo_tl.checkpoint import WeightsError
from mammo_tl.serve.node import Node, ServeOptions, parse_allow
from mammo_tl.serve.send import DestinationError, check_ae_title, parse_destination
from mammo_tl.inference.options import PredictError, add_model_options, argparse_type


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--spool", required=True, help="folder of received instances, results and what was sent")
    p.add_argument("--port", type=int, required=True, help="the DICOM port to listen on")
    p.add_argument("--host", default="0.0.0.0", help="the address to listen on (default 0.0.0.0: all)")
    p.add_argument("--ae-title", type=argparse_type(lambda t: check_ae_title(t, "--ae-title")), default="MAMMO_TL",
                   help="this node's AE title (default MAMMO_TL); also the calling AE title when sending")
    p.add_argument("--allow", type=argparse_type(parse_allow), action="append", required=True, metavar="AE[@HOST]",
                   help="a calling AE title (and host: an address, or a name resolved at start-up) that may send "
                        "studies; repeatable")
    p.add_argument("--send-to", type=argparse_type(parse_destination), action="append", required=True,
                   metavar="AE@HOST:PORT|URL",
                   help="where results go: C-STORE or a DICOMweb (STOW-RS) root; repeatable")
    p.add_argument("--study-timeout", type=float, default=60.0,
                   help="seconds without a new instance after which a study is predicted (default 60): longer "
                        "than the gap between a modality's views, or a study is reported in parts, each later "
                        "report replacing the earlier; every second of it delays the results")
    add_model_options(p)
    p.add_argument("--max-associations", type=int, default=8,
                   help="associations at once (default 8); connections that have not sent their association request "
                        "do not count")
    p.add_argument("--max-instance-mb", type=float, default=512.0,
                   help="refuse instances larger than this many MB (default 512)")
    p.add_argument("--min-free-mb", type=float, default=1024.0,
                   help="refuse instances (out of resources) while the spool's disk has less free (default 1024)")
    p.add_argument("--keep-hours", type=float, default=24.0,
                   help="remove a study from the spool this long after every result was delivered (default 24; "
                        "0: at once)")
    p.add_argument("--retry-max", type=float, default=300.0,
                   help="longest wait in seconds between tries of an unreachable destination (default 300)")
    p.add_argument("--retry-limit", type=int, default=10,
                   help="tries of a study's results that a destination answers with a refusal before the node "
                        "gives up there, with an error (default 10; a destination that does not answer is tried "
                        "without limit)")
    p.add_argument("--send-backlog", action="store_true",
                   help="send a destination new to the spool the results it retains, not only those made from now on")
    p.add_argument("--request-timeout", type=float, default=5.0,
                   help="seconds a connection has to finish its TLS handshake and send its association request "
                        "(default 5); a silent one is closed and logged")
    p.add_argument("--tls-cert", help="serve DICOM over TLS with this certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    p.add_argument("--tls-ca", help="accept only senders with a client certificate signed by this CA (PEM)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    a = p.parse_args()
    os.umask(0o077)  # everything the node writes (the spool: patient data) readable by its user only
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("pynetdicom", "highdicom"):  # one line per PDU, per copied module: the node's own lines say it
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        options = ServeOptions(a.spool, a.port, a.ae_title, a.allow, a.send_to, host=a.host,
                               study_timeout=a.study_timeout, min_score=a.min_score, max_pixels=a.max_pixels,
                               batch_size=a.batch_size, max_associations=a.max_associations,
                               max_instance_mb=a.max_instance_mb, min_free_mb=a.min_free_mb,
                               keep_hours=a.keep_hours, retry_max=a.retry_max, tls_cert=a.tls_cert,
                               tls_key=a.tls_key, tls_ca=a.tls_ca, request_timeout=a.request_timeout,
                               retry_limit=a.retry_limit, send_backlog=a.send_backlog)
        node = Node(a.config_file, a.opts, options, device=a.device, operating_point=a.operating_point,
                    operating_points=a.operating_points).start()
    except (PredictError, WeightsError, DestinationError) as e:
        sys.exit(f"serve.py: error: {e}")
    node.serve_forever()
