"""params.yaml loading: type coercion as `dvc exp run -S` writes values, and clear errors."""
import shutil
from pathlib import Path

import pytest
import yaml

from stages.common.params import ParamsError, load_params
from stages.profile import apply_profile

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, mutate):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params["lambda"]["pnp"], float)


def test_integral_float_and_string_numbers_are_coerced(tmp_path):
    def mutate(d):
        d["lambda"]["pnp"] = 2                 # dvc exp run -S lambda.pnp=2
        d["synth"]["train_subjects"] = 10.0
        d["data"]["skip_bad"] = "true"
    params = load_params(_write(tmp_path, mutate))
    assert params["lambda"]["pnp"] == 2.0 and isinstance(params["lambda"]["pnp"], float)
    assert params["synth"]["train_subjects"] == 10 and isinstance(params["synth"]["train_subjects"], int)
    assert params["data"]["skip_bad"] is True


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["lambda"].update(pnpp=1.0), "unknown key.*lambda.pnpp"),
    (lambda d: d["lambda"].pop("vdc"), "missing key.*lambda.vdc"),
    (lambda d: d.update(extra={}), "unknown section.*extra"),
    (lambda d: d["synth"].update(train_subjects=2.5), "synth.train_subjects: expected int"),
    (lambda d: d["lambda"].update(pnp="two"), "lambda.pnp: expected float"),
])
def test_bad_params_name_the_key(tmp_path, mutate, message):
    with pytest.raises(ParamsError, match=message):
        load_params(_write(tmp_path, mutate))


def test_paper_profile_applies_and_validates(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", target)
    apply_profile("paper", target)
    params = load_params(target)
    assert params["lambda"] == {"gnll": 0.01, "vdc": 20.0, "wpdc": 10.0, "pnp": 2.0}
    assert "# " in target.read_text()          # comments survive
