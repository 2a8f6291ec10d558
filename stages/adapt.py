"""adapt: make the models work where they will be used, from unlabelled images of that place (the target).

`paths.target` holds unlabelled target images (directly or in any subfolders) and, optionally, a labelled
target test set as `test/<class>/<image>`, used to measure and never to train or choose. Every target image
passes clean's checks and may not repeat a source image (file, pixels, near duplicate) or, when unlabelled,
a target test image (reprotune/data/extra_images.py); every dropped file is reported.

`adapt.method`, cheapest first, each measured against the source-only models:
- `adabn` (Li et al. 2016): per-domain BatchNorm statistics, for the frozen backbone with the head and for
  the fine-tuned network: under statistics re-estimated on the source training images the linear head is
  refitted (the networks were trained under ImageNet's statistics, which neither domain has), and the same
  network and head under statistics re-estimated on the target images read the target images;
- `coral` (Sun et al. 2016): the source training embeddings re-coloured with the target embeddings'
  covariance (and moved to their mean), and the head trained on them; source images go through the same map;
- `finetune`: finetune's run (the same model, data, optimizer, early stopping on *source* validation, resume,
  DDP) with an unsupervised loss on the unlabelled target images of each batch, `adapt.weight` x minimum class
  confusion (Jin et al. 2020) or entropy (`adapt.target_loss`).
- `none`: nothing; the stage writes `{"method": "none"}` and every other output is what it was without it.

Measured (reports/adapt.json, and evaluate's report): with target labels, accuracy with its bootstrap
interval, macro-F1 and per-class F1 on the target test set, source-only against adapted; for every model
its source test accuracy; without labels, what can be measured: how well a domain classifier tells source
from target embeddings (0.5: not at all), before and after, and the classes predicted on the target images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from reprotune.data.datasets import ManifestImages, make_loader, worker_count
from reprotune.data.extra_images import Known, check_images
from reprotune.data.files import list_files
from reprotune.modalities.image.training_data import mixed_training_data
from reprotune.models.backbones import load_backbone
from reprotune.models.classifier import Classifier, load_trained_classifier
from reprotune.models.inference import predict
from reprotune.models.probe import chosen_C, fit_linear_head
from reprotune.pipeline import stage
from reprotune.pipeline.atomic_io import atomic_output, read_json, write_json, write_text
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params
from reprotune.reporting.markdown import lines_of, value_cell
from reprotune.reporting.metrics import per_class_metrics, summary_metrics
from reprotune.training.devices import pick_device, to_device
from reprotune.training.distributed import local_device, process_group
from reprotune.training.finetuning import (
    UNLABELED,
    build_model,
    class_weight_tensor,
    freeze,
    hard_target_loss,
    load_split,
    make_optimizer,
    mixing,
    phase_strategy,
    schedule,
    trainable_backbone_names,
)
from reprotune.training.finetuning import fingerprint as finetune_fingerprint
from reprotune.training.loop import Placement, fit
from reprotune.training.seeding import seed_everything

log = logging.getLogger(__name__)

DOMAIN_IMAGES = 2000  # at most this many of each domain train the domain classifier
MCC_TEMPERATURE = 2.5  # the MCC paper's


# --- the target folder -----------------------------------------------------------------------------------


def target_images(params: Params, layout: Layout, classes: list[str]) -> dict:
    """{"unlabeled": rows (path, sha256), "test": rows (path, label, sha256), "dropped": [...]}."""
    folder = layout.target
    if not folder.is_dir():
        raise InputError(f"params.yaml: paths.target: {folder} is not a folder (keep it, empty, for none)")
    raw = layout.raw.resolve()
    if folder.resolve().is_relative_to(raw) or raw.is_relative_to(folder.resolve()):
        raise InputError(
            f"params.yaml: paths.target ({folder}) and paths.raw ({layout.raw}) overlap; keep the target "
            "folder outside the raw one"
        )
    test, unlabeled, dropped = [], [], []
    for path in list_files(folder):
        parts = path.relative_to(folder).parts
        if parts[0].lower() == "test" and len(parts) == 3:
            if parts[1] in classes:
                test.append({"path": path.as_posix(), "label": parts[1]})
            else:
                dropped.append(
                    {
                        "path": path.as_posix(),
                        "reason": "unknown_class",
                        "detail": f"{parts[1]} is not a source class",
                    }
                )
        elif parts[0].lower() == "test":
            dropped.append(
                {"path": path.as_posix(), "reason": "wrong_depth", "detail": "test/<class>/<image>"}
            )
        else:
            unlabeled.append({"path": path.as_posix()})
    source = Known.from_clean(layout, "source")
    checked_test = check_images(
        pd.DataFrame(test, columns=["path", "label"]), folder, params, source, "target test"
    )
    checked = check_images(
        pd.DataFrame(unlabeled, columns=["path"]),
        folder,
        params,
        source.plus(checked_test, "target_test"),
        "target",
    )
    return {
        "unlabeled": checked.kept,
        "test": checked_test.kept,
        "dropped": dropped + checked_test.dropped + checked.dropped,
    }


# --- the methods -----------------------------------------------------------------------------------------


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, loader, placement: Placement) -> None:
    """AdaBN (Li et al. 2016): every BatchNorm's running mean and variance re-estimated as the average over
    the loader's images (momentum None: a cumulative average, not the last batches'); weights and everything
    else unchanged."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    for images, _ in loader:
        model(to_device(images, placement.device, placement.channels_last))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def coral_map(source: np.ndarray, target: np.ndarray, regularization: float):
    """CORAL (Sun et al. 2016) as a function of source features: whitened with the source's covariance and
    re-coloured with the target's (each plus `regularization` x identity), centred on the target's mean.
    Identical distributions give the identity."""
    identity = np.eye(source.shape[1])
    source_cov = np.cov(source, rowvar=False) + regularization * identity
    target_cov = np.cov(target, rowvar=False) + regularization * identity
    transform = _matrix_power(source_cov, -0.5) @ _matrix_power(target_cov, 0.5)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    return lambda features: (features - source_mean) @ transform + target_mean


