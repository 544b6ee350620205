"""tools/serve.py against real servers: Orthanc (the PACS the results go to, by C-STORE and by STOW-RS) and
DCMTK's storescu/echoscu (the modality), all on loopback ports. One node and two Orthancs for the module."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless, generate_uid

from mammo_tl.inference.command import run_predict
from tests.common import REPO, breast_phantom
from tests.dicom_fixtures import make_dicom
from tests.pacs import DICOMWEB_PLUGIN, Orthanc, free_port, require, wait_for
from tests.test_weights import tiny_config_file, tiny_weights

pytestmark = [pytest.mark.slow]

GSPS_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
OPTS = ["TEST.DETECTIONS_PER_IMAGE", "3"]  # and --min-score 0: every image has boxes to compare
NODE_AE, SENDER_AE = "MAMMO_TL", "STORESCU"
TIMEOUT = 60


def _secondary_capture(path):
    """The file as CBIS-DDSM's are: Secondary Capture Image Storage."""
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.save_as(path, enforce_file_format=True)
    return path


def _study(folder, name, patient, seeds, syntaxes, photometrics=None):
    """A study of one image per seed, in ``folder/name/``; returns its StudyInstanceUID."""
    study, series = generate_uid(), generate_uid()
    os.makedirs(folder / name)
    for i, (seed, syntax) in enumerate(zip(seeds, syntaxes)):
        side, view = ("L", "R")[i % 2], ("CC", "MLO")[i // 2 % 2]
        make_dicom(folder / name / f"{side}{view}.dcm", breast_phantom(seed=seed), patient_id=patient,
                   laterality=side, view=view, study_uid=study, series_uid=series, syntax=syntax,
                   photometric=(photometrics or {}).get(i, "MONOCHROME2"), bits_stored=16)
    return study


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    storescu, echoscu = require("storescu", "dcmtk"), require("echoscu", "dcmtk")
    require(DICOMWEB_PLUGIN, "orthanc-dicomweb")  # the STOW-RS destination
    root = tmp_path_factory.mktemp("serve")
    src = root / "src"
    studies = {
        # patient 1: RLE Secondary Capture (as CBIS-DDSM), MONOCHROME1, JPEG 2000
        "p1": _study(src, "p1", "P_00001", (1, 2, 3), (RLELossless, None, JPEG2000Lossless), {1: "MONOCHROME1"}),
        # patient 2: explicit little endian, and JPEG Lossless SV1 written by DCMTK's dcmcjpeg
        "p2": _study(src, "p2", "P_00002", (4, 8), (None, None)),
        "down": _study(src, "down", "P_00003", (5,), (RLELossless,)),
        "crash": _study(src, "crash", "P_00004", (6, 7), (None, None)),
        **{f"c{i}": _study(src, f"c{i}", f"P_001{i}", (10 + i,), (None,)) for i in range(3)},
    }
    _secondary_capture(str(src / "p1" / "LCC.dcm"))
    lossless = src / "p2" / "RCC.dcm"
    subprocess.run([require("dcmcjpeg", "dcmtk"), "+e1", str(lossless), str(lossless) + ".jpg"], check=True)
    os.replace(str(lossless) + ".jpg", lossless)
    assert pydicom.dcmread(lossless, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    pacs, web = Orthanc(root / "orthanc"), Orthanc(root / "orthanc_web", aet="ORTHANCWEB")
    pacs.start()
    web.start()
    weights = tiny_weights(tmp_path_factory)
    config = tiny_config_file(tmp_path_factory)
    port = free_port()
    spool = root / "spool"
    argv = [sys.executable, "tools/serve.py", "--config-file", config, "--spool", str(spool), "--port", str(port),
            "--host", "127.0.0.1", "--ae-title", NODE_AE, "--allow", SENDER_AE, "--allow", "OTHER@10.0.0.1",
            "--send-to", pacs.address, "--send-to", web.dicomweb, "--study-timeout", "1", "--retry-max", "1",
            "--min-score", "0", "--keep-hours", "0", "--max-associations", "6", "--min-free-mb", "10",
            "--max-instance-mb", "64", "--device", "cpu"] + OPTS + ["MODEL.WEIGHTS", weights]
    w = {"root": root, "src": src, "studies": studies, "pacs": pacs, "web": web, "port": port, "spool": spool,
         "argv": argv, "storescu": storescu, "echoscu": echoscu, "config": config, "node": None}
    _start_node(w)
    yield w
    if w["node"] and w["node"].poll() is None:
        w["node"].send_signal(signal.SIGTERM)
        w["node"].wait(60)
    pacs.stop(kill=True)
    web.stop(kill=True)


def _start_node(w):
    log = open(w["root"] / "node.log", "ab")
    w["node"] = subprocess.Popen(w["argv"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_for(lambda: w["node"].poll() is not None or _echo(w, SENDER_AE).returncode == 0, TIMEOUT,
             "the node to answer C-ECHO")
    assert w["node"].poll() is None, _log(w)


def _log(w):
    return (w["root"] / "node.log").read_text()


def _echo(w, ae):
    return subprocess.run([w["echoscu"], "-aet", ae, "-aec", NODE_AE, "127.0.0.1", str(w["port"])],
                          capture_output=True, text=True, timeout=30)


# storescu's option proposing a file's transfer syntax (and the uncompressed ones); one storescu per syntax
_PROPOSE = {RLELossless: ["-xr"], JPEG2000Lossless: ["-xv"], JPEGLosslessSV1: ["-xs"]}


def _send(w, name, ae=SENDER_AE, wait=True):
    """storescu of study ``name``'s files, one storescu per transfer syntax (it proposes one compressed syntax at
    a time); returns the last CompletedProcess, or a failed one, or the Popen when not ``wait``."""
    groups = {}
    for p in sorted((w["src"] / name).iterdir()):
        syntax = str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(syntax, []).append(str(p))
    compressed = [syntax for syntax in groups if syntax in _PROPOSE]
    if len(compressed) <= 1:  # storescu proposes the uncompressed syntaxes beside a compressed one
        groups = {compressed[0] if compressed else None: [f for files in groups.values() for f in files]}
    result = None
    for syntax, files in groups.items():
        cmd = [w["storescu"], "-aet", ae, "-aec", NODE_AE, *_PROPOSE.get(syntax, []), "127.0.0.1", str(w["port"]),
               *files]
        if not wait:
            assert len(groups) == 1
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            return result
    return result


def _results(orthanc, study_uid):
    """{SOPInstanceUID: tags} of the GSPS and SR Orthanc holds for ``study_uid``."""
    return {k: v for k, v in orthanc.instances().items()
            if v.get("StudyInstanceUID") == study_uid and v.get("SOPClassUID") in (GSPS_CLASS, SR_CLASS)}


def _wait_results(w, name, orthanc=None, timeout=TIMEOUT):
    n = len(list((w["src"] / name).iterdir())) + 1
    study = w["studies"][name]
    return wait_for(lambda: (r := _results(orthanc or w["pacs"], study)) and len(r) >= n and r, timeout,
                    f"{n} results of study {name} in Orthanc; node log:\n{_log(w)[-3000:]}")


def _rectangles(ds):
    """{referenced SOPInstanceUID: sorted rectangles as (x1, y1, x2, y2)} of a GSPS."""
    out = {}
    ref = ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
    for ann in ds.GraphicAnnotationSequence:
        for g in ann.get("GraphicObjectSequence", []):
            p = np.asarray(g.GraphicData, dtype=np.float64).reshape(-1, 2)
            out.setdefault(ref, []).append(tuple(np.round([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(),
                                                           p[:, 1].max()], 2)))
    return {k: sorted(v) for k, v in out.items()}


def _regions(ds):
    """How many SCOORD content items (image regions) an SR's content tree holds."""
    return sum((item.ValueType == "SCOORD") + _regions(item) for item in ds.get("ContentSequence", []))


def _echo_and_a_rejected_calling_ae(world):
    assert _echo(world, SENDER_AE).returncode == 0
    assert _echo(world, "INTRUDER").returncode != 0
    r = _send(world, "p2", ae="INTRUDER")
    assert r.returncode != 0
    # an allowed AE title from a host other than the one --allow names (OTHER@10.0.0.1) is refused too
    assert _echo(world, "OTHER").returncode != 0
    log = _log(world)
    assert "association from INTRUDER@127.0.0.1 to MAMMO_TL rejected" in log
    assert "association from OTHER@127.0.0.1 to MAMMO_TL rejected" in log


def _studies_come_back_as_predict_writes_them(world, tmp_path):
    for name in ("p1", "p2"):
        r = _send(world, name)
        assert r.returncode == 0, r.stdout + r.stderr
    got = {name: _wait_results(world, name) for name in ("p1", "p2")}
    # tools/predict.py --dicom-out on the same files, the same config and options
    out = tmp_path / "predict"
    run_predict(world["config"], [str(world["src"] / "p1"), str(world["src"] / "p2")], str(out), OPTS,
                min_score=0.0, dicom_out=str(out / "dicom"), workers=0)
    expected = [pydicom.dcmread(out / "dicom" / n) for n in sorted(os.listdir(out / "dicom")) if n.endswith(".dcm")]
    expected_gsps = {str(d.SOPInstanceUID): d for d in expected if d.SOPClassUID == GSPS_CLASS}
    pacs = world["pacs"]
    for name, results in got.items():
        sources = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(p) for p in (world["src"] / name).iterdir())}
        gsps = [uid for uid, t in results.items() if t["SOPClassUID"] == GSPS_CLASS]
        srs = [uid for uid, t in results.items() if t["SOPClassUID"] == SR_CLASS]
        assert len(gsps) == len(sources) and len(srs) == 1
        for uid in gsps:
            ds = pacs.dataset(results[uid]["_id"])
            # the same presentation state as predict's: same UID (derived from the boxes, scores and model),
            # the same rectangles on the same image
            assert uid in expected_gsps
            ref = ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
            assert ref in sources
            rectangles = _rectangles(ds)
            assert list(rectangles) == [ref] and len(rectangles[ref]) == 3  # TEST.DETECTIONS_PER_IMAGE 3
            assert rectangles == _rectangles(expected_gsps[uid])
            for k in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
                assert ds.get(k) == sources[ref].get(k), k
        sr = pacs.dataset(results[srs[0]]["_id"])
        evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                    for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
        assert evidence == set(sources)
        assert _regions(sr) == 2 * 3 * len(sources)  # every box of every image, its region also under its score
        assert sr.PatientName == "Doe^Jane" and sr.PatientID == next(iter(sources.values())).PatientID
    # the same objects by STOW-RS in the DICOMweb Orthanc
    for name, results in got.items():
        assert set(_wait_results(world, name, world["web"])) == set(results)
    assert "Doe^Jane" not in _log(world)


def _pacs_down_and_the_node_killed_before_and_after_predicting(world):
    """The PACS crashes; a study arrives, is predicted, its sending fails. Another study arrives and the node is
    killed (kill -9) before predicting it. PACS and node start again: both studies' results arrive, once."""
    pacs = world["pacs"]
    pacs.stop(kill=True)
    assert _send(world, "down").returncode == 0
    down, crash = world["studies"]["down"], world["studies"]["crash"]
    wait_for(lambda: "not acknowledged by " + pacs.address in _log(world), TIMEOUT, "a failed try")
    # the other destination (DICOMweb) acknowledges them meanwhile: after the restart they go to the PACS only
    wait_for(lambda: f"study {down}: 2 result(s) sent to {world['web'].dicomweb}" in _log(world), TIMEOUT,
             "the DICOMweb destination to acknowledge the study's results")
    assert (world["spool"] / "studies" / down / "results" / "done.json").exists()
    assert _send(world, "crash").returncode == 0  # acknowledged: durably in the spool
    world["node"].send_signal(signal.SIGKILL)
    world["node"].wait(30)
    assert len(list((world["spool"] / "studies" / crash / "instances").iterdir())) == 2
    assert not (world["spool"] / "studies" / crash / "results").exists()
    pacs.start()
    _start_node(world)
    for name in ("down", "crash"):
        got = _wait_results(world, name)
        assert len(got) == len(list((world["src"] / name).iterdir())) + 1


def _four_senders_at_once_one_sending_a_delivered_study_again(world):
    before = set(_results(world["pacs"], world["studies"]["p2"]))
    assert len(before) == 3  # test_studies_come_back_as_predict_writes_them: 2 images, their report
    procs = [_send(world, name, wait=False) for name in ("c0", "c1", "c2", "p2")]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    for name in ("c0", "c1", "c2"):
        assert len(_wait_results(world, name)) == 2
    # p2 again: predicted again (its spool entry was removed, --keep-hours 0), the same result UIDs, nothing added
    p2 = world["studies"]["p2"]
    wait_for(lambda: _log(world).split("listening on")[-1].count(f"study {p2}: 3 result(s) sent to") == 2, TIMEOUT,
             "p2's results delivered again")
    assert set(_results(world["pacs"], p2)) == before


def _spool_is_emptied_after_delivery_and_status_counts(world):
    # --keep-hours 0: studies whose every result was delivered leave the spool
    done = [world["studies"][n] for n in ("p1", "p2", "c0", "down", "crash")]
    wait_for(lambda: not any((world["spool"] / "studies" / s).exists() for s in done), TIMEOUT,
             "delivered studies to leave the spool")
    # since the restart: c0-c2 (1 image each) and p2 (2) stored (5 instances); crash, c0-c2 and p2 predicted (down
    # was, before the kill); results to 2 destinations, crash 3, c0-c2 2 each, p2 3, and down's 2 to the PACS only:
    # the DICOMweb destination had acknowledged them before the kill; 6 studies removed
    expected = {"instances_stored": 5, "instances_skipped": 0, "studies_predicted": 5,
                "results_sent": 2 * (3 + 2 * 3 + 3) + 2, "studies_removed": 6}
    status = world["spool"] / "status.json"
    seen = []

    def counts():
        seen[:] = [json.loads(status.read_text())["counts"]] if status.exists() else []
        return seen == [expected]

    try:
        wait_for(counts, TIMEOUT, "status.json's counts")
    except AssertionError:
        raise AssertionError(f"status.json's counts: expected {expected}, last read {seen}") from None


def test_the_node_beside_orthanc(world, tmp_path):
    """The steps build on each other (what a study delivered before, what the spool and its counts hold after a
    restart), so they run in this order in one test: pytest-xdist may hand the tests of one module to two workers,
    each with its own Orthanc and node."""
    _echo_and_a_rejected_calling_ae(world)
    _studies_come_back_as_predict_writes_them(world, tmp_path)
    _pacs_down_and_the_node_killed_before_and_after_predicting(world)
    _four_senders_at_once_one_sending_a_delivered_study_again(world)
    _spool_is_emptied_after_delivery_and_status_counts(world)


# ---- the node in this process: what it refuses, counts and keeps ------------------------------------------------
@pytest.fixture(scope="module")
def local_node(tmp_path_factory):
    """A node in this process, over TLS: its certificate (for localhost, self-signed) is also the CA its
    senders' certificates must be signed by (--tls-cert, --tls-key, --tls-ca)."""
    from mammo_tl.serve.node import Node, ServeOptions
    from mammo_tl.serve.send import parse_destination

    root = tmp_path_factory.mktemp("local_node")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run([require("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    weights = tiny_weights(tmp_path_factory)
    options = ServeOptions(str(root / "spool"), free_port(), "NODE", [("SCU", None)],
                           [parse_destination(f"NOWHERE@127.0.0.1:{free_port()}")], host="127.0.0.1",
                           study_timeout=0.2, min_score=0.0, max_instance_mb=0.2, min_free_mb=0, keep_hours=1,
                           retry_max=1, tls_cert=str(cert), tls_key=str(key), tls_ca=str(cert))
    node = Node(tiny_config_file(tmp_path_factory), OPTS + ["MODEL.WEIGHTS", weights], options).start()
    node.tls_files = (str(cert), str(key))
    yield node, root
    node.stop()


def _tls(node, client_certificate=True):
    import ssl

    cert, key = node.tls_files
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    if client_certificate:
        ctx.load_cert_chain(cert, key)
    return ctx


def _c_store(node, datasets, sop_class=None, tls="client certificate"):
    """Statuses of C-STORE of ``datasets`` from AE SCU (None where the class was not accepted, or no
    association). ``tls``: with a client certificate, without one, or None: no TLS."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title="SCU")
    for c in {sop_class or str(d.SOPClassUID) for d in datasets}:
        for syntax in (ExplicitVRLittleEndian, RLELossless):  # one context each: the file's own is used
            ae.add_requested_context(c, [syntax])
    tls_args = (_tls(node, tls == "client certificate"), "localhost") if tls else None
    assoc = ae.associate("127.0.0.1", node.options.port, ae_title="NODE", tls_args=tls_args)
    if not assoc.is_established:  # no proposed context accepted: the requestor aborts
        return [None] * len(datasets)
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        return [assoc.send_c_store(d).Status if str(d.SOPClassUID) in accepted else None for d in datasets]
    finally:
        assoc.release()


def _dataset(tmp_path, name, pixels, **kw):
    return pydicom.dcmread(make_dicom(tmp_path / name, pixels, **kw))


def test_refused_instances_are_counted_with_their_reason(local_node, tmp_path):
    node, _ = local_node
    no_pixels = _dataset(tmp_path, "a.dcm", breast_phantom(seed=1))
    del no_pixels.PixelData
    too_large = _dataset(tmp_path, "b.dcm", np.full((400, 400), 1000, np.uint16))  # 320 kB > 0.2 MB
    gsps = _dataset(tmp_path, "c.dcm", breast_phantom(seed=2))
    gsps.SOPClassUID = GSPS_CLASS
    ok = _dataset(tmp_path, "d.dcm", breast_phantom(seed=3))
    before = dict(node.counts)
    assert _c_store(node, [no_pixels, too_large, ok, ok]) == [0xA900, 0xC001, 0x0000, 0x0000]
    assert _c_store(node, [gsps]) == [None]  # a class it does not store: refused at negotiation
    node.options.min_free_mb = 1e15  # the spool's disk below the free-space floor: out of resources, retried
    try:
        assert _c_store(node, [ok]) == [0xA700]
    finally:
        node.options.min_free_mb = 0
    # what the receiving counted (the stored instance's study may be predicted meanwhile: study_timeout 0.2 s)
    gained = {k: v - before.get(k, 0) for k, v in node.counts.items()
              if v != before.get(k, 0) and k.startswith("instances_")}
    assert gained == {"instances_refused:not_an_image": 1, "instances_refused:too_large": 1,
                      "instances_stored": 1, "instances_received_again": 1, "instances_refused:disk_floor": 1}


def test_a_corrupt_image_is_counted_and_the_node_goes_on(local_node, tmp_path):
    node, root = local_node
    bad = _dataset(tmp_path, "bad.dcm", breast_phantom(seed=4), syntax=RLELossless)
    bad.PixelData = bad.PixelData[:40]  # an RLE header and little else: stored, not decodable
    good = _dataset(tmp_path, "good.dcm", breast_phantom(seed=5), study_uid=bad.StudyInstanceUID)
    assert _c_store(node, [bad, good]) == [0x0000, 0x0000]
    done_path = root / "spool" / "studies" / str(bad.StudyInstanceUID) / "results" / "done.json"
    done = wait_for(lambda: done_path.exists() and json.loads(done_path.read_text()), TIMEOUT, "the study predicted")
    assert done["error"] is None and done["predicted"] == 1
    assert [s["instance"] for s in done["skipped"]] == [f"{bad.SOPInstanceUID}.dcm"]
    assert done["skipped"][0]["kind"] and done["skipped"][0]["reason"]
    # the good image's presentation state and a report of it
    names = [o["name"] for o in done["outputs"]]
    assert len(names) == 2 and names[0].startswith("PR_") and names[1].startswith("SR_")


def test_results_are_retried_until_the_destination_is_back(local_node, tmp_path):
    """The destination is down (nothing listens on its port) when the results are ready: they are retried with
    back-off and arrive once a Storage SCP listens there."""
    from pynetdicom import AE, evt

    node, _ = local_node
    ds = _dataset(tmp_path, "retry.dcm", breast_phantom(seed=7))
    assert _c_store(node, [ds]) == [0x0000]
    (destination,) = node.options.send_to
    wait_for(lambda: node.backoff[destination.key][0] > 0, TIMEOUT, "a failed try")
    received = []

    def on_store(event):
        received.append((str(event.dataset.StudyInstanceUID), str(event.dataset.SOPClassUID)))
        return 0x0000

    scp = AE(ae_title=destination.ae_title)
    for sop_class in (GSPS_CLASS, SR_CLASS):
        scp.add_supported_context(sop_class)
    server = scp.start_server((destination.host, destination.port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        wait_for(lambda: sorted(c for s, c in received if s == ds.StudyInstanceUID) == [GSPS_CLASS, SR_CLASS],
                 TIMEOUT, "the results at the destination")
    finally:
        server.shutdown()


def test_a_spool_that_cannot_take_results_is_tried_again(local_node, tmp_path, monkeypatch):
    """Writing a study's results fails once (a full disk): the node logs it, goes on, and tries again."""
    import errno

    from mammo_tl.serve import node as serve

    node, root = local_node
    monkeypatch.setattr(serve, "SPOOL_RETRY_S", 0.3)
    ds = _dataset(tmp_path, "full.dcm", breast_phantom(seed=8))
    study = str(ds.StudyInstanceUID)
    commit, calls = node.spool.commit_results, []

    def full_once(*args, **kwargs):
        calls.append(args[0])
        if calls.count(study) == 1 and args[0] == study:
            raise OSError(errno.ENOSPC, "No space left on device")
        return commit(*args, **kwargs)

    monkeypatch.setattr(node.spool, "commit_results", full_once)
    assert _c_store(node, [ds]) == [0x0000]
    done = root / "spool" / "studies" / study / "results" / "done.json"
    wait_for(done.exists, TIMEOUT, "the results written at the second try")
    assert calls.count(study) == 2 and node.threads[0].is_alive()


def test_retention_removes_only_delivered_studies_older_than_keep_hours(local_node):
    node, root = local_node
    studies = root / "spool" / "studies"
    for name, age_hours in (("1.2.3.1", 2), ("1.2.3.2", 0.5), ("1.2.3.3", None)):
        (studies / name / "instances").mkdir(parents=True)
        if age_hours is not None:
            (studies / name / "processed").write_text(str(time.time() - age_hours * 3600))
    assert node.apply_retention(["1.2.3.1", "1.2.3.2", "1.2.3.3"]) == 1  # --keep-hours 1
    assert sorted(p.name for p in studies.iterdir() if p.name.startswith("1.2.3.")) == ["1.2.3.2", "1.2.3.3"]


def test_tls_lets_in_only_senders_with_a_certificate_of_the_ca(local_node, tmp_path, caplog):
    """Senders without a certificate of the CA, or without TLS, are refused and logged; a connection that starts
    no TLS handshake holds no one else up (the handshake runs in the connection's own thread)."""
    import logging
    import socket

    node, _ = local_node
    caplog.set_level(logging.INFO, "mammo_tl.serve")
    ds = _dataset(tmp_path, "tls.dcm", breast_phantom(seed=6))
    before = node.counts["connections_refused_tls"]
    with socket.create_connection(("127.0.0.1", node.options.port)):  # silent: no ClientHello
        assert _c_store(node, [ds]) == [0x0000]
        assert _c_store(node, [ds], tls="no client certificate") == [None]
        assert _c_store(node, [ds], tls=None) == [None]
    # the two refused senders, and the silent connection once closed
    wait_for(lambda: node.counts["connections_refused_tls"] - before == 3, TIMEOUT, "3 TLS refusals counted")
    refused = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(refused) == 3 and all(m.startswith("connection from 127.0.0.1 refused") for m in refused), refused


def test_destinations_and_allow_entries_are_checked():
    from mammo_tl.serve.node import parse_allow
    from mammo_tl.serve.send import DestinationError, parse_destination

    d = parse_destination("ORTHANC@10.1.2.3:4242")
    assert (d.ae_title, d.host, d.port, d.url) == ("ORTHANC", "10.1.2.3", 4242, "")
    assert parse_destination("http://pacs:8042/dicom-web/").url == "http://pacs:8042/dicom-web"
    assert parse_allow("MODALITY@10.0.0.7") == ("MODALITY", "10.0.0.7") and parse_allow("PACS") == ("PACS", None)
    for bad in ("ORTHANC@host", "A_VERY_LONG_AE_TITLE_X@h:1", "ORTHANC@h:70000", "@h:1"):
        with pytest.raises(DestinationError, match="--send-to"):
            parse_destination(bad)
    with pytest.raises(DestinationError, match="--allow"):
        parse_allow("BACK\\SLASH")


def test_benchmark_runs_at_the_smallest_size(tmp_path, tmp_path_factory, monkeypatch, capsys):
    """docs/deploy.md's bench/serve.py command, with every option it shows, on 2 studies of one small image; the
    tiny config's model built from random weights (--random-init), as the doc's paper row is."""
    from tests.test_docs import _tool

    require("storescu")
    out = tmp_path / "serve.json"
    assert _tool(monkeypatch, "bench/serve.py", "--config-file", tiny_config_file(tmp_path_factory), "--random-init",
                 "--studies", 2, "--images-per-study", 1, "--size", 256, 208, "--study-timeout", 0.5, "--device", "cpu",
                 "--json", out, *OPTS) == 0
    result = json.loads(out.read_text())
    assert result["studies"] == 2 and result["node_seconds"] > 0 and result["predict_seconds"] > 0
    assert result["ratio"] == pytest.approx(result["predict_seconds"] / result["node_seconds"])
    assert result["latency_max_s"] >= result["latency_median_s"] >= 0.5  # the study timeout is part of it
    # the weights come from --random-init or MODEL.WEIGHTS, not both
    assert _tool(monkeypatch, "bench/serve.py", "--config-file", "c.yaml", "--random-init", "MODEL.WEIGHTS",
                 "w.pth") == 2
    assert "--random-init builds the weights: give it without MODEL.WEIGHTS" in capsys.readouterr().err


def test_results_made_by_another_model_are_made_again(tmp_path):
    """A spooled study's results are keyed by what made them (weights, config, options): a node restarted with
    other weights predicts the study again instead of sending the former model's findings."""
    from mammo_tl.serve.spool import Spool

    model_a = {"weights_sha256": "a" * 64, "config": "MODEL: {}\n", "min_score": 0.05, "operating_point": None}
    spool = Spool(str(tmp_path / "spool"), made_by=model_a)
    assert spool.store("1.2.3", "1.2.3.4", b"instance bytes")
    folder = spool.new_results("1.2.3")
    assert folder.endswith("results.new")
    spool.commit_results("1.2.3", spool.instances("1.2.3"), [], {"study": "1.2.3", "error": None})
    assert not spool.pending("1.2.3")
    assert not Spool(str(tmp_path / "spool"), made_by=dict(model_a)).pending("1.2.3")  # the same model restarted
    for change in ({"weights_sha256": "b" * 64}, {"min_score": 0.1}, {"config": "MODEL: {DEVICE: cpu}\n"}):
        assert Spool(str(tmp_path / "spool"), made_by={**model_a, **change}).pending("1.2.3"), change


# ---- identity and succession: a node keeping its studies (--keep-hours) and one Orthanc ---------------------------
def _reports(orthanc, study_uid):
    """{SOPInstanceUID: dataset} of the reports Orthanc holds for ``study_uid``."""
    return {uid: orthanc.dataset(t["_id"]) for uid, t in _results(orthanc, study_uid).items()
            if t["SOPClassUID"] == SR_CLASS}


def _predecessors(sr):
    return {i.ReferencedSOPInstanceUID for s in sr.get("PredecessorDocumentsSequence", [])
            for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}


def _evidence(sr):
    return {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
            for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}


def test_forwarding_a_corrected_patient_and_a_study_sent_view_by_view(tmp_path, tmp_path_factory):
    """One node beside an Orthanc that runs docs/deploy.md's Lua script (the Orthanc the tests use):
    * a study a modality stores into Orthanc reaches the node, its results come back, and only the images were
      forwarded to the node, never its results;
    * a study sent under a wrong patient, then again with the patient corrected (same UIDs, same pixels): new
      results reach the PACS under the corrected patient;
    * a four-view study sent one view at a time, each after the study timeout: one report per arrival, each
      naming every earlier one (Predecessor Documents Sequence), so that exactly one report of the study is
      current, and it covers the four views."""
    storescu = require("storescu", "dcmtk")
    lua = _documented("deploy.md", "```lua\n")
    assert "OnStoredInstance" in lua
    src = tmp_path / "src"
    forwarded = _study(src, "forwarded", "P_00070", (41, 42), (None, None))
    wrong = _study(src, "fix", "WRONG01", (21, 22), (None, None))
    views = _study(src, "views", "P_00050", (23, 24, 25, 26), (None,) * 4)
    port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", modalities={"mammo_tl": [NODE_AE, "127.0.0.1", port]}, lua=lua).start()
    argv = [sys.executable, "tools/serve.py", "--config-file", tiny_config_file(tmp_path_factory), "--spool",
            str(tmp_path / "spool"), "--port", str(port), "--host", "127.0.0.1", "--ae-title", NODE_AE, "--allow",
            SENDER_AE, "--allow", "ORTHANC", "--send-to", pacs.address, "--study-timeout", "1", "--retry-max", "1",
            "--min-score", "0", "--min-free-mb", "10", "--device", "cpu"] + OPTS + \
        ["MODEL.WEIGHTS", tiny_weights(tmp_path_factory)]
    w = {"root": tmp_path, "src": src, "studies": {"fix": wrong, "views": views}, "pacs": pacs, "port": port,
         "argv": argv, "storescu": storescu, "echoscu": require("echoscu", "dcmtk"), "node": None}
    try:
        _start_node(w)
        r = subprocess.run([storescu, "-aet", "MODALITY", "127.0.0.1", str(pacs.dicom_port),
                            *map(str, sorted((src / "forwarded").iterdir()))], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: len(_results(pacs, forwarded)) == 3, TIMEOUT, f"the results in Orthanc; node log:\n{_log(w)}")

        assert _send(w, "fix").returncode == 0
        before = _wait_results(w, "fix")
        assert {t["PatientID"] for t in before.values()} == {"WRONG01"}
        for p in (src / "fix").iterdir():  # the patient corrected at the modality; nothing else changes
            ds = pydicom.dcmread(p)
            ds.PatientID, ds.PatientName, ds.PatientBirthDate = "P_00042", "Roe^Joan", "19610202"
            ds.save_as(p, enforce_file_format=True)
        assert _send(w, "fix").returncode == 0

        def corrected():
            r = {k: v for k, v in _results(pacs, wrong).items() if v["PatientID"] == "P_00042"}
            return len(r) == 3 and r
        after = wait_for(corrected, TIMEOUT, f"the corrected patient's results in Orthanc; node log:\n{_log(w)}")
        assert not set(after) & set(before)  # new UIDs: a result says whose it is
        (sr,) = [pacs.dataset(t["_id"]) for t in after.values() if t["SOPClassUID"] == SR_CLASS]
        assert (str(sr.PatientName), sr.PatientBirthDate) == ("Roe^Joan", "19610202")
        # the earlier report, filed under the wrong patient, is not named (it is another patient's); the log
        # says it is left there
        assert not _predecessors(sr)
        assert f"study {wrong}: its patient identity changed since its earlier report" in _log(w)
        assert "WRONG01" not in _log(w) and "P_00042" not in _log(w)

        files = sorted((src / "views").iterdir())
        sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
        for k, path in enumerate(files, 1):
            r = subprocess.run([storescu, "-aet", SENDER_AE, "-aec", NODE_AE, "127.0.0.1", str(port), str(path)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            wait_for(lambda k=k: len(_reports(pacs, views)) == k, TIMEOUT,
                     f"report {k} of the study sent view by view; node log:\n{_log(w)[-3000:]}")
        reports = _reports(pacs, views)
        named = set().union(*(_predecessors(sr) for sr in reports.values()))
        (current,) = set(reports) - named
        assert _evidence(reports[current]) == set(sops)
        assert _predecessors(reports[current]) == set(reports) - {current}
        # each earlier report covers the views that had arrived, and names those before it
        by_size = sorted(reports.values(), key=lambda sr: len(_evidence(sr)))
        assert [_evidence(sr) for sr in by_size] == [set(sops[:k]) for k in range(1, 5)]
        assert [len(_predecessors(sr)) for sr in by_size] == [0, 1, 2, 3]
        # one presentation state per view: an image's findings did not change, so neither did its GSPS
        assert len(_results(pacs, views)) - len(reports) == 4
        # Orthanc forwarded the two images stored into it, and none of the results it stored since
        stores = [line for line in _log(w).splitlines() if "C-STORE from ORTHANC@" in line]
        assert len(stores) == 2 and all("instance stored" in line for line in stores), stores
        assert "refused" not in _log(w)
    finally:
        if w["node"] and w["node"].poll() is None:
            w["node"].send_signal(signal.SIGTERM)
            w["node"].wait(60)
        pacs.stop(kill=True)


def _documented(page, start):
    """The lines of ``page`` (under docs/) that start with ``start``, as typed, or the block that does."""
    text = open(os.path.join(REPO, "docs", page), encoding="utf-8").read()
    if start.startswith("```"):
        return text.split(start, 1)[1].split("```", 1)[0]
    return [line for line in text.splitlines() if line.startswith(start)]


def test_documented_storescu_line_sends_a_dicom_out_folder(tmp_path):
    """The storescu line of docs/inference.md and docs/deploy.md, as typed but for host, port and folder, sends
    every presentation state and report of a --dicom-out folder (its manifest.json beside them) to Orthanc;
    without its +sp, storescu stops at the manifest, and without -R it does not send the report."""
    import shlex

    from mammo_tl.outputs.dicom import Algorithm, write_dicom_outputs

    storescu = require("storescu", "dcmtk")
    (line,) = set(_documented("inference.md", "storescu ") + _documented("deploy.md", "storescu "))
    study = _study(tmp_path / "src", "s", "P_00060", (31, 32), (None, None))
    records = [{"file_name": str(p), "laterality": p.name[0], "boxes": [[1.0, 2.0, 30.0, 40.0]], "scores": [0.5]}
               for p in sorted((tmp_path / "src" / "s").iterdir())]
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_dicom_outputs(str(folder), [(r, f"n{i}") for i, r in enumerate(records)], Algorithm("a/b.yaml", "c" * 64,
                                                                                             0.05))
    (folder / "manifest.json").write_text("{}")  # as predict leaves beside them
    objects = sorted(p.name for p in folder.glob("*.dcm"))
    assert len(objects) == 3
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        argv = shlex.split(line)
        assert argv[0] == "storescu" and argv[-3:] == ["127.0.0.1", "4242", "output/predict/dicom"]
        argv = [storescu, *argv[1:-3], "127.0.0.1", str(pacs.dicom_port), str(folder)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(_results(pacs, study)) == 3
        # without +sp '*.dcm' the manifest stops it, and without -R the report is not sent
        for drop in (["+sp", "*.dcm"], ["-R"]):
            pacs.stop(kill=True)
            pacs = Orthanc(tmp_path / f"orthanc{len(drop)}").start()
            i = next(k for k in range(len(argv)) if argv[k:k + len(drop)] == drop)
            r = subprocess.run(argv[:i] + argv[i + len(drop):-2] + [str(pacs.dicom_port), str(folder)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 or len(_results(pacs, study)) < 3, drop
    finally:
        pacs.stop(kill=True)
