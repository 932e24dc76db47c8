"""scripts/bench_floor.py: finding the matrix products among profiler events, counting their FLOPs, replaying them,
capturing a real agent's products, its flags and one tiny run."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import load_script, run_script

floor = load_script("bench_floor")


def _run(*args: str, timeout: float = 180):
    return run_script("bench_floor", *args, timeout=timeout)


def _event(name, *shapes):
    return SimpleNamespace(name=name, input_shapes=list(shapes))


def test_products_of_keeps_the_products_and_their_operands():
    events = [
        _event("aten::relu", [256, 64]),
        _event("aten::addmm", [64], [256, 35], [35, 64], [], []),  # bias, a, b, beta, alpha
        _event("aten::mm", [256, 64], [64, 8]),
        _event("aten::linear", [256, 35], [64, 35], [64]),  # calls addmm: not counted twice
        _event("aten::baddbmm", [2, 1, 256], [2, 256, 27], [2, 27, 256], [], []),
        _event("aten::bmm", [2, 256, 256], [2, 256, 1]),
        _event("aten::mm", [256, 0], [0, 64], [256, 64]),  # compiled code passes out=; an empty half of a coupling
    ]
    assert floor.products_of(events) == [
        ("aten::addmm", ((64,), (256, 35), (35, 64))),
        ("aten::mm", ((256, 64), (64, 8))),
        ("aten::baddbmm", ((2, 1, 256), (2, 256, 27), (2, 27, 256))),
        ("aten::bmm", ((2, 256, 256), (2, 256, 1))),
        ("aten::mm", ((256, 0), (0, 64))),
    ]


def test_product_flops():
    assert floor.product_flops([("aten::mm", ((256, 35), (35, 64)))]) == 2 * 256 * 35 * 64
    assert floor.product_flops([("aten::addmm", ((64,), (256, 35), (35, 64)))]) == 2 * 256 * 35 * 64
    assert floor.product_flops([("aten::bmm", ((2, 256, 256), (2, 256, 256)))]) == 2 * 2 * 256**3
    assert floor.product_flops([("aten::baddbmm", ((2, 1, 8), (2, 4, 3), (2, 3, 8))),
                                ("aten::mm", ((1, 1), (1, 1)))]) == 2 * 2 * 4 * 3 * 8 + 2


def test_the_replay_computes_every_product():
    products = [("aten::mm", ((5, 3), (3, 4))), ("aten::addmm", ((4,), (6, 3), (3, 4))),
                ("aten::bmm", ((2, 5, 3), (2, 3, 7))), ("aten::baddbmm", ((2, 1, 4), (2, 6, 3), (2, 3, 4)))]
    run = floor.replayer(products)
    run()
    ops, out = run.operands, run.outputs
    torch.testing.assert_close(out[(5, 4)], ops[(5, 3)] @ ops[(3, 4)])
    torch.testing.assert_close(out[(6, 4)], ops[(4,)] + ops[(6, 3)] @ ops[(3, 4)])
    torch.testing.assert_close(out[(2, 5, 7)], ops[(2, 5, 3)] @ ops[(2, 3, 7)])
    torch.testing.assert_close(out[(2, 6, 4)], ops[(2, 1, 4)] + ops[(2, 6, 3)] @ ops[(2, 3, 4)])
    assert len(ops) == 9  # one operand per shape: mm and addmm share their (3, 4) one


def test_capture_finds_every_product_of_a_sac_update():
    # SAC on Pendulum (obs 3, action 1, 256x256, batch 256, twin critics with multiply-and-sum scalar heads)
    cap = floor.capture("sac", "Pendulum-v1", 10, 1, 1.0, ["train.torch_threads=1", "train.eval_episodes=1"])
    names = [name for name, _ in cap.update]
    B, H = 256, 256
    actor = 2 * B * (3 * H + H * H + H * 2)  # one forward of the actor (the 2-wide head: mean and log std)
    critics = 2 * 2 * B * (4 * H + H * H)  # one forward of both critics, scalar heads excluded
    # forwards: the actor twice (s', s), the critics three times (target, current, actor loss);
    # backwards: the critics' weight and hidden-input gradients, the actor loss's input gradients through the
    # critics, and the actor's weight and hidden-input gradients
    expected = (2 * actor + 3 * critics + (2 * critics - 2 * 2 * B * 4 * H) + (critics - 2 * 2 * B * 4 * H
                + 2 * 2 * B * 4 * H) + (2 * actor - 2 * B * 3 * H))
    assert floor.product_flops(cap.update) == expected, sorted(cap.update)
    assert names.count("aten::addmm") == 6 and names.count("aten::baddbmm") == 6
    assert cap.act_rows == 1 and floor.product_flops(cap.act) == 2 * (3 * H + H * H + H * 2)


@pytest.mark.parametrize(("args", "flag"), [(["--repeats", "0"], "--repeats"), (["--utd", "nan"], "--utd"),
                                            (["--steps", "x"], "--steps")])
def test_bad_flags(args, flag):
    out = _run(*args)
    assert out.returncode == 2, out.stderr
    assert flag in out.stderr.strip().splitlines()[-1]
    assert out.stdout == ""


def test_smoke_run():
    out = _run("--env", "Pendulum-v1", "--agent", "sac", "--steps", "20", "--learning-starts", "10", "--repeats", "1",
               "--max-wait", "0", "--set", "train.torch_threads=1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.match(r"captured: 2\d products per update \(\d+\.\d MFLOP\)", lines[1]), lines[1]
    repeat = re.compile(r"repeat 0 \(floor first\): floor \d+\.\d( CONTAMINATED)? \| sac \(fp32 matmuls")
    assert any(repeat.match(line) for line in lines)
    assert re.fullmatch(r"floor/sb3-sac SPS ratio: \d+\.\d\d", lines[-1])
