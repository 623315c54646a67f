"""Metric values: fast functions vs the straightforward reference code, vs scikit-image / scikit-learn,
vs values worked out by hand, and on degenerate inputs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from diffmf_cli.errors import UsageError
from diffmf_cli.metrics import (
    METRIC_NAMES,
    METRICS,
    REFERENCE,
    STANDARD,
    compute_metrics,
    parse_convention,
    parse_metric_names,
)
from diffmf_cli.metrics import statistics, structural
from diffmf_cli.metrics.convention import VARIANTS, Convention

sys.path.insert(0, str(Path(__file__).resolve().parent))
import metrics_reference as ref  # noqa: E402


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """Whole gray levels 0..255 with smooth shading, edges, a flat block and noise (like a real image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 90 + 60 * np.sin(x / (5 + seed)) * np.cos(y / 7) + 40 * (x > w * 0.6) - 30 * (y < h * 0.3)
    img += rng.normal(0, 6, (h, w))
    img[h // 2 : h // 2 + 8, 2:12] = 17.0  # a flat patch: exercises the zero-variance branches
    return np.clip(np.round(img), 0, 255)


#: Qabf and Nabf run in float32 like the reference evaluator (the steep sigmoids amplify float32 rounding of
#: their arguments to ~1e-6 relative); the rest in float64
TOL = {"Qabf": 1e-6, "Nabf": 3e-6}


@pytest.fixture(scope="module")
def triple():
    A = scene(64, 72, 1)
    B = scene(64, 72, 2)
    F = np.clip(np.round(0.55 * A + 0.45 * B + np.random.default_rng(3).normal(0, 4, A.shape)), 0, 255)
    return F, A, B


# --- fast vs the straightforward reference code ---------------------------------------------------------


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_fast_matches_reference_code(triple, name):
    F, A, B = triple
    values, warnings = compute_metrics(F, A, B, [name])
    assert warnings == []
    expected = ref.REFERENCE_FUNCTIONS[name](F, A, B)
    assert math.isfinite(values[name])
    assert values[name] == pytest.approx(expected, rel=TOL.get(name, 1e-9), abs=1e-12)


@pytest.mark.parametrize("name", ["VIF", "Qabf", "SSIM", "Nabf", "MS-SSIM"])
def test_strip_by_strip_metrics_match_reference_code_on_tall_images(name):
    # 200 rows of 90 px are computed in strips of 64 output rows (the last one short): the seams must not show
    A, B = scene(200, 90, 11), scene(200, 90, 12)
    F = np.clip(np.round(0.5 * A + 0.5 * B + np.random.default_rng(13).normal(0, 5, A.shape)), 0, 255)
    values, _ = compute_metrics(F, A, B, [name])
    assert values[name] == pytest.approx(ref.REFERENCE_FUNCTIONS[name](F, A, B), rel=TOL.get(name, 1e-9))


def test_variants_match_reference_code(triple):
    F, A, B = triple
    values, _ = compute_metrics(F, A, B, ["SSIM", "MI", "PSNR", "AG"], STANDARD)
    assert values["SSIM"] == pytest.approx(ref.ssim_ref(F, A, B, 255.0, total=False), rel=1e-10)
    assert values["MI"] == pytest.approx(ref.mi_ref(F, A, B, bits=True), rel=1e-10)
    assert values["PSNR"] == pytest.approx(ref.psnr_ref(F, A, B, peak_255=True), rel=1e-12)
    assert values["AG"] == pytest.approx(ref.ag_ref(F, matlab=True), rel=1e-12)


def test_standard_ms_ssim_matches_reference_code():
    A, B = scene(170, 176, 4), scene(170, 176, 5)
    F = np.round(0.5 * A + 0.5 * B)
    values, warnings = compute_metrics(F, A, B, ["MS-SSIM"], parse_convention("msssim-standard"))
    expected = 0.5 * (ref.ms_ssim_pair_ref(F, A) + ref.ms_ssim_pair_ref(F, B))
    assert warnings == []
    assert values["MS-SSIM"] == pytest.approx(expected, rel=1e-9)


def test_mef_ssim_odd_sizes_match_reference_code():
    # odd sizes exercise the symmetric padding of the 2x2 down-sampling
    A, B = scene(47, 53, 6), scene(47, 53, 7)
    F = np.round(0.3 * A + 0.7 * B)
    assert structural.mef_ssim(F, A, B) == pytest.approx(ref.mef_ssim_ref(F, A, B), rel=1e-9)


def test_mef_ssim_with_one_flat_source_region_matches_reference_code():
    # a large flat area in A only: windows where one source is flat and the other is not
    A, B = scene(60, 64, 14), scene(60, 64, 15)
    A[10:40, 20:56] = 120.0
    F = np.round(0.5 * A + 0.5 * B)
    assert structural.mef_ssim(F, A, B) == pytest.approx(ref.mef_ssim_ref(F, A, B), rel=1e-9)


def test_mef_ssim_where_one_source_is_the_others_negative_or_flat_beside_strong_texture():
    """Regression (LLVIP train pairs scored 1e68 or NaN): a flat region of A beside strong texture in B made
    the ratio of the two weights ~1e20, and a window where B = const - A made the pseudo-reference's norm
    cancel to rounding; both now follow the reference code (the second: r = 0, its zero-norm branch)."""
    A, B = scene(64, 72, 16), scene(64, 72, 17)
    A[5:35, 30:70] = 200.0                        # flat in A, textured (strong) in B
    B[5:35, 30:70] = np.clip(B[5:35, 30:70] * 2.5 - 100, 0, 255)
    two_level = 100.0 + (np.indices((20, 20)).sum(axis=0) % 2)
    A[40:60, 5:25] = two_level                    # B is A's negative here: every window cancels
    B[40:60, 5:25] = 201.0 - two_level
    F = np.round(0.5 * A + 0.5 * B)
    ours = structural.mef_ssim(F, A, B)
    assert 0 < ours <= 1
    assert ours == pytest.approx(ref.mef_ssim_ref(F, A, B), rel=1e-6)


# --- independent libraries ------------------------------------------------------------------------------


@pytest.mark.parametrize("data_range", [2.0, 255.0])
def test_ssim_matches_scikit_image(triple, data_range):
    from skimage.metrics import structural_similarity

    F, A, B = triple
    expected = structural_similarity(F, A, data_range=data_range) + structural_similarity(
        F, B, data_range=data_range
    )
    conv = Convention(ssim_data_range=data_range)
    assert compute_metrics(F, A, B, ["SSIM"], conv)[0]["SSIM"] == pytest.approx(expected, rel=1e-10)


def test_mi_matches_scikit_learn(triple):
    from sklearn.metrics import mutual_info_score

    F, A, B = triple
    nats = mutual_info_score(F.ravel(), A.ravel()) + mutual_info_score(F.ravel(), B.ravel())
    assert statistics.mutual_information(F, A, B) == pytest.approx(nats, rel=1e-10)
    assert statistics.mutual_information(F, A, B, bits=True) == pytest.approx(nats / math.log(2), rel=1e-10)


def test_cc_matches_numpy_corrcoef(triple):
    F, A, B = triple
    expected = 0.5 * (np.corrcoef(F.ravel(), A.ravel())[0, 1] + np.corrcoef(F.ravel(), B.ravel())[0, 1])
    assert statistics.correlation_coefficient(F, A, B) == pytest.approx(expected, rel=1e-12)


# --- values worked out by hand --------------------------------------------------------------------------


def test_hand_values_on_tiny_arrays():
    F = np.array([[0.0, 2.0], [0.0, 2.0]])
    # EN: two levels, each half the pixels -> 1 bit
    assert statistics.entropy(F) == pytest.approx(1.0)
    # SD: values 0,2,0,2 -> population std 1
    assert statistics.std_dev(F) == pytest.approx(1.0)
    # SF: horizontal differences 2, 2 (mean square 4); vertical 0, 0 -> sqrt(4) = 2
    assert statistics.spatial_frequency(F) == pytest.approx(2.0)
    # AG: gx = 2 everywhere (one-sided), gy = 0 -> sqrt(4/2) per pixel; MATLAB: sum 4*sqrt2 / (1*1)
    assert statistics.average_gradient(F) == pytest.approx(math.sqrt(2))
    assert statistics.average_gradient(F, matlab=True) == pytest.approx(4 * math.sqrt(2))
    A = F.copy()
    B = np.full_like(F, 7.0)
    # MI(F,F) of a balanced two-level image is ln 2; against a constant it is 0
    assert statistics.mutual_information(F, A, B) == pytest.approx(math.log(2))
    assert statistics.mutual_information(F, A, B, bits=True) == pytest.approx(1.0)
    # MSE: (0 + mean((F-7)^2)) / 2 = (49 + 25) / 2 / 2
    assert statistics.mse(F, A, B) == pytest.approx((49 + 25) / 4)
    # PSNR with peak max(F) = 2: 10 log10(4 / 18.5)
    assert statistics.psnr(F, A, B) == pytest.approx(10 * math.log10(4 / 18.5))
    assert statistics.psnr(F, A, B, peak_255=True) == pytest.approx(10 * math.log10(255**2 / 18.5))


def test_qabf_identical_strong_edges_hand_value():
    # F = A = B with only strong edges: every edge pixel has g_src == g_F >= 200, so (reference quirk) the
    # strength ratio is g_F itself and Q_g = 0.9994; orientations agree, so Q_a = 0.9879 / (1 + e^-4.4).
    img = np.zeros((20, 24))
    img[:, 12:] = 200.0
    values, _ = compute_metrics(img, img, img, ["Qabf", "Nabf", "SSIM", "CC", "SCD"])
    assert values["Qabf"] == pytest.approx(0.9994 * 0.9879 / (1 + math.exp(-4.4)), rel=1e-6)
    assert values["Nabf"] == 0.0  # F never has stronger edges than both sources
    assert values["SSIM"] == pytest.approx(2.0)
    assert values["CC"] == pytest.approx(1.0)
    assert math.isnan(values["SCD"])  # F - A is constant: 0/0


def test_nabf_edges_only_in_fused_hand_value():
    # Flat sources, a vertical step in F: artifacts in the two columns beside the step. There g_A = 0, so the
    # strength ratio is 0 and the orientation term compares 0 with +-pi/2 (ratio 0): Q is tiny, all weights 0.001.
    A = np.full((16, 20), 100.0)
    B = np.full((16, 20), 60.0)
    F = np.zeros((16, 20))
    F[:, 10:] = 80.0
    q = math.sqrt(0.9999 / (1 + math.exp(19 * 0.5)) * 0.9995 / (1 + math.exp(22 * 0.5)))
    expected = (2 * 16) * (1 - q) * 0.002 / (16 * 20 * 0.002)
    assert compute_metrics(F, A, B, ["Nabf"])[0]["Nabf"] == pytest.approx(expected, rel=1e-6)


def test_vif_of_identical_images_is_two_and_flat_source_counts_one():
    A = scene(48, 50, 8)
    assert compute_metrics(A, A, A, ["VIF"])[0]["VIF"] == pytest.approx(2.0, rel=1e-6)
    flat = np.full_like(A, 40.0)
    # VIF(flat, F) is 0/0 -> 1.0 by the reference rule; VIF(A, A) ~ 1
    assert compute_metrics(A, flat, A, ["VIF"])[0]["VIF"] == pytest.approx(2.0, rel=1e-6)


def test_mef_ssim_of_identical_images_is_one():
    A = scene(48, 50, 9)
    assert compute_metrics(A, A, A, ["MS-SSIM"])[0]["MS-SSIM"] == pytest.approx(1.0, abs=1e-5)


# --- degenerate inputs ----------------------------------------------------------------------------------


def test_constant_images_give_nan_not_errors():
    c = np.full((50, 60), 128.0)
    values, warnings = compute_metrics(c, c, c)
    assert warnings == []
    for name in ("CC", "SCD"):
        assert math.isnan(values[name]), name
    # Qabf's zero padding gives a constant image edges at its border, so only all-zero sources are 0/0
    assert math.isfinite(values["Qabf"])
    zero = np.zeros_like(c)
    assert math.isnan(compute_metrics(c, zero, zero, ["Qabf"])[0]["Qabf"])
    assert values["EN"] == 0.0 and values["SD"] == 0.0 and values["SF"] == 0.0 and values["AG"] == 0.0
    assert values["MI"] == 0.0 and values["MSE"] == 0.0 and values["Nabf"] == 0.0
    assert values["PSNR"] == math.inf
    assert values["VIF"] == 2.0  # both sources flat: 1.0 each


def test_fused_equal_to_a_source_makes_scd_nan(triple):
    F, A, B = triple
    values, _ = compute_metrics(A, A, B, ["SCD", "CC"])
    assert math.isnan(values["SCD"])
    assert math.isfinite(values["CC"])


@pytest.mark.parametrize("side, nan_expected", [(40, True), (41, False)])
def test_vif_needs_41_pixels(side, nan_expected):
    A, B = scene(side, 60, 1), scene(side, 60, 2)
    values, warnings = compute_metrics(A, A, B, ["VIF"])
    assert math.isnan(values["VIF"]) is nan_expected
    assert bool(warnings) is nan_expected
    if nan_expected:
        assert "VIF" in warnings[0] and "41" in warnings[0]


def test_small_images_nan_with_warnings_for_size_limited_metrics():
    A, B = scene(6, 6, 1), scene(6, 6, 2)
    values, warnings = compute_metrics(A, A, B)
    for name in ("VIF", "SSIM", "MS-SSIM"):
        assert math.isnan(values[name])
    assert len(warnings) == 3
    assert math.isfinite(values["EN"]) and math.isfinite(values["Qabf"])
    _, std_warnings = compute_metrics(*(scene(150, 170, s) for s in (1, 2, 3)), ["MS-SSIM"], STANDARD)
    assert std_warnings and "161" in std_warnings[0]


def test_compute_metrics_rejects_mismatched_arrays():
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4)))


