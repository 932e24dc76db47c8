"""The shared network blocks and optimiser: bfloat16 matmuls stay float32 outside, the scalar head and
the lean Adam step compute exactly what their plain PyTorch counterparts compute."""

import copy

import pytest
import torch

from rl_energy.nets import DeepSets, EnsembleMLP, mlp, resolve_matmul_precision, set_matmul_precision
from rl_energy.optim import FusedAdam


def test_scalar_head_matches_the_batched_matmul():
    torch.manual_seed(0)
    net = EnsembleMLP(2, 11, [64, 64], 1)
    x = torch.randn(40, 11)
    h = x.unsqueeze(0).expand(2, -1, -1)
    for i, layer in enumerate(net.layers):
        h = torch.baddbmm(layer.bias, h, layer.weight)
        if i < len(net.layers) - 1:
            h = torch.relu(h)
    torch.testing.assert_close(net(x), h, rtol=1e-5, atol=1e-5)


def test_in_place_relu_gives_the_same_values_and_gradients_bit_for_bit():
    torch.manual_seed(0)
    net = EnsembleMLP(2, 11, [64, 64], 1)
    assert net.activation.inplace
    ref = copy.deepcopy(net)
    ref.activation = torch.nn.ReLU()  # a fresh buffer per activation: the textbook form
    x = torch.randn(40, 11, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = net(x), ref(x_ref)
    assert torch.equal(y, y_ref)
    (y * torch.arange(80.0).view(2, 40, 1)).sum().backward()
    (y_ref * torch.arange(80.0).view(2, 40, 1)).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    # gradients to the input only (an actor loss through the critics) and inference stay correct too
    a = torch.randn(40, 11, requires_grad=True)
    torch.autograd.grad(net(a, detach_params=True).sum(), a)
    with torch.inference_mode():
        assert torch.equal(net(x.detach()), y.detach())


@pytest.mark.parametrize("ensemble", [False, True])
def test_bf16_matmuls_return_float32_close_to_fp32_with_close_gradients(ensemble):
    torch.manual_seed(0)
    net = EnsembleMLP(2, 35, [256, 256], 1) if ensemble else mlp(35, [256, 256], 16)
    low = copy.deepcopy(net)
    set_matmul_precision(low, "bf16")
    x = torch.randn(256, 35)
    y, y_low = net(x), low(x)
    assert y_low.dtype == torch.float32
    assert not torch.equal(y, y_low)  # bfloat16 was really used
    torch.testing.assert_close(y_low, y, rtol=0.05, atol=0.02)
    y.square().mean().backward()
    y_low.square().mean().backward()
    for p, q in zip(net.parameters(), low.parameters(), strict=True):
        assert q.grad.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.99
    # acting (a handful of rows) stays in float32, bit for bit
    torch.testing.assert_close(low(x[:4]), net(x[:4]), rtol=0, atol=0)


def test_precision_names():
    assert resolve_matmul_precision("fp32", "cpu") == "fp32"
    assert resolve_matmul_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="fp16"):
        set_matmul_precision(mlp(2, [4], 1), "fp16")


@pytest.mark.parametrize("flat", [False, True])
def test_fused_adam_equals_torch_adam_and_survives_a_state_round_trip(flat):
    torch.manual_seed(0)
    a = EnsembleMLP(2, 9, [32, 32], 1)
    b = copy.deepcopy(a)
    ref = torch.optim.Adam([{"params": list(a.parameters())[:2], "lr": 3e-3}, {"params": list(a.parameters())[2:]}],
                           lr=1e-3, fused=True)

    def make():
        return FusedAdam([{"params": list(b.parameters())[:2], "lr": 3e-3}, {"params": list(b.parameters())[2:]}],
                         1e-3, flat=flat)

    ours = make()
    x = torch.randn(64, 9)
    for i in range(6):
        for net, opt in ((a, ref), (b, ours)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
        if i == 2:  # a resume: fresh optimiser, loaded state
            state = ours.state_dict()
            ours = make()
            ours.load_state_dict(state)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert ours.state_dict()["state"][0]["step"].item() == 6
    if flat:  # the parameters are views of one buffer per group
        storage = ours._plan[1]["flat"]["param"].untyped_storage().data_ptr()
        assert all(p.untyped_storage().data_ptr() == storage for p in list(b.parameters())[2:])


@pytest.mark.parametrize("flat", [False, True])
def test_clip_step_equals_clip_grad_norm_then_adam(flat):
    torch.manual_seed(0)
    a = mlp(6, [32], 3)
    b = copy.deepcopy(a)
    ref, ours = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True), FusedAdam(b.parameters(), 1e-2, flat=flat)
    x = torch.randn(50, 6)
    for i, max_norm in enumerate([0.05, 0.05, 1e9, 0.05, 0.05]):  # clipped, clipped, not clipped, clipped...
        if flat and i == 3:  # outside code drops the gradients and moves the module: the views re-attach
            for p in b.parameters():
                p.grad = None
            b.double().float()
        for net, opt in ((a, ref), (b, ours)):
            opt.zero_grad()
            (100 * net(x)).square().mean().backward()
        norm = torch.nn.utils.clip_grad_norm_(a.parameters(), max_norm)
        ref.step()
        torch.testing.assert_close(ours.clip_step(max_norm), norm)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert q.dtype == torch.float32
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fused_adam_shared_step_counter_survives_a_parameter_without_gradient():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    ref, ours = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True), FusedAdam(b.parameters(), 1e-2)
    x = torch.randn(8, 3)
    for i in range(5):
        for net, opt in ((a, ref), (b, ours)):
            opt.zero_grad()
            out = net(x) if i != 3 else x @ net.weight.T  # step 3: the bias gets no gradient
            out.square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    ref_steps = [float(s["step"]) for s in ref.state_dict()["state"].values()]
    assert [float(s["step"]) for s in ours.state_dict()["state"].values()] == ref_steps == [5.0, 4.0]


