"""Text networks are not exported yet; this says why and what to use instead (export.md, the report)."""

NOT_EXPORTED: str | None = (
    "Text models are not exported: the ONNX export covers image networks (a sentence encoder would need its "
    "tokenizer beside the graph). Label new texts with the fine-tuned network: "
    "`python -m reprotune.predict --model models/finetuned <file.csv | file.txt>`.\n"
)
