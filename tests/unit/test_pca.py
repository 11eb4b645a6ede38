"""PCA face space: exact reconstruction, clamping, WPDC weights, neutral selection, blendshapes."""
import logging

import numpy as np
import pandas as pd
import pytest

from stages.wcpa.obj import write_obj
from stages import pca as pca_stage
from stages.face import pca as face_pca
from stages.face.pca import (ARKIT_BLENDSHAPES, NO_BLENDSHAPES, expression_modes, fit_pca, neutral_index,
                             read_blendshapes, read_neutral_list, reconstruction_errors, select_neutral_frames)
from tests.tiny_project import face_blendshapes, make_faces, symmetric_template


def random_meshes(n=12, v=30, seed=0):
    return np.random.default_rng(seed).normal(0, 0.01, (n, v, 3)) + np.linspace(0, 0.1, v * 3).reshape(v, 3)


def test_all_components_reconstruct_training_meshes_exactly():
    meshes = random_meshes()
    basis = fit_pca(meshes, len(meshes) - 1)
    assert reconstruction_errors(basis, meshes).max() < 1e-4       # mm (float32 coefficients)
    flat = basis.components.reshape(basis.n_components, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(basis.n_components), atol=1e-10)


def test_normalised_coefficients_have_unit_variance_over_fitting_meshes():
    meshes = random_meshes()
    basis = fit_pca(meshes, 5)
    np.testing.assert_allclose(basis.project(meshes).std(0, ddof=1), 1.0, rtol=1e-4)


def test_n_components_is_clamped_to_meshes_minus_one(caplog):
    meshes = random_meshes(n=8)
    with caplog.at_level(logging.WARNING):
        basis = fit_pca(meshes, 250)
    assert basis.n_components == 7
    assert "clamped to 7" in caplog.text


def test_wpdc_weights_are_the_rms_displacement_of_a_unit_coefficient_change():
    meshes = random_meshes()
    basis = fit_pca(meshes, 6)
    weights = basis.wpdc_weights()
    assert (weights > 0).all()
    for k in range(basis.n_components):
        unit = np.zeros(basis.n_components)
        unit[k] = 1.0
        moved = basis.reconstruct(unit) - basis.reconstruct(np.zeros_like(unit))
        rms_mm = 1000 * np.sqrt((moved.astype(np.float64) ** 2).sum(-1).mean())
        assert rms_mm == pytest.approx(weights[k], rel=1e-4)


@pytest.mark.parametrize("workers", [1, 2])
def test_neutral_selection_finds_the_rest_face(workers):
    """The rest face of each subject, whether the subjects are scored here or on 2 processes
    (with subsampled subjects: max_frames 5 of their 9 frames, the same seeded draw)."""
    rng = np.random.default_rng(3)
    template = symmetric_template(15, rng)
    blendshapes = face_blendshapes(rng, template)
    table, meshes = make_faces(rng, template, 10, ["smile", "neutral", "talk"], 3, blendshapes)
    chosen = select_neutral_frames(meshes, table.subject_id.to_numpy(), blendshapes, workers=workers)
    subsampled = select_neutral_frames(meshes, table.subject_id.to_numpy(), blendshapes, 5, 7, workers)
    assert subsampled.tolist() == select_neutral_frames(meshes, table.subject_id.to_numpy(), blendshapes, 5, 7).tolist()
    assert len(chosen) == 10
    assert (table.facial_action.iloc[chosen] == "neutral").all()
    assert table.subject_id.iloc[chosen].is_unique


