"""JPEG 2000 decoded at a reduced resolution: the codestream header, the geometry of a reduced level, the
preparation from it against a full decode's, the cache keyed by the decode mode; integer pixels kept until
the block means."""
import json
import os

import cv2
import numpy as np
import pytest
from openjpeg import encode
from pydicom.uid import JPEG2000Lossless, RLELossless

from mammo_tl.data import jpeg2000
from mammo_tl.data.datasets import load_csv_dataset
from mammo_tl.data.dicom import read_dicom
from mammo_tl.data.image_io import read_image, read_stored_image, to_model_input
from mammo_tl.data.prepare import prepare_dataset
from mammo_tl.data.preprocess import _block_mean, preprocess
from mammo_tl.data.resolution import ResolutionRequest
from tests.common import REPO, config_path, run_in_process
from tests.dicom_fixtures import make_dicom
from tests.realistic_fixtures import mammogram, write_dicom

# A mammogram's proportions (4672 x 2632 / 4), small enough for a test; the model's input 128 x 128.
SHAPE, SIZE = (1168, 658), (128, 128)
MASS = (130, 470, 205, 560)  # x1, y1, x2, y2 in stored pixels, breast against the left edge


def _codestream(pixels, bits):
    return encode(pixels, bits_stored=bits, photometric_interpretation=2, use_mct=False)


def test_header_levels_and_exact_full_decode():
    rng = np.random.default_rng(0)
    for bits in (10, 12, 16):
        x = (rng.random((77, 45)) * (2 ** bits - 1)).astype(np.uint16)
        cs = _codestream(x, bits)
        info = jpeg2000.parse_codestream(cs)
        # openjpeg's encoder writes 6 resolutions = 5 decomposition levels
        assert info == jpeg2000.CodestreamInfo(45, 77, 0, 0, 1, bits, False, 5)
        # 77 / 2**r rounded up: 39, 20, 10, 5, 3; Pillow rounds half up: 39, 19, 10, 5, 2 -> levels 2 and 5 refused
        assert jpeg2000.usable_levels(info) == [0, 1, 3, 4]
        assert [jpeg2000.reduced_size(info, r) for r in (1, 3, 4)] == [(39, 23), (10, 6), (5, 3)]
        np.testing.assert_array_equal(jpeg2000.decode(cs, 0), x)  # Pillow's 16-bit scaling undone exactly
        with pytest.raises(ValueError, match="reduce 2 is not a usable level"):
            jpeg2000.decode(cs, 2)
    with pytest.raises(ValueError, match="not a JPEG 2000 codestream"):
        jpeg2000.parse_codestream(b"\x00" * 64)


def test_reduced_level_samples_the_stored_grid_at_scale_times_i():
    """Level r's pixel i is the low-pass sample at stored pixel 2**r * i: exact on a linear ramp."""
    x = np.tile((np.arange(64) * 40 + 100).astype(np.uint16), (64, 1))
    cs = _codestream(x, 12)
    for r in (1, 2, 3):
        s = 1 << r
        np.testing.assert_array_equal(jpeg2000.decode(cs, r)[0, :-1], x[0, :64 - s:s])


