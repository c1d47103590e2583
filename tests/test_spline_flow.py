"""ConditionalSplineFlow specifics: identity initialization, continuity on the circle, normalized 1-D
densities, finite gradients in the tails, graph capture.  (The invariants of every flow, periodic wrap
included, are in test_flows.py.)"""

import math

import pytest
import torch

from cgflow.core.features import CGFeatures
from cgflow.flows.spline import ConditionalSplineFlow, rq_spline

PERIODIC = (True, False, True, False, False, True, False)


def perturb(flow, hidden=0.15, last=0.04):
    with torch.no_grad():
        for name, p in flow.named_parameters():
            is_last = ".out." in name or name.endswith("id_params")
            p.add_((last if is_last else hidden) * torch.randn_like(p))
    return flow


def make_flow(fg_periodic=PERIODIC, n_blocks=4, seed=2, **kw):
    torch.manual_seed(seed)
    flow = ConditionalSplineFlow(len(fg_periodic), fg_periodic, CGFeatures((True, True)), n_blocks=n_blocks,
                                 hidden=32, **kw)
    return perturb(flow)


def cg_points(n):
    return (torch.rand(n, 2, dtype=torch.float64) * 2 - 1) * math.pi


def circle_diff(mask, a, b):
    d = a - b
    return torch.where(mask, torch.remainder(d + math.pi, 2 * math.pi) - math.pi, d)


@pytest.mark.parametrize("kw", [dict(), dict(n_blocks=5, unconditional_identity_spline=False),
                                dict(n_blocks=3, circular_shift=False)])
def test_identity_at_initialization(kw):
    kw = {"n_blocks": 6, **kw}
    flow = ConditionalSplineFlow(7, PERIODIC, CGFeatures((True, True)), hidden=16, **kw)
    s = cg_points(100)
    z = flow.sample_base(100)
    z[:10] = torch.where(flow.periodic_mask, z[:10], 7.0 * z[:10])  # also in the tails
    x, ld = flow(z, s)
    assert (x - z).abs().max() < 1e-12
    assert ld.abs().max() < 1e-12
    z2, ld2 = flow.inverse(z, s)
    assert (z2 - z).abs().max() < 1e-12
    assert ld2.abs().max() < 1e-12


def test_continuous_across_the_circle_boundary():
    """z_i = -pi + eps and pi - eps are 2 eps apart on the circle: so are the outputs (to first order
    the Jacobian column times 2 eps), and the Jacobians (derivatives) agree there."""
    flow = make_flow()
    circ = flow.periodic_mask
    eps = 1e-7
    for _row in range(3):
        s = cg_points(1)
        z = flow.sample_base(1)[0]
        for i in torch.nonzero(circ).flatten().tolist():
            lo, hi = z.clone(), z.clone()
            lo[i], hi[i] = -math.pi + eps, math.pi - eps
            x_lo, ld_lo = flow(lo[None], s)
            x_hi, ld_hi = flow(hi[None], s)
            jac_hi = torch.autograd.functional.jacobian(lambda q: flow(q[None], s)[0][0], hi)
            jac_lo = torch.autograd.functional.jacobian(lambda q: flow(q[None], s)[0][0], lo)
            step = circle_diff(circ, x_lo[0], x_hi[0])
            expected = 2 * eps * jac_hi[:, i]
            assert (step - expected).abs().max() < 1e-3 * 2 * eps * (1 + jac_hi[:, i].abs().max())
            assert (jac_lo - jac_hi).abs().max() < 1e-4 * (1 + jac_hi.abs().max())
            assert abs(float((ld_lo - ld_hi).detach())) < 1e-5


def test_spline_boundary_derivatives():
    """Circular splines: equal derivatives at -pi and pi; linear ones: derivative 1 at +-B (C1 tails)."""
    torch.manual_seed(0)
    k = 8
    params = torch.randn(1, 3 * k, 2, dtype=torch.float64)
    bound = torch.tensor([math.pi, 5.0], dtype=torch.float64)
    circular = torch.tensor([True, False])
    x = torch.tensor([[-math.pi, -5.0], [math.pi - 1e-12, 5.0]], dtype=torch.float64)
    _, ld = rq_spline(x, params.expand(2, -1, -1), bound, circular)
    assert abs(float(ld[0, 0] - ld[1, 0])) < 1e-9
    assert ld[:, 1].abs().max() < 1e-9
    assert abs(float(ld[0, 0])) > 1e-3  # the tied circular derivative is a free parameter


