"""Stage synth_sheet: contact sheet of random training samples of the data root with the
ground-truth mesh and landmarks projected over them (README "Synthetic data").

Landmarks and wireframe come from the info files (verts, R_t) through the camera, not from the
68landmarks files, so the sheet checks the labels against the pixels. Writes
artifacts/synth_sheet/contact_sheet.png.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from stages.common.params import Params
from stages.common.stage import stage_main
from stages.viz.draw import save_png
from stages.viz.samples_sheet import sample_tiles, sheet
from stages.wcpa.layout import image_path, info_path, list_path, load_resources, read_image, read_info, read_list

log = logging.getLogger("synth_sheet")
OUT = Path("artifacts/synth_sheet/contact_sheet.png")
TILE, COLUMNS, FULL_VIEWS = 224, 6, 2


def build_sheet(root: Path | str, samples: int, seed: int) -> np.ndarray:
    """The contact sheet (uint8 RGB) of `samples` random training samples of a data root;
    the first FULL_VIEWS samples also get a full-image tile."""
    res = load_resources(root)
    table = read_list(list_path(root, "train"))
    rng = np.random.default_rng([seed, 5])
    rows = table.iloc[np.sort(rng.choice(len(table), size=min(samples, len(table)), replace=False))]
    tiles = []
    for k, row in enumerate(rows.itertuples(index=False)):
        verts, R_t = read_info(info_path(root, row), res.n_verts)
        image = read_image(image_path(root, row), res.camera.size)
        label = f"{row.subject_id}/{row.facial_action}/{row.img_id}"
        tiles += sample_tiles(image, verts, R_t, res.camera, res.kpt_ind, res.faces, TILE, label, k < FULL_VIEWS)
    return sheet(tiles, COLUMNS, TILE)


def run(params: Params, out: Path = OUT) -> None:
    root = params.data.root
    image = build_sheet(root, params.synth.sheet_samples, params.seed)
    save_png(out, image)
    log.info("wrote %s (%dx%d) from %s", out, image.shape[1], image.shape[0], root)


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
