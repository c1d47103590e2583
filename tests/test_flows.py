"""Every conditional flow through the same invariants: invertibility, log-det equal to the
autograd Jacobian, log_prob consistent with sampling, periodic wrap (circular FG dims and periodic CG
context), save/load.  FLOWS must hold one factory per flow kind of the config."""

import io
import math
import typing

import pytest
import torch

from cgflow.config.schema import FlowConfig
from cgflow.core.features import CGFeatures
from cgflow.flows import ConditionalAffineFlow
from cgflow.flows.spline import ConditionalSplineFlow


def make_affine():
    torch.manual_seed(1)
    flow = ConditionalAffineFlow(3, CGFeatures((False, True), mean=[0.5, 0.0], std=[2.0, 1.0]), [16, 16], "sigmoid")
    # move away from the initialization so that the test is not trivially an identity
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


def make_spline():
    """fg_dim 7 (3 circular), 4 blocks, hidden 32, CG context (linear, periodic)."""
    torch.manual_seed(2)
    flow = ConditionalSplineFlow(7, (True, False, True, False, False, True, False),
                                 CGFeatures((False, True), mean=[0.5, 0.0], std=[2.0, 1.0]), n_blocks=4, hidden=32)
    # move away from the identity initialization, all parameters including the zero-initialized last
    # layers and the unconditional spline parameters: enough for a clearly non-trivial map (|log det|
    # up to ~8, mean |x - z| ~ 1) while the slopes stay moderate.  (With the affine factory's 0.3
    # everywhere, single dims get slopes ~e^-20 in places, and the float64 round trip error grows
    # like 1 / slope past 1e-10: an ill-conditioned map, not an inaccurate inverse.)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            last = ".out." in name or name.endswith("id_params")
            p.add_((0.04 if last else 0.15) * torch.randn_like(p))
    return flow


FLOWS = {"affine": make_affine, "spline": make_spline}


@pytest.fixture(params=sorted(FLOWS))
def flow_name(request):
    return request.param


@pytest.fixture
def flow(flow_name):
    return FLOWS[flow_name]()


def circle_diff(flow, a, b):
    """a - b, wrapped to [-pi, pi) on the periodic FG dims."""
    d = a - b
    return torch.where(flow.periodic_mask, torch.remainder(d + torch.pi, 2 * torch.pi) - torch.pi, d)


def cg_points(n):
    return torch.stack([torch.randn(n, dtype=torch.float64), (torch.rand(n, dtype=torch.float64) * 2 - 1) * torch.pi], 1)


def assert_round_trip(flow, z, s):
    """forward then inverse gives z back and opposite log-dets; returns x."""
    x, ld_fwd = flow.forward(z, s)
    assert torch.isfinite(x).all() and torch.isfinite(ld_fwd).all()
    z2, ld_inv = flow.inverse(x, s)
    assert circle_diff(flow, z2, z).abs().max() < 1e-10
    assert torch.allclose(ld_fwd, -ld_inv, atol=1e-10)
    return x


def test_invertible(flow):
    assert_round_trip(flow, flow.sample_base(50), cg_points(50))


def test_invertible_wide_inputs(flow):
    """Also far out in the base tails (beyond a spline's tail bound of 5: identity tails)."""
    s = cg_points(200)
    z = flow.sample_base(200)
    z = torch.where(flow.periodic_mask, z, 4.0 * z)
    z[0] = torch.where(flow.periodic_mask, z[0], torch.full_like(z[0], 12.0))
    z[1] = torch.where(flow.periodic_mask, z[1], torch.full_like(z[1], -7.5))
    x = assert_round_trip(flow, z, s)
    # and the other way round, with x far out in the tails in some rows
    x = x.detach().clone()
    x[:20] = torch.where(flow.periodic_mask, x[:20], torch.full_like(x[:20], 9.0))
    x[20:40] = torch.where(flow.periodic_mask, x[20:40], torch.full_like(x[20:40], -6.0))
    z, ld_inv = flow.inverse(x, s)
    x2, ld_fwd = flow.forward(z, s)
    assert circle_diff(flow, x2, x).abs().max() < 1e-10
    assert torch.allclose(ld_fwd, -ld_inv, atol=1e-10)


def test_log_det_matches_autograd_jacobian(flow):
    s = cg_points(6)
    z = flow.sample_base(6)
    _, ld = flow.forward(z, s)
    for i in range(6):
        jac = torch.autograd.functional.jacobian(lambda zz: flow.forward(zz[None], s[i:i + 1])[0][0], z[i])
        assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, ld[i], atol=1e-10)


def test_sample_log_prob_consistent(flow):
    s = cg_points(40)
    x, log_q = flow.sample(s)
    assert torch.allclose(flow.log_prob(x, s), log_q, atol=1e-10)


def test_every_flow_kind_of_the_config_is_tested():
    assert set(FLOWS) == set(typing.get_args(FlowConfig.model_fields["kind"].annotation))


def test_periodic_wrap(flow):
    """Circular FG dims: outputs in [-pi, pi), and z (forward) or x (inverse) shifted by 2 pi k on such a
    dim gives the same point on the circle and the same log-det.  Periodic CG dims: s shifted by 2 pi k
    gives the same map."""
    s = cg_points(64)
    z = flow.sample_base(64)
    x, ld = flow.forward(z, s)
    circ = flow.periodic_mask
    assert (x[:, circ] >= -math.pi).all() and (x[:, circ] < math.pi).all()
    for i in torch.nonzero(circ).flatten().tolist():
        for k in (-1.0, 1.0, 3.0):
            zs = z.clone()
            zs[:, i] += 2 * math.pi * k
            xs, lds = flow.forward(zs, s)
            assert circle_diff(flow, xs, x).abs().max() < 1e-10
            assert (xs[:, circ] >= -math.pi).all() and (xs[:, circ] < math.pi).all()
            assert (lds - ld).abs().max() < 1e-10
    z1, ld1 = flow.inverse(x, s)
    z2, ld2 = flow.inverse(x + 2 * math.pi * circ.to(x.dtype), s)
    assert circle_diff(flow, z2, z1).abs().max() < 1e-10 and (ld2 - ld1).abs().max() < 1e-10
    assert (z2[:, circ] >= -math.pi).all() and (z2[:, circ] < math.pi).all()
    # the CG context: cg_points' second coordinate is periodic
    cg_periodic = torch.tensor([False, True])
    for k in (-2.0, 1.0):
        xk, ldk = flow.forward(z, s + 2 * math.pi * k * cg_periodic.to(s.dtype))
        assert (xk - x).abs().max() < 1e-10 and (ldk - ld).abs().max() < 1e-10
    xk, ldk = flow.forward(z, s + torch.tensor([0.5, 0.0], dtype=s.dtype))  # the linear one is no period
    assert (xk - x).abs().max() > 1e-6


def test_density_normalized_1d():
    """For one FG dim the density integrates to one at any condition."""
    flow = ConditionalAffineFlow(1, CGFeatures((False,)), [8], "tanh")
    s = torch.full((20001, 1), 0.3, dtype=torch.float64)
    x = torch.linspace(-30, 30, 20001, dtype=torch.float64)[:, None]
    p = flow.log_prob(x, s).exp()
    assert torch.trapezoid(p, x[:, 0]).item() == pytest.approx(1.0, abs=1e-8)


def test_save_load_roundtrip(flow, flow_name):
    buf = io.BytesIO()
    torch.save(flow.state_dict(), buf)
    other = FLOWS[flow_name]()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    s = cg_points(10)
    z = flow.sample_base(10)
    assert torch.equal(flow.forward(z, s)[0], other.forward(z, s)[0])
