"""The CUDA-graph replay of a tensor function (stages.common.cuda_graph; finetune.cuda_graph and
infer.cuda_graph, whose CUDA test is in tests/stages/test_infer.py):
its autograd plumbing on the CPU, with a stand-in whose replays recompute into the static
buffers as a graph's would; the fall-back where no capture is possible; the parameter checks;
and on CUDA (skipped without one) the finetune PnP layer replayed against the same compiled layer
run directly, with the same random draws."""
import dataclasses
import logging

import numpy as np
import pytest
import torch

from stages.common.cuda_graph import Captured, graph_on, graphed, input_gradients, replayed
from stages.common.params import ParamsError, check_params, load_params
from stages.finetuning.pnp_loss import pnp_layer, pnp_terms
from stages.nets.inference import InferSettings
from tests.unit.test_finetune_loss import SETTINGS, exact_batch


def layer(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    """A function of graph-like outputs: one differentiable in a and b, one that is not (bool),
    one computed without gradient; c takes no gradient."""
    y = (a * b).sin().sum(-1) + c.sum(-1)
    with torch.no_grad():
        norm = a.norm(dim=-1)
    return y, y.detach() > 0, norm


def stand_in(fn, args) -> Captured:
    """A Captured whose replays run fn on its static inputs and copy into its static buffers,
    as a replayed CUDA graph refills them."""
    inputs = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
    live = list(fn(*inputs))
    outputs = tuple(o.detach().clone() for o in live)
    grad_outputs = tuple(torch.zeros_like(o) if o.requires_grad else None for o in live)
    grad_inputs = tuple(torch.zeros_like(x) if x.requires_grad else None for x in inputs)

    def forward():                   # a graph's backward was recorded at its capture, with gradients on
        with torch.enable_grad():
            live[:] = fn(*inputs)
        for static, out in zip(outputs, live):
            static.copy_(out.detach())

    def backward():
        for static, grad in zip(grad_inputs, input_gradients(tuple(live), inputs, grad_outputs)):
            if static is not None:
                static.copy_(grad)

    return Captured(inputs, outputs, grad_outputs, grad_inputs, forward, backward)


def direct_and_replayed(captured: Captured, seed: int):
    """fn's outputs and the gradients of sum(y * w) in a and b, run directly and replayed."""
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    c, w = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    results = []
    for run in (lambda *x: layer(*x), lambda *x: replayed(captured, *x)):
        x = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in (a, b, c))
        y, positive, norm = run(*x)
        (y * w).sum().backward()
        results.append(([o.detach().clone() for o in (y, positive, norm)], [x[0].grad, x[1].grad, x[2].grad],
                        (y.requires_grad, positive.requires_grad, norm.requires_grad)))
    return results


def test_replays_give_the_functions_outputs_and_input_gradients_for_each_new_input():
    """Two calls on other inputs (the second copies its inputs over the first's): the outputs and
    the gradients of the inputs that want one are fn's own; the bool and no-grad outputs carry
    no gradient, and the input without one gets None."""
    wants = torch.zeros(4, 5, dtype=torch.float64, requires_grad=True)
    template = (wants, wants, torch.zeros(4, 5, dtype=torch.float64))
    captured = stand_in(layer, template)
    for seed in (0, 1):
        (direct, direct_grads, direct_flags), (replay, replay_grads, replay_flags) = direct_and_replayed(captured, seed)
        for ours, theirs in zip(replay, direct):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        torch.testing.assert_close(replay_grads[:2], direct_grads[:2], rtol=0, atol=0)
        assert replay_grads[2] is None and direct_grads[2] is None
        assert replay_flags == direct_flags == (True, False, False)


def test_a_backward_after_a_later_replay_of_the_same_capture_stops():
    """The second replay overwrote the buffers the first one's backward would read."""
    a = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    c = torch.zeros(4, 5, dtype=torch.float64)
    captured = stand_in(layer, (a, a, c))
    first, _, _ = replayed(captured, a, a, c)
    second, _, _ = replayed(captured, 2 * a, a, c)
    with pytest.raises(RuntimeError, match="backward after 1 later forward replay"):
        first.sum().backward()
    second.sum().backward()
    torch.testing.assert_close(a.grad, torch.autograd.grad(layer(2 * a, a, c)[0].sum(), a)[0])


def test_input_gradients_name_none_where_no_gradient_flows():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    c = torch.ones(3)
    grads = input_gradients(((2 * a).sum(),), (a, b, c), (torch.tensor(1.0),))
    assert torch.equal(grads[0], torch.full((3,), 2.0)) and grads[1] is None and grads[2] is None
    assert input_gradients((a.sum().detach(),), (a,), (None,)) == (None,)


def test_a_capture_that_cannot_run_warns_and_the_function_runs_eagerly(caplog):
    """On the CPU nothing can be captured: the first call warns, naming the function, and every
    call returns fn's own outputs, with its gradients."""
    a, b = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    calls = graphed(layer, torch.Generator(), "the test layer")
    with caplog.at_level(logging.WARNING):
        y, _, _ = calls(a, b, torch.zeros(4, 5))
        calls(a, b, torch.zeros(4, 5))
    assert [r.message for r in caplog.records if "CUDA graph capture failed" in r.message][0].endswith(
        "the test layer runs eagerly")
    assert sum("CUDA graph capture failed" in r.message for r in caplog.records) == 1
    y.sum().backward()
    torch.testing.assert_close(y, layer(a, b, torch.zeros(4, 5))[0])
    assert a.grad is not None