@pytest.mark.parametrize("periodic", [True, False])
def test_density_normalized_1d(periodic):
    flow = make_flow((periodic,), n_blocks=4, seed=3)
    for s0 in ((0.3, -2.0), (-3.0, 1.0)):
        if periodic:
            n = 100000
            x = torch.linspace(-math.pi, math.pi, n + 1, dtype=torch.float64)[:-1, None]
        else:
            n = 200001
            x = torch.linspace(-14.0, 14.0, n, dtype=torch.float64)[:, None]
        s = torch.tensor(s0, dtype=torch.float64).expand(x.shape[0], 2)
        with torch.no_grad():
            p = flow.log_prob(x, s).exp()
        mass = float(p.sum() * 2 * math.pi / n) if periodic else float(torch.trapezoid(p, x[:, 0]))
        assert mass == pytest.approx(1.0, abs=1e-6)
        assert p.max() / p.min() > 1.2 if periodic else True  # not just the uniform base


def test_finite_gradients_at_tails_and_boundaries():
    flow = make_flow()
    s = cg_points(6)
    z = flow.sample_base(6)
    z[0] = torch.where(flow.periodic_mask, torch.full_like(z[0], -math.pi), torch.full_like(z[0], 5.0))
    z[1] = torch.where(flow.periodic_mask, torch.full_like(z[1], math.pi), torch.full_like(z[1], -5.0))
    z[2] = torch.where(flow.periodic_mask, z[2], torch.full_like(z[2], 50.0))
    z.requires_grad_(True)
    x, ld = flow(z, s)
    loss = (x**2).sum() + ld.sum() + flow.log_prob(x, s).sum()
    loss.backward()
    assert torch.isfinite(z.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)


def test_float32_and_shapes():
    torch.manual_seed(0)
    flow = perturb(ConditionalSplineFlow(7, PERIODIC, CGFeatures((True, True)), n_blocks=4, hidden=16,
                                         dtype=torch.float32))
    s = cg_points(10).float()
    x, log_q = flow.sample(s)
    assert x.dtype == torch.float32 and x.shape == (10, 7) and log_q.shape == (10,)
    assert (flow.log_prob(x, s) - log_q).abs().max() < 1e-3


def test_graph_capture_without_breaks():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile unavailable")
    flow = make_flow()
    s = cg_points(8)
    z = flow.sample_base(8)

    def step(z, s):
        x, ld = flow(z, s)
        return x, ld, flow.log_prob(x, s)

    try:
        compiled = torch.compile(step, fullgraph=True, backend="eager")  # raises on any graph break
        out = compiled(z, s)
    except RuntimeError as exc:  # pragma: no cover - environment without a working dynamo
        if "not supported" in str(exc).lower() and "python" in str(exc).lower():
            pytest.skip(f"torch.compile unsupported here: {exc}")
        raise
    for a, b in zip(out, step(z, s)):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_and_graph_capture():
    flow = make_flow()
    s = cg_points(32)
    z = flow.sample_base(32)
    x_cpu, ld_cpu = flow(z, s)
    flow = flow.to("cuda")
    static_z, static_s = z.cuda(), s.cuda()

    def step(z, s):
        x, ld = flow(z, s)
        return x, ld, flow.log_prob(x, s)

    with torch.no_grad():
        x, ld, _ = step(static_z, static_s)
        assert torch.allclose(x.cpu(), x_cpu, atol=1e-10) and torch.allclose(ld.cpu(), ld_cpu, atol=1e-10)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step(static_z, static_s)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # fails on any host synchronization
            out = step(static_z, static_s)
        z2 = flow.sample_base(32)
        static_z.copy_(z2)
        graph.replay()
        ref = step(z2, static_s)
    torch.cuda.synchronize()
    for a, b in zip(out, ref):
        assert torch.allclose(a, b, atol=1e-12)


def test_float32_flow_returns_float64_for_float64_conditions():
    """A float32 flow (faster) inside a float64 pipeline: samples and log q come back in float64 and
    agree with a float64 copy of the same flow to float32 precision."""
    torch.manual_seed(0)
    flow32 = perturb(ConditionalSplineFlow(7, PERIODIC, CGFeatures((True, True)), n_blocks=4, hidden=16,
                                           dtype=torch.float32))
    flow64 = ConditionalSplineFlow(7, PERIODIC, CGFeatures((True, True)), n_blocks=4, hidden=16)
    flow64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in flow32.state_dict().items()})
    s = cg_points(50)
    x, log_q = flow32.sample(s)
    assert x.dtype == torch.float64 and log_q.dtype == torch.float64
    assert (flow64.log_prob(x, s) - log_q).abs().max() < 2e-3
    assert (flow32.log_prob(x, s) - flow64.log_prob(x, s)).abs().max() < 2e-3
