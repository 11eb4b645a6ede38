"""The .obj reader on the forms a mesh exporter writes (resources/example.obj, blendshapes)."""
import numpy as np
import pytest

from stages.wcpa.obj import read_obj, write_obj

SQUARE = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float64)


def _read(tmp_path, text: str, encoding: str = "utf-8"):
    (tmp_path / "m.obj").write_text(text, encoding=encoding)
    return read_obj(tmp_path / "m.obj")


def test_written_meshes_read_back(tmp_path):
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    write_obj(tmp_path / "m.obj", SQUARE, faces)
    verts, read = read_obj(tmp_path / "m.obj")
    assert np.array_equal(verts, SQUARE) and np.array_equal(read, faces)


def test_exporter_lines_quads_and_slashed_corners(tmp_path):
    """Comments, groups, texture and normal lines are skipped; `v/vt/vn` and `v//vn` corners give
    their vertex; a quad is fanned; a vertex colour after x y z is ignored."""
    text = ("# exported\nmtllib m.mtl\no face\ng g0\ns 1\nusemtl skin\n"
            + "".join(f"v {x} {y} {z} 0.5 0.5 0.5\n" for x, y, z in SQUARE)
            + "vt 0 0\nvn 0 0 1\nf 1/1/1 2/1/1 3//1 4//1\n")
    verts, faces = _read(tmp_path, text)
    assert np.array_equal(verts, SQUARE) and faces.tolist() == [[0, 1, 2], [0, 2, 3]]


def test_negative_indices_count_back_from_the_vertices_read_so_far(tmp_path):
    verts, faces = _read(tmp_path, "v 0 0 0\nv 1 0 0\nv 1 1 0\nf -3 -2 -1\nv 0 1 0\nf -4 -2 -1\n")
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3]] and len(verts) == 4


def test_a_byte_order_mark_is_skipped(tmp_path):
    verts, faces = _read(tmp_path, "v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\n", encoding="utf-8-sig")
    assert len(verts) == 3 and faces.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("text,problem", [
    ("v 0 0 0\nv 0 0\n", r"m.obj:2: malformed line 'v 0 0'"),
    ("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 0 1 2\n", r"m.obj:4: malformed line 'f 0 1 2'"),
    ("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 4\n", r"m.obj: face index out of range 1..3"),
    ("v 0 0 0\nf -2 -1 1\n", r"m.obj: face index out of range 1..1"),
    ("# nothing\n", r"m.obj: no vertices"),
])
def test_malformed_meshes_stop_naming_the_file_and_line(tmp_path, text, problem):
    with pytest.raises(ValueError, match=problem):
        _read(tmp_path, text)