@pytest.mark.parametrize("scale,size", [(1, (200, 300)), (2, (100, 150)), (4, (50, 80))])
def test_transform_crop_is_the_area_each_output_pixel_averages(tmp_path, scale, size):
    """On a horizontal ramp (stored pixel k has value 100 + 3k), output column j must hold the mean of the
    stored columns under it, 100 + 3 * (x1 + (j + 0.5) * (x2 - x1) / w - 0.5) with (x1, x2) the transform's
    crop: the crop recorded is where the pixels came from. Checked for a full decode and decodes at 2 and 4
    times coarser levels (edge columns left out: the wavelet mirrors the image at its border)."""
    h, w = 256, 384
    x = np.tile((100 + 3 * np.arange(w)).astype(np.uint16), (h, 1))
    path = write_dicom(str(tmp_path / "ramp.dcm"), x, "P1", bits_stored=12, syntax=JPEG2000Lossless)
    # the coarsest level whose whole image spans size + 1: 256 x 384 / scale, and not / (2 * scale)
    request = ResolutionRequest(size, crop=False, oversample=1)
    image, meta, _ = read_dicom(path, keep_integers=True, resolution=request)
    geometry = meta["decode_geometry"]
    assert geometry.scale == scale and image.shape == (h // scale, w // scale)
    out, t = preprocess(image, size=size, crop=False, geometry=geometry)
    x1, _, x2, _ = t.crop
    centres = x1 + (np.arange(size[1]) + 0.5) * (x2 - x1) / size[1] - 0.5
    err = out[size[0] // 2, 1:-1] - (100 + 3 * centres[1:-1])
    # on average within 0.02 stored pixel (a shift of the half-pixel kind would be 1.5 pixels at scale 4); each
    # column within 0.3 stored pixel (OpenCV's INTER_AREA weights for non-whole factors are not exact)
    assert abs(err.mean()) <= 3 * 0.02 and np.abs(err).max() <= 3 * 0.3
    # boxes map through the same numbers both ways
    box = np.array([[50.0, 20.0, 200.0, 100.0]])
    np.testing.assert_allclose(t.inverse_boxes(t.apply_boxes(box)), box)


def test_level_choice_finds_the_crop_coarse_then_decodes_what_it_needs():
    """A 4672 x 2632 image (levels 0-5): breast_bbox's grid is every 9th pixel, so step 1 decodes level 3
    (8 <= 9). The breast fills 70 % of the width, so its crop is about 1870 stored pixels wide (1842 + the 1 %
    margins): a 512-wide input needs level 1 (935 - 1 >= 512; level 2 gives 467), a 200-wide one is served by
    step 1's level 3 (233 - 1 >= 200), and a 1000-wide one needs the full image (level 1 would hold the whole
    image, 1316 wide, but not the crop), whose crop is then found on it."""
    full_h, full_w = 4672, 2632
    calls = []

    def decode_at(r):
        calls.append(r)
        h, w = -(-full_h // (1 << r)), -(-full_w // (1 << r))
        img = np.full((h, w), 100, np.uint16)
        img[int(0.1 * h):int(0.9 * h), :int(0.7 * w)] = 3000
        return img

    for size, oversample, expected_calls, scale in (((512, 512), 1, [3, 1], 2), ((200, 200), 1, [3], 8),
                                                    ((1000, 1000), 1, [3, 0], 1)):
        calls.clear()
        image, geometry = ResolutionRequest(size, oversample=oversample).decode(decode_at, (full_h, full_w),
                                                                                range(6))
        assert calls == expected_calls and geometry.scale == scale and geometry.original_size == (full_h, full_w)
        assert image.shape == (-(-full_h // scale), -(-full_w // scale))
        if scale == 1:
            assert geometry.crop is None
        else:
            x1, y1, x2, y2 = geometry.crop
            assert x1 == 0 and abs(x2 - (0.7 * full_w + 26)) <= 9 and abs(y2 - y1 - (0.8 * full_h + 2 * 46)) <= 18
    calls.clear()  # no crop: one decode at the coarsest level whose whole image spans the size + 1
    _, geometry = ResolutionRequest((512, 512), crop=False).decode(decode_at, (full_h, full_w), range(6))
    assert calls == [2] and geometry.scale == 4 and geometry.crop is None  # 658 - 1 >= 512; 329 is too few


def _mammogram_dicom(folder, side="L", photometric="MONOCHROME2", bits=12, syntax=JPEG2000Lossless):
    mass = MASS if side == "L" else (SHAPE[1] - MASS[2], MASS[1], SHAPE[1] - MASS[0], MASS[3])
    img = mammogram(SHAPE, side, masses=[mass], max_value=2 ** bits - 1)
    path = write_dicom(os.path.join(folder, f"{side}_{bits}.dcm"), img, "P1", laterality=side, view="CC",
                       photometric=photometric, bits_stored=bits, syntax=syntax)
    return path, np.array([mass], dtype=np.float64)


@pytest.mark.parametrize("side,photometric,bits", [("L", "MONOCHROME2", 12), ("R", "MONOCHROME1", 16)])
def test_reduced_preparation_equals_full_within_tolerance(tmp_path, side, photometric, bits):
    """The stated tolerance (docs/benchmarks.md): the crop within one breast_bbox grid step plus one decoded pixel
    of the full decode's (here 2 + 2 stored pixels); the model's input (windowed to 0..255) within a mean of 1.5
    and a 99th percentile of 8 (the differences sit on the breast's and the mass's borders: the low-pass
    filter's overshoot and the sub-pixel shift of the crop); a box mapped into the model's grid within 0.25
    pixel."""
    path, mass = _mammogram_dicom(str(tmp_path), side, photometric, bits)
    full, t_full = preprocess(read_image(path, keep_integers=True), size=SIZE, crop=True)
    stored = read_stored_image(path, keep_integers=True, resolution=ResolutionRequest(SIZE))
    geometry = stored.meta["decode_geometry"]
    # breast_bbox's grid is every 2nd pixel (1168 // 512), so the crop is found at level 1; the crop spans
    # about 520 x 1096 stored pixels, so level 2 (130 x 274) would also hold 128 + 1: step 1's level-1 pixels
    # are used as they are
    assert geometry.scale == 2 and stored.pixels.shape == (SHAPE[0] // 2, SHAPE[1] // 2)
    assert stored.pixels.dtype == np.uint16 and stored.meta["decode_fallback"] is None
    reduced, t_red = preprocess(stored.pixels, size=SIZE, crop=True, geometry=geometry)
    assert t_red.original_size == SHAPE and t_red.size == SIZE
    assert np.abs(np.subtract(t_red.crop, t_full.crop)).max() <= 2 + geometry.scale
    d = np.abs(to_model_input(full)[..., 0] - to_model_input(reduced)[..., 0])
    assert d.mean() <= 1.5 and np.percentile(d, 99) <= 8
    assert np.abs(t_red.apply_boxes(mass) - t_full.apply_boxes(mass)).max() <= 0.25


def test_rescale_and_window_apply_to_the_reduced_pixels(tmp_path):
    """Rescale Slope 1.5 and a LINEAR window that clips the brightest tissue: the reduced decode takes the same
    reader path (float32 after the window) and stays within the tolerance above."""
    img = mammogram(SHAPE, "L", masses=[MASS], max_value=4095)
    path = make_dicom(tmp_path / "w.dcm", img, syntax=JPEG2000Lossless, bits_stored=12, slope=1.5, intercept=-10,
                      window=(2500, 4000))
    full, meta_full, _ = read_dicom(path, keep_integers=True)
    image, meta, _ = read_dicom(path, keep_integers=True, resolution=ResolutionRequest(SIZE))
    assert meta["decode_geometry"].scale == 2 and image.dtype == full.dtype == np.float32
    assert meta["voi_applied"] and meta_full["voi_applied"]
    a, _ = preprocess(full, size=SIZE, crop=True)
    b, _ = preprocess(image, size=SIZE, crop=True, geometry=meta["decode_geometry"])
    d = np.abs(to_model_input(a)[..., 0] - to_model_input(b)[..., 0])
    assert d.mean() <= 1.5 and np.percentile(d, 99) <= 8


def test_other_formats_are_decoded_in_full_and_say_why(tmp_path):
    path, _ = _mammogram_dicom(str(tmp_path), syntax=RLELossless)
    image, meta, _ = read_dicom(path, keep_integers=True, resolution=ResolutionRequest(SIZE))
    assert image.shape == SHAPE and meta["decode_geometry"] is None
    assert meta["decode_fallback"] == f"transfer syntax {RLELossless} has no reduced resolutions"
    np.testing.assert_array_equal(image, read_image(path, keep_integers=True))
    png = str(tmp_path / "a.png")
    cv2.imwrite(png, image)
    stored = read_stored_image(png, keep_integers=True, resolution=ResolutionRequest(SIZE))
    assert stored.meta["decode_geometry"] is None and "not a DICOM file" in stored.meta["decode_fallback"]


def test_prepare_cache_is_keyed_by_the_decode_mode(tmp_path):
    path, mass = _mammogram_dicom(str(tmp_path))
    x1, y1, x2, y2 = (int(v) for v in mass[0])
    csv = tmp_path / "data.csv"
    csv.write_text(f"patient_id,path,laterality,view,label,boxes\nP1,{os.path.basename(path)},L,CC,1,"
                   f"{x1} {y1} {x2} {y2}\n")
    records = load_csv_dataset(str(csv))
    out = str(tmp_path / "prepared")

    def run(decode):
        return prepare_dataset(records, out, size=SIZE, crop=True, workers=1, progress=False, decode=decode)

    # the first run as typed: tools/prepare_dataset.py csv ... --decode full, into the same cache
    r = run_in_process(["tools/prepare_dataset.py", "csv", "--csv", str(csv), "--output", str(tmp_path),
                        "--size", str(SIZE[0]), str(SIZE[1]), "--workers", "1", "--decode", "full"])
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["prepared"] == 1 and report["decoded_at_scale"] == {"1": 1}
    full, report = run("full")
    assert report["cached"] == 1
    assert "decode" not in report["options"]  # entries made by full decoding keep their former key
    reduced, report = run("reduced")  # never the full decode's entry taken for a reduced one
    assert report["rebuilt_by_reason"] == {"options changed": 1} and report["decoded_at_scale"] == {"2": 1}
    assert report["options"]["decode"] == "reduced" and report["options"]["oversample"] == 1
    _, report = run("reduced")
    assert report["cached"] == 1 and report["decoded_at_scale"] == {}
    _, report = run("full")
    assert report["cached"] == 1
    a, b = (cv2.imread(r[0]["file_name"], cv2.IMREAD_UNCHANGED).astype(np.float64) / 257 for r in (full, reduced))
    assert np.abs(a - b).mean() <= 1.5 and np.percentile(np.abs(a - b), 99) <= 8
    box = lambda r: np.array(r[0]["annotations"][0]["bbox"])  # noqa: E731
    assert np.abs(box(full) - box(reduced)).max() <= 0.25
    saved = json.load(open(os.path.join(out, "records.json")))
    assert saved[0]["transform"]["original_size"] == list(SHAPE)


def test_block_sums_of_integers_are_exact():
    """20 x 20 blocks of 16-bit pixels sum past 2**24, where float32 sums round: the means must equal
    float64's, rounded once."""
    rng = np.random.default_rng(1)
    region = rng.integers(60000, 65536, size=(40, 60), dtype=np.uint16)
    expected = region.astype(np.float64).reshape(2, 20, 3, 20).mean(axis=(1, 3)).astype(np.float32)
    np.testing.assert_array_equal(_block_mean(region, 20, 20), expected)


def test_integer_preparation_at_the_model_size_matches_the_former_float_path():
    """predict's former preparation (the crop in float32, then OpenCV's area resize of the whole crop: exact area
    averaging) against preprocess at the model's size on the integer pixels (whole blocks averaged as integers,
    then OpenCV's area resize of the block means, as tools/prepare_dataset.py prepares the training images).
    On the full path's 0..255 window: a mean difference within 1.5 and a 99th percentile within 12 (the
    block means approximate area averaging where a sharp border crosses a block); boxes within 0.2 model
    pixel."""
    img = mammogram(SHAPE, "L", masses=[MASS], max_value=4095)
    crop, t0 = preprocess(img, size=None, crop=True)  # the former path's float32 crop
    old = cv2.resize(crop, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_AREA)
    new, t1 = preprocess(img, size=SIZE, crop=True)
    d = np.abs(old - new) * 255 / (old.max() - old.min())
    assert d.mean() <= 1.5 and np.percentile(d, 99) <= 12
    # the former transform: the crop, then a plain rescale to SIZE
    sx, sy = SIZE[1] / (t0.crop[2] - t0.crop[0]), SIZE[0] / (t0.crop[3] - t0.crop[1])
    b = np.array([MASS], dtype=np.float64)
    former = (b - [t0.crop[0], t0.crop[1], t0.crop[0], t0.crop[1]]) * [sx, sy, sx, sy]
    assert np.abs(t1.apply_boxes(b) - former).max() <= 0.2


def test_inference_bench_on_jpeg2000_at_the_smallest_size(tmp_path, monkeypatch):
    """docs/benchmarks.md's bench/inference.py --syntax jpeg2000 command, tiny: it writes its JSON with both
    decode timings."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "bench"))  # the script imports bench/_common.py
    out = tmp_path / "inference_j2k.json"
    run = run_in_process(["bench/inference.py", "--config", config_path("synthetic/d_tl_similarity.yaml"),
                          "--device", "cpu", "--syntax", "jpeg2000", "--images", "2", "--rows", "256", "--cols", "192",
                          "--workers", "0", "--repeats", "1", "--json", str(out), "INPUT.FIXED_SIZE", "(64, 64)",
                          "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"])
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.load(open(out))
    assert res["syntax"] == "jpeg2000" and res["reduced_decode_and_prepare_ms_per_image_one_process"] > 0


def test_predict_decodes_jpeg2000_reduced_maps_boxes_back_and_keys_resume(tmp_path, tmp_path_factory, monkeypatch):
    """tools/predict.py's path (run_predict) on a JPEG 2000 mammogram: decoded at level 2 (a quarter of the
    pixels each way), its boxes in stored pixels agree with a full decode's run (the same model) within the
    tolerance of the model input above; the run records the decoding, so a run made with full decoding (a
    run.json without the key, as written before) is not resumed as if it were the same."""
    import mammo_tl.inference.predictor as predictor
    from mammo_tl.inference.command import PredictError, run_predict
    from tests.test_weights import tiny_config_file

    path, _ = _mammogram_dicom(str(tmp_path / "in"))
    config = tiny_config_file(tmp_path_factory)
    opts = ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    scales, original_call = [], predictor.InputPreparer.__call__

    def spy(self, image, geometry=None):
        scales.append(geometry.scale if geometry is not None else 1)
        return original_call(self, image, geometry)

    monkeypatch.setattr(predictor.InputPreparer, "__call__", spy)
    reduced, _ = run_predict(config, [path], str(tmp_path / "reduced"), opts, workers=0, min_score=0.0)
    run = json.load(open(tmp_path / "reduced" / "run.json"))
    assert run["options"]["decode"] == "jpeg2000 reduced, oversample 1"

    original_init = predictor.InputPreparer.__init__

    def full_decoding(self, cfg):
        original_init(self, cfg)
        self.resolution = None  # the loader then decodes every file in full

    monkeypatch.setattr(predictor.InputPreparer, "__init__", full_decoding)
    full, _ = run_predict(config, [path], str(tmp_path / "full"), opts, workers=0, min_score=0.0)
    (r,), (f,) = reduced, full
    assert len(r["boxes"]) == len(f["boxes"]) > 0
    # a random model scores every box about alike (0.5), so which boxes survive NMS and the 100 kept changes
    # with the least difference in the input; what must hold is that the boxes mapped back from the reduced
    # decode land where the full decode's do: half or more of the reduced run's 20 top boxes have a box of the full run
    # within 2 pixels of the model's 128 grid (1168 / 128 stored pixels each). A box mapped with a wrong scale
    # (the decoded grid's instead of the stored one's) would be hundreds of pixels off.
    fb = np.array(f["boxes"])
    near = [np.abs(fb - box).max(axis=1).min() <= 2 * 1168 / 128 for box in np.array(r["boxes"][:20])]
    assert sum(near) >= 10, near  # 15 of 20 measured
    # the tiny config does not crop (INPUT.CROP_TO_BREAST False): the whole image at level 2, 292 x 165 >= 128 + 1
    assert scales == [4, 1]  # the reduced run, then the full one
    boxes = np.array(r["boxes"])  # in stored pixels (658 wide, 1168 high), not in the decoded (165 x 292) grid
    assert boxes[:, [0, 2]].max() <= 658 and boxes[:, [1, 3]].max() <= 1168 and boxes[:, 3].max() > 584

    monkeypatch.setattr(predictor.InputPreparer, "__init__", original_init)
    del run["options"]["decode"]  # a run.json written before JPEG 2000 inputs were decoded reduced
    (tmp_path / "reduced" / "run.json").write_text(json.dumps(run))
    with pytest.raises(PredictError, match=r"JPEG 2000 decoding \('full' then, 'jpeg2000 reduced, oversample 1' now\)"):
        run_predict(config, [path], str(tmp_path / "reduced"), opts, workers=0, min_score=0.0, resume=True)
