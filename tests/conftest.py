import os
import tempfile

import pytest

# Built-in synthetic sets (if any test touches them) go to a temporary folder, never into the repo.
os.environ.setdefault("MAMMO_TL_DATASETS", tempfile.mkdtemp(prefix="mammo_tl_datasets_"))


@pytest.fixture(scope="session")
def tiny_datasets(tmp_path_factory):
    from tests.common import ensure_tiny_datasets

    root = os.environ.get("MAMMO_TL_TINY_ROOT") or str(tmp_path_factory.getbasetemp() / "tiny")
    ensure_tiny_datasets(root)
    return root


@pytest.fixture(autouse=True)
def _threads():
    from tests.common import set_threads

    set_threads()
