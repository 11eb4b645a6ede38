"""Predict: the trained pipeline on any images (coarse detector, crop, network, unwarp, PnP).

`python -m stages.predict IMAGE_OR_FOLDER... --out DIR [--focal PX | --fov DEG [--principal CX CY]]` runs, per batch
of infer.batch_size images (decoded in data.workers threads):
  1. the coarse detector artifacts/coarse_train/model.pt (coarse_predict.refine_passes, flip_test,
     settle, amp; --refine-passes and --settle override the first and third), gated by stages.coarse.confidence (no face: stop naming the image, or with --skip-bad
     list it in DIR/skipped.csv, as the stages list bad samples, and go on, as for an unreadable
     image, one no crop fits or a failed PnP);
  2. the roll-frontalized crop as the crop stage makes it (crop.size, crop.margin, crop.rotation);
  3. the network artifacts/<infer.checkpoint>/model.pt with flip & merge, unwarp and PnP exactly
     as stage infer (stages.nets.inference.predict_crops; infer.flip_merge, pnp, pnp_flags); a
     pose infer would not accept (stages.wcpa.submission.pose_accepted) is a failed PnP.
The crops come from the detector whatever crop.source (a warning says so where it is not coarse).
Camera: the challenge's (data.root's resources/projection_matrix.txt, and the image size of its
first train images; other image sizes stop) or, with --focal / --fov (horizontal), a pinhole camera for any image size
(stages.wcpa.camera.Camera.pinhole) with its principal point at the image centre or at
--principal (OpenCV's pixel coordinates, as a calibration gives it). A network tied to the
training camera (train.pose_head=direct6dof, train.coord_maps=image) takes no pinhole camera.

The network must fit the params and the data as in infer (stages.nets.checkpoint): backbone,
CoordConv, shape head, input size, vertex count, PCA size, the crop size crop.size, and the
identity of artifacts/pca/basis.npz. Its crop-run identity is not checked: there is no crop store
for arbitrary images, and crop.margin / crop.rotation are not recorded in model.pt; they are
taken from params.yaml, which must be the params the crop stage and the network were made with
(`dvc status` tells).

Images are read turned by their EXIF orientation, as displayed (cv2.imread's default); the camera
(--fov across the width, --principal) is that image's. Pixel positions in the outputs are
continuous coordinates: the image's top-left corner at (0, 0), a pixel's centre at i + 0.5
(OpenCV's coordinates are 0.5 less). Lengths are in metres.

Per image <stem> (folders: their image files, not recursive), written atomically into DIR:
  <stem>_canonical.obj  the predicted mesh (V, 3) metres in the head frame, the data's triangles
  <stem>_camera.obj     the same mesh in the OpenGL camera frame (v @ R + t)
  <stem>_pose.json      R_t (4, 4) (t in metres), the challenge's row-vector convention; landmarks68 (68, 2)
                        full-image px; detector confidence; camera projection matrix and size
  <stem>.npz            R_t, verts (V, 3), landmarks (V, 2) and landmarks68 (68, 2) full px
                        (the network's, flip-merged), coarse68 (68, 2) full px (the detector's),
                        sigma (V,) full px, proj (4, 4), image_size (width, height)
  <stem>_overlay.png    the projected mesh (white) and the 68 landmarks (green) over the image
                        (not with --no-overlay)
"""
from __future__ import annotations

import argparse
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from stages.coarse.confidence import MAX_SHIFT, MIN_INSIDE, Confidence, confidence, no_face_reason
from stages.coarse.detector import Detector
from stages.common.badinput import SKIPPED_FILE, BadInputs, split_message
from stages.common.io import save_json, save_npz
from stages.common.params import CoarsePredictParams, CropParams, Params, ParamsError
from stages.common.stage import stage_main
from stages.face.frontal import fitted_crop_warps, reference_shape
from stages.face.pca import load_flip_perm
from stages.face.warp import invert_warp, warp_image
from stages.nets.checkpoint import CheckpointError, load_network_for_images
from stages.nets.inference import InferSettings, predict_crops
from stages.nets.model import FaceNet
from stages.viz.draw import draw_points, draw_wireframe, save_png
from stages.wcpa.camera import Camera, focal_from_fov, from_opencv_pixels, to_camera
from stages.wcpa.layout import DataError, Resources, load_resources, read_image
from stages.wcpa.obj import write_obj
from stages.wcpa.submission import pose_accepted

