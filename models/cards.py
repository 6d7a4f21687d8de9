"""Model cards: markdown generated from a checkpoint's own metadata."""

from __future__ import annotations

import json
from typing import Any

from models.checkpoint import ModelInfo


def _pct(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, int | float) else "—"


def render_card(info: ModelInfo, sha256: str, file_name: str, name: str = "") -> str:
    """A markdown model card for `info` (the file's sha256 identifies the weights); `name`
    titles it (default: the metadata's name, else the file name)."""
    recipe = dict(info.recipe)
    warmup = recipe.pop("warmup", None)
    warmup_epochs = recipe.pop("warmup_epochs", None)
    test = info.metrics.get("test", {})
    training = info.training
    lines = [
        f"# Model card: `{name or info.name or file_name}`",
        "",
        f"- File: `{file_name}`, sha256 `{sha256}`",
        f"- Architecture: `{info.arch}` {json.dumps(info.arch_args) if info.arch_args else ''}, "
        f"input {'x'.join(map(str, info.input_size))}, {info.num_classes} classes "
        f"({', '.join(info.class_names)})",
        f"- Normalisation (inside the model): mean {info.mean}, std {info.std}",
        f"- Threat model: {json.dumps(info.threat) if info.threat else 'none (standard training)'}",
        f"- Recipe: `{recipe.get('name')}` {json.dumps({k: v for k, v in recipe.items() if k != 'name'})}",
    ]
    if warmup:
        lines.append(f"- Curriculum: the first {warmup_epochs} epochs use `{warmup.get('name')}`, "
                     f"the rest `{recipe.get('name')}`")
    lines += ["", "## Accuracy", ""]
    if test:
        lines += [f"Measured on {test.get('data', 'the test set')} ({test.get('n')} images):", "",
                  "| metric | value |", "|---|---|"]
        for key, label in (("clean_acc", "clean accuracy"), ("pgd20_acc", "PGD-20 accuracy"),
                           ("attack", "attack")):
            if key in test:
                value = test[key] if key == "attack" else _pct(test[key])
                lines.append(f"| {label} | {value} |")
        if "autoattack_acc" in test:
            lines.append(f"| AutoAttack accuracy ({test.get('autoattack_n')} of the images) | "
                         f"{_pct(test['autoattack_acc'])} (PGD-20 on the same images: "
                         f"{_pct(test.get('pgd20_acc_same_images'))}) |")
            lines.append(f"| AutoAttack | {test.get('autoattack', '')} |")
        if "view" in test:
            lines.append(f"| view | {test['view'].get('description')}; {test['view'].get('applied', '')} |")
        mapping = test.get("class_mapping")
        if mapping:
            skipped = {**mapping.get("skipped_unknown", {}),
                       **{k: v.get("images") for k, v in mapping.get("skipped_ambiguous", {}).items()}}
            lines.append(f"| class folders | {mapping.get('classes')} matched to the checkpoint's classes by "
                         f"{mapping.get('by')}" + (f"; {len(skipped)} skipped ({sum(skipped.values())} images)"
                                                   if skipped else "") + " |")
        for key, value in test.items():
            if key.startswith("certified"):
                lines.append(f"| {key.replace('_', ' ')} | {_pct(value) if isinstance(value, float) else value} |")
        lines.append("")
        if test.get("command"):
            lines += ["Measured with:", "", "```", test["command"], "```", ""]
    holdout = info.metrics.get("holdout")
    if holdout:
        lines += [f"Held-out training slice at the selected epoch ({holdout.get('epoch')}): clean "
                  f"{_pct(holdout.get('holdout_clean_acc'))}, PGD-20 {_pct(holdout.get('holdout_pgd_acc'))}.", ""]
    if info.ood:
        lines += ["## Out-of-distribution score", "", "```json", json.dumps(info.ood, indent=2), "```", ""]
    lines += ["## Training", ""]
    if training:
        minutes = float(training.get("seconds", 0)) / 60
        precision = (training.get("config") or {}).get("precision", "fp32")  # older runs: fp32
        lines += [f"- Time: {minutes:.1f} min of training epochs ({training.get('epochs')} epochs, "
                  f"{_kept(training)}), {training.get('threads')} threads, "
                  f"{training.get('device')}, {'bf16 autocast' if precision == 'bf16' else 'float32'}, "
                  f"torch {training.get('torch')}, on {training.get('host')}",
                  "- Command:", "", "```", str(training.get("command", "")), "```", ""]
        if training.get("note"):
            lines += [f"- Note: {training['note']}", ""]
    data = info.data
    if data:
        lines += ["## Data", "", f"- {json.dumps(data)}"]
        if info.domain == "cifar10" or "cifar10" in str(data.get("source", "")):
            lines += ["- CIFAR-10 here is JPEG-derived (quality 75): accuracies are not comparable with "
                      "published CIFAR-10 figures."]
        lines += [""]
    return "\n".join(lines)


def _kept(training: dict[str, Any]) -> str:
    """Which epoch the weights are: older runs kept the best held-out epoch and say only that."""
    if training.get("kept") == "last":
        return f"last epoch kept; best held-out epoch {training.get('best_epoch')}"
    return f"best epoch {training.get('best_epoch')}"
