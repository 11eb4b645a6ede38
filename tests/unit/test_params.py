"""params.yaml loading: the typed object generated from the schema, type coercion as `dvc exp run
-S` writes values, and clear errors."""
import dataclasses
import re
import shutil
import typing
from pathlib import Path

import cv2
import pytest
import yaml

from stages.common.params import (CropParams, InferParams, LambdaParams, Params, ParamsError, TrainParams,
                                  apply_overrides, attribute, check_params, check_section, load_params)
from stages.common.schema import SCHEMA
from stages import profile
from stages.profile import apply_profile, profile_params

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, mutate):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params.lambda_.pnp, float)


def test_integral_float_and_string_numbers_are_coerced(tmp_path):
    def mutate(d):
        d["lambda"]["pnp"] = 2                 # dvc exp run -S lambda.pnp=2
        d["synth"]["train_subjects"] = 10.0
        d["data"]["skip_bad"] = "true"
    params = load_params(_write(tmp_path, mutate))
    assert params.lambda_.pnp == 2.0 and isinstance(params.lambda_.pnp, float)
    assert params.synth.train_subjects == 10 and isinstance(params.synth.train_subjects, int)
    assert params.data.skip_bad is True


@pytest.mark.parametrize("value, loaded", [("auto", "auto"), (16, 16), ("3", 3), (4.0, 4)])
def test_infer_workers_take_auto_or_a_count(tmp_path, value, loaded):
    params = load_params(_write(tmp_path, lambda d: d["infer"].update(workers=value)))
    assert params.infer.workers == loaded and type(params.infer.workers) is type(loaded)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["lambda"].update(pnpp=1.0), "unknown key.*lambda.pnpp"),
    (lambda d: d["lambda"].pop("vdc"), "missing key.*lambda.vdc"),
    (lambda d: d.update(extra={}), "unknown section.*extra"),
    (lambda d: d["synth"].update(train_subjects=2.5), "synth.train_subjects: expected int"),
    (lambda d: d["lambda"].update(pnp="two"), "lambda.pnp: expected float"),
    (lambda d: d["infer"].update(workers="many"), r"infer.workers: expected int, got 'many' \(or 'auto'\)"),
    (lambda d: d["infer"].update(workers=0), r"infer.workers = 0: must be >= 1 \(or 'auto'\)"),
    (lambda d: d.update(gpus=3), r"train.batch_size \(16\) is not a multiple of gpus \(3\)"),
    (lambda d: d.update(gpus=4) or d["finetune"].update(batch_size=18), r"finetune.batch_size \(18\) .* gpus \(4\)"),
])
def test_bad_params_name_the_key(tmp_path, mutate, message):
    with pytest.raises(ParamsError, match=message):
        load_params(_write(tmp_path, mutate))


