"""The entry point every stage shares: logging, params validation, and how failures reach the user."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

from reprotune.pipeline import data_kind
from reprotune.pipeline import params as params_module
from reprotune.pipeline.errors import InputError
from reprotune.pipeline.layout import Layout
from reprotune.pipeline.params import Params, ParamsError
from reprotune.pipeline.resolve import log_choices, resolve

log = logging.getLogger(__name__)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _refuse(error: ParamsError) -> None:
    for problem in error.problems:
        print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)


def as_run(params: Params) -> Params:
    """params with every `auto` resolved for the data ingest recorded (reprotune/pipeline/resolve.py)."""
    kind = data_kind.read(Layout(params.paths).data_kind)
    resolved = resolve(params, kind)
    log_choices(resolved, kind)
    return resolved


def run(work: Callable[[Params], None], resolved: bool = True) -> None:
    """Validate params.yaml, resolve its `auto`s for the data ingest found (`resolved=False`: ingest, which
    finds it, resolves them itself), then run `work`. Exit 2 on bad params, 1 on bad input, with no
    traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss-cpu's loader says at INFO that it found no separate AVX2 library, which reads like a failure:
    # its one library picks the CPU's instructions itself (faiss.get_compile_options(): "DD AVX2").
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C: temporary outputs are removed and an MLflow run in
    # progress ends as FAILED instead of staying RUNNING.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        params = params_module.load()
        if resolved:
            params = as_run(params)
    except ParamsError as error:
        _refuse(error)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    try:
        work(params)
    except ParamsError as error:
        _refuse(error)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        # Ctrl-C: the `with` blocks have already removed temporaries and failed any MLflow run on the way out.
        print("interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
