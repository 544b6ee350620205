"""tools/serve.py's node against what a network and a disk do to it: senders it refuses (with the reject DICOM
says, which DCMTK reads), connections that never ask for an association, PDUs and instances larger than it
reads, destinations that refuse one study forever or hang, images that are not mammograms, studies that give no
result, destinations added later, host names in --allow, TLS failures, a full disk, a damaged spool and who may
read the spool. Nodes run in this process on loopback ports; DCMTK's echoscu/storescu and raw sockets are the
senders, pynetdicom Storage SCPs (and a socket that never answers) the destinations."""
import errno
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import time
import tracemalloc

import numpy as np
import pytest
from pydicom.uid import RLELossless

from tests.common import breast_phantom
from tests.pacs import free_port, require, wait_for
from tests.test_serve import GSPS_CLASS, OPTS, SR_CLASS, TIMEOUT, _c_store, _dataset
from tests.test_weights import tiny_config_file, tiny_weights

pytestmark = [pytest.mark.slow]

NODE = "NODE"
DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


class Scp:
    """A Storage SCP destination (pynetdicom) that records what it stores and answers 0xA700 (out of resources)
    for the studies in ``refuse``."""

    def __init__(self, ae_title="DEST", refuse=()):
        from pynetdicom import AE, evt

        self.port, self.refuse, self.stored, self.refused = free_port(), set(refuse), [], []
        ae = AE(ae_title=ae_title)
        for sop_class in (GSPS_CLASS, SR_CLASS):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.address = f"{ae_title}@127.0.0.1:{self.port}"

    def _on_store(self, event):
        study = str(event.dataset.StudyInstanceUID)
        (self.refused if study in self.refuse else self.stored).append((study, time.monotonic()))
        return 0xA700 if study in self.refuse else 0x0000

    def studies(self, which="stored"):
        return [s for s, _ in getattr(self, which)]

    def stop(self):
        self.server.shutdown()


