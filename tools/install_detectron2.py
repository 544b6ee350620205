#!/usr/bin/env python
"""Install detectron2 into the current Python environment (run by `make install`).

detectron2's authors do not publish it on PyPI. Two sources:

* ``wheel`` (default): the PyPI project ``sal-detectron2==0.7.2`` ships detectron2's Python code
  (official commit a59f0563 of 2024-04-17, plus a one-line Python 3.11 fix) as a single wheel tagged
  ``cp310-none-any``. Its compiled ``_C`` targets Python 3.10 only and is never loaded on 3.11;
  Faster R-CNN with axis-aligned boxes does not need it. The wheel is downloaded, its sha256 checked,
  and installed under a ``py3-none-any`` name so pip accepts it on any Python 3.
* ``git``: build the official source from GitHub (needs network access to GitHub and a compiler;
  torch must already be installed, hence ``--no-build-isolation``).

Skips everything when ``import detectron2`` already works.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

WHEEL_PROJECT = "sal-detectron2==0.7.2"
WHEEL_NAME = "sal_detectron2-0.7.2-cp310-none-any.whl"
WHEEL_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
GIT_URL = "git+https://github.com/facebookresearch/detectron2.git"


def detectron2_works():
    probe = "import detectron2; from detectron2.modeling import build_model"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False).returncode == 0


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install_wheel(constraints, cache_dir):
    os.makedirs(cache_dir, exist_ok=True)
    downloaded = os.path.join(cache_dir, WHEEL_NAME)
    if not os.path.exists(downloaded):
        pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10",
            "--implementation", "cp", WHEEL_PROJECT, "-d", cache_dir)
    digest = sha256(downloaded)
    if digest != WHEEL_SHA256:
        os.remove(downloaded)
        sys.exit(f"install_detectron2: {downloaded} has sha256 {digest}, expected {WHEEL_SHA256}; "
                 "removed it. Refusing to install an unverified detectron2 wheel.")
    renamed = os.path.join(tempfile.mkdtemp(), WHEEL_NAME.replace("cp310-none-any", "py3-none-any"))
    shutil.copyfile(downloaded, renamed)
    # the wheel's metadata omits two of detectron2's runtime dependencies
    pip("install", *constraints, renamed, "fvcore", "iopath")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--source", choices=["wheel", "git"], default="wheel")
    parser.add_argument("--git-ref", default="a59f0563", help="commit for --source git")
    parser.add_argument("-c", "--constraint", action="append", default=[], help="pip constraints file")
    parser.add_argument("--cache-dir", default=os.path.join(sys.prefix, "wheels"))
    args = parser.parse_args()
    constraints = [x for c in args.constraint for x in ("-c", c)]

    if detectron2_works():
        print("install_detectron2: detectron2 already importable, nothing to do")
        return
    if args.source == "wheel":
        install_wheel(constraints, args.cache_dir)
    else:
        pip("install", "--no-build-isolation", *constraints, f"{GIT_URL}@{args.git_ref}")
    if not detectron2_works():
        sys.exit("install_detectron2: detectron2 was installed but "
                 "`from detectron2.modeling import build_model` fails; run it by hand to see why.")
    print("install_detectron2: detectron2 OK")


if __name__ == "__main__":
    main()
