"""Small labelled photo folders cut from the real fixture photos (tests/fixtures/photos), in
the two layouts training/photo_folders.py reads, and a tiny checkpoint to evaluate on them."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests.conftest import PHOTOS

# class -> the photo its images are cut from, and its WordNet id
SOURCES = {"cat": "chelsea.jpg", "astronaut": "astronaut.png", "coffee": "coffee.webp"}
WNIDS = {"cat": "n02123045", "astronaut": "n09835506", "coffee": "n07920052"}
# crop boxes (fractions of the photo) and output sizes: real photos are of every shape
BOXES = [(0.0, 0.0, 0.8, 0.8), (0.2, 0.1, 1.0, 1.0), (0.1, 0.2, 0.9, 0.7)]
SIZES = [(96, 72), (80, 80), (70, 110)]
SUFFIXES = [(".JPEG", "JPEG"), (".png", "PNG"), (".webp", "WEBP")]


def cut(cls: str, k: int) -> Image.Image:
    with Image.open(PHOTOS / SOURCES[cls]) as im:
        w, h = im.size
        left, top, right, bottom = BOXES[k % len(BOXES)]
        box = (int(left * w), int(top * h), int(right * w), int(bottom * h))
        return im.convert("RGB").crop(box).resize(SIZES[k % len(SIZES)], Image.Resampling.BILINEAR)


def image_folder(root: Path, classes: list[str], per_class: int = 3, by_wnid: bool = False) -> Path:
    """root/CLASS/img_K.EXT (CLASS the readable name or the wnid)."""
    for cls in classes:
        folder = root / (WNIDS[cls] if by_wnid else cls)
        folder.mkdir(parents=True)
        for k in range(per_class):
            suffix, fmt = SUFFIXES[k % len(SUFFIXES)]
            cut(cls, k).save(folder / f"img_{k}{suffix}", format=fmt)
    return root


def tiny_imagenet_val(root: Path, classes: list[str], per_class: int = 3) -> Path:
    """root/val/images/val_N.JPEG + root/val/val_annotations.txt, the classes interleaved
    (as in Tiny ImageNet, whose annotation order is not by class)."""
    images = root / "val" / "images"
    images.mkdir(parents=True)
    lines: list[str] = []
    for k in range(per_class):
        for cls in classes:
            name = f"val_{len(lines)}.JPEG"
            image = cut(cls, k)
            image.save(images / name, format="JPEG", quality=90)
            lines.append(f"{name}\t{WNIDS[cls]}\t0\t0\t{image.width - 1}\t{image.height - 1}")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_checkpoint(path: Path, class_names: list[str], wnids: list[str] | None = None) -> Path:
    """A random timm test ResNet for 32x32 inputs, seen through resize 36 + centre crop 32."""
    import torch

    from models.checkpoint import ModelInfo, build_model, save_checkpoint

    torch.manual_seed(0)
    info = ModelInfo(arch="timm:test_resnet", num_classes=len(class_names), input_size=(3, 32, 32),
                     class_names=class_names, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                     threat={"norm": "linf", "eps": 8 / 255},
                     view={"kind": "resize-crop", "resize": 36, "crop": 32}, wnids=wnids or [],
                     name="photo-folder-test")
    save_checkpoint(build_model(info).eval(), info, path)
    return path