def test_dropout_keeps_the_expected_fraction_and_scales():
    from rl_energy.nets import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.1)
    y = drop(torch.ones(1000, 1000))
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.002
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))
    assert torch.equal(drop.eval()(torch.ones(3, 3)), torch.ones(3, 3))


def test_fmix32_is_murmur3s_finaliser_on_wrapped_int32():
    from rl_energy.nets import fmix32

    def reference(h: int) -> int:  # MurmurHash3 fmix32 on unsigned 32-bit integers
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        return h ^ (h >> 16)

    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    signed = torch.tensor([v - 2**32 if v >= 2**31 else v for v in values], dtype=torch.int32)
    got = [int(v) & 0xFFFFFFFF for v in fmix32(signed)]
    assert got == [reference(v) for v in values]


def test_dropout_masks_are_reproducible_and_independent_across_calls_and_elements():
    from rl_energy.nets import Dropout, advance_dropout_seeds

    torch.manual_seed(0)
    drop = Dropout(0.5)
    seed = drop.seed.clone()
    x = torch.ones(512, 512)
    first = (drop(x) != 0).float()
    assert torch.equal((drop(x) != 0).float(), first)  # the seed fixes the mask; the forward keeps it
    advance_dropout_seeds([drop])
    assert int(drop.seed) == int(seed) + 1
    second = (drop(x) != 0).float()
    # fair bits, no correlation between consecutive calls, neighbouring elements or rows
    # (262,144 samples: a correlation's standard error is 0.002)
    assert abs(first.mean().item() - 0.5) < 0.01
    centred = [first - 0.5, second - 0.5]
    assert abs((centred[0] * centred[1]).mean().item() * 4) < 0.01
    assert abs((centred[0][:, 1:] * centred[0][:, :-1]).mean().item() * 4) < 0.01
    assert abs((centred[0][1:] * centred[0][:-1]).mean().item() * 4) < 0.01
    assert Dropout(0.5).seed != seed  # each layer draws its own seed from torch's generator


def test_flat_fused_adam_steps_a_parameter_without_gradient_with_a_zero_gradient():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = FusedAdam(net.parameters(), 1e-2, flat=True)
    x = torch.randn(8, 3)
    for i in range(3):
        opt.zero_grad()
        out = net(x) if i == 0 else x @ net.weight.T  # the bias only gets a gradient at step 0
        out.square().mean().backward()
        bias_before = net.bias.detach().clone()
        opt.step()
    assert torch.equal(net.bias.grad, torch.zeros(2))
    assert not torch.equal(net.bias, bias_before)  # the first step's momentum keeps moving it
    assert all(float(s["step"]) == 3.0 for s in opt.state_dict()["state"].values())


def test_cosine_factor_runs_from_one_to_its_floor_and_holds():
    from rl_energy.optim import cosine_factor

    assert cosine_factor(0, 100) == 1.0 and cosine_factor(50, 100) == pytest.approx(0.5)
    assert cosine_factor(100, 100, floor=0.05) == pytest.approx(0.05)
    assert cosine_factor(250, 100, floor=0.05) == pytest.approx(0.05)  # held after the schedule
    assert cosine_factor(50, 100, floor=0.2) == pytest.approx(0.6)


def test_deepsets_is_permutation_invariant_and_blind_to_padding():
    torch.manual_seed(0)
    net = DeepSets(5, [16, 16], 3)
    x, mask = torch.randn(4, 9, 5), torch.rand(4, 9) > 0.4
    mask[:, 0] = True
    y = net(x, mask)
    perm = torch.randperm(9)
    torch.testing.assert_close(net(x[:, perm], mask[:, perm]), y)
    garbage = torch.where(mask.unsqueeze(-1), x, 1e3 * torch.randn_like(x))  # padded rows change, real ones do not
    torch.testing.assert_close(net(garbage, mask), y)
    wider = torch.cat([x, torch.randn(4, 3, 5)], 1), torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(net(*wider), y)
    assert not torch.allclose(net(x, torch.ones_like(mask)), y)  # the mask matters
