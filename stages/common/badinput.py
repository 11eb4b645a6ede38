"""Skipping bad samples on request: collect them, list them in skipped.csv, fail past a fraction.

Without data.skip_bad a bad sample stops the stage (its DataError propagates). With it, the
sample is recorded (key, file, reason; once per key, whichever of its files failed first) and
the stage goes on; at the end `finish` writes skipped.csv beside the stage's outputs and raises
when more than data.max_bad_fraction of the samples were bad. A failing stage's outputs are
thrown away with their temporary folder, so its list is then written beside the output folder,
as <output>.skipped.csv (artifacts/crop.skipped.csv), where the message points. Usage:

    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    for row in table.itertuples(index=False):
        with bad.guard(sample_key(row)):
            results.append(process(row))
    bad.finish(out_dir, total=len(table))
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Set as AbstractSet
from pathlib import Path

import pandas as pd

from stages.common.io import atomic_target, atomic_write
from stages.wcpa.layout import DataError

log = logging.getLogger(__name__)
SKIPPED_FILE = "skipped.csv"
SKIPPED_COLUMNS = ["key", "file", "reason"]


class TooManyBadInputs(DataError):
    """More samples were bad than data.max_bad_fraction allows."""


def split_message(err: Exception) -> tuple[str, str]:
    """A DataError message 'path: problem' -> (path, problem); ('', message) without a path."""
    file, sep, reason = str(err).partition(": ")
    return (file, reason) if sep else ("", str(err))


class BadInputs:
    """The skipped samples of one stage run: (sample key, file, reason) records."""

    def __init__(self, skip: bool, max_fraction: float):
        self.skip = skip
        self.max_fraction = max_fraction
        self.records: list[dict[str, str]] = []
        self._keys: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def keys(self) -> AbstractSet[str]:
        """Keys of the skipped samples, read-only (kept beside the records: with 10 % of the real
        data bad, a set rebuilt at each call took a stage's checks a minute)."""
        return self._keys

    def add(self, key: str, file: str, reason: str) -> None:
        """Record one skipped sample (key: 'subject/action/img'; file: the offending path), once:
        a sample whose image and info file both fail counts as one bad sample."""
        if key in self._keys:
            log.debug("%s already skipped; also %s: %s", key, file, reason)
            return
        self._keys.add(key)
        self.records.append({"key": key, "file": str(file), "reason": reason})
        log.warning("skipping %s: %s: %s", key, file, reason)

    def merge(self, records: list[dict[str, str]], source: str) -> int:
        """Add the records (key, file, reason) found and logged elsewhere (another process, an
        earlier run: `source` names it) whose key is not held yet -> how many were new. One line
        says how many, where a warning each would repeat every record once more in each process."""
        before = len(self.records)
        for record in records:
            if record["key"] not in self._keys:
                self._keys.add(record["key"])
                self.records.append({"key": record["key"], "file": str(record["file"]), "reason": record["reason"]})
        if len(self.records) > before:
            log.info("%d skipped samples taken from %s", len(self.records) - before, source)
        return len(self.records) - before

    def add_error(self, key: str, err: Exception) -> None:
        """Record a sample from its DataError (e.g. one returned by a worker process)."""
        self.add(key, *split_message(err))

    @contextlib.contextmanager
    def guard(self, key: str) -> Iterator[None]:
        """Run a sample's block: a DataError is recorded when skipping, re-raised otherwise."""
        try:
            yield
        except DataError as err:
            if not self.skip:
                raise
            self.add_error(key, err)

    def finish(self, out_dir: Path | str, total: int) -> Path:
        """Write out_dir/skipped.csv (header only when none), or raise past max_fraction after
        writing the list where it outlives the failed run (failure_list_path)."""
        out_dir = Path(out_dir)
        failed = bool(total) and len(self) / total > self.max_fraction
        failure_list = failure_list_path(out_dir)
        path = failure_list if failed else out_dir / SKIPPED_FILE
        self.write(path)
        if not failed and failure_list != path:
            failure_list.unlink(missing_ok=True)      # the list of an earlier failed run
        if self.records:
            log.warning("%d of %d samples skipped as bad input, listed in %s", len(self), total,
                        path if failed else atomic_target(out_dir) / SKIPPED_FILE)
        if failed:
            first = "; ".join(f"{r['file']}: {r['reason']}" for r in self.records[:3])
            raise TooManyBadInputs(f"{path}: {len(self)} of {total} samples are bad, more than "
                                   f"data.max_bad_fraction = {self.max_fraction:g} (first: {first})")
        return path

    def write(self, path: Path) -> None:
        """The records as a CSV (key, file, reason), header only when none."""
        with atomic_write(path) as tmp:
            pd.DataFrame(self.records, columns=SKIPPED_COLUMNS).to_csv(tmp, index=False)


def failure_list_path(out_dir: Path) -> Path:
    """Where a failed run's skip list survives: beside the output folder that an atomic_dir
    temporary `out_dir` stands for (<output>.skipped.csv); inside a folder that persists."""
    target = atomic_target(out_dir)
    return out_dir / SKIPPED_FILE if target == out_dir else target.with_name(f"{target.name}.{SKIPPED_FILE}")
