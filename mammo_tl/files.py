"""File helpers shared by preparation, evaluation and prediction: content hashes and atomic writes."""
import hashlib
import json
import os


def sha256_file(path, block=1 << 20):
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_json(obj, path, **kwargs):
    """json.dump to a temporary file beside ``path``, then rename: a killed run never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, **kwargs)
    os.replace(tmp, path)


def writable_folder_problem(folder):
    """None when ``folder`` is (or can be made) a folder a file can be written to; else why not. Checked by
    writing and removing a probe file, before any long work that would write there."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return "exists and is not a folder"
    probe = os.path.join(folder, f".mammo_tl_write_probe.{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "w") as f:
            f.write("probe")
        os.remove(probe)
    except OSError as e:
        return f"not a writable folder ({type(e).__name__}: {e})"
    return None