log = logging.getLogger("predict")
ARTIFACTS = Path("artifacts")
WRITES_IN_FLIGHT = 4        # images a writer thread may have queued before predicting waits for them
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class PredictError(ValueError):
    """An input image or a model file that predict cannot use; the message names it."""


@dataclass(frozen=True)
class Pipeline:
    """Everything predict runs: detector, network, flip permutation (V,), data resources,
    crop reference landmarks (L, 2) crop px, params sections crop / coarse_predict, infer settings."""

    detector: Detector
    model: FaceNet
    perm: np.ndarray
    resources: Resources
    reference: np.ndarray
    crop: CropParams
    coarse: CoarsePredictParams
    settings: InferSettings
    min_inside: float = MIN_INSIDE
    max_shift: float = MAX_SHIFT


def list_images(inputs: list[Path | str]) -> list[Path]:
    """Image files and folders (their image files by name, not recursive) -> image paths;
    stops on a missing path, a folder without images or two images of the same stem."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise PredictError(f"{item}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise PredictError(f"{item}: no such image or folder")
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise PredictError(f"{path}: same name as {stems[path.stem]} (outputs are named by the image's stem)")
        stems[path.stem] = path
    return paths


def camera_choice(resources: Resources, focal: float | None, fov: float | None,
                  principal: tuple[float, float] | None = None) -> Callable[[Path, int, int], Camera]:
    """(image path, width, height) -> its Camera: the challenge's (same size only), or a pinhole
    camera of focal length `focal` px or horizontal field of view `fov` degrees, its principal
    point `principal` (u, v) in OpenCV's pixel coordinates, as a calibration gives it (None: the
    image centre)."""
    challenge = resources.camera
    if principal is not None and focal is None and fov is None:
        raise PredictError("--principal needs --focal or --fov")
    centre = None if principal is None else tuple(from_opencv_pixels(principal))

    def camera(path: Path, width: int, height: int) -> Camera:
        if focal is not None or fov is not None:
            try:
                return Camera.pinhole(focal if focal is not None else focal_from_fov(fov, width), width, height,
                                      centre)
            except ValueError as err:
                raise PredictError(f"{path}: {err}") from None
        if (width, height) != (challenge.width, challenge.height):
            raise PredictError(f"{path}: image is {width}x{height}, the challenge camera's is "
                               f"{challenge.width}x{challenge.height}: give --focal PX or --fov DEG")
        return challenge
    return camera


def camera_bound(model: FaceNet) -> str | None:
    """The key that ties the network to the camera it was trained with (None: none does): the
    direct head's depth code assumes its focal length, image CoordConv maps its image size."""
    if model.pose is not None:
        return "train.pose_head=direct6dof (its depth code assumes the training camera's focal length)"
    if model.config.coordconv and model.config.coord_maps == "image":
        return "train.coord_maps=image (its position maps are scaled by the training images' size)"
    return None


def load_detector(path: Path, settings: InferSettings, workers: int, amp: bool) -> Detector:
    """The coarse detector; a missing or unreadable file is a PredictError naming it."""
    if not path.is_file():
        raise PredictError(f"{path}: coarse detector not found (run `python -m stages.launch coarse_train`, or "
                           "`dvc repro coarse_train` where crop.detector lists it)")
    try:
        return Detector(path, settings.device, workers, amp)
    except (ValueError, KeyError, RuntimeError) as err:
        raise PredictError(f"{path}: not a coarse detector model ({str(err)[:300]})") from None


def load_model(params: Params, artifacts: Path, resources: Resources) -> tuple[FaceNet, np.ndarray | None]:
    """The network artifacts/<infer.checkpoint>/model.pt checked as in infer, less the crop run
    (module doc), and the flip permutation (V,) of artifacts/pca/basis.npz (None without
    flip & merge)."""
    basis = artifacts / "pca" / "basis.npz"
    infer = params.infer
    model = load_network_for_images(artifacts / infer.checkpoint / "model.pt", basis, params.train, params.crop.size,
                                    resources.n_verts)
    perm = load_flip_perm(basis, "set infer.flip_merge: none") if infer.flip_merge != "none" else None
    return model, perm


