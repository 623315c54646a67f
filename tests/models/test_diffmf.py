"""DIFF-MF network: shapes, batching, gradients, and that the exchanges do what the figure says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffmf_cli.models import PRESETS, DiffMFConfig, create_model, get_config, model_cost
from diffmf_cli.modules import channel_exchange
from diffmf_cli.modules.channel_exchange import ChannelExchange, ChannelSelfScan
from diffmf_cli.modules.spatial_exchange import (
    concat_maps,
    interleave_columns,
    interleave_rows,
    split_columns,
    split_concat,
    split_rows,
)


def _wake_head(model):
    """The blend head's last conv starts at zero (output = mean of the sources, no gradient behind it);
    give it small random weights so the tests exercise the whole network."""
    torch.nn.init.normal_(model.decoder.head.weight, std=0.1)
    torch.nn.init.normal_(model.decoder.head.bias, std=0.1)
    return model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _wake_head(create_model("tiny")).eval()


def test_blend_head_starts_from_the_mean_of_the_sources():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    assert model.config.head == "blend"
    ir, vi = torch.rand(2, 1, 24, 40), torch.rand(2, 1, 24, 40)
    with torch.inference_mode():
        torch.testing.assert_close(model(ir, vi), (ir + vi) / 2)


def test_blend_head_mixes_sources_and_adds_a_bounded_residual():
    torch.manual_seed(0)
    model = create_model(get_config("tiny").replace(residual_scale=0.25)).eval()
    head = model.decoder.head
    ir, vi = torch.full((1, 1, 16, 16), 0.8), torch.full((1, 1, 16, 16), 0.2)
    with torch.inference_mode():
        head.bias.copy_(torch.tensor([20.0, 0.0]))   # w = σ(20) ≈ 1: the IR pixel
        torch.testing.assert_close(model(ir, vi), ir, atol=1e-6, rtol=0)
        head.bias.copy_(torch.tensor([-20.0, 20.0]))  # w ≈ 0, r = 0.25: Y + 0.25
        torch.testing.assert_close(model(ir, vi), vi + 0.25, atol=1e-6, rtol=0)
        head.bias.copy_(torch.tensor([20.0, 20.0]))   # IR + 0.25 = 1.05, clamped
        assert model(ir, vi).max() == 1.0
        # clamp=False gives the value before the clamp (what training's excess term sees), and nothing else.
        torch.testing.assert_close(model(ir, vi, clamp=False), ir + 0.25, atol=1e-6, rtol=0)
        head.bias.copy_(torch.tensor([-20.0, -20.0]))  # Y − 0.25 = −0.05, clamped to 0
        assert model(ir, vi).min() == 0.0
        torch.testing.assert_close(model(ir, vi, clamp=False), vi - 0.25, atol=1e-6, rtol=0)


def test_range_bound_keeps_the_residual_inside_the_blends_room_without_the_clamp():
    torch.manual_seed(0)
    assert get_config("tiny").residual_bound == "clamp"  # files without the field: the fixed bound
    cfg = get_config("tiny").replace(residual_bound="range", residual_scale=0.1)  # the scale has no say here
    assert DiffMFConfig.from_dict(cfg.to_dict()) == cfg
    model = create_model(cfg).eval()
    head = model.decoder.head
    ir, vi = torch.full((1, 1, 16, 16), 0.8), torch.full((1, 1, 16, 16), 0.2)
    t = torch.tanh(torch.tensor(0.5))
    with torch.inference_mode():
        torch.testing.assert_close(model(ir, vi), (ir + vi) / 2)  # starts from the mean, as the clamp bound
        head.bias.copy_(torch.tensor([-20.0, 0.5]))   # w ≈ 0, t > 0: Y + t·(1 − Y)
        torch.testing.assert_close(model(ir, vi), vi + t * (1 - vi), atol=1e-6, rtol=0)
        head.bias.copy_(torch.tensor([-20.0, -0.5]))  # t < 0: Y − t·Y
        torch.testing.assert_close(model(ir, vi), vi * (1 - t), atol=1e-6, rtol=0)
        head.bias.copy_(torch.tensor([20.0, 8.0]))    # pushed hard: close to 1, never past it, no clamp at work
        out = model(ir, vi, clamp=False)
        assert 0.99 < out.min() and out.max() <= 1.0
    head.bias.requires_grad_(True)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([20.0, 3.0]))    # where the clamp bound would have cut IR + 0.5 off at 1
    model(ir, vi).sum().backward()
    assert head.bias.grad[1] > 0  # ... the residual still gets a gradient
    with pytest.raises(ValueError, match="residual_bound"):
        get_config("tiny").replace(residual_bound="soft")


def test_select_gain_starts_near_the_pixel_max_and_is_off_by_default():
    torch.manual_seed(0)
    assert get_config("tiny").select_gain == 0
    model = create_model(get_config("tiny").replace(select_gain=200.0)).eval()
    ir, vi = torch.rand(2, 1, 24, 40), torch.rand(2, 1, 24, 40)
    keep = (ir - vi).abs() > 0.05  # where the sources differ clearly, σ(200·Δ) picks the brighter one
    with torch.inference_mode():
        out = model(ir, vi)
    torch.testing.assert_close(out[keep], torch.maximum(ir, vi)[keep], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="select_gain"):
        get_config("tiny").replace(select_gain=-1.0)


def test_direct_head_is_selectable_and_is_what_old_files_without_the_field_mean():
    cfg = get_config("tiny").replace(head="direct")
    model = create_model(cfg)
    assert model.decoder.head.out_channels == 1
    legacy = get_config("tiny").to_dict()
    del legacy["head"], legacy["residual_scale"], legacy["residual_bound"]
    assert DiffMFConfig.from_dict(legacy).head == "direct"
    assert DiffMFConfig.from_dict(legacy).residual_bound == "clamp"
    with pytest.raises(ValueError, match="head"):
        get_config("tiny").replace(head="sharpen")


@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (3, 2), (7, 13), (17, 31), (33, 65), (64, 64)])
def test_any_size_gives_same_size_output_in_unit_range(tiny, hw):
    ir, vi = torch.rand(2, 1, *hw), torch.rand(2, 1, *hw)
    with torch.inference_mode():
        out = tiny(ir, vi)
    assert out.shape == (2, 1, *hw)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_batch_equals_one_pair_at_a_time(tiny):
    ir, vi = torch.rand(3, 1, 40, 24), torch.rand(3, 1, 40, 24)
    with torch.inference_mode():
        batched = tiny(ir, vi)
        single = torch.cat([tiny(ir[i:i + 1], vi[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_eval_is_deterministic(tiny):
    ir, vi = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    with torch.inference_mode():
        assert torch.equal(tiny(ir, vi), tiny(ir, vi))


def test_output_depends_on_both_inputs(tiny):
    ir, vi = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        base = tiny(ir, vi)
        assert not torch.allclose(base, tiny(torch.rand_like(ir), vi))
        assert not torch.allclose(base, tiny(ir, torch.rand_like(vi)))


def test_gradients_reach_every_parameter():
    torch.manual_seed(1)
    model = _wake_head(create_model("tiny")).train()
    out = model(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached: {missing}"


def test_wrong_input_shapes_raise_value_error(tiny):
    with pytest.raises(ValueError, match="ir and vis_y"):
        tiny(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="ir and vis_y"):
        tiny(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def _record_scans(module: ChannelExchange, monkeypatch):
    """Record which B, C each modality's scan received and which each modality's projection produced."""
    produced, received = {}, {}
    for m, params in enumerate(module.scan):
        project = params.project

        def rec_project(xs, m=m, project=project):
            produced[m] = project(xs)
            return produced[m]

        params.project = rec_project
    scan = channel_exchange.ssm_scan

    def rec_scan(params, xs, dts, bs, cs):
        received[[p is params for p in module.scan].index(True)] = (dts, bs, cs)
        return scan(params, xs, dts, bs, cs)

    monkeypatch.setattr(channel_exchange, "ssm_scan", rec_scan)
    return produced, received


@pytest.mark.parametrize("swap", [True, False])
def test_channel_exchange_scans_with_the_other_modalitys_b_and_c(swap, monkeypatch):
    torch.manual_seed(2)
    cem = (ChannelExchange if swap else ChannelSelfScan)(dim=8, d_state=4, expand=1.0)
    produced, received = _record_scans(cem, monkeypatch)
    cem(torch.rand(1, 8, 6, 5), torch.rand(1, 8, 6, 5))
    for m in (0, 1):
        other = 1 - m if swap else m
        assert received[m][0] is produced[m][0], "Δ must stay the scanning modality's own"
        assert received[m][1] is produced[other][1] and received[m][2] is produced[other][2]


def test_channel_exchange_output_of_ir_depends_on_visible_b_c():
    # Changing only the visible map must change the IR branch's output (through B_vi, C_vi and ω).
    torch.manual_seed(3)
    cem = ChannelExchange(dim=8, d_state=4, expand=1.0).eval()
    f_ir, f_vi = torch.rand(1, 8, 6, 5), torch.rand(1, 8, 6, 5)
    with torch.no_grad():
        a, _ = cem(f_ir, f_vi)
        b, _ = cem(f_ir, f_vi + torch.rand_like(f_vi))
    assert not torch.allclose(a, b)


def _labelled(h, w, tag):
    # Each value encodes (modality tag, row, column) so positions can be read back.
    r = torch.arange(h).view(h, 1).expand(h, w)
    c = torch.arange(w).view(1, w).expand(h, w)
    return (tag * 10000 + r * 100 + c).float().view(1, 1, h, w)


def test_spatial_arrangements_interleave_as_the_figure_shows():
    a, b = _labelled(2, 3, 1), _labelled(2, 3, 2)
    cols = interleave_columns(a, b)[0, 0]
    assert cols.shape == (2, 6)
    assert cols[1].tolist() == [10100, 20100, 10101, 20101, 10102, 20102]  # IR col j, then VI col j
    rows = interleave_rows(a, b)[0, 0]
    assert rows.shape == (4, 3)
    assert rows[:, 2].tolist() == [10002, 20002, 10102, 20102]  # IR row i, then VI row i
    cat = concat_maps(a, b)[0, 0].flatten()
    assert cat.tolist()[:6] == a.flatten().tolist() and cat.tolist()[6:] == b.flatten().tolist()
    for arrange, split in ((interleave_columns, split_columns), (interleave_rows, split_rows),
                           (concat_maps, split_concat)):
        back_a, back_b = split(arrange(a, b))
        assert torch.equal(back_a, a) and torch.equal(back_b, b)


def test_cross_scan_merge_is_the_adjoint_of_the_scan_orders():
    from diffmf_cli.modules.vss import cross_merge, cross_scan

    x = torch.rand(2, 3, 4, 5)
    for k in (2, 4):
        xs = cross_scan(x, k)
        assert xs.shape == (2, k, 3, 20)
        torch.testing.assert_close(cross_merge(xs, 4, 5), k * x)  # every order is a permutation
    assert torch.equal(cross_scan(x, 4)[0, 1, 0, :4], x[0, 0, :, 0])  # column-major: down the first column


def test_config_round_trip_and_validation():
    for cfg in PRESETS.values():
        assert DiffMFConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown DiffMFConfig fields"):
        DiffMFConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="sem_arrangements"):
        DiffMFConfig(sem_arrangements=("diagonal",))


@pytest.mark.parametrize("changes", [
    {"use_guidance": False}, {"use_channel_exchange": False}, {"exchange_bc": False},
    {"use_spatial_exchange": False}, {"sem_arrangements": ("concat",)}, {"n_stages": 2, "sem_levels": 1},
])
def test_ablation_switch_changes_the_output(changes):
    # The switched-off model gets every weight it shares with the full one, so a switch that did nothing
    # would give the full model's output bit for bit (the forward pass is deterministic). At initialisation
    # some switches move the output only slightly (the CEM's B/C exchange by ~1e-6), hence exact equality.
    torch.manual_seed(4)
    full = create_model("tiny").eval()
    with torch.no_grad():  # away from the initialisation (a zero-initialised head would hide the features)
        for p in full.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ablated = create_model(get_config("tiny").replace(**changes)).eval()
    shared = {k: v for k, v in full.state_dict().items() if k in ablated.state_dict()
              and ablated.state_dict()[k].shape == v.shape}
    ablated.load_state_dict(shared, strict=False)
    x, y = torch.rand(1, 1, 20, 28), torch.rand(1, 1, 20, 28)
    with torch.inference_mode():
        out = ablated(x, y)
        assert out.shape == (1, 1, 20, 28)
        assert not torch.equal(out, full(x, y))


def test_model_cost_counts_dense_macs_and_scan_updates():
    cost = model_cost("tiny", size=(64, 64))
    assert cost["params"] == sum(p.numel() for p in create_model("tiny").parameters())
    assert cost["macs_per_megapixel"] > 0
    cfg = get_config("tiny")
    # At least the self + shared scans of stage 1: 4 directions · d_inner · N per token on the scan grid,
    # for the 2 self blocks and the shared block run on both modalities.
    grid_tokens_per_mp = 1e6 / 4 ** cfg.stem_downsample
    assert cost["scan_updates_per_megapixel"] >= 4 * 4 * cfg.dim * cfg.d_state * grid_tokens_per_mp


def test_cpu_preset_weight_names_and_shapes_never_change():
    # Every shipped or trained weights file loads strictly by these names; a refactor must keep them.
    stored = Path(__file__).with_name("cpu_preset_state_dict.txt").read_text().splitlines()
    expected = [tuple(line.split()) for line in stored if line and not line.startswith("#")]
    actual = [(name, "x".join(map(str, t.shape))) for name, t in create_model("cpu").state_dict().items()]
    assert actual == expected
