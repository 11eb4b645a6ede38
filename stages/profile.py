"""Switch params.yaml to a named profile: `python -m stages.profile paper`.

A profile (stages/profiles/<name>.yaml) lists only the keys that differ from the demo defaults,
or, with a top-level `base: <profile>`, from that profile (applied first: `gpu` is `paper` on
one 80 GB GPU and 16 cores); they are written over the current params.yaml, keeping its comments. `git checkout params.yaml`
returns to the demo profile.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ruamel.yaml import YAML

from stages.common.io import atomic_write
from stages.common.params import PARAMS_FILE, ParamsError, check_params, load_params
from stages.common.stage import setup_logging

PROFILES = Path(__file__).parent / "profiles"
log = logging.getLogger("profile")


def merge(target, overrides, where: str = "") -> None:
    """Write `overrides` (nested mapping) into `target` in place; unknown keys are an error."""
    for key, value in overrides.items():
        name = f"{where}{key}"
        if key not in target:
            raise ParamsError(f"profile sets unknown key {name}")
        if isinstance(value, dict):
            merge(target[key], value, f"{name}.")
        else:
            target[key] = value


def profile_file(name: str) -> Path:
    """stages/profiles/<name>.yaml; a clear stop when there is no such profile."""
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise SystemExit(f"{path}: no such profile (known: {known})")
    return path


def merge_profile(params, name: str, yaml: YAML, seen: tuple[str, ...] = ()) -> None:
    """Merge profile `name` into `params` in place, its `base` profile first (a cycle stops)."""
    if name in seen:
        raise ParamsError(f"profile {name} is its own base ({' -> '.join(seen + (name,))})")
    overrides = yaml.load(profile_file(name).read_text()) or {}
    base = overrides.pop("base", None)
    if base is not None:
        merge_profile(params, base, yaml, seen + (name,))
    merge(params, overrides)


def apply_profile(name: str, params_file: Path) -> None:
    """Merge stages/profiles/<name>.yaml (after its base) into `params_file` and validate the result."""
    yaml = YAML()
    params = yaml.load(params_file.read_text())
    merge_profile(params, name, yaml)
    with atomic_write(params_file) as tmp:
        with open(tmp, "w") as handle:
            yaml.dump(params, handle)
        load_params(tmp)
    log.info("%s now holds profile '%s'", params_file, name)


def profile_params(name: str, params_file: Path = PARAMS_FILE) -> dict:
    """The params of `params_file` with profile `name` merged in, validated, without writing
    anything (benchmarks measure another profile this way)."""
    yaml = YAML(typ="safe")
    params = yaml.load(Path(params_file).read_text())
    merge_profile(params, name, yaml)
    return check_params(params, f"{params_file} + {profile_file(name)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="profile name, e.g. paper")
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args()
    setup_logging()
    apply_profile(args.name, args.params)


if __name__ == "__main__":
    main()
