"""Benchmark near-duplicate detection: does a copy made the way real copies are made land in the original's
duplicate group, and do distinct pictures of one class stay apart?

    .venv/bin/python -m benchmarks.bench_duplicates [--photos ../shared/data/cats-dogs]

Positives: each photo (real photos from ../shared/data/cats-dogs when present, else generated photo-like
JPEGs) against a copy of it resized (0.25-4x), recompressed (JPEG quality 50, 70), converted (JPEG to PNG and
back), cropped (2.5-5% a side), framed (2-5% borders) or re-oriented (pixels rotated, EXIF tag saying so).
Each copy is a file decoded the way clean decodes it (reprotune/modalities/image/cleaning.py: inspect). Negatives: every pair of distinct
photos of the same class, and of same-digit images of the built-in sample (8x8 scans, the hardest case:
distinct digits differ in a few pixels). Reported per threshold: recall per transformation, false-positive
pairs, and the largest group that transitive grouping would form on the sample, beside the 64-bit
perceptual hash at 4 bits that clean used before. Results go to reports/bench.json under "duplicates".

The embedding check (the `leakage` stage, `leakage.min_cosine`): the same copies and pairs embedded by the
image backbone as featurize embeds them (params.yaml's backbone, resolved for photos), plus NOISY copies
the hashes miss: noisy, high-frequency pictures beside a half-size copy recompressed at JPEG quality 70.
Reported per cosine: recall on the copies, on the copies beyond the grouping distance, and on the noisy
ones, against the distinct same-class photo pairs above it (false pairs) and the closest of them.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from benchmarks.photos import make_photos
from benchmarks.results import print_table, save

THRESHOLDS = [24, 32, 40, 48, 56]
COSINES = [0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98]
NOISY = 20  # noisy pictures and their half-size recompressed copies
OLD_THRESHOLD = 4  # 64-bit imagehash.phash, the detector clean used before


def resized(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        size = (max(8, round(image.width * factor)), max(8, round(image.height * factor)))
        return image.resize(size, Image.Resampling.LANCZOS)

    return apply


def cropped(left: float, top: float, right: float, bottom: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        return image.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))

    return apply


def framed(fraction: float, colour: tuple[int, int, int], sides: str = "ltrb") -> Callable:
    def apply(image: Image.Image) -> Image.Image:
        dx, dy = round(image.width * fraction), round(image.height * fraction)
        border = tuple(d if side in sides else 0 for side, d in zip("ltrb", (dx, dy, dx, dy), strict=True))
        return ImageOps.expand(image, border, fill=colour)

    return apply


# name -> (transformation of the picture, format and options the copy is saved with)
COPIES: dict[str, tuple[Callable[[Image.Image], Image.Image], dict]] = {
    "resize 0.25x (PNG)": (resized(0.25), {"format": "PNG"}),
    "resize 0.5x (PNG)": (resized(0.5), {"format": "PNG"}),
    "resize 2x (PNG)": (resized(2), {"format": "PNG"}),
    "resize 4x (JPEG q90)": (resized(4), {"format": "JPEG", "quality": 90}),
    "JPEG q50": (lambda im: im, {"format": "JPEG", "quality": 50}),
    "JPEG q70": (lambda im: im, {"format": "JPEG", "quality": 70}),
    "resize 0.5x + JPEG q70": (resized(0.5), {"format": "JPEG", "quality": 70}),
    "to PNG": (lambda im: im, {"format": "PNG"}),
    "to PNG, back to JPEG q85": (lambda im: im, {"format": "PNG", "then": "JPEG"}),
    "crop 5% every side": (cropped(0.05, 0.05, 0.05, 0.05), {"format": "JPEG", "quality": 90}),
    "crop 5% one side": (cropped(0.05, 0, 0, 0), {"format": "JPEG", "quality": 90}),
    "crop 2.5% one side": (cropped(0.025, 0, 0, 0), {"format": "JPEG", "quality": 90}),
    "crop 3% two sides + q70": (cropped(0.03, 0.03, 0, 0), {"format": "JPEG", "quality": 70}),
    "border 5% white": (framed(0.05, (255, 255, 255)), {"format": "JPEG", "quality": 90}),
    "border 5% black": (framed(0.05, (0, 0, 0)), {"format": "PNG"}),
    "border 2% one side": (framed(0.02, (0, 0, 0), "l"), {"format": "JPEG", "quality": 90}),
    "EXIF re-orientation": (lambda im: im, {"format": "JPEG", "quality": 95, "rotate": True}),
}


def save_copy(image: Image.Image, path: Path, how: dict) -> Path:
    if how.get("rotate"):
        # Pixels stored rotated, with the EXIF orientation that shows them as before (6: rotate 90 CW).
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=how["quality"], exif=exif)
        return path
    options = {"quality": how["quality"]} if "quality" in how else {}
    image.save(path, how["format"], **options)
    if how.get("then") == "JPEG":
        again = path.with_suffix(".jpg")
        with Image.open(path) as reopened:
            reopened.convert("RGB").save(again, "JPEG", quality=85)
        return again
    return path


def noisy_pictures(folder: Path, count: int, seed: int = 1) -> list[Path]:
    """Noisy pictures (faint grain, sigma 10 grey levels, over a flat colour), as 256 px PNGs: their hashes
    come from the grain, which a half-size JPEG copy smooths away, so the copy lands beyond the grouping
    distance (the kind of copy the `leakage` stage is for)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for n in range(count):
        flat = np.broadcast_to(rng.integers(60, 200, 3), (256, 256, 3))
        noisy = (flat + rng.normal(0, 10, flat.shape)).clip(0, 255).astype(np.uint8)
        path = folder / f"noisy_{n:03d}.png"
        Image.fromarray(noisy).save(path)
        paths.append(path)
    return paths