def load_pipeline(params: Params, artifacts: Path = ARTIFACTS, **gate: float) -> Pipeline:
    """Detector, network and settings from params and artifacts; `gate`: min_inside, max_shift."""
    data, crop, coarse = params.data, params.crop, params.coarse_predict
    resources = load_resources(data.root)
    # no CUDA graphs: each batch of images gives any number of crops, and a capture per number
    # would outweigh its replays
    settings = replace(InferSettings.of(params.infer), cuda_graph=False)
    if crop.source != "coarse":
        log.warning("crop.source=%s: the network was trained on crops of those landmarks; predict crops every "
                    "image from the coarse detector's", crop.source)
    detector = load_detector(artifacts / "coarse_train" / "model.pt", settings, data.workers, coarse.amp)
    coarse = replace(coarse, flip_test=detector.usable_flip_test(coarse.flip_test))
    model, perm = load_model(params, artifacts, resources)
    reference = reference_shape(resources.template, resources.kpt_ind, crop.size, crop.margin)
    return Pipeline(detector, model, perm, resources, reference, crop, coarse, settings, **gate)


def face_problems(pipeline: Pipeline, trace: np.ndarray, images: list[np.ndarray]) -> tuple[Confidence, dict[int, str]]:
    """Confidence of a batch's detections (trace (P, B, L, 2)) and {image index: why it has no face}."""
    conf = confidence(trace, np.array([[a.shape[1], a.shape[0]] for a in images]))
    reasons = {index: no_face_reason(conf, index, pipeline.min_inside, pipeline.max_shift) for index in range(len(images))}
    return conf, {index: reason for index, reason in reasons.items() if reason}


