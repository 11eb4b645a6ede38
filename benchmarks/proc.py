"""Shared by the benchmarks that run a stage in a child process (bench_data, bench_scale): the
child's own peak resident memory, its worker processes' and the call that starts it."""
from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_kb() -> int:
    """VmHWM of /proc/self/status: this process's own peak resident set in KiB (ru_maxrss keeps
    the forking parent's across exec)."""
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(line.split()[1])


def workers_peak_kb() -> int:
    """The largest peak resident set in KiB of this process's finished child processes (loader
    workers, joblib's loky workers: the reusable pool is shut down first, so that its workers are
    waited for), as /usr/bin/time -v counts a process tree; 0 without children."""
    from joblib.externals.loky import get_reusable_executor
    gc.collect()                         # loader iterators left for the collector shut their workers
    get_reusable_executor().shutdown(wait=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def run_child(code: str, name: str, settings: dict, cwd: Path = REPO) -> dict:
    """Run `code` (python -c) with json(settings) as argv[1] in `cwd`, the repository importable;
    returns the JSON object its last stdout line holds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code, json.dumps(settings)],
                            capture_output=True, text=True, cwd=cwd, env=env)
    if result.returncode:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
