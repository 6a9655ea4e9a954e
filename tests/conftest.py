import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def _ntkc_cache(tmp_path_factory):
    # Compiled specs go to a per-session cache unless the caller chose one.
    if "NTKC_CACHE_DIR" not in os.environ:
        os.environ["NTKC_CACHE_DIR"] = str(tmp_path_factory.mktemp("ntkc-cache"))
