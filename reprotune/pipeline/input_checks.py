"""The rules a new input must pass, as params.yaml says them: finetune and distill write them into a model's
card, export into the exported model's, distill and adapt apply them to their extra images.

Its own module, read key by key: a stage that imports it depends on these keys of `clean` and no other
(tests/test_seams.py reads which keys each stage's code can read, in every module it imports).
"""

from __future__ import annotations

from reprotune.pipeline.params import InputChecks, Params


def input_checks(params: Params) -> InputChecks:
    """params' InputChecks."""
    clean = params.clean
    return InputChecks.model_construct(  # the values were validated with params.yaml
        formats=clean.formats,
        min_side=clean.min_side,
        max_aspect_ratio=clean.max_aspect_ratio,
        max_pixels=clean.max_pixels,
        background=clean.background,
        max_text_length=clean.max_text_length,
        long_text=clean.long_text,
    )
