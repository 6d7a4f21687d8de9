"""The API never imports torch (small image, fast start): checked in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

# The one torch-free part of models/ the API reaches: the container sniffers and the recorded-
# threat rule, kept torch-free by rule (tests/test_import_rules.py).
TORCH_FREE_MODELS = {"models", "models.formats"}


def test_the_service_package_imports_no_torch():
    code = ("import sys; import service.app, service.backends.redis_backend, service.images; "
            "from service.app import create_app; "
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'safespot', 'models'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert loaded <= TORCH_FREE_MODELS, sorted(loaded - TORCH_FREE_MODELS)
