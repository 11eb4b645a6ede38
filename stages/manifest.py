"""Stage manifest: the content of the data root's per-image folders, as three small files that
the stages reading those folders depend on instead of the folders themselves.

For each of <data.root>/image, info and 68landmarks it writes artifacts/manifest/<folder>.tsv:
one line a file that a stage may read (`<subject>/<action>/<img_id><the folder's suffix>`, the
path a list row names), `<path relative to the folder>\\t<bytes>\\t<sha256, first 32 hex
digits>`, in the order of a walk that sorts folder and file names. A file's line changes exactly
when its name, size or content does, so a stage that depends on a manifest reruns whenever a file
it may read changes, and a copy of the data elsewhere (other times, other inodes) changes
nothing. Other files (.DS_Store, Thumbs.db, notes) are counted and named in the log, not listed:
a change to one reruns this stage alone, whose outputs stay the same.

Why: DVC checks a folder dependency by visiting every file in it (a stat and a lookup in its
state database), before a stage runs and again when it records it. On the real data (447,185
images, with their info and landmark files) the stages' 16 folder dependencies made each
`dvc repro` and `dvc status` visit some 6 million files; with the manifests DVC visits each file
once, for this stage (docs/benchmarks.md, "DVC on the real data"). The digests are computed on
data.workers threads (hashlib and file reads release the GIL), a chunk of files a job, and the
lines are written as they come: memory stays flat in the number of files.
"""
from __future__ import annotations

import logging
import os
import time
from itertools import islice
from pathlib import Path
from typing import Iterator

from stages.common.identity import range_sha256
from stages.common.io import atomic_dir, save_json
from stages.common.params import Params
from stages.common.stage import stage_main
from stages.common.threads import ordered_thread_map
from stages.wcpa.layout import SAMPLE_FILES, DataError

log = logging.getLogger(__name__)
OUT = Path("artifacts/manifest")
FOLDERS = tuple(SAMPLE_FILES)       # image, info, 68landmarks
DIGEST_CHARS = 32
CHUNK_FILES = 256
IGNORED_NAMED = 5           # files no stage reads, named in the log and metrics


def walk_files(folder: Path) -> Iterator[str]:
    """Every file under `folder` (linked files followed), as a path relative to it with '/'
    separators: each folder's files by name, then its subfolders by name, depth first.

    A symbolic link to a folder below `folder` stops with DataError: DVC does not follow such
    links when it checks the folder, so a change behind one would rerun nothing (`folder` itself
    may be a link)."""
    for current, subfolders, files in os.walk(folder, onerror=_walk_error):
        linked = [name for name in subfolders if os.path.islink(os.path.join(current, name))]
        if linked:
            raise DataError(f"{Path(current) / linked[0]}: a symbolic link to a folder, which DVC does not follow "
                            "(a change behind it would rerun nothing): copy or bind-mount the folder instead")
        subfolders.sort()
        prefix = Path(current).relative_to(folder).as_posix()
        for name in sorted(files):
            yield name if prefix == "." else f"{prefix}/{name}"


def sample_like(name: str, suffix: str) -> bool:
    """Whether `name`, a path relative to a per-image folder, is one a stage may read:
    <subject>/<action>/<img_id><suffix> (stages.wcpa.layout.sample_file of a list row)."""
    return name.count("/") == 2 and name.endswith(suffix)


def sample_names(names: Iterator[str], suffix: str, ignored: list[str]) -> Iterator[str]:
    """The sample_like names of `names`, in order; the others are appended to `ignored`."""
    for name in names:
        if sample_like(name, suffix):
            yield name
        else:
            ignored.append(name)


def _walk_error(err: OSError) -> None:
    raise DataError(f"{err.filename}: cannot list the folder ({err.strerror})")


def file_line(folder: Path, name: str) -> str:
    """The manifest line of folder/name: `name\\tbytes\\tdigest\\n` (DataError: unreadable, or a
    name that a tab-separated line cannot hold)."""
    if "\t" in name or "\n" in name:
        raise DataError(f"{folder / name}: a file name with a tab or a line break")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{ascii(str(folder / name))}: a file name that is not UTF-8 text") from None
    try:
        size = os.stat(folder / name).st_size
        digest = range_sha256(folder / name, 0, size).hex()
    except OSError as err:
        raise DataError(f"{folder / name}: cannot read the file ({err.strerror or err})") from None
    return f"{name}\t{size}\t{digest[:DIGEST_CHARS]}\n"


def file_lines(folder: Path, names: list[str]) -> list[str]:
    """The manifest lines of folder/name for each name."""
    return [file_line(folder, name) for name in names]


def chunk_jobs(folder: Path, suffix: str, ignored: list[str]) -> Iterator[tuple[Path, list[str]]]:
    """(folder, the next CHUNK_FILES sample_like names of its walk) jobs for file_lines (the last
    one shorter); the other names go to `ignored`."""
    names = sample_names(walk_files(folder), suffix, ignored)
    while chunk := list(islice(names, CHUNK_FILES)):
        yield folder, chunk


def write_manifest(folder: Path, out: Path, workers: int, suffix: str) -> dict:
    """Write the manifest of `folder`'s files named `<subject>/<action>/<id><suffix>` to `out`;
    returns their number and bytes, the seconds, and the other files' number and first names."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not found (a folder of the data root that stages read)")
    started, files, size, ignored = time.perf_counter(), 0, 0, []
    with open(out, "w", encoding="utf-8", newline="\n") as handle:
        for lines in ordered_thread_map(file_lines, chunk_jobs(folder, suffix, ignored), workers):
            handle.writelines(lines)
            files += len(lines)
            size += sum(int(line.rsplit("\t", 2)[1]) for line in lines)
    return {"files": files, "bytes": size, "seconds": round(time.perf_counter() - started, 3),
            "ignored": len(ignored), "ignored_first": ignored[:IGNORED_NAMED]}


def run(params: Params) -> dict:
    root = Path(params.data.root)
    metrics = {}
    with atomic_dir(OUT) as tmp:
        for name in FOLDERS:
            metrics[name] = write_manifest(root / name, tmp / f"{name}.tsv", params.data.workers, SAMPLE_FILES[name])
            log.info("manifest %s: %d files, %.1f MB in %.1f s", root / name, metrics[name]["files"],
                     metrics[name]["bytes"] / 1e6, metrics[name]["seconds"])
            if metrics[name]["ignored"]:
                log.warning("%s: %d files no stage reads are not listed (%s)", root / name,
                            metrics[name]["ignored"], ", ".join(metrics[name]["ignored_first"]))
        save_json(tmp / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, errors=(DataError,))


if __name__ == "__main__":
    main()
