"""The entry of every stage module: `python -m stages.<name> [--params FILE] [its own options]`.

Each stage module defines `run(params, **options)` (what tests and benchmarks call) and
`main(argv=None)`, which is `stage_main(__doc__, run, ...)`: one command line, one log format and
the stage's wall time in its log.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Callable

from stages.common.params import PARAMS_FILE, load_params

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("stage")


def stage_name(run: Callable[..., Any]) -> str:
    """The stage a run function belongs to: its module's last name, read from the module's spec
    when it runs as `python -m stages.<name>` (its __name__ is then __main__)."""
    module = sys.modules.get(run.__module__)
    spec = getattr(module, "__spec__", None)
    return (spec.name if spec is not None else run.__module__).rpartition(".")[2]


def finish_distributed() -> None:
    """Under torchrun, after a stage's run: every process waits for the others (rank 0 writes the
    outputs after the last collective; with nccl on a gloo group, whose waiters do not spin a core
    as nccl's do) and leaves the process group, so that none exits while another still needs it.
    Nothing when no process group was started (torch.distributed then need not even be imported)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        host = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None   # its waiters sleep
        dist.barrier(group=host)
        dist.destroy_process_group()


def setup_logging() -> None:
    """INFO and above to stderr in LOG_FORMAT."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def stage_main(doc: str, run: Callable[..., Any], options: Callable[[argparse.ArgumentParser], Any] | None = None,
               argv: list[str] | None = None, errors: tuple[type[Exception], ...] = ()) -> None:
    """Parse --params FILE and the options `options` adds to the parser (argv None: the command
    line), set up logging, load and check the params, call run(params, **the options) and log the
    metrics it returns (a dict; per-epoch histories, lists, left out) and the wall time. doc: the module's docstring (its first line is the --help description); errors: the
    exception types that stop with '<stage>: <message>' instead of a traceback."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_FILE), help="params file (default params.yaml)")
    if options is not None:
        options(parser)
    args = vars(parser.parse_args(argv))
    setup_logging()
    name = stage_name(run)
    started = time.perf_counter()
    try:
        result = run(load_params(args.pop("params")), **args)
    except errors as err:
        raise SystemExit(f"{name}: {err}") from None
    finish_distributed()
    if isinstance(result, dict) and result:
        log.info("%s metrics: %s", name, {key: value for key, value in result.items() if not isinstance(value, list)})
    log.info("%s done in %.1f s", name, time.perf_counter() - started)
