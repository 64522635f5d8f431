"""The curvature algorithms on an operator (``HessianOperator``, a SciPy ``LinearOperator``,
a matrix): the same numbers as the ``(model, loss_fn, data)`` form, one result type."""

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import aslinearoperator
from test_hessian import tanh_net
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics import (
    EigenResult,
    HessianOperator,
    extreme_eigenvalues,
    full_hessian,
    hessian_density,
    hessian_trace,
    hvp_operator,
)
from dlscope.metrics.operators import WrappedOperator, as_operator

ce = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def problem():
    model = tanh_net([3, 5, 3], seed=3)  # 38 parameters
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(40, 3, generator=g), torch.randint(0, 3, (40,), generator=g)
    return model, x, y, full_hessian(model, ce, x, y)


def test_hessian_operator_has_a_shape_and_counts_products(problem):
    model, x, y, h = problem
    op = HessianOperator(model, ce, (x, y))
    assert op.shape == (38, 38) and op.dtype == torch.float64 and op.products == 0
    v = torch.randn(38, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    assert op.products == 1


def test_operator_form_gives_the_numbers_of_the_model_form(problem):
    model, x, y, _ = problem
    for kw in ({"exact": False, "max_probes": 30}, {"exact": True}):
        a = hessian_trace(model, ce, (x, y), **kw)
        b = hessian_trace(HessianOperator(model, ce, (x, y)), **kw)
        assert (a.trace, a.stderr, a.probes, a.hvps) == (b.trace, b.stderr, b.probes, b.hvps)
    a = hessian_density(model, ce, (x, y), probes=2, steps=10)
    b = hessian_density(HessianOperator(model, ce, (x, y)), probes=2, steps=10)
    np.testing.assert_array_equal(a.ritz, b.ritz)
    assert a.hvps == b.hvps == 20
    a = extreme_eigenvalues(model, ce, x, y, k=2, return_vectors=True)
    b = extreme_eigenvalues(HessianOperator(model, ce, (x, y)), k=2, return_vectors=True)
    np.testing.assert_array_equal(np.r_[a.top, a.bottom], np.r_[b.top, b.bottom])
    assert a.hvps == b.hvps


def test_a_reused_operator_reports_the_products_of_each_call(problem):
    model, x, y, _ = problem
    op = HessianOperator(model, ce, (x, y))
    first = hessian_trace(op, exact=False, max_probes=10, rtol=0)
    second = hessian_trace(op, exact=False, max_probes=10, rtol=0)
    assert first.hvps == second.hvps == 10 and op.products == 20


def test_foreign_operators_and_matrices(problem):
    model, x, y, h = problem
    ev = torch.linalg.eigvalsh(h).numpy()
    scale = np.abs(ev).max()
    for op in (hvp_operator(model, ce, x, y), aslinearoperator(h.numpy()), h, h.numpy()):
        r = extreme_eigenvalues(op, k=3, which="top")
        np.testing.assert_allclose(r.top, ev[-3:], atol=1e-7 * scale)
        tr = hessian_trace(op, exact=True)
        assert tr.trace == pytest.approx(float(ev.sum()), rel=1e-9)
        d = hessian_density(op, steps=38)
        assert d.lambda_max == pytest.approx(ev[-1], rel=1e-6)
    h32 = WrappedOperator(aslinearoperator(h.numpy().astype(np.float32)))
    assert h32.dtype == torch.float32 and h32.matvec(torch.ones(38)).dtype == torch.float32


def test_extreme_eigenvalues_returns_one_type(problem):
    model, x, y, _ = problem
    for which in ("both", "top", "bottom"):
        for vectors in (False, True):
            for k in (2, 30):  # Lanczos and the dense fallback
                r = extreme_eigenvalues(model, ce, x, y, k=k, which=which,
                                        return_vectors=vectors)
                assert type(r) is EigenResult
                assert (r.top is None) == (which == "bottom")
                assert (r.bottom is None) == (which == "top")
                filled = [v for v in (r.top_vectors, r.bottom_vectors, r.top_residuals,
                                      r.bottom_residuals) if v is not None]
                assert bool(filled) == vectors


def test_bad_operator_arguments(problem):
    model, x, y, h = problem
    op = HessianOperator(model, ce, (x, y))
    with pytest.raises(UserError, match="operator takes neither"):
        hessian_trace(op, ce, (x, y))
    with pytest.raises(UserError, match="needs loss_fn and data"):
        hessian_density(model)
    with pytest.raises(UserError, match="expected a model or an operator"):
        as_operator("H")
    with pytest.raises(UserError, match="square"):
        extreme_eigenvalues(np.ones((2, 3)), k=1)