def _node(tmp_path_factory, spool, send_to, **kw):
    from mammo_tl.serve.node import Node, ServeOptions
    from mammo_tl.serve.send import parse_destination

    options = dict(host="127.0.0.1", study_timeout=0.2, min_score=0.0, max_instance_mb=0.2, min_free_mb=0,
                   keep_hours=1, retry_max=30, max_associations=2, request_timeout=1.0)
    options.update(kw)
    allow = options.pop("allow", [("SCU", None), ("ECHO", "localhost")])
    return Node(tiny_config_file(tmp_path_factory), OPTS + ["MODEL.WEIGHTS", tiny_weights(tmp_path_factory)],
                ServeOptions(str(spool), free_port(), NODE, allow, [parse_destination(d) for d in send_to],
                             **options))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A node without TLS (umask 022, as when started by hand), --max-associations 2, --request-timeout 1,
    --max-instance-mb 0.2, sending to a Storage SCP."""
    root = tmp_path_factory.mktemp("serve_node")
    umask = os.umask(0o022)
    scp = Scp()
    node = _node(tmp_path_factory, root / "spool", [scp.address]).start()
    node.scp = scp
    yield node, root
    node.stop()
    scp.stop()
    os.umask(umask)


def _dcmtk(tool, *args):
    r = subprocess.run([require(tool, "dcmtk"), *map(str, args)], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def _gained(node, before, prefixes=("associations_", "connections_", "instances_refused")):
    """The counts that changed since ``before``, of the kinds named (the node may meanwhile predict and send an
    earlier test's study)."""
    return {k: v - before.get(k, 0) for k, v in node.counts.items()
            if v != before.get(k, 0) and k.startswith(tuple(prefixes))}


def test_a_refused_association_gets_its_reject_and_the_called_ae_title_is_checked(plain, caplog):
    """DCMTK reads the A-ASSOCIATE-RJ and its reason (not "peer aborted": the reject is sent before the
    connection closes), for a calling AE title not in --allow and for a called AE title not the node's."""
    node, _ = plain
    port = node.options.port
    caplog.set_level(logging.INFO, "mammo_tl.serve")
    before = dict(node.counts)
    for _ in range(3):
        rc, out = _dcmtk("echoscu", "-aet", "INTRUDER", "-aec", NODE, "127.0.0.1", port)
        assert rc != 0 and "Association Rejected" in out and "Calling AE Title Not Recognized" in out, out
        assert "Peer aborted" not in out, out
    rc, out = _dcmtk("echoscu", "-aet", "SCU", "-aec", "OTHER_NODE", "127.0.0.1", port)
    assert rc != 0 and "Association Rejected" in out and "Called AE Title Not Recognized" in out, out
    assert _dcmtk("echoscu", "-aet", "SCU", "-aec", NODE, "127.0.0.1", port)[0] == 0
    assert _gained(node, before) == {"associations_rejected": 3, "associations_rejected_called_ae": 1}
    log = caplog.text
    assert log.count("association from INTRUDER@127.0.0.1 to NODE rejected: calling AE title") == 3
    assert ("association from SCU@127.0.0.1 to OTHER_NODE rejected: called AE title 'OTHER_NODE' is not this "
            "node's") in log


def test_silent_connections_hold_no_association_slot(plain, caplog):
    """Connections that never send an association request, from one host (127.0.0.2), more than
    --max-associations of them, do not keep a modality (127.0.0.1) out: they hold no association slot, one host
    may have 16 waiting at once (the others are closed at once), and they are closed after --request-timeout,
    logged. Open associations are what --max-associations limits."""
    from pynetdicom import AE

    from mammo_tl.serve.node import MAX_WAITING_PER_HOST

    node, _ = plain
    caplog.set_level(logging.INFO, "mammo_tl.serve")
    before = dict(node.counts)
    node.options.request_timeout = 5.0  # long enough for echoscu to run while they are open
    idle = []
    try:
        for _ in range(MAX_WAITING_PER_HOST + 4):
            s = socket.socket()
            idle.append(s)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", node.options.port))
        wait_for(lambda: _gained(node, before).get("connections_refused_busy") == 4, TIMEOUT,
                 "the connections past 16 of one host closed")
        rc, out = _dcmtk("echoscu", "-aet", "SCU", "-aec", NODE, "127.0.0.1", node.options.port)
        assert rc == 0, out
        assert "connections_closed_idle" not in _gained(node, before)  # they were open meanwhile
    finally:
        node.options.request_timeout = 1.0
    try:
        for s in idle:  # closed by the node: end of file (or a reset), at once or after --request-timeout
            s.settimeout(10)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in idle:
            s.close()
    assert _gained(node, before) == {"connections_closed_idle": 16, "connections_refused_busy": 4}
    log = caplog.text
    assert log.count("connection from 127.0.0.2 closed: no association request within --request-timeout 5s") == 16
    assert log.count("connection from 127.0.0.2 closed: 16 of its connections (16 in all) already wait") == 4
    # two associations open (--max-associations 2): a third is rejected as busy (transient), and gets in after
    ae = AE(ae_title="SCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", node.options.port, ae_title=NODE) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        rc, out = _dcmtk("echoscu", "-aet", "SCU", "-aec", NODE, "127.0.0.1", node.options.port)
        assert rc != 0 and "Rejected Transient" in out and "Local Limit Exceeded" in out, out
    finally:
        for a in held:
            a.release()
    wait_for(lambda: not node.active, TIMEOUT, "the held associations to end")
    assert _dcmtk("echoscu", "-aet", "SCU", "-aec", NODE, "127.0.0.1", node.options.port)[0] == 0
    assert "association from SCU@127.0.0.1 to NODE rejected: --max-associations 2 reached" in caplog.text


def test_a_pdu_longer_than_the_node_reads_closes_the_connection(plain, caplog):
    """An association request claiming 2 GB: the node reads its header, not its body, and closes."""
    node, _ = plain
    caplog.set_level(logging.INFO, "mammo_tl.serve")
    before = dict(node.counts)
    with socket.create_connection(("127.0.0.1", node.options.port)) as s:
        s.sendall(b"\x01\x00" + struct.pack(">L", 2_000_000_000) + b"\x00" * 65536)
        s.settimeout(5)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    assert _gained(node, before) == {"connections_refused_pdu_too_large": 1}
    assert "a PDU of 2000000000 bytes announced, over the node's 1048576" in caplog.text


def test_an_instance_over_the_limit_is_discarded_as_it_arrives(plain, tmp_path):
    """storescu sends a 16 MB instance to a node with --max-instance-mb 0.2: refused (0xC001, too large), and the
    node's
    Python allocations (tracemalloc: pynetdicom's buffers, the node's) grow by about the limit and a PDU, not by
    the instance."""
    node, _ = plain
    path = tmp_path / "large.dcm"
    make = _dataset(tmp_path, "seed.dcm", breast_phantom(seed=9))
    make.Rows, make.Columns = 2000, 4000
    make.PixelData = np.random.default_rng(0).integers(0, 4000, (2000, 4000), np.uint16).tobytes()
    make.save_as(path, enforce_file_format=True)
    assert path.stat().st_size > 16e6
    before = dict(node.counts)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        rc, out = _dcmtk("storescu", "-v", "-aet", "SCU", "-aec", NODE, "127.0.0.1", node.options.port, path)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert rc != 0 and "Received Store Response (Error: CannotUnderstand)" in out, out  # 0xC001: DCMTK's words
    assert _gained(node, before) == {"instances_refused:too_large": 1}
    assert peak < 4e6, f"{peak / 1e6:.1f} MB allocated while receiving a {path.stat().st_size / 1e6:.0f} MB instance"


def test_images_that_are_not_mammograms_are_refused(plain, tmp_path, caplog):
    """A DX chest image is refused (0xC002), counted and logged; a DX image of the breast and an MG one are
    stored."""
    node, _ = plain
    caplog.set_level(logging.INFO, "mammo_tl.serve")
    chest, breast = (_dataset(tmp_path, f"{n}.dcm", breast_phantom(seed=11)) for n in ("chest", "breast"))
    for ds, part in ((chest, "CHEST"), (breast, "BREAST")):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX_CLASS
        ds.Modality, ds.BodyPartExamined = "DX", part
    mg = _dataset(tmp_path, "mg.dcm", breast_phantom(seed=12))
    before = dict(node.counts)
    assert _c_store(node, [chest, breast, mg], tls=None) == [0xC002, 0x0000, 0x0000]
    assert _gained(node, before, ["instances_refused", "instances_stored"]) == \
        {"instances_refused:not_a_mammogram": 1, "instances_stored": 2}
    assert f"study {chest.StudyInstanceUID}: not a mammogram (Modality DX, BodyPartExamined CHEST" in caplog.text


def test_a_study_without_results_is_an_error(plain, tmp_path, caplog):
    """A study whose every image cannot be decoded gives no result: an ERROR line and a count in status.json."""
    node, root = plain
    caplog.set_level(logging.INFO, "mammo_tl.serve")
    bad = _dataset(tmp_path, "bad.dcm", breast_phantom(seed=4), syntax=RLELossless)
    bad.PixelData = bad.PixelData[:40]  # an RLE header and little else: stored, not decodable
    before = dict(node.counts)
    assert _c_store(node, [bad], tls=None) == [0x0000]
    study = str(bad.StudyInstanceUID)
    done = root / "spool" / "studies" / study / "results" / "done.json"
    wait_for(done.exists, TIMEOUT, "the study predicted")
    assert json.loads(done.read_text())["outputs"] == []
    def errors_logged():  # the node logs the ERROR after it commits done.json: wait for both
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and study in r.getMessage()]

    wait_for(errors_logged, TIMEOUT, "the study's ERROR line")
    errors = errors_logged()
    assert len(errors) == 1 and "no result could be made from its 1 instance(s)" in errors[0], errors
    assert _gained(node, before, ["studies_without_results", "instances_skipped"]) == \
        {"studies_without_results": 1, "instances_skipped": 1}
    node.write_status()
    assert json.loads((root / "spool" / "status.json").read_text())["counts"]["studies_without_results"] >= 1


