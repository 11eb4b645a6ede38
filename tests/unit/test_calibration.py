"""sigma's calibration metric (stages.nets.validate.sigma_calibration) on synthetic Gaussian draws,
against scipy's chi-square distribution (2 dof: a 2D isotropic Gaussian's |error|^2 / sigma^2)."""
import numpy as np
import pytest
from scipy.stats import chi2

from stages.nets.validate import sigma_calibration


def _draws(sigma_true: np.ndarray, seed: int = 0) -> np.ndarray:
    """|error| (N, V) of 2D isotropic Gaussian errors with per-point std sigma_true (N, V)."""
    offsets = np.random.default_rng(seed).normal(size=sigma_true.shape + (2,)) * sigma_true[..., None]
    return np.linalg.norm(offsets, axis=-1)


def test_calibrated_sigma_gives_the_chi2_fractions():
    sigma = np.random.default_rng(1).uniform(0.3, 5.0, (400, 250))
    got = sigma_calibration(_draws(sigma), sigma)
    assert got["sigma_within_1"] == pytest.approx(chi2(2).cdf(1.0), abs=0.005)     # 39.3 %
    assert got["sigma_within_2"] == pytest.approx(chi2(2).cdf(4.0), abs=0.005)     # 86.5 %
    assert got["sigma_mean_px"] == pytest.approx(sigma.mean())


def test_overconfident_sigma_is_seen():
    sigma = np.full((300, 300), 1.5)
    got = sigma_calibration(_draws(2 * sigma, seed=2), sigma)    # errors twice as large as claimed
    assert got["sigma_within_1"] == pytest.approx(chi2(2).cdf(0.25), abs=0.005)    # 11.8 %
    assert got["sigma_within_2"] == pytest.approx(chi2(2).cdf(1.0), abs=0.005)


def test_validation_figures_do_not_depend_on_the_threads_and_match_one_batch(monkeypatch):
    """evaluate in batches of 5 samples (validate.ROWS) on 1 and 3 threads: the same figures bit
    for bit; the landmark and calibration figures equal those of all 12 samples as one batch to
    float rounding, and the 2D targets (validation_targets) are crop_targets' on every thread count."""
    from benchmarks.bench_val import val_case
    from stages.face.warp import apply_warp, invert_warp
    from stages.nets import validate
    from stages.nets.dataset import crop_targets
    from tests.unit.pnp_cases import challenge_camera
    case, camera = val_case(12, seed=3), challenge_camera()
    monkeypatch.setattr(validate, "ROWS", 5)
    targets = crop_targets(camera, case["verts"], case["poses"], case["warps"])
    for workers in (1, 3):
        np.testing.assert_array_equal(validate.validation_targets(camera, case["verts"], case["poses"], case["warps"],
                                                                  workers), targets)
    inv = invert_warp(case["warps"])
    figures = [validate.evaluate(case["pred"], inv, camera, case["verts"], case["poses"], targets, "SQPNP", 0, "crop",
                                 workers) for workers in (1, 3)]
    assert figures[0] == figures[1]
    whole = validate.landmark_figures(case["pred"]["mu"], targets, apply_warp(inv, case["pred"]["mu"]), inv,
                                      case["pred"]["sigma"])
    for key, value in whole.items():
        assert figures[0][key] == pytest.approx(value, rel=1e-12), key


