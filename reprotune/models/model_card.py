"""The card beside a trained network's weights (`model.safetensors` -> `model.json`, a student's
`distilled.safetensors` -> `distilled.json`): everything loading it needs, so that a model works after
params.yaml changed and outside the project (`reprotune predict --model <folder or weights file>`).

The card names the modality and the backbone as trained (every `auto` resolved), the classes in the head's
order, and the rules an input must pass (clean's, as the training data passed them). It holds no temperature:
evaluate fits that later, on validation, and export writes it into the exported model's card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reprotune.pipeline.errors import InputError
from reprotune.pipeline.params import Backbone as BackboneParams
from reprotune.pipeline.params import InputChecks

FORMAT = "reprotune-torch-classifier"


@dataclass(frozen=True)
class TrainedCard:
    modality: str
    backbone: BackboneParams
    classes: list[str]
    checks: InputChecks

    def write(self, weights: Path) -> None:
        """The card of `weights` (written beside it; the weights themselves are the caller's)."""
        card = {
            "format": FORMAT,
            "modality": self.modality,
            "backbone": self.backbone.model_dump(mode="json"),
            "classes": self.classes,
            "checks": card_checks(self.checks),
        }
        card_path(weights).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, weights: Path) -> TrainedCard:
        path = card_path(weights)
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(
                f"{weights}: has no {path.name} beside it (it was written before trained networks carried their "
                "card): run `dvc repro` to write it, or predict with the exported model (models/export)"
            ) from None
        if card.get("format") != FORMAT:
            raise InputError(f"{path}: not a trained-network card (format {card.get('format')!r})")
        return cls(
            card["modality"],
            BackboneParams.model_validate_json(json.dumps(card["backbone"])),
            card["classes"],
            recorded_checks(card["checks"]),
        )


def card_checks(checks: InputChecks) -> dict:
    """What a card records of clean's rules: the InputChecks (of a whole `clean` section too, which is one)."""
    return checks.model_dump(mode="json", include=set(InputChecks.model_fields))


def recorded_checks(checks: dict) -> InputChecks:
    """A card's `checks` (older cards recorded the whole `clean` section: its other keys are not checks)."""
    return InputChecks.model_validate_json(
        json.dumps({key: value for key, value in checks.items() if key in InputChecks.model_fields})
    )


def card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")