def crop_and_predict(pipeline: Pipeline, images: list[np.ndarray], coarse: np.ndarray, camera: Camera,
                     pool: ThreadPoolExecutor) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Images of one camera and their coarse landmarks (B, L, 2) full px -> the crop stage's
    crops, then infer's predictions of the B' images a crop warp fits: verts (B', V, 3), R_t
    (B', 4, 4), landmarks (B', V, 2), sigma (B', V), row `rows` (B',) of the B; and {row: why no
    crop fits} of the others."""
    model_points = pipeline.resources.template[pipeline.resources.kpt_ind]
    warps, problems = fitted_crop_warps(coarse, pipeline.reference, pipeline.crop.rotation, camera, model_points)
    rows = np.array([row for row in range(len(images)) if row not in problems], dtype=np.int64)
    problems = {row: f"no crop fits the detected face ({problem})" for row, problem in problems.items()}
    if not len(rows):
        return {"rows": rows}, problems
    size = pipeline.crop.size
    crops = np.stack(list(pool.map(lambda row: warp_image(images[row], warps[row], size), rows)))
    pred = predict_crops(pipeline.model, crops, invert_warp(warps[rows]), pipeline.perm, camera, pipeline.settings)
    return {**pred, "rows": rows}, problems


def prediction_problem(pred: dict[str, np.ndarray], row: int, settings: InferSettings) -> str | None:
    """Why prediction `row` is unusable (non-finite network outputs, or a failed PnP: no pose
    infer would accept, stages.wcpa.submission.pose_accepted), or None."""
    if not (np.isfinite(pred["verts"][row]).all() and np.isfinite(pred["landmarks"][row]).all()):
        return "the network gave non-finite outputs"
    if not pose_accepted(pred["R_t"][row][None])[0]:
        return (f"PnP ({settings.pnp}, {settings.pnp_flags}) failed or put the face behind the camera or "
                "implausibly far: another infer.pnp_flags may solve it")
    return None


def predict_batch(pipeline: Pipeline, images: list[np.ndarray | str], paths: list[Path],
                  cameras: Callable[[Path, int, int], Camera], pool: ThreadPoolExecutor) -> Iterator[dict]:
    """One batch of decoded images (or, for an unreadable one, its problem) -> per image, in
    order, a dict of its results (see write_outputs) or {"path", "problem"}."""
    readable = [index for index, image in enumerate(images) if not isinstance(image, str)]
    outcomes = dict(zip(readable, predict_decoded(pipeline, [images[i] for i in readable],
                                                  [paths[i] for i in readable], cameras, pool))) if readable else {}
    for index, path in enumerate(paths):
        yield outcomes.get(index, {"path": path, "problem": images[index]})


def predict_decoded(pipeline: Pipeline, images: list[np.ndarray], paths: list[Path],
                    cameras: Callable[[Path, int, int], Camera], pool: ThreadPoolExecutor) -> list[dict]:
    """Decoded images -> per image, in order, a dict of its results or {"path", "problem"} (no
    face, no crop fits, a failed prediction)."""
    def problem(k: int, reason: str) -> dict:
        return {"path": paths[k], "problem": reason}

    coarse = pipeline.coarse
    trace = pipeline.detector.trace(images, coarse.refine_passes, coarse.flip_test, settle=coarse.settle)
    conf, no_face = face_problems(pipeline, trace, images)
    outcomes = {k: problem(k, reason) for k, reason in no_face.items()}
    groups: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(images):
        if k not in no_face:
            groups.setdefault((image.shape[1], image.shape[0]), []).append(k)
    for size, ks in groups.items():
        try:
            camera = cameras(paths[ks[0]], *size)
        except PredictError as err:             # every image of the size: a problem of its own
            outcomes.update({k: problem(k, split_message(err)[1]) for k in ks})
            continue
        pred, no_crop = crop_and_predict(pipeline, [images[k] for k in ks], trace[-1][ks], camera, pool)
        outcomes.update({ks[row]: problem(ks[row], reason) for row, reason in no_crop.items()})
        for out_row, k in enumerate(ks[row] for row in pred["rows"]):
            failed = prediction_problem(pred, out_row, pipeline.settings)
            outcomes[k] = problem(k, failed) if failed else {
                "path": paths[k], "image": images[k], "camera": camera, "coarse68": trace[-1][k],
                "confidence": {"inside": float(conf.inside[k]), "shift": float(conf.shift[k])},
                **{key: value[out_row] for key, value in pred.items() if key != "rows"}}
    return [outcomes[k] for k in range(len(images))]


def write_outputs(out: Path, result: dict, resources: Resources, overlay: bool = True) -> None:
    """The files of one image (module doc) from a predict_batch result; overlay False: without
    the overlay PNG (its encoding is ~25 ms of an 800x800 image, the largest cost per image)."""
    stem, R_t, verts = result["path"].stem, result["R_t"], result["verts"]
    camera = result["camera"]
    landmarks68 = result["landmarks"][resources.kpt_ind]
    write_obj(out / f"{stem}_canonical.obj", verts, resources.faces)
    write_obj(out / f"{stem}_camera.obj", to_camera(verts, R_t), resources.faces)
    save_json(out / f"{stem}_pose.json", {
        "image": str(result["path"]), "R_t": R_t, "convention": "row vectors, OpenGL camera: x_cam = [v, 1] @ R_t",
        "landmarks68": landmarks68, "confidence": result["confidence"],
        "projection_matrix": camera.proj, "image_size": [camera.width, camera.height]})
    save_npz(out / f"{stem}.npz", R_t=R_t, verts=verts, landmarks=result["landmarks"], landmarks68=landmarks68,
             coarse68=result["coarse68"], sigma=result["sigma"], proj=camera.proj,
             image_size=np.array([camera.width, camera.height]))
    if overlay:
        drawn = draw_wireframe(result["image"], camera.project(verts, R_t), resources.faces)
        save_png(out / f"{stem}_overlay.png", draw_points(drawn, landmarks68))


def read_or_problem(path: Path) -> np.ndarray | str:
    """An image file -> (H, W, 3) uint8 RGB, or for an unreadable one its problem."""
    try:
        return read_image(path, orient=True)
    except DataError as err:
        return split_message(err)[1]


def batches(paths: list[Path], size: int, pool: ThreadPoolExecutor) -> Iterator[tuple[list[Path], list[np.ndarray | str]]]:
    """(paths, decoded images or problems) per batch of `size`; the next batch decodes in `pool` meanwhile."""
    chunks = [paths[start:start + size] for start in range(0, len(paths), size)]
    pending = [pool.map(read_or_problem, chunk) for chunk in chunks[:1]]
    for index, chunk in enumerate(chunks):
        if index + 1 < len(chunks):
            pending.append(pool.map(read_or_problem, chunks[index + 1]))
        yield chunk, list(pending[index])


def run(params: Params, inputs: list[Path | str], out: Path | str, focal: float | None = None,
        fov: float | None = None, principal: tuple[float, float] | None = None, artifacts: Path = ARTIFACTS,
        overlay: bool = True, skip_bad: bool = False, refine_passes: int | None = None,
        settle: float | None = None, **gate: float) -> dict[str, float]:
    """Predict every image of `inputs` into `out` (files written by data.workers threads while the
    next batch runs); returns {"images", "skipped", "seconds", "images_per_second"}. An image that
    gives no prediction (unreadable, no face, no crop, a failed PnP) stops the run naming it, or
    with skip_bad is listed in out/SKIPPED_FILE (stages.common.badinput's list) and left out.
    refine_passes, settle: the detector's (None: coarse_predict's in params)."""
    if focal is not None and fov is not None:
        raise PredictError("give --focal or --fov, not both")
    paths = list_images(inputs)
    passes = {key: value for key, value in (("refine_passes", refine_passes), ("settle", settle)) if value is not None}
    pipeline = load_pipeline(params.replace(coarse_predict=passes), Path(artifacts), **gate)
    bound = camera_bound(pipeline.model) if focal is not None or fov is not None else None
    if bound:
        raise PredictError(f"{Path(artifacts) / params.infer.checkpoint / 'model.pt'}: {bound}: it predicts with the "
                           "challenge's camera only, on its image size (leave out --focal and --fov)")
    cameras = camera_choice(pipeline.resources, focal, fov, principal)
    started = time.perf_counter()
    workers = max(1, params.data.workers)
    with ThreadPoolExecutor(workers) as readers, ThreadPoolExecutor(workers) as pool, \
            ThreadPoolExecutor(workers) as writer, tqdm(total=len(paths), desc="predict", unit="img") as bar:
        written, bad = collections.deque(), BadInputs(skip=True, max_fraction=1.0)
        for chunk, images in batches(paths, pipeline.settings.batch_size, readers):
            for result in predict_batch(pipeline, images, chunk, cameras, pool):
                if "problem" not in result:
                    if not overlay:
                        result.pop("image")          # the decoded image: only the overlay draws on it
                    written.append(writer.submit(write_outputs, Path(out), result, pipeline.resources, overlay))
                    while len(written) > WRITES_IN_FLIGHT * workers:
                        written.popleft().result()
                elif skip_bad:
                    bad.add(str(result["path"]), str(result["path"]), result["problem"])
                else:
                    raise PredictError(f"{result['path']}: {result['problem']}")
            bar.update(len(chunk))
        for future in written:
            future.result()
    if skip_bad:                         # also when empty: no list of an earlier run stays behind
        bad.write(Path(out) / SKIPPED_FILE)
    seconds = time.perf_counter() - started
    log.info("%d images in %.1f s (%.1f images/s) into %s", len(paths), seconds, len(paths) / seconds, out)
    return {"images": len(paths), "skipped": len(bad), "seconds": seconds,
            "images_per_second": len(paths) / max(seconds, 1e-9)}


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and folders of images")
    parser.add_argument("--out", required=True, help="output folder")
    camera = parser.add_mutually_exclusive_group()
    camera.add_argument("--focal", type=float, help="focal length in px (a face 10 m or more away counts as a "
                        "failed PnP, as in infer)")
    camera.add_argument("--fov", type=float, help="horizontal field of view in degrees, across the image as "
                        "displayed (turned by its EXIF orientation, as cv2.imread reads it)")
    parser.add_argument("--principal", type=float, nargs=2, metavar=("CX", "CY"),
                        help="principal point in px, OpenCV's coordinates (the top-left pixel's centre is 0, 0), as "
                             "a calibration gives it, of the image as displayed (turned by its EXIF orientation); "
                             "default: the image centre (with --focal or --fov)")
    parser.add_argument("--refine-passes", type=int, help="the detector's refine passes, at most (default "
                        "coarse_predict.refine_passes)")
    parser.add_argument("--settle", type=float, help="stop an image's refine passes once one moves its landmarks by "
                        "less than this share of the face (default coarse_predict.settle; e.g. 0.01 with "
                        "--refine-passes 8 for faces smaller than the data's)")
    parser.add_argument("--min-inside", type=float, default=MIN_INSIDE, help="stages.coarse.confidence")
    parser.add_argument("--max-shift", type=float, default=MAX_SHIFT, help="stages.coarse.confidence")
    parser.add_argument("--no-overlay", dest="overlay", action="store_false", help="skip the overlay PNGs")
    parser.add_argument("--skip-bad", action="store_true",
                        help=f"list the images that give no prediction in DIR/{SKIPPED_FILE} and go on, instead of stopping")


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, options, argv, errors=(PredictError, CheckpointError, DataError, ParamsError))


if __name__ == "__main__":
    main()
