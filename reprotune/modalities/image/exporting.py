"""Image networks are exported to ONNX (float32 and int8) by the export stage and served from that file."""

NOT_EXPORTED: str | None = None