def test_hand_made_neutral_list_gives_its_rows(tmp_path):
    table = pd.DataFrame({"subject_id": ["a", "a", "b"], "facial_action": ["x", "y", "x"], "img_id": ["1", "2", "1"]})
    table.iloc[[2, 1]].to_csv(tmp_path / "n.csv", index=False)
    assert read_neutral_list(tmp_path / "n.csv", table).tolist() == [2, 1]
    pd.DataFrame({"subject_id": ["c"], "facial_action": ["x"], "img_id": ["1"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv.*c/x/1"):
        read_neutral_list(tmp_path / "bad.csv", table)


@pytest.mark.filterwarnings("ignore::pandas.errors.ParserWarning")      # pandas on the empty field past the header
def test_a_hand_made_neutral_list_is_read_as_the_train_list_is(tmp_path):
    """A trailing comma on its rows keeps the ids in place; an id with spaces around it stops
    naming the row (read_list's checks), where both were misread as unknown ids."""
    table = pd.DataFrame({"subject_id": ["007", "008"], "facial_action": ["x", "x"], "img_id": ["1", "1"]})
    (tmp_path / "n.csv").write_text("subject_id,facial_action,img_id\n008,x,1,\n")
    assert read_neutral_list(tmp_path / "n.csv", table).tolist() == [1]
    (tmp_path / "n.csv").write_text("subject_id,facial_action,img_id\n008, x,1\n")
    with pytest.raises(ValueError, match="n.csv: row 2 has an id with spaces around it"):
        read_neutral_list(tmp_path / "n.csv", table)


def test_a_neutral_list_naming_a_subject_twice_stops(tmp_path):
    table = pd.DataFrame({"subject_id": ["a", "a", "b"], "facial_action": ["x", "y", "x"], "img_id": ["1", "2", "1"]})
    table.iloc[[0, 1]].to_csv(tmp_path / "n.csv", index=False)
    with pytest.raises(ValueError, match="n.csv: 1 subject.*more than once, e.g. a"):
        read_neutral_list(tmp_path / "n.csv", table)


def test_expression_scores_tied_at_rounding_go_to_the_frame_nearest_the_others(monkeypatch):
    """Frame 2, a mild expression 1.2 mm off the rest face 0, scores 5e-15 m^2 below it (the
    demo's subject 000436 had jaw_left over its neutral frames so): a tie, which the summed
    distance to the other frames breaks; a score lower by more than rounding still wins."""
    rng = np.random.default_rng(0)
    rest = rng.normal(0, 0.05, (40, 3))
    big, mild = (rng.normal(0, s, (40, 3)) for s in (0.01, 0.0012))
    frames = np.stack([rest, rest + big, rest + mild, rest + big + mild])
    monkeypatch.setattr(face_pca, "expression_scores", lambda f, fit: np.array([1.383e-13, 3e-4, 1.336e-13, 2e-4]))
    assert neutral_index(frames, fit=object()) == 0
    monkeypatch.setattr(face_pca, "expression_scores", lambda f, fit: np.array([1e-6, 3e-4, 1e-9, 2e-4]))
    assert neutral_index(frames, fit=object()) == 2


def test_blendshapes_in_other_units_or_frame_stop_naming_the_folder():
    rng = np.random.default_rng(3)
    template = symmetric_template(15, rng)
    blendshapes = face_blendshapes(rng, template)
    _, meshes = make_faces(rng, template, 4, ["neutral"], 1, blendshapes)
    assert face_pca.blendshape_offset_mm(blendshapes, meshes, "arkit") < 5
    for wrong in (blendshapes * 100, blendshapes + [0.0, 0.0, 0.05]):
        with pytest.raises(ValueError, match="arkit: the blendshapes' rest face lies .* mm RMS"):
            face_pca.blendshape_offset_mm(wrong, meshes, "arkit")


def test_a_seeded_draw_of_subjects_keeps_all_their_rows():
    subjects = np.repeat(np.array([f"s{i:03d}" for i in range(30)]), 3)
    drawn = pca_stage.drawn_subjects(subjects, 10, seed=4)
    assert len(np.unique(subjects[drawn])) == 10 and drawn.sum() == 30
    assert (drawn == pca_stage.drawn_subjects(subjects, 10, seed=4)).all()
    assert (drawn != pca_stage.drawn_subjects(subjects, 10, seed=5)).any()
    assert pca_stage.drawn_subjects(subjects, 0, seed=4).all() and pca_stage.drawn_subjects(subjects, 30, seed=4).all()


def test_missing_blendshape_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: blendshape folder not found.*data/no_blendshapes"):
        read_blendshapes(tmp_path / "nowhere", 30)


def test_a_folder_without_meshes_means_no_blendshapes(caplog):
    with caplog.at_level(logging.WARNING):
        assert read_blendshapes(NO_BLENDSHAPES, 30).shape == (0, 30, 3)   # the committed folder
    assert "no blendshape meshes" in caplog.text


def test_blendshapes_are_read_in_arkit_order_and_checked(tmp_path):
    shapes = np.random.default_rng(0).normal(size=(len(ARKIT_BLENDSHAPES), 30, 3))
    for name, shape in zip(ARKIT_BLENDSHAPES, shapes):
        write_obj(tmp_path / f"{name}.obj", shape)
    np.testing.assert_allclose(read_blendshapes(tmp_path, 30), shapes, atol=1e-6)
    with pytest.raises(ValueError, match="eyeBlinkLeft.obj: 30 vertices"):
        read_blendshapes(tmp_path, 31)
    (tmp_path / "jawOpen.obj").unlink()
    with pytest.raises(FileNotFoundError, match="missing, e.g. jawOpen.obj"):
        read_blendshapes(tmp_path, 30)


def test_medoid_fallback_without_blendshapes_returns_one_frame_per_subject():
    rng = np.random.default_rng(4)
    template = symmetric_template(15, rng)
    table, meshes = make_faces(rng, template, 5, ["smile", "neutral"], 2, face_blendshapes(rng, template))
    chosen = select_neutral_frames(meshes, table.subject_id.to_numpy(), None)
    assert table.subject_id.iloc[chosen].tolist() == sorted(table.subject_id.unique())


def test_expression_modes_span_the_expressions_the_neutral_meshes_miss():
    """Subjects whose frames are their identity plus non-negative mixes of 6 blendshapes, which
    the data does not come with: 6 expression modes of the frames' displacements from each
    subject's neutral frame make, with the neutral meshes, a PCA that reconstructs every frame
    (to the frames' 0.01 mm noise); the neutral meshes alone miss the expressions (4 of the 34
    points moved by about 1.5 mm a blendshape) by up to 0.7 mm of the mean vertex error.
    Unusable rows (NaN labels) are never read into the modes, and the draw is seeded."""
    rng = np.random.default_rng(5)
    template = symmetric_template(15, rng)
    table, meshes = make_faces(rng, template, 30, ["neutral", "smile", "talk", "frown"], 3,
                               face_blendshapes(rng, template)[:6])
    subjects = table.subject_id.to_numpy()
    neutral = np.flatnonzero((table.facial_action == "neutral").to_numpy() & (table.img_id == "00000").to_numpy())
    usable = np.ones(len(table), bool)
    meshes[5], usable[5] = np.nan, False
    modes = expression_modes(meshes, subjects, usable, neutral, 6, 200, seed=0)
    assert modes.shape == (6,) + template.shape and np.isfinite(modes).all()
    np.testing.assert_array_equal(modes, expression_modes(meshes, subjects, usable, neutral, 6, 200, seed=0))
    neutrals = meshes[neutral].astype(np.float64)
    with_modes = fit_pca(np.concatenate([neutrals, modes]), len(neutral) + 5)
    alone = fit_pca(neutrals, len(neutral) - 1)
    assert reconstruction_errors(with_modes, meshes[usable]).max() < 0.05
    assert reconstruction_errors(alone, meshes[usable]).max() > 0.5
    assert len(expression_modes(meshes, subjects, usable, neutral, 6, 3, seed=0)) == 2   # at most frames - 1


@pytest.mark.parametrize("seed", [0, 2])
def test_each_expression_mode_lies_where_the_frames_reach_along_it(seed):
    """A mode is its expression at full activation: some frame's displacement from its subject's
    neutral frame reaches the mode's displacement from the neutrals' mean along its direction, on
    the same side (a singular vector's sign is arbitrary; frames that are non-negative mixes of
    blendshapes reach each direction on one side only)."""
    rng = np.random.default_rng(5)
    template = symmetric_template(15, rng)
    table, meshes = make_faces(rng, template, 30, ["neutral", "smile", "talk", "frown"], 3,
                               face_blendshapes(rng, template)[:6])
    subjects = table.subject_id.to_numpy()
    first = (table.facial_action == "neutral").to_numpy() & (table.img_id == "00000").to_numpy()
    neutral = np.flatnonzero(first)
    modes = expression_modes(meshes, subjects, np.ones(len(table), bool), neutral, 6, 1000, seed)
    of_subject = dict(zip(subjects[neutral], neutral))
    frames = np.flatnonzero(~first)
    displacements = (meshes[frames].astype(np.float64)
                     - meshes[[of_subject[s] for s in subjects[frames]]]).reshape(len(frames), -1)
    offsets = (modes - meshes[neutral].astype(np.float64).mean(0)).reshape(len(modes), -1)
    lengths = np.linalg.norm(offsets, axis=1)
    reached = (displacements @ (offsets / lengths[:, None]).T).max(0)
    np.testing.assert_allclose(reached, lengths, rtol=1e-9)


def test_subject_rows_are_each_subjects_rows_in_order_of_first_appearance():
    """One sort gives what a scan of the table for each subject gave (select_neutral_frames'
    candidates and seeded draws depend on both orders)."""
    from stages.face.pca import subject_rows
    rng = np.random.default_rng(0)
    subjects = rng.choice(np.array([f"s{k:03d}" for k in range(37)], dtype=object), 500)
    expected = [np.flatnonzero(subjects == subject) for subject in pd.unique(subjects)]
    got = subject_rows(subjects)
    assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert subject_rows(np.array([], dtype=object)) == []
