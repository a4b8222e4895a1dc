import math

import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.theory.losses import LOSS_NAMES, make_loss, parse_loss

LOSS_IDS = ["infonce(tau=0.5)", "sumexp(tau=2)", "triplet(margin=0.5)", "squared_hinge(margin=1.5)"]


@pytest.mark.parametrize("loss_id", LOSS_IDS)
def test_id_roundtrip(loss_id):
    loss = parse_loss(loss_id)
    assert parse_loss(loss.id) == loss
    assert loss.id == loss_id


def test_default_parameter():
    assert parse_loss("infonce") == make_loss("infonce", tau=1.0)
    assert parse_loss(" sumexp ( tau = 0.25 ) ").param == 0.25


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("foo(tau=1)", "one of infonce"),
        ("infonce(tau", "name\\(param=value\\)"),
        ("infonce(0.5)", "keyword parameters only"),
        ("infonce(beta=1)", "only the parameter 'tau'"),
        ("infonce(tau=1,tau=2)", "given once"),
        ("infonce(tau=x)", "a number for 'tau'"),
        ("infonce(tau=0)", "tau > 0"),
        ("infonce(tau=-1)", "tau > 0"),
        ("triplet(margin=inf)", "margin > 0"),
        ("", "name\\(param=value\\)"),
    ],
)
def test_parse_is_strict(bad, match):
    with pytest.raises(InputError, match=match):
        parse_loss(bad)


def test_builtin_formulas():
    t = np.linspace(-2, 0, 7)
    s = np.linspace(0, 3, 7)
    inf = parse_loss("infonce(tau=0.5)")
    np.testing.assert_allclose(inf.phi(t), np.exp(t / 0.5))
    np.testing.assert_allclose(inf.psi(s), np.log(1 + s))
    tri = parse_loss("triplet(margin=1)")
    np.testing.assert_allclose(tri.phi(t), np.maximum(0, t + 1))
    assert tri.psi_linear and not tri.smooth
    sq = parse_loss("squared_hinge(margin=1)")
    np.testing.assert_allclose(sq.phi(t), np.maximum(0, t + 1) ** 2)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_derivatives_match_finite_differences(name):
    loss = make_loss(name, **({"tau": 0.7} if name in ("infonce", "sumexp") else {"margin": 1.3}))
    t = np.array([-1.9, -1.1, -0.6, -0.05])  # away from the hinge at -1.3
    s = np.array([0.1, 1.0, 4.0])
    h = 1e-6
    for f, df in [
        (loss.phi, loss.dphi),
        (loss.dphi, loss.d2phi),
        (loss.psi, loss.dpsi),
        (loss.dpsi, loss.d2psi),
    ]:
        x = t if f in (loss.phi, loss.dphi) else s
        np.testing.assert_allclose(df(x), (f(x + h) - f(x - h)) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("loss_id", LOSS_IDS)
def test_torch_and_numpy_agree(loss_id):
    loss = parse_loss(loss_id)
    t = np.linspace(-2, 0, 11)  # arguments of phi
    s = np.linspace(0, 5, 11)  # arguments of psi
    for f, x in [(loss.phi, t), (loss.dphi, t), (loss.psi, s), (loss.dpsi, s)]:
        np.testing.assert_allclose(f(torch.tensor(x)).numpy(), f(x), rtol=1e-12)


@pytest.mark.parametrize("loss_id", LOSS_IDS)
def test_cvxpy_phi_matches_numpy(loss_id):
    import cvxpy as cp

    loss = parse_loss(loss_id)
    t = np.linspace(-2, 0, 5)
    x = cp.Variable(5)
    expr = loss.phi_cvx(x)
    assert expr.is_convex() and expr.is_incr(0)
    x.value = t
    np.testing.assert_allclose(expr.value, loss.phi(t), rtol=1e-12)
    assert math.isclose(float(loss.phi(np.array(-2.0))), float(loss.phi(-2.0 * np.ones(1))[0]))