def test_allow_host_names_are_resolved_at_start(plain):
    """--allow ECHO@localhost lets ECHO in from 127.0.0.1 (the name resolved at start-up, not compared as
    text); a name that does not resolve is refused at start."""
    from mammo_tl.serve.node import ServeError, resolve_allow

    node, _ = plain
    assert _dcmtk("echoscu", "-aet", "ECHO", "-aec", NODE, "127.0.0.1", node.options.port)[0] == 0
    ((_, addresses, host),) = resolve_allow([("ECHO", "localhost")])
    assert host == "localhost" and "127.0.0.1" in addresses
    assert resolve_allow([("A", "10.0.0.7"), ("B", "::ffff:10.0.0.8")]) == [
        ("A", frozenset({"10.0.0.7"}), "10.0.0.7"), ("B", frozenset({"10.0.0.8"}), "::ffff:10.0.0.8")]
    with pytest.raises(ServeError, match=r"--allow X@no-such-host\.invalid: the host name does not resolve"):
        resolve_allow([("X", "no-such-host.invalid")])


def test_a_refusing_and_a_hung_destination_delay_no_other_result(tmp_path_factory, tmp_path, monkeypatch, caplog):
    """Destinations: one that never answers (a socket nobody accepts on), and a Storage SCP that refuses study X
    (0xA700) forever. Study Y, arriving after X's first refusal, reaches the SCP before X's next try (back-off per
    study, a thread per destination); X is given up after --retry-limit 2 tries, with an ERROR and a count."""
    from mammo_tl.serve import node as serve

    monkeypatch.setattr(serve, "RETRY_FIRST_S", 10.0)
    caplog.set_level(logging.INFO, "mammo_tl.serve")
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    hung_port = hung.getsockname()[1]
    x = _dataset(tmp_path, "x.dcm", breast_phantom(seed=13))
    y = _dataset(tmp_path, "y.dcm", breast_phantom(seed=14))
    scp = Scp(refuse={str(x.StudyInstanceUID)})
    node = _node(tmp_path_factory, tmp_path / "spool", [f"HUNG@127.0.0.1:{hung_port}", scp.address],
                 retry_limit=2).start()
    try:
        assert _c_store(node, [x], tls=None) == [0x0000]
        wait_for(lambda: len(scp.refused) == 2, TIMEOUT, "X's two results refused once")  # its GSPS and report
        assert _c_store(node, [y], tls=None) == [0x0000]
        wait_for(lambda: len(scp.stored) == 2, TIMEOUT, "Y's results at the SCP")
        assert scp.studies() == [str(y.StudyInstanceUID)] * 2
        assert len(scp.refused) == 2  # X not tried again yet: its back-off is its own
        wait_for(lambda: node.counts["results_given_up"] == 2, TIMEOUT, "X given up at the SCP")
        assert len(scp.refused) == 4  # two tries of two results
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "given up" in r.getMessage()]
        assert errors == [f"study {x.StudyInstanceUID}: 2 result(s) refused by {scp.address} 2 times "
                          "(--retry-limit); given up there (kept in the spool, tried again at the next start)"]
        node.write_status()
        assert json.loads((tmp_path / "spool" / "status.json").read_text())["counts"]["results_given_up"] == 2
    finally:
        hung.close()
        node.stop()
        scp.stop()


