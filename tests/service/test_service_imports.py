"""The API never imports torch (small image, fast start): checked in a fresh process."""

from __future__ import annotations

import subprocess
import sys


def test_the_service_package_imports_no_torch():
    code = ("import sys; import service.app, service.backends.redis_backend, service.images; "
            "from service.app import create_app; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', "
            "'safespot', 'models')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