def _matrix_power(matrix: np.ndarray, power: float) -> np.ndarray:
    values, vectors = scipy.linalg.eigh(matrix)
    return (vectors * np.clip(values, 1e-12, None) ** power) @ vectors.T


def coral(source: np.ndarray, target: np.ndarray, regularization: float) -> np.ndarray:
    return coral_map(source, target, regularization)(source)


def minimum_class_confusion(logits: torch.Tensor) -> torch.Tensor:
    """MCC (Jin et al. 2020): the off-diagonal mass of the batch's class-correlation matrix, each image
    weighted by its certainty (1 + exp(-entropy)), temperature-scaled probabilities."""
    probabilities = F.softmax(logits.float() / MCC_TEMPERATURE, dim=1)
    entropy = -(probabilities * torch.log(probabilities + 1e-5)).sum(dim=1)
    weight = 1 + torch.exp(-entropy)
    weight = (len(logits) * weight / weight.sum()).unsqueeze(1)
    confusion = (probabilities * weight).T @ probabilities
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / logits.shape[1]


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy minimisation (Grandvalet and Bengio 2004): the mean entropy of the predictions."""
    return -(F.softmax(logits.float(), dim=1) * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


TARGET_LOSSES = {"mcc": minimum_class_confusion, "entropy": mean_entropy}


def target_aware_loss(criterion: nn.Module, target_loss, weight: float):
    """The training loop's loss_fn: `criterion` on the batch's source (labelled) rows plus `weight` x
    `target_loss` on its target (UNLABELED) rows."""

    def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        source = labels != UNLABELED
        total = criterion(logits[source], labels[source]) if source.any() else logits.sum() * 0.0
        if (~source).sum() > 1:  # a class correlation needs more than one image
            total = total + weight * target_loss(logits[~source])
        return total

    return loss


# --- measuring -------------------------------------------------------------------------------------------


def loader_of(params: Params, paths: list[str], data, labels=None):
    """Images from files through the eval transform, in order."""
    dataset = ManifestImages(
        paths,
        labels if labels is not None else [0] * len(paths),
        data.eval_transform(),
        tuple(params.clean.background),
        data.eval_decode_side,
    )
    return make_loader(dataset, params.featurize.batch_size, worker_count(params.featurize.num_workers))


def domain_accuracy(source: np.ndarray, target: np.ndarray, seed: int) -> float | None:
    """How well a logistic regression tells the two sets of embeddings apart (5-fold cross-validated
    accuracy on equally many of each, at most DOMAIN_IMAGES): 0.5 is not at all, 1.0 is always."""
    count = min(len(source), len(target), DOMAIN_IMAGES)
    if count < 5:
        return None
    rng = np.random.default_rng(seed)
    features = np.concatenate(
        [
            source[rng.choice(len(source), count, replace=False)],
            target[rng.choice(len(target), count, replace=False)],
        ]
    )
    domains = np.repeat([0, 1], count)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return round(float(cross_val_score(classifier, features, domains, cv=folds).mean()), 6)


def scores(logits: np.ndarray, labels: np.ndarray, classes: list[str], params: Params) -> dict:
    settings = params.evaluate
    summary = summary_metrics(
        logits,
        labels,
        len(classes),
        settings.top_k,
        settings.calibration_bins,
        settings.bootstrap_resamples,
        settings.seed,
    )
    kept = {k: summary[k] for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1")}
    per_class = per_class_metrics(labels, logits.argmax(axis=1), classes)["classes"]
    return kept | {"per_class_f1": {name: row["f1"] for name, row in per_class.items()}}


def predicted_classes(logits: np.ndarray, classes: list[str]) -> dict[str, float]:
    counts = (
        np.bincount(logits.argmax(axis=1), minlength=len(classes)) if len(logits) else np.zeros(len(classes))
    )
    return {name: round(float(c / max(1, len(logits))), 6) for name, c in zip(classes, counts, strict=True)}


def describe(
    name: str,
    logits: dict[str, np.ndarray],
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    classes: list[str],
    params: Params,
) -> dict:
    """One model's record: source test accuracy, target test scores (with labels), predicted classes on
    the target images, and the domain classifier's accuracy on its embeddings."""
    record = {
        "source_test": scores(logits["source_test"], labels["source_test"], classes, params),
        "predicted_on_target": predicted_classes(logits["target"], classes),
        "domain_accuracy": domain_accuracy(features["source"], features["target"], params.adapt.seed),
    }
    if len(labels["target_test"]):
        record["target_test"] = scores(logits["target_test"], labels["target_test"], classes, params)
    log.info("%s: %s", name, {k: v for k, v in record.items() if k != "predicted_on_target"})
    return record


