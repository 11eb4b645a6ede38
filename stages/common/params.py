"""params.yaml as one typed, frozen object generated from the schema (stages/common/schema.py).

Every section of SCHEMA becomes a frozen dataclass (DataParams, TrainParams, ...) with a field
per key, annotated from the key's kind: int, float, bool, str, list[...], Optional[...],
Literal[...] for a Choice and `int | Literal['auto']` for an OrAuto. Params has one attribute per
section or top-level value, so configuration is read one way everywhere: params.train.epochs,
params.data.root, params.seed. The section `lambda` (a Python keyword) is the attribute
`lambda_`; its YAML key and `dvc exp run -S lambda.pnp=2` stay.

All validation happens where the objects are made from data: load_params, check_params,
check_section, Params.replace and apply_overrides. `dvc exp run -S key=value` may rewrite 1.0 as
1 or 1e-4 as a string, so every value is coerced to the type the schema gives; an unknown or
missing key stops with a message naming it, as does a value outside its Range or Choice
("params.yaml: train.epochs = 0: must be >= 1") or keys that disagree (crop.detector with
crop.source, train.pose_head with infer.checkpoint). dataclasses.replace on a section copies it
with values the caller vouches for (finetuning's train section with finetune's own values).

params.as_dict() is the YAML-shaped plain data ({section: {key: value}}, the schema's order) for
what needs plain data: fingerprints, the params saved in checkpoints, params files.
"""
from __future__ import annotations

import copy
import dataclasses
import keyword
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import yaml

from stages.common.schema import AUTO, SCHEMA, SPEED_KEYS, Choice, OrAuto, Range

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
    if bounds.multiple is not None and value % bounds.multiple:
        raise ParamsError(f"{where} = {value!r}: must be a multiple of {bounds.multiple}")
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


def annotation(kind: Any) -> Any:
    """The Python type of a schema kind: int, float, bool, str, list[...], Optional[...],
    Literal[...] (Choice), Union[..., Literal['auto']] (OrAuto)."""
    if isinstance(kind, OrAuto):
        return Union[annotation(kind.kind), Literal[AUTO]]
    if isinstance(kind, Range):
        return kind.kind
    if isinstance(kind, Choice):
        return Literal[kind.values]
    if isinstance(kind, tuple):
        return Optional[annotation(kind[0])]
    if isinstance(kind, list):
        return list[annotation(kind[0])]
    return kind


def attribute(key: str) -> str:
    """The Params attribute of a top-level key of params.yaml: the key, or key_ for a Python
    keyword (lambda -> lambda_)."""
    return f"{key}_" if keyword.iskeyword(key) else key


class Section:
    """Base of the generated section classes."""

    def as_dict(self) -> dict[str, Any]:
        """{key: value} in the schema's order (lists copied)."""
        return {field.name: copy.copy(getattr(self, field.name)) for field in dataclasses.fields(self)}


def _section_class(name: str, keys: dict[str, Any]) -> type:
    """The frozen dataclass of section `name` (e.g. coarse_train -> CoarseTrainParams)."""
    title = "".join(part.capitalize() for part in name.split("_")) + "Params"
    cls = dataclasses.make_dataclass(title, [(key, annotation(kind)) for key, kind in keys.items()],
                                     bases=(Section,), frozen=True, namespace={"__module__": __name__})
    cls.__doc__ = f"params.yaml section `{name}` (stages/common/schema.py)."
    return cls


SECTIONS: dict[str, type] = {name: _section_class(name, keys) for name, keys in SCHEMA.items()
                             if isinstance(keys, dict)}
(DataParams, LambdaParams, SynthParams, SplitParams, CoarseTrainParams, CoarsePredictParams, CropParams, SubmitParams,
 EvaluateParams, PcaParams, TrainParams, FinetuneParams, InferParams) = (
    SECTIONS[name] for name in ("data", "lambda", "synth", "split", "coarse_train", "coarse_predict", "crop", "submit",
                                "evaluate", "pca", "train", "finetune", "infer"))


class ParamsBase:
    """Base of Params."""

    def as_dict(self) -> dict[str, Any]:
        """The YAML-shaped plain data: {key: value} for top-level values, {section: {key: value}}
        for sections, in the schema's order (the keys of params.yaml: `lambda`, not `lambda_`)."""
        out = {}
        for key in SCHEMA:
            value = getattr(self, attribute(key))
            out[key] = value.as_dict() if isinstance(value, Section) else copy.copy(value)
        return out

    def replace(self, **changes: Any) -> "Params":
        """A new Params, validated as at load, with `changes` by attribute: a section takes a
        mapping of some of its keys (or a whole section object), a top-level value its value:
        params.replace(train={"epochs": 2, "lr": 1e-3}, lambda_={"pnp": 2.5}, seed=3)."""
        raw = self.as_dict()
        keys = {attribute(key): key for key in SCHEMA}
        for name, value in changes.items():
            if name not in keys:
                raise ParamsError(f"replace: {name!r} is no attribute of Params ({', '.join(keys)})")
            key = keys[name]
            if key in SECTIONS:
                value = value.as_dict() if isinstance(value, Section) else dict(value)
                unknown = sorted(set(value) - set(SCHEMA[key]))
                if unknown:
                    raise ParamsError(f"replace: unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}")
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        return check_params(raw, "replace")


