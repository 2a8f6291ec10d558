"""Benchmark the text path: featurize's encoder throughput against the bare model, and the text fine-tune's
length-grouped batches against plainly shuffled ones.

    .venv/bin/python -m benchmarks.bench_text [--texts 4000] [--steps 30]

1. Encoding: featurize's own embedding pass (reprotune/modalities/text/encoding.py: tokenise, sort by length,
   batches padded to a multiple of 16 tokens, on which an embedding does not depend on its batch; checked
   here on 256 texts, each alone against featurize's batches) against the bare model as sentence-transformers runs it (`SentenceTransformer.encode`: sorted by
   length, each batch padded to its longest text), at the same batch size, on the first N Banking77 texts,
   both warmed up in this process. Target: ratio >= 0.9.
2. Training: texts per second of forward + backward + AdamW steps of the encoder and a head, batches of
   finetune.batch_size drawn as finetune draws them (text_encoders.LengthGroupedBatches) against a plain
   shuffle, on the same texts.

Merged into reports/bench.json under "text".
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from torch.utils.data import DataLoader

from benchmarks.results import print_table, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=30)
    options = parser.parse_args()

    from reprotune.modalities.encoding import of
    from reprotune.models.classifier import Classifier
    from reprotune.models.text_encoders import (
        BUCKET,
        LengthGroupedBatches,
        TokenizedTexts,
        padded_length,
        padder,
    )
    from reprotune.pipeline import params as params_module
    from reprotune.pipeline.data_kind import TEXT
    from reprotune.pipeline.layout import Layout
    from reprotune.pipeline.resolve import for_data
    from stages.featurize import inference

    params = for_data(params_module.load(), TEXT, sample=True)
    texts = pd.read_csv(f"{params.paths.text_sample}/train.csv", dtype=str, keep_default_na=False)[
        "text"
    ].tolist()[: options.texts]
    encoding = of(TEXT)
    backbone = encoding.load(params.backbone)
    device = torch.device("cpu")
    run = inference(params, device)

    def embed_texts(texts: list[str]) -> torch.Tensor:
        """featurize's own pass over `texts`, in their order."""
        rows = pd.DataFrame({"text": texts})
        return torch.cat(list(encoding.outputs(backbone.model, rows, backbone, run, Layout(params.paths))))

    batch = params.featurize.batch_size
    bare = backbone.model.encoder  # the SentenceTransformer itself

    def ours() -> float:
        start = time.perf_counter()
        embed_texts(texts)
        return len(texts) / (time.perf_counter() - start)

    def theirs() -> float:
        start = time.perf_counter()
        bare.encode(texts, batch_size=batch, convert_to_tensor=True, show_progress_bar=False)
        return len(texts) / (time.perf_counter() - start)

    batched = embed_texts(texts[:256])
    alone = []
    with torch.inference_mode():  # each text on its own: a batch of 1, padded to the next multiple of 16
        for text in texts[:256]:
            tokens = backbone.data.tokenize([text])[0]
            ids = torch.zeros((1, padded_length(len(tokens), BUCKET)), dtype=torch.long)
            ids[0, : len(tokens)] = torch.tensor(tokens)
            alone.append(backbone.model(ids)[0])
    identical = sum(torch.equal(a, b) for a, b in zip(batched, alone, strict=True))

    ours(), theirs()  # warm-up
    rates = {"featurize": [], "bare": []}
    for _ in range(2):  # interleaved, so that a busy moment costs both
        rates["featurize"].append(ours())
        rates["bare"].append(theirs())
    encode = {k: max(v) for k, v in rates.items()}

    ids = backbone.data.tokenize(texts)
    model = Classifier(backbone.model, backbone.num_features, 77)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    dataset = TokenizedTexts(ids, [0] * len(ids))
    size = params.finetune.batch_size

    def train_rate(loader: DataLoader) -> float:
        model.train()
        seen, start = 0, None
        for step, (batch_ids, labels) in enumerate(loader):
            if step == 2:
                seen, start = 0, time.perf_counter()  # two warm-up steps
            loss = torch.nn.functional.cross_entropy(model(batch_ids), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(batch_ids)
            if step == options.steps + 1:
                break
        return seen / (time.perf_counter() - start)

    generator = torch.Generator().manual_seed(0)
    grouped = DataLoader(
        dataset,
        batch_sampler=LengthGroupedBatches([len(i) for i in ids], size, generator),
        collate_fn=padder(backbone.data.pad_id),
    )
    shuffled = DataLoader(
        dataset,
        size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=padder(backbone.data.pad_id),
    )
    train = {"length_grouped": train_rate(grouped), "shuffled": train_rate(shuffled)}

    result = save(
        "text",
        {
            "encoder": params.backbone.name,
            "texts": len(texts),
            "batch_size": batch,
            "threads": torch.get_num_threads(),
            "encode_texts_per_s": {k: round(v, 1) for k, v in encode.items()},
            "encode_ratio": round(encode["featurize"] / encode["bare"], 3),
            "embeddings_identical_alone_and_batched": f"{identical} of {len(alone)}",
            "train_batch_size": size,
            "train_texts_per_s": {k: round(v, 1) for k, v in train.items()},
            "train_ratio_grouped_to_shuffled": round(train["length_grouped"] / train["shuffled"], 3),
        },
    )
    print_table(
        f"text ({result['texts']} Banking77 texts, {result['threads']} threads)",
        [
            ("featurize texts/s", f"{encode['featurize']:.0f}", f"bare model {encode['bare']:.0f}"),
            ("featurize / bare", f"{result['encode_ratio']:.3f}", "target >= 0.9"),
            ("identical alone and batched", f"{identical} of {len(alone)}", "expected all"),
            ("train texts/s, grouped", f"{train['length_grouped']:.0f}", f"shuffled {train['shuffled']:.0f}"),
            ("grouped / shuffled", f"{result['train_ratio_grouped_to_shuffled']:.2f}", ""),
        ],
    )


if __name__ == "__main__":
    main()