def target_embeddings_of(network: Network, paths: list[str]) -> np.ndarray:
    return network.outputs(paths, "embeddings").astype(np.float64)


class Network:
    """A Classifier with its preprocessing: logits and embeddings of files."""

    def __init__(self, model: Classifier, data, params: Params, placement: Placement) -> None:
        self.model = model.to(placement.device)
        self.data = data
        self.params = params
        self.placement = placement

    def outputs(self, paths: list[str], part: str = "logits") -> np.ndarray:
        if not paths:
            width = self.model.head.out_features if part == "logits" else self.model.head.in_features
            return np.zeros((0, width), np.float32)
        module = self.model if part == "logits" else self.model.backbone
        loader = loader_of(self.params, paths, self.data)
        return predict(module, loader, self.placement.device, self.placement.channels_last).numpy()


# --- the stage -------------------------------------------------------------------------------------------

METHOD_NAMES = {"adabn": "AdaBN", "coral": "CORAL", "finetune": "target-aware fine-tuning"}


def section(adapted: dict) -> list[str]:
    """adapt's part of report.md: what adapting did on the target domain, and what can be told without
    target labels."""
    target = adapted["target"]
    reasons = Counter(d["reason"] for d in target["dropped"])
    labelled = target["test_images"] > 0
    lines = [
        "## Domain adaptation",
        "",
        f"Method: {METHOD_NAMES[adapted['method']]}, from {target['unlabeled_images']} unlabelled target images "
        f"in `{target['folder']}`"
        + (
            f" ({len(target['dropped'])} files dropped: {', '.join(f'{k}: {v}' for k, v in reasons.items())}; "
            "listed in `adapt.json`)"
            if target["dropped"]
            else ""
        )
        + (
            f"; measured on {target['test_images']} labelled target test images, never used to train or choose."
            if labelled
            else ". **There are no target labels (`test/<class>/<image>` in the target folder), so whether "
            "adaptation helped cannot be verified**: below are only what can be measured without them."
        ),
        "",
        "| model | "
        + ("target test accuracy [95% interval] | target macro-F1 | " if labelled else "")
        + "source test accuracy | domain classifier accuracy (0.5: domains indistinguishable) |",
        "|---|" + ("---|---|" if labelled else "") + "---|---|",
    ]
    for model, variants in adapted["models"].items():
        for variant, record in variants.items():
            title = f"{'head' if model == 'head' else 'fine-tuned'}, {variant.replace('_', '-')}"
            domain = record["domain_accuracy"]
            cells = [title]
            if labelled:
                cells += [
                    value_cell("accuracy", record["target_test"]),
                    f"{record['target_test']['macro_f1']:.4f}",
                ]
            cells += [f"{record['source_test']['accuracy']:.4f}", "–" if domain is None else f"{domain:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Predicted classes on the unlabelled target images (share of images):", ""]
    for model, variants in adapted["models"].items():
        for variant, record in variants.items():
            shares = ", ".join(f"{k} {v:.2f}" for k, v in record["predicted_on_target"].items())
            lines.append(
                f"- {'head' if model == 'head' else 'fine-tuned'}, {variant.replace('_', '-')}: {shares}"
            )
    return lines + ["", "Per-class F1 on the target test set: `adapt.json`." if labelled else "", ""]