# --- registry and conventions ---------------------------------------------------------------------------


def test_registry_directions_and_order():
    assert METRIC_NAMES == (
        "EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "MSE", "PSNR", "Nabf", "MS-SSIM",
    )  # fmt: skip
    lower = {n for n, s in METRICS.items() if not s.higher_is_better}
    assert lower == {"MSE", "Nabf"}


def test_parse_metric_names():
    assert parse_metric_names("ssim, en,ms-ssim") == ["EN", "SSIM", "MS-SSIM"]
    assert parse_metric_names("all") == list(METRIC_NAMES)
    with pytest.raises(UsageError, match="QCB"):
        parse_metric_names("EN,QCB")


def test_conventions_round_trip_and_every_variant_is_a_field():
    assert REFERENCE.name == "reference"
    assert STANDARD.name == "standard"
    assert parse_convention(None) == REFERENCE
    conv = parse_convention("mi-bits,ssim-range255")
    assert conv.name == "reference+ssim-range255+mi-bits"
    assert parse_convention(conv.name) == conv
    assert parse_convention("+".join(VARIANTS)) == STANDARD
    assert {f for f, _ in VARIANTS.values()} == set(Convention.__dataclass_fields__)
    with pytest.raises(UsageError, match="bogus"):
        parse_convention("reference+bogus")


# --- real data (skips without ../shared/data) -----------------------------------------------------------


def test_real_tno_pair_fast_matches_reference_code(shared_data):
    import cv2

    ir_dir = shared_data / "tno" / "test" / "ir"
    name = sorted(p.name for p in ir_dir.iterdir())[0]
    A = cv2.imread(str(ir_dir / name), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    B = cv2.imread(str(shared_data / "tno" / "test" / "vi" / name), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    F = np.round(np.maximum(A, B) * 0.5 + np.minimum(A, B) * 0.5)
    values, _ = compute_metrics(F, A, B)
    for name_, fn in ref.REFERENCE_FUNCTIONS.items():
        assert values[name_] == pytest.approx(fn(F, A, B), rel=TOL.get(name_, 1e-8)), name_
