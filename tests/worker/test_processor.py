"""FilterProcessor: full-resolution answers in the upload's size and mode, budget held,
found safe spots that a fresh attack cannot break, several jobs per pass."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from safespot.attacks import pgd
from safespot.canvas import ResizeView
from tests.worker.conftest import cifar_png, filter_request, photo, png_bytes
from worker.errors import JobError
from worker.imaging import decode_png, distortion, encode_png, to_levels
from worker.processor import FilterProcessor, build_processor, search_config

EPS = 8 / 255


@pytest.fixture
def processor(tiny_checkpoint):
    return build_processor(None, tiny_checkpoint, "tiny", max_batch=8)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def run_one(processor: FilterProcessor, image: Image.Image, **request_args):
    processor.add("job", filter_request("job", image, **request_args), png_bytes(image))
    (done,) = processor.drain()
    assert done.error is None, done.error
    return done


def test_real_photo_keeps_size_mode_and_budget(processor, tiny_model) -> None:
    image = photo("chelsea.jpg")  # 451x300, far larger than the model's 32x32 input
    done = run_one(processor, image)
    out = decoded(done.png)
    assert out.size == image.size and out.mode == "RGB"
    before = np.asarray(image, dtype=np.int16)
    after = np.asarray(out, dtype=np.int16)
    assert np.abs(after - before).max() <= round(EPS * 255)  # the budget, in 8-bit levels
    result = done.result
    assert result["linf"] <= EPS + 1e-9 and result["linf"] == np.abs(after - before).max() / 255
    assert result["image"] == {"width": 451, "height": 300, "mode": "RGB"}
    assert result["model"]["sha256"] == processor.checkpoint.sha256
    assert result["config"]["eps"] == pytest.approx(EPS) and result["preset"] == "fast"
    assert result["grad_evals"] > 0 and 0 <= result["prediction"]["confidence"] <= 1
    assert result["timings"]["total_s"] >= result["timings"]["search_s"] >= 0
    if result["safe_spot_found"]:  # a fresh, independent PGD on the returned file fails
        x = torch.from_numpy(after.astype(np.float32) / 255).permute(2, 0, 1)[None]
        view = ResizeView((32, 32))

        def classifier(z: torch.Tensor) -> torch.Tensor:
            return tiny_model(view(z, [tuple(z.shape[1:])] * len(z)))

        label = torch.tensor([result["prediction"]["label"]])
        gen = torch.Generator().manual_seed(12345)
        attack = pgd(classifier, x, label, norm="linf", eps=EPS, steps=20, generator=gen)
        assert not bool(attack.success[0])


def test_top5_ranks_the_classes_of_the_original_as_the_view_shows_it(processor, tiny_model) -> None:
    image = photo("chelsea.jpg")
    prediction = run_one(processor, image).result["prediction"]
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = tiny_model(ResizeView((32, 32))(x, [tuple(x.shape[1:])])).softmax(dim=1)[0].topk(5)
    top5 = prediction["top5"]
    assert [e["label"] for e in top5] == expected.indices.tolist()  # 10 classes: five of them
    assert [e["probability"] for e in top5] == pytest.approx(expected.values.tolist(), abs=1e-5)
    probabilities = [e["probability"] for e in top5]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert top5[0]["label"] == prediction["label"] and top5[0]["class_name"] == prediction["class_name"]
    assert top5[0]["probability"] == pytest.approx(prediction["confidence"])
    names = processor.checkpoint.info.class_names
    assert [e["class_name"] for e in top5] == [names[e["label"]] for e in top5]


def test_alpha_is_kept_and_never_perturbed(processor) -> None:
    image = photo("astronaut.png", mode="RGBA", size=(96, 64))
    out = decoded(run_one(processor, image).png)
    assert out.mode == "RGBA" and out.size == image.size
    assert np.array_equal(np.asarray(out)[:, :, 3], np.asarray(image)[:, :, 3])
    assert np.abs(np.asarray(out, dtype=np.int16) - np.asarray(image, dtype=np.int16)).max() <= 8


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_grayscale_stays_grayscale(processor, mode: str) -> None:
    image = photo("coffee.webp", mode=mode, size=(60, 40))
    done = run_one(processor, image)
    out = decoded(done.png)
    assert out.mode == mode and out.size == image.size
    assert done.result["image"]["mode"] == mode
    diff = np.asarray(out, dtype=np.int16) - np.asarray(image, dtype=np.int16)
    assert np.abs(diff).max() <= 8
    if mode == "LA":
        assert not diff[:, :, 1].any()


def test_jobs_share_passes_and_configs_get_their_own_engine(processor, cifar_mini) -> None:
    sizes: dict[str, int] = {}
    processor.progress = lambda job_id, p: sizes.__setitem__(job_id, max(sizes.get(job_id, 0), p["batch_size"]))
    for i in range(4):
        processor.add(f"a{i}", filter_request(f"a{i}"), cifar_png(cifar_mini, i))
    processor.add("l2", filter_request("l2", norm="l2", eps=0.5), cifar_png(cifar_mini, 5))
    done = {d.job_id: d for d in processor.drain()}
    assert set(done) == {"a0", "a1", "a2", "a3", "l2"} and all(d.error is None for d in done.values())
    assert max(d.batch_size for d in done.values()) == 4  # the four L-inf jobs searched together
    assert done["l2"].result["threat"]["norm"] == "l2" and done["l2"].result["l2"] <= 0.5 + 1e-9
    assert processor.in_flight == 0


def test_pixel_budget_holds_back_images_that_do_not_fit(tiny_checkpoint, cifar_mini) -> None:
    small = build_processor(None, tiny_checkpoint, "tiny", max_batch=8, max_batch_pixels=2 * 32 * 32)
    for i in range(3):
        small.add(f"j{i}", filter_request(f"j{i}"), cifar_png(cifar_mini, i))
    done = small.drain()
    assert len(done) == 3 and max(d.batch_size for d in done) <= 2


def test_ood_score_and_flag_follow_the_checkpoint(tiny_checkpoint, cifar_mini) -> None:
    info = dataclasses.replace(tiny_checkpoint.info, ood={"mu": 0.25, "threshold": 1.01})
    processor = build_processor(None, dataclasses.replace(tiny_checkpoint, info=info), "tiny")
    processor.add("j", filter_request("j"), cifar_png(cifar_mini, 3))
    result = processor.drain()[0].result
    conf = result["prediction"]["confidence"]
    under_attack = result["robustness"]["confidence_under_attack"]
    assert result["ood_score"] == pytest.approx(0.25 * conf + 0.75 * under_attack, abs=1e-5)
    assert result["ood_flag"] is True  # every score is below 1.01
    assert result["ood_method"] == "safespot"  # a checkpoint without a stored detector: D(x), as before
    plain = build_processor(None, tiny_checkpoint, "tiny")
    plain.add("j", filter_request("j"), cifar_png(cifar_mini, 3))
    assert plain.drain()[0].result["ood_flag"] is None  # no threshold: no verdict


def test_a_stored_detector_scores_the_upload_as_the_model_reads_it(tiny_detector_checkpoint, cifar_mini) -> None:
    """The Mahalanobis flag: the detector's score of the original upload through the view (a
    451x300 photo is resized to 32x32 first), Gaussian noise flagged, test photos mostly not."""
    from models.checkpoint import load_checkpoint
    from models.ood_detector import detector_score

    loaded = load_checkpoint(tiny_detector_checkpoint)
    assert loaded.ood_detector is not None
    rng = np.random.default_rng(7)
    noise = [Image.fromarray(np.clip(rng.normal(127.5, 64, (32, 32, 3)), 0, 255).astype(np.uint8)) for _ in range(8)]
    images = {"photo": photo("chelsea.jpg"), **{f"noise{i}": im for i, im in enumerate(noise)},
              **{f"test{i}": decoded(cifar_png(cifar_mini, i)) for i in range(100, 200, 10)}}
    processor = build_processor(None, loaded, "tiny-mahalanobis", max_batch=32)
    for key, image in images.items():
        processor.add(key, filter_request(key, image), png_bytes(image))
    results = {d.job_id: d.result for d in processor.drain()}
    threshold = loaded.info.ood["threshold"]
    for key, image in images.items():
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        expected = float(detector_score(loaded.model, loaded.ood_detector, ResizeView((32, 32))(x, [tuple(x.shape[1:])]), 8)[0])
        result = results[key]
        assert result["ood_method"] == "mahalanobis-layers"
        assert result["ood_score"] == pytest.approx(expected, abs=1e-5), key
        assert result["ood_flag"] is (expected < threshold), key
    assert all(results[f"noise{i}"]["ood_flag"] for i in range(8))  # measured: 50 of 50 such images flagged
    assert sum(bool(results[f"test{i}"]["ood_flag"]) for i in range(100, 200, 10)) <= 2  # 7% of 100 measured


@pytest.mark.parametrize(("data", "changes", "code"), [
    (b"not a png", {}, "invalid_image"),
    (None, {}, "upload_missing"),
    ("cmyk", {}, "unsupported_image_mode"),
    ("ok", {"preset": "turbo"}, "invalid_request"),
    ("ok", {"norm": "l1"}, "invalid_request"),
    ("ok", {"eps": 5.0}, "invalid_request"),
])
def test_bad_requests_fail_with_a_code(processor, cifar_mini, data, changes, code) -> None:
    if data == "ok":
        data = cifar_png(cifar_mini)
    elif data == "cmyk":
        data = _tiff_cmyk()
    with pytest.raises(JobError) as caught:
        processor.add("bad", filter_request("bad", **changes), data)
    assert caught.value.code == code and caught.value.to_dict()["message"]
    assert processor.in_flight == 0


def _tiff_cmyk() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (8, 8)).save(out, format="TIFF")
    return out.getvalue()


def test_identical_output_has_no_psnr() -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert distortion(x, x) == {"linf": 0.0, "l2": 0.0, "psnr": None}
    y = x.copy()
    y[0, 0, 0] += 1 if y[0, 0, 0] < 255 else -1
    d = distortion(y, x)
    assert d["linf"] == pytest.approx(1 / 255) and d["psnr"] > 60


def every_level_png(mode: str) -> bytes:
    """A 16x16 image holding each 8-bit level once per channel (alpha reversed)."""
    grid = np.arange(256, dtype=np.uint8).reshape(16, 16)
    channels = {"L": [grid], "LA": [grid, grid[::-1]], "RGB": [grid, grid.T, grid[::-1]],
                "RGBA": [grid, grid.T, grid[::-1], grid[:, ::-1]]}[mode]
    array = np.stack(channels, axis=2)
    return png_bytes(Image.fromarray(array[:, :, 0] if mode == "L" else array))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_an_unchanged_answer_keeps_the_decoded_levels_where_float_would_requantise(mode: str) -> None:
    image = decode_png(every_level_png(mode))
    coarse = image.pixels(dtype=torch.float8_e4m3fn)  # a model computing in 8-bit floats
    requantised = np.moveaxis(to_levels(coarse.float()), 0, -1)
    assert not np.array_equal(requantised, image.levels), "the float round trip must lose levels here"
    assert np.array_equal(image.answer_levels(coarse), image.levels)
    png = encode_png(image.answer_levels(coarse), image.alpha, image.mode)
    assert np.array_equal(np.asarray(decoded(png)), np.asarray(decoded(every_level_png(mode))))


def test_answer_levels_move_by_the_searched_change_only() -> None:
    image = decode_png(every_level_png("RGB"))
    answer = image.pixels()
    answer[1, 3, 4] += 1 / 255  # one level up at (row 3, column 4), green
    answer[0, 0, 0] -= 1 / 255  # below level 0: clipped, as the PNG cannot hold it
    levels = image.answer_levels(answer)
    change = levels.astype(np.int16) - image.levels.astype(np.int16)
    assert change[3, 4, 1] == 1 and np.count_nonzero(change) == 1
    assert distortion(levels, image.levels)["linf"] == pytest.approx(1 / 255)


def test_reencode_plans_for_the_platforms_jpeg_and_reports_survival(processor, cifar_mini) -> None:
    processor.add("jq", filter_request("jq", preset="fast", reencode={"format": "jpeg", "quality": 80}),
                  cifar_png(cifar_mini, 5))
    result = processor.drain()[0].result
    report = result["reencode"]
    assert report["format"] == "jpeg" and report["quality"] == 80
    assert report["survives"] is result["safe_spot_found"]
    assert isinstance(report["safe_without_reencode"], bool)
    assert result["linf"] <= 8 / 255 + 1e-6


def test_the_result_says_what_was_verified(processor, cifar_mini) -> None:
    processor.add("v", filter_request("v"), cifar_png(cifar_mini, 2))
    result = processor.drain()[0].result
    v = result["verification"]
    assert v["on"] == "8-bit output" and v["norm"] == "linf"
    assert [run["loss"] for run in v["runs"]] == ["ce", "margin"]
    assert v["runs"][1]["targeted"] and v["runs"][1]["targets"].startswith("top-")
    assert "32x32" in v["view"] and v["guarantee"].startswith("empirical")
    assert v["summary"] == result["robustness"]["attack"]
    assert result["robustness"]["margin"] is None or isinstance(result["robustness"]["margin"], float)


def test_abandoning_every_image_of_a_batch_frees_its_slots_at_once(processor, cifar_mini) -> None:
    for job_id in ("left", "kept"):
        processor.add(job_id, filter_request(job_id, preset="paper"), cifar_png(cifar_mini))
    processor.step()  # both are in one engine's batch now
    processor.add("held", filter_request("held", preset="paper"), cifar_png(cifar_mini))
    processor.abandon("held")  # not yet in a batch: gone at once, the others untouched
    assert processor.in_flight == 2
    processor.abandon("left")
    assert processor.in_flight == 2, "an abandoned image stays while its batch still serves another"
    processor.abandon("kept")
    assert processor.in_flight == 0 and processor.step() == []


def test_the_checkpoints_view_is_searched_through_and_stated(tiny_checkpoint) -> None:
    info = dataclasses.replace(tiny_checkpoint.info, view={"kind": "resize-crop", "resize": 36, "crop": 32})
    cropping = build_processor(None, dataclasses.replace(tiny_checkpoint, info=info), "tiny-crop", max_batch=8)
    image = photo("chelsea.jpg")  # 451x300 -> 54x36, centre 32x32 crop: columns ~92..359 of the upload
    done = run_one(cropping, image, eps=16 / 255)
    assert done.result["view"] == {"kind": "resize-crop", "resize": 36, "crop": 32, "input_size": [32, 32],
                                   "description": "shorter side resized to 36, centre 32x32 crop"}
    assert done.result["verification"]["view"] == "shorter side resized to 36, centre 32x32 crop"
    changed = np.abs(np.asarray(decoded(done.png), dtype=np.int16) - np.asarray(image, dtype=np.int16)).max(axis=(0, 2))
    assert changed[150:300].max() > 0  # the model reads the middle: the search moved it
    assert changed[:80].max() == 0 and changed[372:].max() == 0  # it never reads the sides: untouched


def test_checkpoints_without_a_view_state_the_whole_image_resize(processor, cifar_mini) -> None:
    processor.add("v", filter_request("v"), cifar_png(cifar_mini, 2))
    view = processor.drain()[0].result["view"]
    assert view == {"kind": "resize", "input_size": [32, 32], "description": "whole image resized to 32x32"}


def test_the_worker_setting_reaches_the_search_config(tiny_checkpoint, tmp_path) -> None:
    from worker.settings import WorkerSettings

    settings = WorkerSettings(search_precision="bf16", checkpoint_dir=tmp_path)
    proc = build_processor(settings, tiny_checkpoint, "tiny")
    assert proc.precision == "bf16"
    _, cfg = search_config(filter_request("j1"), 8, proc.precision)
    assert cfg.precision == "bf16"


def test_a_request_without_eps_takes_the_budget_the_checkpoint_was_trained_for(tiny_checkpoint) -> None:
    info = dataclasses.replace(tiny_checkpoint.info, threat={"norm": "linf", "eps": 4 / 255})
    _, cfg = search_config(filter_request("j1", eps=None, delta=None), 8, info=info)
    assert cfg.eps == pytest.approx(4 / 255) and cfg.budget == pytest.approx(4 / 255)
    _, cfg = search_config(filter_request("j2", eps=2 / 255, delta=None), 8, info=info)
    assert cfg.eps == pytest.approx(2 / 255)  # the request's own wins
    _, cfg = search_config(filter_request("j3", norm="l2", eps=None, delta=None), 8, info=info)
    assert cfg.eps == pytest.approx(0.5)  # trained for L-inf: the paper's L2 budget


def test_a_failing_detector_costs_the_ood_verdict_not_the_image(tiny_detector_checkpoint, cifar_mini,
                                                                monkeypatch) -> None:
    from models.checkpoint import load_checkpoint

    def broken(*_args, **_kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("worker.processor.detector_score", broken)
    processor = build_processor(None, load_checkpoint(tiny_detector_checkpoint), "tiny-mahalanobis")
    processor.add("j", filter_request("j"), cifar_png(cifar_mini, 3))
    (done,) = processor.drain()
    assert done.error is None and done.png is not None
    assert (done.result["ood_score"], done.result["ood_flag"], done.result["ood_method"]) == (
        None, None, "mahalanobis-layers")
