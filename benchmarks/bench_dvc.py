"""What DVC itself adds to `dvc repro` at the real data's scale (issue 17): its visits of the
data root's files, with the stages depending on the data folders against the manifests
(stages/manifest.py), and the caching of large outputs.

A data root in the WCPA layout of --images images and then 4x as many (image/, info/ and
68landmarks/ files of random bytes at the synthetic set's sizes: 88, 15 and 0.5 KB; 9 images a
subject) and, for each, two throwaway DVC projects (`dvc init --no-scm`; --keep keeps them) whose
stages have the dependency structure of this project's dvc.yaml on the three folders (read from
it: which folders each stage reads) and a trivial command:
  folders    every stage depends on the folders it reads
  manifest   a manifest stage (stages.manifest.write_manifest on this machine's cores) depends
             on the folders; every other stage on the manifests of the folders it reads
Timed: the first `dvc repro` (DVC hashes every data file once), `dvc repro --force` (every stage
runs again, as after a change to the code they share) and `dvc status` (nothing to run: what
every `dvc repro`, `dvc status` and `dvc exp run` pays before it runs anything). Printed: the
seconds at N and 4N images, the seconds an image at the margin, and that times the real data's
447,185 images (its hours on this machine).

Then one stage that writes --out-mb MB and 4x as much, with DVC's cache link type `copy` (its
default where the file system has no reflinks) and `hardlink`: DVC's seconds a GB to hash the
output and place it in its cache, and what that is for the paper profile's crop store on the
real data (447,185 crops of 256 x 256 x 3 bytes, 88 GB).

    python -m benchmarks.bench_dvc [--images 2000] [--out-mb 256] [--keep /tmp/bench_dvc]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from stages.manifest import FOLDERS
from stages.wcpa.layout import SAMPLE_FILES

REPO = Path(__file__).resolve().parents[1]
REAL_IMAGES = 447_185
CROP_STORE_GB = REAL_IMAGES * 256 * 256 * 3 / 1e9
FILE_BYTES = {"image": 88_000, "info": 15_270, "68landmarks": 544}
ACTIONS, FRAMES = 3, 3


def folder_readers(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, list[str]]:
    """The project's stages but manifest -> the data folders each reads (a foreach stage counted
    once an item), from the manifests they depend on in dvc.yaml."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    readers = {}
    for name, body in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        if name == "manifest":
            continue
        items = body.get("foreach", [None])
        if isinstance(items, str):                       # ${section.key}
            section, key = items.strip("${}").split(".")
            items = params[section][key]
        folders = [f for f in FOLDERS if f"artifacts/manifest/{f}.tsv" in body.get("do", body)["deps"]]
        for item in items:
            readers[name if item is None else f"{name}_{item}"] = folders
    return readers


def make_data(root: Path, images: int) -> None:
    """A data root of `images` images (and their info and landmark files) of random bytes."""
    block = os.urandom(max(FILE_BYTES.values()) + 64)
    for index in range(images):
        subject, rest = divmod(index, ACTIONS * FRAMES)
        action, frame = divmod(rest, FRAMES)
        for folder in FOLDERS:
            path = root / folder / f"{subject:06d}" / f"action{action}" / f"{frame + 1:04d}{SAMPLE_FILES[folder]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            head = index.to_bytes(8, "little")
            path.write_bytes(head + block[len(head):FILE_BYTES[folder]])


def touch_cmd(name: str) -> str:
    return f"{sys.executable} -c \"open('{name}.out', 'w').write('x')\""


def pipeline(data: Path, readers: dict[str, list[str]], manifests: bool) -> dict:
    """dvc.yaml's stages: trivial commands with the readers' dependencies on the data folders,
    directly or through a manifest stage."""
    stages = {}
    if manifests:
        code = (f"import os, sys; sys.path.insert(0, {str(REPO)!r}); from stages.manifest import write_manifest; "
                f"[write_manifest(__import__('pathlib').Path({str(data)!r}) / f, __import__('pathlib').Path(f + '.tsv'), "
                f"os.cpu_count(), {SAMPLE_FILES!r}[f]) for f in {list(FOLDERS)!r}]")
        stages["manifest"] = {"cmd": f"{sys.executable} -c \"{code}\"", "deps": [str(data / f) for f in FOLDERS],
                              "outs": [f"{f}.tsv" for f in FOLDERS]}
    for name, folders in readers.items():
        deps = [f"{f}.tsv" if manifests else str(data / f) for f in folders]
        stages[name] = {"cmd": touch_cmd(name), "deps": deps, "outs": [f"{name}.out"]}
    return {"stages": stages}