def test_validation_in_blocks_gives_one_blocks_figures_also_where_pnp_fails(monkeypatch):
    """summary_of the blocks' figures (10 samples a block, batches of 5) equals evaluate over all
    30 samples bit for bit, with PnP failing on samples of three blocks: they count in pnp_failed
    and are scored with the median of every solved pose of the split, as in one block."""
    from benchmarks.bench_val import val_case
    from stages.face.warp import apply_warp, invert_warp
    from stages.nets import validate
    from stages.nets.dataset import crop_targets
    from stages.wcpa.score import sample_errors, summarize
    from tests.unit.pnp_cases import challenge_camera
    case, camera = val_case(30, seed=4), challenge_camera()
    monkeypatch.setattr(validate, "ROWS", 5)
    solve, failing = validate.pose_from_landmarks, np.isin(np.arange(30), [3, 17, 26])

    def failing_pnp(verts, uv, *args, **kwargs):
        """Solve, then fail the samples in `failing` (matched by their mesh)."""
        poses = solve(verts, uv, *args, **kwargs)
        poses[np.isin(verts[:, 0, 0], case["pred"]["verts"][failing, 0, 0])] = np.nan
        return poses

    monkeypatch.setattr(validate, "pose_from_landmarks", failing_pnp)
    targets, inv = crop_targets(camera, case["verts"], case["poses"], case["warps"]), invert_warp(case["warps"])
    args = (camera, case["verts"], case["poses"], targets)
    whole = validate.evaluate(case["pred"], inv, *args, "SQPNP", 0, "crop", 2)
    blocks = [validate.block_figures({k: v[part] for k, v in case["pred"].items()}, inv[part],
                                     *(a if a is camera else a[part] for a in args), "SQPNP", 0, "crop", 2)
              for part in (slice(0, 10), slice(10, 20), slice(20, 30))]
    assert [int(block.failed.sum()) for block in blocks] == [1, 1, 1]
    assert validate.summary_of(blocks, 2) == whole and whole["pnp_failed"] == 3
    poses = solve(case["pred"]["verts"], case["pred"]["mu"], camera, method="opencv", flags="SQPNP")
    poses[failing] = np.median(poses[~failing], axis=0)
    expected = summarize(sample_errors(case["verts"], case["poses"], case["pred"]["verts"], poses))
    expected.update(validate.landmark_figures(case["pred"]["mu"], targets, apply_warp(inv, case["pred"]["mu"]), inv,
                                              case["pred"]["sigma"]))
    assert {key: whole[key] for key in expected} == pytest.approx(expected, rel=1e-12)
    assert set(whole) == set(expected) | {"pnp_failed"}


@pytest.mark.parametrize("batch, sizes", [(256, [4096, 4096, 1808]), (96, [3840, 3840, 2320]), (100, [4000, 4000, 2000]),
                                          (257, [3855, 3855, 2290]), (5000, [5000, 5000])])
def test_validation_blocks_are_whole_batches_of_the_network_and_the_threads(batch, sizes):
    from stages.nets.validate import block_rows
    blocks = block_rows(np.arange(10_000), batch)
    assert [len(block) for block in blocks] == sizes
    assert np.array_equal(np.concatenate(blocks), np.arange(10_000))


def test_a_direct_heads_non_finite_poses_are_scored_as_pnps_failures(monkeypatch):
    """The direct 6DoF head's non-finite poses (a diverged head) count in pnp_failed and take the
    median of the others, as PnP's failures do; with none finite validation stops saying so
    (the errors' Euler angles of a NaN pose stopped it with scipy's 'SVD did not converge')."""
    from benchmarks.bench_val import val_case
    from stages.face.warp import invert_warp
    from stages.nets import validate
    from tests.unit.pnp_cases import challenge_camera
    case, camera = val_case(10, seed=5), challenge_camera()
    inv, targets = invert_warp(case["warps"]), np.zeros(case["pred"]["mu"].shape)
    pred = {"verts": case["pred"]["verts"], "R_frame": np.zeros((10, 3, 3)), "t_code": np.zeros((10, 3))}

    def figures(nan_rows: list[int]) -> dict:
        poses = np.array(case["poses"], dtype=np.float64)
        poses[nan_rows] = np.nan
        monkeypatch.setattr(validate, "frame_poses", lambda *args: poses.copy())
        return validate.evaluate(pred, inv, camera, case["verts"], case["poses"], targets, "SQPNP", 0, "crop", 1)

    assert figures([])["pnp_failed"] == 0
    some = figures([3, 7])
    assert some["pnp_failed"] == 2 and np.isfinite(some["score"])
    with pytest.raises(ValueError, match="no validation sample has a pose"):
        figures(list(range(10)))