def adapt(params: Params, on_batch: Callable[[int, int], None] | None = None) -> None:
    """`on_batch(epoch, batch)` is called before every step of the target-aware fine-tune (tests interrupt it)."""
    layout = Layout(params.paths)
    settings = params.adapt
    if settings.method == "none":
        log.info("adapt.method is none: nothing to adapt")
        with atomic_output(layout.adapted) as staging:
            staging.mkdir()
            (staging / layout.adapt_meta.name).write_text(
                json.dumps({"method": "none"}) + "\n", encoding="utf-8"
            )
        write_json(layout.adapt_report, {"method": "none"})
        # Nothing adapted, nothing to show; a comment rather than an empty file, which DVC warns about.
        write_text(layout.report_section("adapt"), "<!-- adapt.method: none -->\n")
        return
    if settings.method == "finetune" and mixing(params.finetune):
        raise InputError(
            "params.yaml: adapt.method finetune does not mix images: set finetune.augment.mixup and cutmix to 0"
        )
    classes = read_json(layout.features_meta)["classes"]
    target = target_images(params, layout, classes)
    if len(target["unlabeled"]) < 2:
        reasons = Counter(d["reason"] for d in target["dropped"])
        raise InputError(
            f"{layout.target}: {len(target['unlabeled'])} usable unlabelled target images; adapt.method "
            f"{settings.method} needs at least 2 ({len(target['dropped'])} dropped: {dict(reasons)}; a near "
            "duplicate of a source image is dropped, so target images must be other pictures than data/raw's)"
        )
    with process_group() as (rank, world):
        seed_everything(settings.seed)
        device = local_device(pick_device(params.finetune.device, "params.yaml: finetune.device"))
        placement = Placement(device, params.backbone.channels_last)
        manifest = layout.read_manifest(layout.split_manifest, {"label": str})
        index = {label: i for i, label in enumerate(classes)}
        source_test = manifest[manifest["split"] == "test"]
        source_train = manifest[manifest["split"] == "train"]
        paths = {
            "source_test": source_test["path"].tolist(),
            "target": target["unlabeled"]["path"].tolist(),
            "target_test": target["test"]["path"].tolist(),
            "source": source_train["path"]
            .sample(min(DOMAIN_IMAGES, len(source_train)), random_state=settings.seed)
            .tolist(),
        }
        labels = {
            "source_test": np.array([index[label] for label in source_test["label"]]),
            "target_test": np.array([index[label] for label in target["test"]["label"]], dtype=int),
        }
        trained_head = load_file(layout.head_weights)

        def head_network(backbone_state: dict | None = None, head: dict | None = None) -> Network:
            backbone = load_backbone(params.backbone)
            model = Classifier(backbone.model, backbone.num_features, len(classes))
            model.head.load_state_dict(head or trained_head)
            if backbone_state is not None:
                model.backbone.load_state_dict(backbone_state)
            return Network(model.eval(), backbone.data, params, placement)

        def finetuned_network(weights: Path = layout.finetuned_weights) -> Network:
            model, backbone = load_trained_classifier(params.backbone, weights, len(classes))
            return Network(model, backbone.data, params, placement)

        def measure(network: Network, name: str, source_features: np.ndarray | None = None) -> dict:
            logits = {part: network.outputs(paths[part]) for part in ("source_test", "target", "target_test")}
            features = {
                "source": network.outputs(paths["source"], "embeddings")
                if source_features is None
                else source_features,
                "target": network.outputs(paths["target"], "embeddings"),
            }
            return describe(name, logits, features, labels, classes, params)

        models: dict[str, dict] = {}
        saved: dict[str, dict] = {}
        models["head"] = {"source_only": measure(head_network(), "head, source only")}
        if settings.method in ("adabn", "finetune"):
            models["finetune"] = {"source_only": measure(finetuned_network(), "fine-tuned, source only")}
        if settings.method == "adabn":
            train_paths = source_train["path"].tolist()
            train_labels = np.array([index[label] for label in source_train["label"]])
            for name, make in (("head", head_network), ("finetune", finetuned_network)):
                # Our networks were trained under ImageNet's statistics (the pretrained backbone, and finetune
                # keeps them: freeze_bn_stats), which no domain here has. So, as AdaBN means it, each domain
                # gets its own: the network under source statistics (from the source training images) has its
                # linear head refitted on its source embeddings, and the same network and head under target
                # statistics read the target images. Source images keep the source-statistics network.
                on_source, on_target = make(), make()
                adapt_batchnorm(
                    on_source.model, loader_of(params, paths["source"], on_source.data), placement
                )
                adapt_batchnorm(
                    on_target.model, loader_of(params, paths["target"], on_target.data), placement
                )
                weight, bias, _ = fit_linear_head(
                    on_source.outputs(train_paths, "embeddings"),
                    train_labels,
                    params.train_head,
                    len(classes),
                    chosen_C(layout.head_meta),
                )
                head = {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)}
                for network in (on_source, on_target):
                    network.model.head.load_state_dict(head)
                logits = {part: on_target.outputs(paths[part]) for part in ("target", "target_test")}
                logits["source_test"] = on_source.outputs(paths["source_test"])
                features = {
                    "source": on_source.outputs(paths["source"], "embeddings"),
                    "target": on_target.outputs(paths["target"], "embeddings"),
                }
                models[name]["adapted"] = describe(
                    f"{name}, AdaBN", logits, features, labels, classes, params
                )
                saved[name] = on_target.model.state_dict()
        elif settings.method == "coral":
            frozen = head_network()
            train_embeddings = load_file(layout.features_file("train"))
            target_embeddings = frozen.outputs(paths["target"], "embeddings").astype(np.float64)
            align = coral_map(
                train_embeddings["embeddings"].double().numpy(),
                target_embeddings,
                settings.coral_regularization,
            )
            weight, bias, _ = fit_linear_head(
                align(train_embeddings["embeddings"].double().numpy()),
                train_embeddings["labels"].numpy(),
                params.train_head,
                len(classes),
                chosen_C(layout.head_meta),
            )
            head = {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)}
            # Per domain, as CORAL means it: target embeddings go to the new head as they are, source ones
            # through the same alignment the head was trained on.
            target_logits = {
                part: target_embeddings_of(frozen, paths[part]) @ weight.T + bias
                for part in ("target", "target_test")
            }
            source_test = align(frozen.outputs(paths["source_test"], "embeddings").astype(np.float64))
            logits = target_logits | {"source_test": source_test @ weight.T + bias}
            features = {
                "source": align(frozen.outputs(paths["source"], "embeddings").astype(np.float64)),
                "target": target_embeddings,
            }
            models["head"]["adapted"] = describe("head, CORAL", logits, features, labels, classes, params)
            saved["head"] = head
        else:
            model, best_state = target_aware_finetune(
                params, layout, classes, target["unlabeled"], rank, world, placement, on_batch
            )
            if rank == 0:
                model.load_state_dict(best_state)
                network = Network(model.eval(), load_backbone(params.backbone).data, params, placement)
                models["finetune"]["adapted"] = measure(network, "fine-tuned, target-aware")
                saved["finetune"] = best_state
        if rank == 0:
            write_outputs(layout, params, target, models, saved)