def dvc(project: Path, *args: str) -> float:
    """Seconds of `dvc <args>` in project (stops with DVC's output on failure)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if result.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} in {project} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - started


def new_project(path: Path, body: dict, cache_type: str | None = None) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    dvc(path, "init", "--no-scm", "-q")
    if cache_type:
        dvc(path, "config", "cache.type", cache_type)
    (path / "dvc.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def time_pipeline(project: Path) -> dict[str, float]:
    return {"first repro": dvc(project, "repro", "-q"), "repro --force": dvc(project, "repro", "--force", "-q"),
            "status": dvc(project, "status", "-q")}


def data_rows(base: Path, images: int, readers: dict[str, list[str]]) -> list[dict]:
    rows = []
    for count in (images, 4 * images):
        data = base / f"data_{count}"
        if not data.exists():
            make_data(data, count)
        for layout in ("folders", "manifest"):
            project = new_project(base / f"{layout}_{count}", pipeline(data, readers, layout == "manifest"))
            for what, seconds in time_pipeline(project).items():
                rows.append({"layout": layout, "what": what, "images": count, "seconds": seconds})
    return rows


def output_rows(base: Path, megabytes: int) -> list[dict]:
    rows = []
    for cache_type in ("copy", "hardlink"):
        for size in (megabytes, 4 * megabytes):
            code = (f"import os, time; t = time.perf_counter(); f = open('big.bin', 'wb'); "
                    f"[f.write(os.urandom(1 << 20)) for _ in range({size})]; f.close(); "
                    f"open('cmd_seconds', 'w').write(str(time.perf_counter() - t))")
            body = {"stages": {"big": {"cmd": f"{sys.executable} -c \"{code}\"", "outs": ["big.bin"]}}}
            project = new_project(base / f"out_{cache_type}_{size}", body, cache_type)
            seconds = dvc(project, "repro", "-q") - float((project / "cmd_seconds").read_text())
            rows.append({"cache.type": cache_type, "MB": size, "seconds": seconds})
            shutil.rmtree(project)
    return rows


def report(data: list[dict], outputs: list[dict], images: int) -> None:
    print(f"DVC's own time, data root of N = {images} and 4N images ({len(FOLDERS)} files an image), "
          f"this project's dvc.yaml structure:")
    print(f"{'layout':9s} {'what':14s} {'N s':>7s} {'4N s':>7s} {'ms/image':>9s} {'real data, h':>13s}")
    for layout in ("folders", "manifest"):
        for what in ("first repro", "repro --force", "status"):
            at = {r["images"]: r["seconds"] for r in data if r["layout"] == layout and r["what"] == what}
            margin = (at[4 * images] - at[images]) / (3 * images)
            print(f"{layout:9s} {what:14s} {at[images]:7.2f} {at[4 * images]:7.2f} {1e3 * margin:9.3f} "
                  f"{margin * REAL_IMAGES / 3600:13.2f}")
    print("\nDVC's time to hash an output and place it in its cache (repro less the command):")
    for cache_type in ("copy", "hardlink"):
        at = {r["MB"]: r["seconds"] for r in outputs if r["cache.type"] == cache_type}
        small, large = sorted(at)
        per_gb = (at[large] - at[small]) / ((large - small) / 1e3)
        print(f"cache.type {cache_type:8s}: {at[small]:.2f} s at {small} MB, {at[large]:.2f} s at {large} MB: "
              f"{per_gb:.2f} s a GB; the real crop store ({CROP_STORE_GB:.0f} GB) {per_gb * CROP_STORE_GB / 60:.1f} min")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--out-mb", type=int, default=256)
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_dvc"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        readers = folder_readers()
        print(f"stages: {len(readers)}, {sum(map(bool, readers.values()))} reading data folders; folder dependencies: "
              f"{sum(len(f) for f in readers.values())} ({', '.join(f'{f}: {sum(f in r for r in readers.values())}' for f in FOLDERS)})")
        report(data_rows(base, args.images, readers), output_rows(base, args.out_mb), args.images)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
