"""The paper's Tables 1-3 beside the grid's experiments (benchmarks/paper_grid.py).

    python -m benchmarks.paper_tables [--json exp_show.json] [--split val|test] [--suffix -paper] [--directions]

Reads `dvc exp show --json` (run here unless --json names a saved copy), takes each named
experiment's headline metrics (artifacts/evaluate/infer/headline.json) and prints every table
of benchmarks/paper_tables.yaml with our figures and the paper's side by side (markdown). An
experiment that has not run (or failed) shows '-'. --directions also prints the paper's claims
(the file's `directions`): for each pair of experiments, the difference of their mean per-sample
error (read from DVC at the experiment's revision) with its paired subject-bootstrap standard error.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import dvc.api
import numpy as np
import pandas as pd
import yaml
from dvc.exceptions import DvcException

from benchmarks.split_noise import KEYS, resampled_sums

SPEC = Path(__file__).with_name("paper_tables.yaml")
HEADLINE = "artifacts/evaluate/infer/headline.json"
ERRORS = "artifacts/evaluate/infer/errors_{split}.csv"


def experiment_metrics(show: list | dict) -> dict[str, dict]:
    """`dvc exp show --json` output -> {experiment name: its headline {split: {key: value}}}.

    Walks the whole document: every entry with a name and metrics of HEADLINE counts (the
    branch entries too, under their names), wherever DVC nests it, but an experiment still
    running: DVC shows it with the metrics of its workspace (data.rev "workspace"), which are
    not yet its own."""
    found: dict[str, dict] = {}
    if isinstance(show, list):
        for item in show:
            found.update(experiment_metrics(item))
    elif isinstance(show, dict):
        data = show.get("data")
        name = show.get("name")
        if name and isinstance(data, dict) and data.get("rev") != "workspace":
            headline = ((data.get("metrics") or {}).get(HEADLINE) or {}).get("data")
            if headline:
                found[name] = headline
        for value in show.values():
            if isinstance(value, (list, dict)):
                found.update(experiment_metrics(value))
    return found


def load_spec(path: Path = SPEC) -> list[dict]:
    """The tables of paper_tables.yaml; stops naming the file when a row's figures do not fit its columns."""
    tables = yaml.safe_load(path.read_text())["tables"]
    for table in tables:
        for row in table["rows"]:
            if "paper" in row and len(row["paper"]) != len(table["columns"]):
                raise SystemExit(f"{path}: {table['title']} / {row['method']}: {len(row['paper'])} paper figures "
                                 f"for {len(table['columns'])} columns")
    return tables


def assemble(table: dict, metrics: dict[str, dict], split: str, suffix: str = "") -> pd.DataFrame:
    """One table: a row per method, columns 'ours <key>' (NaN when its experiment has no
    metrics) and 'paper <key>' (NaN when the paper gives none), plus the experiment's name."""
    rows = []
    for row in table["rows"]:
        name = row.get("experiment")
        ours = metrics.get(f"{name}{suffix}", {}).get(split, {}) if name else {}
        paper = row.get("paper") or [float("nan")] * len(table["columns"])
        rows.append({"method": row["method"], "experiment": f"{name}{suffix}" if name else "-",
                     **{f"ours {c}": ours.get(c, float("nan")) for c in table["columns"]},
                     **{f"paper {c}": p for c, p in zip(table["columns"], paper)}})
    return pd.DataFrame(rows)


def load_directions(path: Path = SPEC) -> list[dict]:
    """The claims of paper_tables.yaml: {claim, better, worse, column} each."""
    return yaml.safe_load(path.read_text()).get("directions", [])


def read_errors(experiment: str, split: str) -> pd.DataFrame | None:
    """An experiment's per-sample errors on `split` (evaluate@infer's CSV at its revision), or
    None when DVC has none (the experiment has not run, or failed)."""
    try:
        with dvc.api.open(ERRORS.format(split=split), rev=experiment) as handle:
            return pd.read_csv(handle, dtype={key: str for key in KEYS})
    except (DvcException, FileNotFoundError):
        return None


def paired_gap(worse: pd.DataFrame, better: pd.DataFrame, column: str, draws: int = 4000,
               seed: int = 0) -> tuple[float, float]:
    """(mean of worse - better in `column` over the samples both scored, its standard error over
    resamplings of whole subjects): positive when `better` is better (errors, lower is better);
    NaN, NaN when they share no scored sample. The error is that of the draw of subjects only: a
    second training seed of either experiment adds its own spread."""
    both = worse[KEYS + [column]].merge(better[KEYS + [column]], on=KEYS, suffixes=("_worse", "_better"),
                                        validate="one_to_one")
    both["gap"] = both[f"{column}_worse"] - both[f"{column}_better"]
    both = both.dropna(subset=["gap"])
    if both.empty:
        return float("nan"), float("nan")
    totals = resampled_sums(both, ["gap"], draws, seed)
    return float(both["gap"].mean()), float((totals[:, 0] / totals[:, 1]).std())


def verdict(gap: float, error: float) -> str:
    """Whether a claim holds, and whether by more than two standard errors."""
    if gap > 0:
        return "holds" if gap > 2 * error else "holds, within 2 s.e."
    return "reversed" if gap < -2 * error else "reversed, within 2 s.e."


def assemble_directions(directions: list[dict], split: str, suffix: str = "", read=read_errors) -> pd.DataFrame:
    """One row per claim: the two experiments, the column, the gap (worse - better, NaN when
    either has not run), its standard error and the verdict."""
    names = {claim[side] + suffix for claim in directions for side in ("better", "worse")}
    tables = {name: read(name, split) for name in sorted(names)}     # each experiment read once
    rows = []
    for claim in directions:
        better, worse = tables[claim["better"] + suffix], tables[claim["worse"] + suffix]
        gap, error = paired_gap(worse, better, claim["column"]) if better is not None and worse is not None \
            else (float("nan"), float("nan"))
        rows.append({"claim": claim["claim"], "better": claim["better"] + suffix, "worse": claim["worse"] + suffix,
                     "column": claim["column"], "gap": gap, "s.e.": error,
                     "verdict": verdict(gap, error) if np.isfinite(gap) else "-"})
    return pd.DataFrame(rows)


def render(title: str, frame: pd.DataFrame) -> str:
    """A markdown table with two decimals and '-' for missing figures."""
    cells = frame.astype(object).where(frame.notna(), "-")
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in cells.itertuples(index=False)]
    return f"{title}\n\n{head}\n" + "\n".join(body)


def read_show(path: str | None) -> list:
    """A saved `dvc exp show --json`, or a fresh one."""
    if path:
        return json.loads(Path(path).read_text())
    done = subprocess.run(["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="saved output of `dvc exp show --json` (default: run it)")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--suffix", default="", help="experiment name suffix of a profile grid, e.g. -paper")
    parser.add_argument("--directions", action="store_true",
                        help="also the paper's claims: paired per-sample gaps with subject-bootstrap errors")
    args = parser.parse_args()
    metrics = experiment_metrics(read_show(args.json))
    for table in load_spec():
        print(render(f"{table['title']} ({args.split})", assemble(table, metrics, args.split, args.suffix)), end="\n\n")
    if args.directions:
        frame = assemble_directions(load_directions(), args.split, args.suffix)
        print(render(f"The paper's directions ({args.split}; gap = worse - better, mm; s.e.: the draw of "
                     "subjects, not the training seed)", frame))


if __name__ == "__main__":
    main()
