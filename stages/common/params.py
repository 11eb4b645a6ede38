"""Load params.yaml, check it against the schema and coerce its types.

`dvc exp run -S key=value` may rewrite 1.0 as 1 or 1e-4 as a string; every value is coerced
to the type the schema gives, and an unknown or missing key stops with a message naming it, as
does a value outside its Range or Choice ("params.yaml: train.epochs = 0: must be >= 1").
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from stages.common.schema import AUTO, SCHEMA, Choice, OrAuto, Range

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml does not match the schema."""


def _check_range(value: float, bounds: Range, where: str) -> float:
    """Stop unless `value` lies within `bounds`."""
    low_ok = bounds.low is None or (value > bounds.low if bounds.open else value >= bounds.low)
    high_ok = bounds.high is None or (value < bounds.high if bounds.open else value <= bounds.high)
    if not (low_ok and high_ok):
        low, high = (">", "<") if bounds.open else (">=", "<=")
        limits = [f"{sign} {limit:g}" for sign, limit in ((low, bounds.low), (high, bounds.high)) if limit is not None]
        raise ParamsError(f"{where} = {value!r}: must be {' and '.join(limits)}")
    return value


def _check_choice(value: Any, choice: Choice, where: str) -> Any:
    """Stop unless `value` is one of the choice's values."""
    if value not in choice.values:
        raise ParamsError(f"{where} = {value!r}: must be one of {', '.join(map(str, choice.values))}")
    return value


def _coerce_or_auto(value: Any, kind: Any, where: str) -> Any:
    """`value` coerced to `kind`; a message that names `auto` too when it is neither."""
    try:
        return _coerce(value, kind, where)
    except ParamsError as err:
        raise ParamsError(f"{err} (or {AUTO!r})") from None


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Coerce one value to `kind` (a type, a (type, None) optional pair, [type] list, Range, Choice
    or OrAuto)."""
    if isinstance(kind, OrAuto):
        return AUTO if value == AUTO else _coerce_or_auto(value, kind.kind, where)
    if isinstance(kind, Range):
        return _check_range(_coerce(value, kind.kind, where), kind, where)
    if isinstance(kind, Choice):
        return _check_choice(_coerce(value, kind.kind, where), kind, where)
    if isinstance(kind, tuple):
        return None if value is None else _coerce(value, kind[0], where)
    if isinstance(kind, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, kind[0], f"{where}[{i}]") for i, v in enumerate(value)]
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise TypeError
        if kind is int:
            number = float(value)
            if number != int(number) or isinstance(value, bool):
                raise TypeError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        raise ParamsError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    raise ParamsError(f"{where}: schema type {kind!r} is not supported")


def _check_section(name: str, raw: Any, schema: Any, source: Path) -> Any:
    """Validate one section (a dict of leaves, or a bare leaf like `seed`)."""
    if not isinstance(schema, dict):
        return _coerce(raw, schema, f"{source}: {name}")
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: section '{name}' must be a mapping")
    unknown = sorted(set(raw) - set(schema))
    missing = sorted(set(schema) - set(raw))
    if unknown:
        raise ParamsError(f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}")
    if missing:
        raise ParamsError(f"{source}: missing key(s) {', '.join(f'{name}.{k}' for k in missing)}")
    return {k: _coerce(raw[k], schema[k], f"{source}: {name}.{k}") for k in schema}


def load_params(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """Read and validate the whole params file; returns {section: {key: value}}."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return check_params(raw, path)


def check_params(raw: Any, source: Path | str) -> dict[str, Any]:
    """Validate and coerce a parsed params mapping; `source` names it in the messages."""
    path = Path(source)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ParamsError(f"{path}: unknown section(s) {', '.join(unknown)}")
    missing = sorted(set(SCHEMA) - set(raw))
    if missing:
        raise ParamsError(f"{path}: missing section(s) {', '.join(missing)}")
    params = {name: _check_section(name, raw[name], SCHEMA[name], path) for name in SCHEMA}
    _check_detector(params["crop"], path)
    _check_pose_head(params, path)
    return params


def _check_pose_head(params: dict[str, Any], path: Path) -> None:
    """The direct 6DoF head has no finetune stage (EPro-PnP needs landmarks): infer reads train's model."""
    if params["train"]["pose_head"] == "direct6dof" and params["infer"]["checkpoint"] != "train":
        raise ParamsError(f"{path}: train.pose_head is direct6dof: set infer.checkpoint: train (finetune needs "
                          "the PnP head), e.g. dvc exp run -S train.pose_head=direct6dof -S infer.checkpoint=train "
                          "evaluate@infer submit@infer")


def _check_detector(crop: dict[str, Any], path: Path) -> None:
    """crop.detector (the list dvc.yaml builds the coarse stages from) must match crop.source."""
    wanted = [] if crop["source"] == "given68" else ["coarse"]
    if crop["detector"] != wanted:
        shown = f"[{', '.join(wanted)}]"
        raise ParamsError(f"{path}: crop.source is {crop['source']}: set crop.detector: {shown} "
                          f"(it is {crop['detector']}); dvc.yaml builds coarse_train and coarse_predict "
                          f"from it, e.g. dvc exp run -S crop.source={crop['source']} -S 'crop.detector={shown}'")


def apply_overrides(params: dict[str, Any], assignments: list[str]) -> None:
    """Apply `section.key=value` (or `seed=value`) assignments in place, each value read as
    YAML (as `dvc exp run -S` does) and coerced to the schema's type."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        name, _, leaf = key.partition(".")
        schema = SCHEMA.get(name)
        known = leaf in schema if isinstance(schema, dict) else (schema is not None and not leaf)
        if not (sep and known):
            raise ParamsError(f"--set {assignment!r}: expected key=value with a key of params.yaml, e.g. train.epochs=3")
        try:
            raw = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ParamsError(f"--set {assignment!r}: not a YAML value: {err}") from None
        if leaf:
            params[name][leaf] = _coerce(raw, schema[leaf], f"--set {key}")
        else:
            params[name] = _coerce(raw, schema, f"--set {key}")


def section(params: dict[str, Any], name: str) -> SimpleNamespace:
    """One section as attribute access: section(p, 'train').epochs."""
    return SimpleNamespace(**params[name])