def _commit(spool, study, result_uid):
    """Commit one result (a file with SOP Instance UID ``result_uid``) as the study's results."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    result = Dataset()
    result.SOPClassUID, result.SOPInstanceUID = GSPS_CLASS, result_uid
    result.ensure_file_meta()
    result.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    result.save_as(os.path.join(spool.new_results(study), "PR_1.dcm"), enforce_file_format=True)
    spool.commit_results(study, spool.instances(study), ["PR_1.dcm"], {"study": study, "error": None})


def _spool_with_a_delivered_study(tmp_path, destination_key):
    """A spool (as an earlier node left it) holding study 1.2.3, whose one result ``destination_key``
    acknowledged."""
    from mammo_tl.serve.spool import Spool

    spool = Spool(str(tmp_path / "spool"))
    spool.register_destinations([destination_key])
    spool.store("1.2.3", "1.2.3.4", b"instance bytes")
    _commit(spool, "1.2.3", "1.2.3.9")
    spool.mark_sent("1.2.3", destination_key, "1.2.3.9")
    spool.mark_processed("1.2.3")


def test_a_new_destination_gets_new_results_only_unless_asked(tmp_path_factory, tmp_path, caplog):
    """A node started again with a second destination does not send it the studies the spool retains (with
    --send-backlog it does); results made from then on go to both."""
    from mammo_tl.serve.send import parse_destination

    a, b = (parse_destination(f"{n}@127.0.0.1:{free_port()}") for n in ("A", "B"))
    caplog.set_level(logging.INFO, "mammo_tl.serve")
    for backlog in (False, True):
        root = tmp_path / str(backlog)
        _spool_with_a_delivered_study(root, a.key)
        node = _node(tmp_path_factory, root / "spool", [a.text, b.text], send_backlog=backlog)
        try:
            assert node.spool.unsent("1.2.3", a.key) == []
            assert [o["sop_instance_uid"] for o in node.spool.unsent("1.2.3", b.key)] == (["1.2.3.9"] if backlog
                                                                                          else [])
            # a result made from now on goes to both
            node.spool.store("1.2.5", "1.2.5.1", b"instance bytes")
            _commit(node.spool, "1.2.5", "1.2.5.9")
            for d in (a, b):
                assert [o["sop_instance_uid"] for o in node.spool.unsent("1.2.5", d.key)] == ["1.2.5.9"]
        finally:
            node.lock.release()
    assert (f"destination {b.text} is new to this spool: it gets the results made from now on, not those of the 1 "
            "study(ies) retained (--send-backlog sends them)") in caplog.text


def test_a_full_disk_and_a_damaged_spool_do_not_stop_the_node(plain, tmp_path_factory, tmp_path, monkeypatch,
                                                               caplog):
    """status.json cannot be written (ENOSPC): logged once, the node goes on and writes it once it can. A spool
    with a truncated done.json, a stray file among the studies and a folder in tmp/, on a full disk, starts: the
    damaged study is predicted again, the rest logged and left alone."""
    from mammo_tl.serve.spool import Spool

    node, root = plain
    caplog.set_level(logging.INFO, "mammo_tl.serve")
    replace = os.replace

    def full(src, dst, *a, **kw):
        if str(dst).endswith(("status.json", "destinations.json")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full)
    node.write_status()
    node.write_status()
    monkeypatch.setattr(os, "replace", replace)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "status" in r.getMessage()]
    assert errors == ["status.json cannot be written (OSError: No space left on device); the node goes on, and "
                      "says when it can again"]
    node.write_status()
    assert "status.json written again" in caplog.text
    assert json.loads((root / "spool" / "status.json").read_text())["pid"] == os.getpid()
    assert not os.listdir(root / "spool" / "tmp")  # no partial status.json left behind

    spool = Spool(str(tmp_path / "spool"))
    for study in ("1.2.3", "1.2.4"):
        spool.store(study, f"{study}.1", b"instance bytes")
        spool.new_results(study)
        spool.commit_results(study, spool.instances(study), [], {"study": study, "error": None})
    done = tmp_path / "spool" / "studies" / "1.2.3" / "results" / "done.json"
    done.write_text(done.read_text()[:20])
    (tmp_path / "spool" / "studies" / "notes.txt").write_text("a stray file")
    (tmp_path / "spool" / "tmp" / "a_folder").mkdir()
    caplog.clear()
    monkeypatch.setattr(os, "replace", full)  # the disk full at start too: the node starts
    try:
        node2 = _node(tmp_path_factory, tmp_path / "spool", [node.scp.address])
    finally:
        monkeypatch.setattr(os, "replace", replace)
    try:
        assert "1.2.3" in node2.last_arrival and node2.spool.done("1.2.3") is None  # to predict again
        assert node2.spool.studies() == ["1.2.3", "1.2.4"] and node2.spool.done("1.2.4")["outputs"] == []
    finally:
        node2.lock.release()
    log = caplog.text
    assert f"study 1.2.3: {done} cannot be read (JSONDecodeError" in log
    assert "notes.txt is not a study folder; left alone" in log and "a_folder is not a file this node writes" in log
    assert "destinations.json cannot be written (OSError: No space left on device)" in log


def test_the_spool_is_readable_by_its_user_only(plain, tmp_path):
    """Under umask 022 (a node started by hand) every folder of the spool is 0700 and every file 0600: received
    instances, results, records, status.json; a spool folder found readable by others is made 0700."""
    from mammo_tl.serve.spool import Spool

    node, root = plain
    ds = _dataset(tmp_path, "mode.dcm", breast_phantom(seed=15))
    assert _c_store(node, [ds], tls=None) == [0x0000]
    study = root / "spool" / "studies" / str(ds.StudyInstanceUID)
    wait_for((study / "processed").exists, TIMEOUT, "the study's results delivered")
    node.write_status()
    assert os.umask(0o022) == 0o022  # the fixture's
    modes = {}
    for folder, dirs, files in os.walk(root / "spool"):
        for name in [folder] + [os.path.join(folder, n) for n in dirs + files]:
            modes[os.path.relpath(name, root)] = stat.S_IMODE(os.stat(name).st_mode)
    assert {k: oct(m) for k, m in modes.items() if m & 0o077} == {}
    assert {"spool/status.json", "spool/destinations.json"} <= set(modes)
    assert any("/results/PR_" in k for k in modes) and any("/instances/" in k for k in modes)
    assert {oct(m) for k, m in modes.items()} == {"0o700", "0o600"}
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    Spool(str(loose))
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700
