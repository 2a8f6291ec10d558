"""Which device a stage runs on, and how a batch gets there."""

from __future__ import annotations

import torch

from reprotune.pipeline.errors import InputError


def pick_device(setting: str, key: str) -> torch.device:
    """`auto` is CUDA when visible, else the CPU; `cuda` or `cuda:N` without that GPU visible is an error
    naming `key` (params.yaml's key, or a command's option)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise InputError(f"{key}: {setting!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= visible:
            raise InputError(
                f"{key}: {setting} was asked for but {visible} CUDA device(s) are visible"
                + (f" (cuda:0 to cuda:{visible - 1})" if visible else "")
            )
    elif device.type != "cpu":
        raise InputError(f"{key}: {setting!r} is not a device; use auto, cpu, cuda or cuda:N")
    return device


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return (
        images.contiguous(memory_format=torch.channels_last) if channels_last and images.ndim == 4 else images
    )


def cpu_instruction_sets() -> list[str]:
    """The x86 vector and int8 instruction sets this CPU reports (Linux), which decide the kernels ONNX
    Runtime's int8 and bf16 paths run: avx2, avx512f, avx512_vnni, avx_vnni, amx_int8. Empty elsewhere."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [
                    name
                    for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
                    if name in flags
                ]
    except OSError:
        pass
    return []