def sample_digits(folder: Path, side: int) -> list[Path]:
    from reprotune.modalities.image.files import write_sample

    write_sample(folder, side)
    return sorted(folder.rglob("*.png"))


def old_hash(image: Image.Image) -> int:
    import imagehash

    return int(str(imagehash.phash(image)), 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/cats-dogs"))
    options = parser.parse_args()

    import torch

    from reprotune.data.checks import decode_checked
    from reprotune.data.dataconfig import data_config
    from reprotune.data.duplicates import near_pairs
    from reprotune.data.images import to_rgb, upright
    from reprotune.modalities.image import cleaning as clean
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.resolve import for_data

    params = for_data(params_module.load())
    rules = params.clean.model_copy(update={"min_side": 1, "max_aspect_ratio": 100.0})
    data = data_config(params.backbone.name, params.backbone.input_size)

    from reprotune.data.similar_embeddings import normalised
    from reprotune.models.backbones import load_backbone

    backbone = load_backbone(params.backbone)

    def embedded(path: Path) -> np.ndarray:
        """The backbone's unit embedding of the file, decoded and transformed as featurize's eval path does."""
        decoded = decode_checked(path, rules, data.eval_decode_side).rgb
        with torch.no_grad():
            return normalised(backbone.model(data.eval_transform()(decoded)[None]).numpy())[0]

    def inspected(path: Path) -> tuple[np.ndarray, int]:
        """The hash set clean computes for the file, and the old 64-bit hash of the same decoded picture."""
        found = clean.inspect(path, rules, data)
        with Image.open(path) as image:
            picture = to_rgb(upright(image)[0], tuple(rules.background))
        return found.hashes, old_hash(picture)

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        photos = sorted(options.photos.rglob("*.jpg")) if options.photos.is_dir() else []
        source = f"{len(photos)} real photos (--photos {options.photos.name})"
        if not photos:
            photos = make_photos(work / "generated", 60, (512, 384))
            source = "60 generated photo-like JPEGs (no real photos found)"
        labels = [p.parent.name for p in photos]
        originals = [inspected(p) for p in photos]
        original_embeddings = np.stack([embedded(p) for p in photos])
        recall: dict[str, dict[str, float]] = {}
        copy_cosines: list[tuple[float, int]] = []  # every copy: (cosine to its original, hash distance)
        for name, (transform, how) in COPIES.items():
            distances, old, cosines = [], [], []
            for index, photo in enumerate(photos):
                with Image.open(photo) as image:
                    picture = to_rgb(upright(image)[0], tuple(rules.background))
                copy = save_copy(transform(picture), work / f"copy.{how['format'].lower()}", how)
                hashes, old_copy = inspected(copy)
                pair = near_pairs(np.stack([originals[index][0], hashes]), 256).as_dict()
                distances.append(pair[(0, 1)])
                old.append(bin(originals[index][1] ^ old_copy).count("1"))
                cosines.append(float(original_embeddings[index] @ embedded(copy)))
                copy_cosines.append((cosines[-1], distances[-1]))
            recall[name] = {
                "max_distance": int(max(distances)),
                **{f"recall_at_{t}": round(float(np.mean(np.array(distances) <= t)), 3) for t in THRESHOLDS},
                f"recall_old_phash64_at_{OLD_THRESHOLD}": round(
                    float(np.mean(np.array(old) <= OLD_THRESHOLD)), 3
                ),
                "least_cosine": round(min(cosines), 4),
            }

        noisy, noisy_distances, noisy_cosines = noisy_pictures(work / "noisy", NOISY), [], []
        noisy_embeddings: list[np.ndarray] = []
        for picture in noisy:
            with Image.open(picture) as image:
                copy = save_copy(
                    resized(0.5)(image.convert("RGB")),
                    work / "noisy_copy.jpg",
                    {"format": "JPEG", "quality": 70},
                )
            pair = near_pairs(np.stack([inspected(picture)[0], inspected(copy)[0]]), 256).as_dict()
            noisy_distances.append(pair[(0, 1)])
            noisy_embeddings.append(embedded(picture))
            noisy_cosines.append(float(noisy_embeddings[-1] @ embedded(copy)))
        photo_cosines = original_embeddings @ original_embeddings.T
        same_class_cosines = [
            float(photo_cosines[i, j])
            for i, j in itertools.combinations(range(len(photos)), 2)
            if labels[i] == labels[j]
        ]

        photo_pairs = near_pairs(np.stack([h for h, _ in originals]), 256).as_dict()
        same_class = [d for (i, j), d in photo_pairs.items() if labels[i] == labels[j]]
        every_pair = list(photo_pairs.values())
        old_same = [
            bin(originals[i][1] ^ originals[j][1]).count("1")
            for i, j in itertools.combinations(range(len(photos)), 2)
            if labels[i] == labels[j]
        ]

        digits = sample_digits(work / "digits", params.ingest.sample_image_size)
        digit_labels = [p.parent.name for p in digits]
        digit_hashes = [inspected(p) for p in digits]
        within = near_pairs(np.stack([h for h, _ in digit_hashes]), max(THRESHOLDS)).as_dict()
        digit_old = np.array([h for _, h in digit_hashes], dtype=np.uint64)

    def largest_group(pairs: list[tuple[int, int]], count: int) -> int:
        parent = list(range(count))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, j in pairs:
            parent[root(i)] = root(j)
        return int(np.bincount([root(i) for i in range(count)]).max())

    negatives = {}
    for t in THRESHOLDS:
        close = [(i, j) for (i, j), d in within.items() if d <= t]
        negatives[str(t)] = {
            "photo_same_class_false_pairs": int(sum(d <= t for d in same_class)),
            "digit_pairs": len(close),
            "digit_pairs_across_labels": sum(digit_labels[i] != digit_labels[j] for i, j in close),
            "digit_largest_group": largest_group(close, len(digits)),
        }
    old_pairs = [
        (i, j)
        for i, j in itertools.combinations(range(len(digits)), 2)
        if bin(int(digit_old[i]) ^ int(digit_old[j])).count("1") <= OLD_THRESHOLD
    ]
    negatives[f"old_phash64_at_{OLD_THRESHOLD}"] = {
        "photo_same_class_false_pairs": int(sum(d <= OLD_THRESHOLD for d in old_same)),
        "digit_pairs": len(old_pairs),
        "digit_pairs_across_labels": sum(digit_labels[i] != digit_labels[j] for i, j in old_pairs),
        "digit_largest_group": largest_group(old_pairs, len(digits)),
    }
    grouping = params.clean.near_duplicate_distance
    noisy_similarity = np.stack(noisy_embeddings) @ np.stack(noisy_embeddings).T
    distinct_noisy = [float(noisy_similarity[i, j]) for i, j in itertools.combinations(range(NOISY), 2)]
    missed = [cosine for cosine, distance in copy_cosines if distance > grouping]
    embedding = {
        "backbone": f"{params.backbone.name} at {data.input_size} px",
        "copies": len(copy_cosines),
        "copies_beyond_grouping": len(missed),
        "noisy_copies": NOISY,
        "noisy_copies_beyond_grouping": int(sum(d > grouping for d in noisy_distances)),
        "noisy_least_distance": int(min(noisy_distances)),
        "same_class_pairs_greatest_cosine": round(max(same_class_cosines), 4),
        "noisy_pictures_greatest_cosine": round(max(distinct_noisy), 4),
        "per_cosine": {
            str(c): {
                "copy_recall": round(float(np.mean([x > c for x, _ in copy_cosines])), 3),
                "recall_beyond_grouping": round(float(np.mean([x > c for x in missed])), 3)
                if missed
                else None,
                "noisy_recall": round(float(np.mean([x > c for x in noisy_cosines])), 3),
                "same_class_false_pairs": int(sum(x > c for x in same_class_cosines)),
                "distinct_noisy_false_pairs": int(sum(x > c for x in distinct_noisy)),
            }
            for c in COSINES
        },
    }
    result = save(
        "duplicates",
        {
            "photos": source,
            "photo_same_class_pairs": len(same_class),
            "photo_pairs_least_distance": int(min(every_pair)),
            "digits": len(digits),
            "recall": recall,
            "negatives": negatives,
            "embedding": embedding,
        },
    )
    print_table(
        f"near duplicates: recall per copy ({source}); thresholds {THRESHOLDS} bits of 256, then old 64-bit phash <= 4",
        [
            (
                name,
                f"max {row['max_distance']}",
                " ".join(f"{row[f'recall_at_{t}']:.2f}" for t in THRESHOLDS)
                + f" | old {row[f'recall_old_phash64_at_{OLD_THRESHOLD}']:.2f}",
            )
            for name, row in result["recall"].items()
        ],
    )
    print_table(
        f"false positives: {len(same_class)} same-class photo pairs (least distance of any pair "
        f"{result['photo_pairs_least_distance']}), {len(digits)} sample digits",
        [
            (
                threshold,
                f"photos {row['photo_same_class_false_pairs']}",
                f"digit pairs {row['digit_pairs']} ({row['digit_pairs_across_labels']} across labels), "
                f"largest group {row['digit_largest_group']}",
            )
            for threshold, row in result["negatives"].items()
        ],
    )

    print_table(
        f"embedding check ({embedding['backbone']}): {embedding['copies']} copies "
        f"({embedding['copies_beyond_grouping']} beyond the grouping distance), {NOISY} noisy half-size q70 "
        f"copies ({embedding['noisy_copies_beyond_grouping']} beyond it), {len(same_class_cosines)} same-class "
        f"photo pairs (greatest cosine {embedding['same_class_pairs_greatest_cosine']}; distinct noisy pictures "
        f"{embedding['noisy_pictures_greatest_cosine']})",
        [
            (
                f"cosine > {c}",
                f"copies {row['copy_recall']:.3f}",
                f"beyond grouping {row['recall_beyond_grouping']}, noisy {row['noisy_recall']:.3f}; false pairs: "
                f"photos {row['same_class_false_pairs']}, noisy {row['distinct_noisy_false_pairs']}",
            )
            for c, row in embedding["per_cosine"].items()
        ],
    )


if __name__ == "__main__":
    main()
