"""A real PACS for tests: Orthanc (Debian package ``orthanc``, with ``orthanc-dicomweb``) started on free loopback
ports with its own config and storage folder, read back through its REST API; DCMTK's tools as the modality."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def require(tool, package="orthanc orthanc-dicomweb dcmtk openssl", how=None):
    """The path of a program (or file) the test needs: a failure under CI=true (.ci/run installs it), a skip
    elsewhere. ``how``: the install line to show, instead of apt-get's for ``package``."""
    path = (tool if os.path.exists(tool) else None) if os.path.isabs(tool) else shutil.which(tool)
    if path is None:
        import pytest

        how = how or f"Debian/Ubuntu: apt-get install -y --no-install-recommends {package}"
        message = f"{tool} is not installed ({how})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must install it (.ci/run)")
        pytest.skip(message)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout, what):
    """Poll ``check()`` until it returns a true value (returned); AssertionError naming ``what`` after timeout."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Orthanc:
    """One Orthanc server: ``start()``, ``stop()`` (its storage kept, so a restart finds what it stored), REST
    helpers. ``aet`` its AE title, ``dicom_port``, ``http_port``; ``modalities`` {name: [AE, host, port]};
    ``lua`` the text of a Lua script it runs (LuaScripts)."""

    def __init__(self, folder, aet="ORTHANC", modalities=None, lua=None):
        require(ORTHANC)
        self.folder, self.aet = str(folder), aet
        self.dicom_port, self.http_port = free_port(), free_port()
        self.proc = None
        os.makedirs(self.folder, exist_ok=True)
        self.config = os.path.join(self.folder, "orthanc.json")
        config = {"Name": aet, "StorageDirectory": os.path.join(self.folder, "db"),
                  "IndexDirectory": os.path.join(self.folder, "db"), "DicomAet": aet, "DicomPort": self.dicom_port,
                  "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
                  "DicomModalities": modalities or {}, "Plugins": [], "StableAge": 1}
        if lua:
            lua_file = os.path.join(self.folder, "script.lua")
            with open(lua_file, "w") as f:
                f.write(lua)
            config["LuaScripts"] = [lua_file]
        if os.path.exists(DICOMWEB_PLUGIN):
            config["Plugins"] = [DICOMWEB_PLUGIN]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        with open(self.config, "w") as f:
            json.dump(config, f, indent=1)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self):
        return f"{self.url}/dicom-web"

    @property
    def address(self):
        """This Orthanc as a --send-to AE@HOST:PORT."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout=30):
        log = open(os.path.join(self.folder, "orthanc.log"), "ab")
        self.proc = subprocess.Popen([ORTHANC, self.config], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.proc.poll() is not None or self._answers(), timeout, "Orthanc to answer")
        if self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({self.proc.returncode}); see {self.folder}/orthanc.log")
        return self

    def _answers(self):
        try:
            self.get("/system")
            return True
        except (OSError, ValueError):
            return False

    def stop(self, kill=False):
        """SIGTERM (or SIGKILL: a crash, and faster) and wait; the storage folder stays."""
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path, raw=False):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            data = r.read()
        return data if raw else json.loads(data)

    def delete(self, path):
        request = urllib.request.Request(self.url + path, method="DELETE")
        with urllib.request.urlopen(request, timeout=30) as r:
            r.read()

    def instances(self):
        """{SOPInstanceUID: simplified tags} of every instance stored."""
        out = {}
        for i in self.get("/instances"):
            tags = self.get(f"/instances/{i}/simplified-tags")
            tags["_id"] = i
            out[tags["SOPInstanceUID"]] = tags
        return out

    def dataset(self, orthanc_id):
        import io

        import pydicom

        return pydicom.dcmread(io.BytesIO(self.get(f"/instances/{orthanc_id}/file", raw=True)))
