"""The entry point every stage shares: logging, params validation, and how failures reach the user."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

from reprotune import params as params_module
from reprotune.errors import InputError
from reprotune.layout import Layout, as_run
from reprotune.params import Params, ParamsError

log = logging.getLogger(__name__)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(work: Callable[[Params], None]) -> None:
    """Validate params.yaml, then run `work`. Exit 2 on bad params, 1 on bad input, with no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C: temporary outputs are removed and an MLflow run in
    # progress ends as FAILED instead of staying RUNNING.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        params = params_module.load()
    except ParamsError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    running = as_run(params)
    if running is not params:  # text, or the built-in image sample: their own values apply
        text = Layout(params.paths).modality == "text"
        log.info(
            "%s: %s (params.yaml's %s section)",
            "text" if text else "built-in sample",
            running.text_settings() if text else running.sample_settings(),
            "text" if text else "sample",
        )
    params = running
    try:
        work(params)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        # Ctrl-C: the `with` blocks have already removed temporaries and failed any MLflow run on the way out.
        print("interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