def test_paper_profile_applies_and_validates(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", target)
    apply_profile("paper", target)
    params = load_params(target)
    assert params.lambda_.as_dict() == {"landmarks": 0.01, "vdc": 20.0, "wpdc": 10.0, "pnp": 2.0, "mc": 0.01,
                                        "rot": 20.0, "trans": 0.05}
    assert "# " in target.read_text()          # comments survive


def test_profile_params_merge_in_memory_as_apply_profile_writes(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", target)
    before = target.read_text()
    merged = profile_params("paper", target)
    assert target.read_text() == before                      # nothing written
    apply_profile("paper", target)
    assert merged == load_params(target)


def test_unknown_profile_stops_with_the_known_ones():
    with pytest.raises(SystemExit, match="no such profile.*paper"):
        profile_params("papr", ROOT / "params.yaml")


def test_overrides_are_read_as_yaml_and_typed_by_the_schema():
    loaded = load_params(ROOT / "params.yaml")
    params = apply_overrides(loaded, ["train.pretrained=true", "seed=7", "train.lr=2e-3", "train.epochs=3.0",
                                      "infer.pnp_flags=EPNP+ITERATIVE"])
    assert params.train.pretrained is True and params.seed == 7
    assert params.train.lr == 0.002 and isinstance(params.train.lr, float)
    assert params.train.epochs == 3 and isinstance(params.train.epochs, int)
    assert params.infer.pnp_flags == "EPNP+ITERATIVE"
    assert loaded == load_params(ROOT / "params.yaml")          # a new object: the loaded one is unchanged


@pytest.mark.parametrize("assignment, message", [
    ("train.nope=1", "key of params.yaml"),
    ("train=3", "key of params.yaml"),
    ("train.epochs", "key of params.yaml"),
    ("seed.x=1", "key of params.yaml"),
    ("train.epochs=2.5", "train.epochs: expected int"),
    ("train.lr=[1", "not a YAML value"),
])
def test_bad_overrides_name_the_assignment(assignment, message):
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ParamsError, match=message):
        apply_overrides(params, [assignment])


def test_every_profile_validates():
    for name in ("paper", "paper_exact", "tiny", "gpu"):
        params = profile_params(name, ROOT / "params.yaml")
        assert check_params(params.as_dict(), f"{name}.yaml") == params


def test_gpu_profile_is_the_paper_profile_on_one_gpu_and_16_cores(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", target)
    apply_profile("gpu", target)
    gpu, paper = load_params(target), profile_params("paper", ROOT / "params.yaml")
    assert gpu == profile_params("gpu", ROOT / "params.yaml")
    assert gpu.data.workers == gpu.synth.workers == 16 and gpu.infer.workers == 8
    assert gpu.train.batch_size == 128 and gpu.gpus == 1
    assert gpu.train.val_batch_size == gpu.finetune.val_batch_size == 256
    gpu_values = gpu.as_dict()
    different = {(name, key) for name, section in paper.as_dict().items() if isinstance(section, dict)
                 for key in section if gpu_values[name][key] != section[key]}
    assert gpu.crop.decode == "torch"
    assert different == {("data", "workers"), ("synth", "workers"), ("coarse_train", "compile"),
                         ("coarse_predict", "batch_size"), ("crop", "decode"), ("train", "batch_size"),
                         ("train", "workers"), ("train", "val_batch_size"), ("train", "compile"),
                         ("finetune", "batch_size"), ("finetune", "workers"), ("finetune", "val_batch_size"),
                         ("finetune", "compile"), ("infer", "batch_size"), ("infer", "workers")}


def test_a_profile_that_is_its_own_base_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(profile, "PROFILES", tmp_path)
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\nseed: 3\n")
    with pytest.raises(ParamsError, match=r"profile a is its own base \(a -> b -> a\)"):
        profile_params("a", ROOT / "params.yaml")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["train"].update(epochs=0), r"train.epochs = 0: must be >= 1"),
    (lambda d: d["coarse_train"].update(batch_size=-1), r"coarse_train.batch_size = -1: must be >= 1"),
    (lambda d: d["finetune"].update(val_batch_size=0), r"finetune.val_batch_size = 0: must be >= 1"),
    (lambda d: d["crop"].update(chunk=0), r"crop.chunk = 0: must be >= 1"),
    (lambda d: d["infer"].update(batch_size=0), r"infer.batch_size = 0: must be >= 1"),
    (lambda d: d["data"].update(workers=0), r"data.workers = 0: must be >= 1"),
    (lambda d: d["synth"].update(image_size=0), r"synth.image_size = 0: must be >= 1"),
    (lambda d: d["split"].update(val_fraction=1.5), r"split.val_fraction = 1.5: must be > 0 and < 1"),
    (lambda d: d["data"].update(max_bad_fraction=-0.1), r"data.max_bad_fraction = -0.1: must be >= 0 and <= 1"),
    (lambda d: d["coarse_train"].update(flip_prob=2.0), r"coarse_train.flip_prob = 2.0: must be >= 0 and <= 1"),
    (lambda d: d["infer"].update(max_pnp_failures=1.5), r"infer.max_pnp_failures = 1.5"),
    (lambda d: d["train"].update(landmark_loss="l1"), r"train.landmark_loss = 'l1': must be one of gnll, mse"),
    (lambda d: d["train"].update(depth=20), r"train.depth = 20: must be one of 18, 34, 50"),
    (lambda d: d["crop"].update(source="coars"), r"crop.source = 'coars': must be one of coarse, given68, gt"),
    (lambda d: d["infer"].update(flip_merge="2d"), r"infer.flip_merge = '2d'"),
    (lambda d: d["finetune"].update(pnp_dtype="float16"), r"finetune.pnp_dtype = 'float16'"),
    (lambda d: d["train"].update(device="gpu"), r"train.device = 'gpu'"),
    (lambda d: d["infer"].update(pnp_flags="P3P"), r"infer.pnp_flags = 'P3P'"),
    (lambda d: d["infer"].update(pnp_flags="SQPNP+EPNP"), r"infer.pnp_flags = 'SQPNP\+EPNP'"),
    (lambda d: d["train"].update(val_pnp_flags="EPNP+SQPNP"), r"train.val_pnp_flags = 'EPNP\+SQPNP'"),
    (lambda d: d["coarse_train"].update(locate_size=98), r"coarse_train.locate_size = 98: must be a multiple of 32"),
    (lambda d: d["coarse_train"].update(refine_size=16), r"coarse_train.refine_size = 16: must be >= 32"),
])
def test_values_outside_their_range_or_choice_stop_at_load(tmp_path, mutate, message):
    with pytest.raises(ParamsError, match=r"params.yaml: " + message):
        load_params(_write(tmp_path, mutate))


def test_overrides_are_range_checked():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ParamsError, match=r"--set train.epochs = 0: must be >= 1"):
        apply_overrides(params, ["train.epochs=0"])


@pytest.mark.parametrize("source, detector, ok", [
    ("coarse", ["coarse"], True), ("gt", ["coarse"], True), ("given68", [], True),
    ("given68", ["coarse"], False), ("coarse", [], False)])
