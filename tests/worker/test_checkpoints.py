"""The shipped record and the served shipped model are called by the shipped file's name."""

from __future__ import annotations

from pathlib import Path

from models.checkpoint import read_info
from tests.conftest import TINY_MODEL
from worker.checkpoints import ActiveModel, shipped_record
from worker.registry import SHIPPED_ID
from worker.registry_stores import file_registry
from worker.settings import WorkerSettings


def test_the_shipped_record_is_named_after_the_shipped_file_not_its_old_metadata() -> None:
    record = shipped_record("cifar10")
    assert record is not None and record["id"] == SHIPPED_ID and record["source"] == "shipped"
    assert record["name"] == "cifar10"


def test_a_default_model_given_as_a_path_keeps_its_metadata_name() -> None:
    record = shipped_record(str(TINY_MODEL))
    assert record is not None and record["name"] == read_info(TINY_MODEL).name != ""
    assert shipped_record("no-such-model") is None


def test_the_served_shipped_model_reports_the_shipped_name(tmp_path: Path) -> None:
    settings = WorkerSettings(redis_url=None, checkpoint_dir=tmp_path / "checkpoints", default_model="cifar10",
                              threads=1, device="cpu")
    registry = file_registry(settings.checkpoint_path)
    registry.register_shipped(shipped_record(settings.default_model))
    models = ActiveModel(registry, settings)
    loaded, checkpoint_id = models.load()
    assert checkpoint_id == SHIPPED_ID and models.name == "cifar10" and loaded.info.num_classes == 10
