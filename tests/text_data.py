"""Text fixtures: a tiny sentence encoder built on the spot (no download) and tiny labelled text files."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

WORDS = {
    "card": "card lost stolen blocked pin arrive delivery plastic chip contactless",
    "money": "transfer payment refund balance charge fee exchange rate salary deposit",
    "account": "password login verify identity email phone address profile close open",
}


def make_tiny_encoder(folder: Path) -> Path:
    """A two-layer BERT with mean pooling, random weights (seeded), and a word-level vocabulary of the test
    texts' words, saved as a sentence-transformers model folder: what `backbone.name` may name on texts."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    if (folder / "modules.json").is_file():
        return folder
    raw = folder / "bert"
    raw.mkdir(parents=True, exist_ok=True)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary += sorted({w for line in WORDS.values() for w in line.split()} | {"the", "my", "is", "a", "i"})
    (raw / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    BertTokenizerFast(vocab_file=str(raw / "vocab.txt"), do_lower_case=True).save_pretrained(raw)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocabulary),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(raw)
    torch.random.set_rng_state(state)
    transformer = models.Transformer(str(raw), max_seq_length=32)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
    return folder


def labelled_texts(per_class: int = 12, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) rows, each text a distinct draw of its class's words (so that a probe can learn them)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label, words in WORDS.items():
        vocabulary = words.split()
        for n in range(per_class):
            picks = torch.randint(len(vocabulary), (5,), generator=generator).tolist()
            rows.append((f"my {' '.join(vocabulary[i] for i in picks)} {n}", label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path
