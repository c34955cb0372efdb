"""tinygraph.backend.keep_freed_memory: applied at import on glibc Linux, and the opt-out works."""
import os
import platform
import subprocess
import sys

import pytest

from tinygraph import backend

PROBE = "import tinygraph.backend as b; print(b.keep_freed_memory())"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_applied_on_glibc_and_skipped_when_opted_out():
    env = {k: v for k, v in os.environ.items() if k != "TINYGRAPH_SYSTEM_MALLOC"}
    applied = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert applied.stdout.strip() == "True"
    env["TINYGRAPH_SYSTEM_MALLOC"] = "1"
    skipped = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert skipped.stdout.strip() == "False"


def test_returns_false_off_linux(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert backend.keep_freed_memory() is False