def test_no_capture_under_autocast(caplog):
    """Autocast's cache of cast weights would outlive a capture: the capture refuses before any
    CUDA call (so also on the CPU), and the function runs eagerly."""
    a = torch.randn(4, 5, requires_grad=True)
    with caplog.at_level(logging.WARNING), torch.autocast("cpu", dtype=torch.bfloat16):
        graphed(layer, None, "the test layer")(a, a, torch.zeros(4, 5))
    assert "called under autocast" in caplog.text


def test_cuda_graph_needs_the_compiled_layer_and_a_cuda_device():
    """finetune's needs finetune.compile (params check) and CUDA (trainer); infer's CUDA."""
    raw = load_params("params.yaml").as_dict()
    raw["finetune"].update(cuda_graph=True, compile=False)
    with pytest.raises(ParamsError, match="finetune.cuda_graph is true but finetune.compile is false"):
        check_params(raw, "params.yaml")
    raw["finetune"]["compile"] = True
    assert check_params(raw, "params.yaml").finetune.cuda_graph
    with pytest.raises(ValueError, match="finetune.cuda_graph is true but the stage runs on cpu"):
        graph_on(True, torch.device("cpu"), "finetune.cuda_graph")
    assert not graph_on(False, torch.device("cpu"), "finetune.cuda_graph")
    infer_cfg = dataclasses.replace(load_params("params.yaml").infer, device="cpu", cuda_graph=True)
    with pytest.raises(ValueError, match="infer.cuda_graph is true but the stage runs on cpu"):
        InferSettings.of(infer_cfg)


def test_the_layer_argument_of_pnp_terms_is_the_default_layer():
    """pnp_terms with pnp_layer's layer passed is pnp_terms without one, bit for bit."""
    runs = []
    for layer_of in (lambda g: None, lambda g: pnp_layer(SETTINGS, g)):
        out, batch, _ = exact_batch()
        generator = torch.Generator().manual_seed(0)
        terms = pnp_terms(out, batch, SETTINGS, generator, layer_of(generator))
        (terms["pnp"] + terms["mc"]).backward()
        runs.append([terms["pnp"], terms["mc"], out["mu"].grad, out["sigma"].grad, out["verts"].grad])
    for ours, theirs in zip(*runs):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def cuda_batch(seed: int, n: int = 16):
    """exact_batch on CUDA in float32, 1 px of noise on mu."""
    out, batch, _ = exact_batch(n=n, V=300, seed=seed)
    g = torch.Generator().manual_seed(seed)
    out = {k: (v.detach() + (torch.randn(v.shape, generator=g, dtype=v.dtype) if k == "mu" else 0)).float().cuda()
           .requires_grad_() for k, v in out.items()}
    return out, {k: v.float().cuda() for k, v in batch.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_of_the_pnp_layer_give_its_direct_terms_and_gradients(caplog):
    """finetune.cuda_graph: the compiled PnP layer replayed from CUDA graphs gives, over three
    batches (the first captures, the others copy new inputs), the terms and gradients of the same
    compiled layer run directly with the generator seeded alike (the same random draws), to
    float32 rounding. No capture fails (a failed one would run the layer directly), and no compiled
    call falls back to eager code."""
    caplog.set_level(logging.WARNING)
    settings = dataclasses.replace(SETTINGS, dtype=torch.float32, compiled=True, mc_samples=128)
    generator = torch.Generator("cuda")
    direct, replay = pnp_layer(settings, generator), pnp_layer(settings, generator, cuda_graph=True)
    for seed in range(3):
        results = []
        for layer_fn in (direct, replay):
            out, batch = cuda_batch(seed)
            generator.manual_seed(100 + seed)
            terms = pnp_terms(out, batch, settings, generator, layer_fn)
            (terms["pnp"] + 0.01 * terms["mc"]).backward()
            results.append([float(terms["pnp"]), float(terms["mc"]), terms["valid"].clone(),
                            *(out[k].grad.clone() for k in ("mu", "sigma", "verts"))])
        (pnp, mc, valid, *grads), (pnp_r, mc_r, valid_r, *grads_r) = results
        assert valid.sum() >= len(valid) - 2 and torch.equal(valid, valid_r), seed
        assert np.isclose(pnp, pnp_r, rtol=1e-4), (seed, pnp, pnp_r)
        assert np.isclose(mc, mc_r, rtol=1e-4, atol=1e-3), (seed, mc, mc_r)
        for ours, theirs in zip(grads_r, grads):
            assert (ours - theirs).norm() <= 1e-3 * theirs.norm(), seed
    assert not [r.message for r in caplog.records if "capture failed" in r.message or "compile failed" in r.message]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_advance_the_generator_as_direct_calls_do():
    """Seeded once, three batches in a row: each replay draws where the direct layer's call at
    the same place draws (the capture's draws undone, each replay moving the generator on), so
    the Monte Carlo terms of every batch agree; replays that reused the first draws would not."""
    settings = dataclasses.replace(SETTINGS, dtype=torch.float32, compiled=True, mc_samples=128)
    generator = torch.Generator("cuda")
    runs = {}
    for cuda_graph in (False, True):
        layer_fn = pnp_layer(settings, generator, cuda_graph=cuda_graph)
        generator.manual_seed(7)
        runs[cuda_graph] = [float(pnp_terms(*cuda_batch(seed), settings, generator, layer_fn)["mc"])
                            for seed in range(3)]
    assert np.allclose(runs[True], runs[False], rtol=1e-4, atol=1e-3), runs
