"""Which convention a metric table was computed with: the `Convention` fields and the `VARIANTS` below.

The default, ``reference``, reproduces the Python evaluator that CDDFuse, EMMA, DDFM and FILM computed their
tables with (``utils/Evaluator.py`` of MMIF-CDDFuse), quirks included, and the MATLAB lineage for Nabf and
MS-SSIM (which that evaluator lacks). Each variant replaces one quirk by the usual textbook choice; the preset
``standard`` takes all of them. A convention is spelled as a preset followed by variants, e.g.
``reference+mi-bits+ssim-range255``; `Convention.name` gives that canonical spelling back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from diffmf_cli.errors import UsageError


@dataclass(frozen=True)
class Convention:
    """One choice per quirk; the defaults are the reference evaluator's."""

    ssim_data_range: float = 2.0  # 2: what float input meant in scikit-image 0.19; 255: the sane choice
    ssim_sum: bool = True  # SSIM(F,A) + SSIM(F,B); False: their mean
    mi_bits: bool = False  # natural log (nats); True: log2 (bits)
    psnr_peak_255: bool = False  # peak = max(F); True: peak = 255
    ag_matlab: bool = False  # mean over H*W; True: sum / ((H-1)(W-1)) as the MATLAB toolbox (VIFB) does
    msssim_standard: bool = False  # MEF-SSIM of both sources; True: Wang's 5-scale MS-SSIM per source, averaged

    @property
    def name(self) -> str:
        tokens = [tok for tok, (field_name, value) in VARIANTS.items() if getattr(self, field_name) == value]
        if len(tokens) == len(VARIANTS):
            return "standard"
        return "+".join(["reference", *tokens])

    def describe(self) -> dict[str, str]:
        """Human-readable setting per affected metric (for reports and JSON)."""
        return {
            "SSIM": f"{'sum' if self.ssim_sum else 'mean'} of SSIM(F,A), SSIM(F,B); 7x7 uniform window, "
            f"data_range={self.ssim_data_range:g}",
            "MI": "MI(F,A) + MI(F,B) in " + ("bits (log2)" if self.mi_bits else "nats (natural log)"),
            "PSNR": "peak " + ("255" if self.psnr_peak_255 else "max(F)"),
            "AG": "normalised by " + ("(H-1)(W-1) (MATLAB toolbox)" if self.ag_matlab else "H*W"),
            "MS-SSIM": "Wang's 5-scale MS-SSIM per source, mean of the two"
            if self.msssim_standard
            else "MEF-SSIM of both sources together (3 scales)",
        }


#: variant token -> (Convention field, value it sets)
VARIANTS: dict[str, tuple[str, object]] = {
    "ssim-range255": ("ssim_data_range", 255.0),
    "ssim-mean": ("ssim_sum", False),
    "mi-bits": ("mi_bits", True),
    "psnr-peak255": ("psnr_peak_255", True),
    "ag-matlab": ("ag_matlab", True),
    "msssim-standard": ("msssim_standard", True),
}

REFERENCE = Convention()
STANDARD = replace(REFERENCE, **{field_name: value for field_name, value in VARIANTS.values()})
PRESETS: dict[str, Convention] = {"reference": REFERENCE, "standard": STANDARD}


def parse_convention(text: str | None) -> Convention:
    """``"reference"``, ``"standard"``, or a preset and/or variants joined by ``+`` or ``,``.

    A spelling without a preset starts from ``reference``: ``"mi-bits"`` is ``reference+mi-bits``.
    Raises UsageError naming the unknown word and listing the known ones.
    """
    if text is None or not text.strip():
        return REFERENCE
    words = [w.strip().lower() for w in text.replace(",", "+").split("+") if w.strip()]
    conv = REFERENCE
    for i, word in enumerate(words):
        if word in PRESETS and i == 0:
            conv = PRESETS[word]
        elif word in VARIANTS:
            field_name, value = VARIANTS[word]
            conv = replace(conv, **{field_name: value})
        else:
            known = ", ".join([*PRESETS, *VARIANTS])
            raise UsageError(f"--convention: unknown word {word!r} (known: {known}; a preset comes first)")
    return conv