def target_aware_finetune(
    params: Params,
    layout: Layout,
    classes: list[str],
    unlabeled: pd.DataFrame,
    rank: int,
    world: int,
    placement: Placement,
    on_batch: Callable[[int, int], None] | None,
) -> tuple[Classifier, dict]:
    """finetune's run with the target images in the batches and the unsupervised loss on them."""
    settings = params.finetune
    backbone, model = build_model(params, layout, len(classes), placement)
    manifest = layout.read_manifest(layout.split_manifest, {"label": str})
    train_rows, train_labels = load_split(manifest, "train", classes)
    train = pd.concat(
        [
            train_rows[["path", "sha256"]].assign(target=train_labels),
            unlabeled[["path", "sha256"]].assign(target=UNLABELED),
        ],
        ignore_index=True,
    )
    val = load_split(manifest, "val", classes)
    data = mixed_training_data(
        params, layout, backbone.data, backbone.data, train, val, rank, world, placement, settings.seed
    )
    optimizer, scheduler = make_optimizer(model, backbone, settings, len(data.train_loader))
    criterion = hard_target_loss(settings, class_weight_tensor(settings, len(classes), train_labels))
    criterion.to(placement.device)

    # finetune's fingerprint (its params, the backbone, the head, the split) and what adapt adds to it
    digest = hashlib.sha256((finetune_fingerprint(params, layout) + params.adapt.model_dump_json()).encode())
    digest.update(train.to_csv(index=False).encode())
    _, best_state = fit(
        model,
        data,
        target_aware_loss(criterion, TARGET_LOSSES[params.adapt.target_loss], params.adapt.weight),
        optimizer,
        scheduler,
        placement,
        schedule=schedule(settings),
        checkpoint=layout.adapt_checkpoint,
        fingerprint=digest.hexdigest(),
        rank=rank,
        world=world,
        phase_of=lambda epoch: phase_strategy(settings, epoch),
        enter_phase=lambda phase: freeze(
            model, trainable_backbone_names(backbone, phase, settings.unfreeze_last_n)
        ),
        on_batch=on_batch,
    )
    if rank == 0:
        data.train_loader.dataset.copies.path.unlink(missing_ok=True)
    return model, best_state


def write_outputs(layout: Layout, params: Params, target: dict, models: dict, saved: dict) -> None:
    record = {
        "method": params.adapt.method,
        "target": {
            "folder": params.paths.target,
            "unlabeled_images": len(target["unlabeled"]),
            "test_images": len(target["test"]),
            "dropped": target["dropped"],
        },
        "models": models,
    }
    with atomic_output(layout.adapted) as staging:
        staging.mkdir()
        for name, state in saved.items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in state.items()}, staging / f"{name}.safetensors"
            )
        (staging / layout.adapt_meta.name).write_text(
            json.dumps({"method": params.adapt.method, "models": sorted(saved)}, indent=2) + "\n",
            encoding="utf-8",
        )
    write_json(layout.adapt_report, record)
    write_text(layout.report_section("adapt"), lines_of(section(json.loads(json.dumps(record)))))
    shutil.rmtree(layout.adapt_checkpoint, ignore_errors=True)


def main() -> None:
    stage.run(adapt)


if __name__ == "__main__":
    main()