Params = dataclasses.make_dataclass(
    "Params", [(attribute(key), SECTIONS.get(key) or annotation(kind)) for key, kind in SCHEMA.items()],
    bases=(ParamsBase,), frozen=True, namespace={"__module__": __name__})
Params.__doc__ = "The whole of params.yaml, typed: one attribute per section or top-level value (module doc)."


def check_section(name: str, raw: Any, source: Path | str) -> Section:
    """Validate one section's mapping (e.g. the train params saved in a checkpoint) -> its
    section object; `source` names it in the messages."""
    keys = SCHEMA[name]
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: section '{name}' must be a mapping")
    unknown, missing = sorted(set(raw) - set(keys)), sorted(set(keys) - set(raw))
    if unknown:
        raise ParamsError(f"{source}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}")
    if missing:
        raise ParamsError(f"{source}: missing key(s) {', '.join(f'{name}.{k}' for k in missing)}")
    return SECTIONS[name](**{key: _coerce(raw[key], kind, f"{source}: {name}.{key}") for key, kind in keys.items()})


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate the whole params file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return check_params(raw, path)


def check_params(raw: Any, source: Path | str) -> Params:
    """Validate and coerce a parsed params mapping ({section: {key: value}}, as in params.yaml)
    -> Params; `source` names it in the messages."""
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: top level must be a mapping of sections")
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ParamsError(f"{source}: unknown section(s) {', '.join(unknown)}")
    missing = sorted(set(SCHEMA) - set(raw))
    if missing:
        raise ParamsError(f"{source}: missing section(s) {', '.join(missing)}")
    params = Params(**{attribute(key): check_section(key, raw[key], source) if key in SECTIONS
                       else _coerce(raw[key], kind, f"{source}: {key}") for key, kind in SCHEMA.items()})
    for check in (_check_detector, _check_pose_head, _check_batches, _check_cuda_graph):
        problem = check(params)
        if problem:
            raise ParamsError(f"{source}: {problem}")
    return params


def _check_pose_head(params: Params) -> str:
    """The direct 6DoF head has no finetune stage (EPro-PnP needs landmarks): infer reads train's
    model. Returns the problem ('' when none)."""
    if params.train.pose_head == "direct6dof" and params.infer.checkpoint != "train":
        return ("train.pose_head is direct6dof: set infer.checkpoint: train (finetune needs the PnP head), "
                "e.g. dvc exp run -S train.pose_head=direct6dof -S infer.checkpoint=train evaluate@infer submit@infer")
    return ""


def _check_batches(params: Params) -> str:
    """train's and finetune's batch_size is the global batch, split evenly over the `gpus`
    processes: it must be a multiple of gpus. Returns the problem ('' when none)."""
    for name in ("train", "finetune"):
        size = getattr(params, name).batch_size
        if size % params.gpus:
            return (f"{name}.batch_size ({size}) is not a multiple of gpus ({params.gpus}): each process takes "
                    f"an equal share of the global batch")
    return ""


def _check_cuda_graph(params: Params) -> str:
    """finetune.cuda_graph captures the compiled PnP layer: eager code reads device values on the
    host, which a CUDA graph cannot hold. Returns the problem ('' when none)."""
    if params.finetune.cuda_graph and not params.finetune.compile:
        return ("finetune.cuda_graph is true but finetune.compile is false: the CUDA graphs capture the compiled "
                "PnP layer (the eager one reads device values on the host); set finetune.compile: true")
    return ""


def _check_detector(params: Params) -> str:
    """crop.detector (the list dvc.yaml builds the coarse stages from) must match crop.source.
    Returns the problem ('' when none)."""
    crop = params.crop
    wanted = [] if crop.source == "given68" else ["coarse"]
    if crop.detector == wanted:
        return ""
    shown = f"[{', '.join(wanted)}]"
    return (f"crop.source is {crop.source}: set crop.detector: {shown} (it is {crop.detector}); dvc.yaml builds "
            f"coarse_train and coarse_predict from it, e.g. dvc exp run -S crop.source={crop.source} "
            f"-S 'crop.detector={shown}'")


def without_speed_keys(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of `section` in `values` that change what a stage makes: SPEED_KEYS left out
    (for the identities that decide what a resumed run may reuse)."""
    return {key: value for key, value in values.items() if f"{section}.{key}" not in SPEED_KEYS}


def apply_overrides(params: Params, assignments: list[str]) -> Params:
    """A new Params with `section.key=value` (or `seed=value`) assignments applied, each value read
    as YAML (as `dvc exp run -S` does) and coerced to the schema's type; the result is checked
    as a whole (keys that must agree may be set together)."""
    raw = params.as_dict()
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        name, _, leaf = key.partition(".")
        schema = SCHEMA.get(name)
        known = leaf in schema if isinstance(schema, dict) else (schema is not None and not leaf)
        if not (sep and known):
            raise ParamsError(f"--set {assignment!r}: expected key=value with a key of params.yaml, e.g. train.epochs=3")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ParamsError(f"--set {assignment!r}: not a YAML value: {err}") from None
        if leaf:
            raw[name][leaf] = _coerce(parsed, schema[leaf], f"--set {key}")
        else:
            raw[name] = _coerce(parsed, schema, f"--set {key}")
    return check_params(raw, "--set")
