"""Whether an exported int8 file still computes, on this machine, what export accepted.

int8 kernels differ between CPUs: with uint8 x int8 weights, x86 CPUs without VNNI (AVX2, AVX-512 without
VNNI) add pairs of products in 16 bits and can saturate, so the same file that agreed with torch on the
exporting machine can lose points on another (ONNX Runtime's quantization docs). Integer arithmetic is
otherwise exact, so a CPU whose kernels do not saturate gives the int8 file's logits again up to float
rounding in the (de)quantizing steps.

export accepted the int8 file after measuring its agreement with torch on val and test on the exporting
machine, and stores a sample of validation inputs beside the files (`int8_check.npz`: the inputs, torch's
logits and the int8 file's logits there). Before predict or the served model use int8, they run it on the
sample here: where its logits are the exporting machine's within TOLERANCE (relative to their largest
magnitude), the int8 file computes here what was measured there, and export's agreement holds; otherwise
they use the float32 file and log a WARNING saying why (with the sample's top-1 agreement with torch).
Comparing logits, not only top-1 on a few rows, catches a saturating CPU from 32 rows without failing on
a near-tie the exporting machine also had. The answer is kept per file, CPU and ONNX
Runtime version in the user's cache folder (`~/.cache/reprotune/int8_checks.json`), so the check runs once
per machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path

import numpy as np

from reprotune.pipeline.errors import InputError

log = logging.getLogger(__name__)

CHECK_FILE = "int8_check.npz"
SAMPLE_ROWS = 32  # validation rows stored (float16 images: about 9.6 MB at 224 px, 3 MB at 128)
TOLERANCE = 0.01  # largest logit difference from the exporting machine's int8, over the largest |logit|


def as_stored(batch: np.ndarray) -> np.ndarray:
    """A batch as the sample file gives it back: float images rounded through float16 (half the size).
    Both logits export records are of these rounded inputs: int8 activations land on other quantization
    steps for inputs a float16 rounding apart (4.5% of the logits' scale on the sample)."""
    return batch.astype(np.float16).astype(np.float32) if batch.dtype.kind == "f" else batch


def write_sample(
    path: Path, batches: list[np.ndarray], torch_logits: np.ndarray, int8_logits: np.ndarray
) -> None:
    """The check's sample: the input batches (as_stored), torch's logits and the int8 file's on this
    machine."""
    arrays = {
        f"input_{i}": batch.astype(np.float16) if batch.dtype.kind == "f" else batch
        for i, batch in enumerate(batches)
    }
    np.savez_compressed(path, torch_logits=torch_logits, int8_logits=int8_logits, **arrays)


def sample_inputs(path: Path) -> list[np.ndarray]:
    with np.load(path) as stored:
        count = sum(1 for name in stored.files if name.startswith("input_"))
        return [as_stored(stored[f"input_{i}"]) for i in range(count)]


def run(model, inputs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([model.logits(batch) for batch in inputs])


def verdict(path: Path, int8_logits_here: np.ndarray) -> str:
    """'' when the int8 logits computed here are the exporting machine's (see the module's docstring), else
    why not."""
    with np.load(path) as stored:
        expected, reference = stored["int8_logits"], stored["torch_logits"]
    scale = max(float(np.abs(expected).max()), 1e-6)
    difference = float(np.abs(int8_logits_here - expected).max()) / scale
    if difference <= TOLERANCE:
        return ""
    agreement = float((int8_logits_here.argmax(1) == reference.argmax(1)).mean())
    return (
        f"on this CPU the int8 file's logits differ from the exporting machine's by {difference:.3f} of their "
        f"scale (allowed {TOLERANCE}; its top-1 agrees with torch on {agreement:.3f} of {len(expected)} "
        "validation rows), so export's agreement check does not hold here"
    )


def machine() -> str:
    """This CPU and ONNX Runtime, as far as int8 kernels can tell them apart."""
    import onnxruntime

    from reprotune.training.devices import cpu_instruction_sets

    model_name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sets = " ".join(cpu_instruction_sets())
    return f"{platform.machine()} {model_name or platform.processor()} [{sets}] ort {onnxruntime.__version__}"


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reprotune" / "int8_checks.json"


def cached(key: str) -> str | None:
    try:
        return json.loads(cache_file().read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None


def remember(key: str, why: str) -> None:
    """Keep the answer; a cache folder that cannot be written only means checking again next time."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            answers = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            answers = {}
        answers[key] = why
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(answers, indent=1), encoding="utf-8")
        temporary.replace(path)
    except OSError as error:
        log.info("int8 check not cached (%s)", error)


def int8_holds(int8: Path, check: Path) -> str:
    """'' when the int8 file passes on this machine (checked once per machine), else why not."""
    from reprotune.serving.onnx_models import OnnxClassifier

    digest = hashlib.sha256(int8.read_bytes() + check.read_bytes()).hexdigest()
    key = f"{digest} {machine()}"
    answer = cached(key)
    if answer is None:
        answer = verdict(check, run(OnnxClassifier(int8), sample_inputs(check)))
        remember(key, answer)
    return answer


def chosen_file(folder: Path, card, precision: str = "auto") -> Path:
    """The file to run from an exported folder (`card`: its ModelCard): `auto` the int8 file where export
    shipped one and it passes its check on this machine, else the float32 one with a WARNING saying why;
    `fp32` the float32 file; `int8` the int8 file, refused when there is none or it fails its check."""
    fp32 = folder / "model.onnx"
    if precision == "fp32":
        return fp32
    if not card.int8.get("file"):
        if precision == "int8":
            raise InputError(f"{folder}: has no int8 file ({card.int8.get('why') or 'export shipped none'})")
        return fp32
    int8 = folder / card.int8["file"]
    check = folder / card.int8.get("check", CHECK_FILE)
    why = int8_holds(int8, check) if check.is_file() else f"no {check.name} beside it to check it on this CPU"
    if not why:
        return int8
    if precision == "int8":
        raise InputError(f"{int8}: {why}; use the float32 file (precision fp32)")
    log.warning("%s not used: %s; running %s instead", int8.name, why, fp32.name)
    return fp32