def test_crop_detector_must_match_the_landmark_source(source, detector, ok):
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["crop"].update(source=source, detector=detector)
    if ok:
        assert check_params(raw, "p.yaml").crop.detector == detector
        return
    wanted = "[]" if source == "given68" else "[coarse]"
    with pytest.raises(ParamsError, match=re.escape(f"crop.source is {source}: set crop.detector: {wanted}")):
        check_params(raw, "p.yaml")


@pytest.mark.parametrize("checkpoint, ok", [("train", True), ("finetune", False)])
def test_direct_pose_head_must_be_inferred_from_the_train_checkpoint(checkpoint, ok):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["pose_head"] = "direct6dof"
    raw["infer"]["checkpoint"] = checkpoint
    if ok:
        assert check_params(raw, "p.yaml").train.pose_head == "direct6dof"
        return
    with pytest.raises(ParamsError, match=r"p.yaml: train.pose_head is direct6dof: set infer.checkpoint: train"):
        check_params(raw, "p.yaml")


def test_sections_are_frozen_typed_dataclasses_generated_from_the_schema():
    params = load_params(ROOT / "params.yaml")
    assert [f.name for f in dataclasses.fields(Params)] == [attribute(key) for key in SCHEMA]
    assert [f.name for f in dataclasses.fields(params.train)] == list(SCHEMA["train"])
    hints = typing.get_type_hints(TrainParams)
    assert hints["epochs"] is int and hints["lr"] is float and hints["pretrained"] is bool
    assert hints["depth"] == typing.Literal[18, 34, 50] and hints["schedule"] == typing.Literal["constant", "cosine"]
    assert typing.get_type_hints(InferParams)["workers"] == typing.Union[int, typing.Literal["auto"]]
    assert typing.get_type_hints(CropParams)["detector"] == list[str]
    assert typing.get_type_hints(Params)["lambda_"] is LambdaParams
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.epochs = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 3


def test_as_dict_is_the_yaml_shaped_data_and_loads_back_to_the_same_object():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = check_params(raw, "params.yaml")
    assert params.as_dict() == raw and list(params.as_dict()) == list(raw)       # `lambda`, in the file's order
    assert list(params.as_dict()["train"]) == list(SCHEMA["train"])
    assert check_params(params.as_dict(), "again") == params
    params.as_dict()["crop"]["detector"].append("x")                            # plain copies
    assert params.crop.detector == raw["crop"]["detector"]


def test_replace_returns_a_new_checked_object():
    params = load_params(ROOT / "params.yaml")
    changed = params.replace(train={"epochs": "4", "lr": 1}, lambda_={"pnp": 3}, seed=5.0)
    assert changed.train.epochs == 4 and changed.train.lr == 1.0 and isinstance(changed.train.lr, float)
    assert changed.lambda_.pnp == 3.0 and changed.seed == 5
    assert params == load_params(ROOT / "params.yaml")                           # the original unchanged
    assert changed.train.batch_size == params.train.batch_size                   # the other keys kept
    assert params.replace(train=changed.train).train == changed.train             # a whole section
    with pytest.raises(ParamsError, match=r"replace: train.epochs = 0: must be >= 1"):
        params.replace(train={"epochs": 0})
    with pytest.raises(ParamsError, match=r"replace: unknown key\(s\) train.epoch"):
        params.replace(train={"epoch": 3})
    with pytest.raises(ParamsError, match=r"replace: 'lambda' is no attribute of Params"):
        params.replace(**{"lambda": {"pnp": 3}})
    with pytest.raises(ParamsError, match=r"replace: train.pose_head is direct6dof: set infer.checkpoint: train"):
        params.replace(train={"pose_head": "direct6dof"})
    direct = params.replace(train={"pose_head": "direct6dof"}, infer={"checkpoint": "train"})
    assert direct.train.pose_head == "direct6dof"


def test_a_section_mapping_is_checked_alone():
    train = load_params(ROOT / "params.yaml").train
    assert check_section("train", train.as_dict(), "model.pt") == train
    assert check_section("train", {**train.as_dict(), "epochs": "3"}, "model.pt").epochs == 3
    with pytest.raises(ParamsError, match=r"model.pt: missing key\(s\) train.lr"):
        check_section("train", {k: v for k, v in train.as_dict().items() if k != "lr"}, "model.pt")
    with pytest.raises(ParamsError, match=r"model.pt: train.depth = 20: must be one of 18, 34, 50"):
        check_section("train", {**train.as_dict(), "depth": 20}, "model.pt")


def test_overrides_that_must_agree_are_checked_together():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ParamsError, match=r"--set: crop.source is given68: set crop.detector: \[\]"):
        apply_overrides(params, ["crop.source=given68"])
    assert apply_overrides(params, ["crop.source=given68", "crop.detector=[]"]).crop.detector == []


def test_every_pnp_method_of_the_schema_is_an_opencv_method_the_solvers_accept():
    from stages.common.schema import PNP_FLAGS
    from stages.nets.poses import parse_flags
    for flags in PNP_FLAGS.values:
        method, refine = parse_flags(flags)
        assert refine == flags.endswith("+ITERATIVE") and hasattr(cv2, f"SOLVEPNP_{method}")
