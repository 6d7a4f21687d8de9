"""Every YAML file of the deployment parses, each document a mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.artefacts import (
    REPO,
    load_yaml_docs,
    yaml_files,
)


# ------------------------------------------------------------------ all YAML
@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
