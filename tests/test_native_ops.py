"""The dlsa_prod custom ops: opcheck, float64 gradcheck, float64 broadcast reference, edge cases,
non-finite rows, bad input, fake kernels, TF32 independence.  CUDA cases run when a GPU is
present and skip otherwise.  Every random input comes from a fixed seed (shape-derived unless
given), so a failure reproduces."""

import contextlib
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dlsa_prod.ops import gmm_loglik, gmm_loglik_broadcast, native

pytestmark = pytest.mark.skipif(not native.available("cpu"), reason="dlsa_prod._C not built")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and native.available("cuda") else [])
CUDA_FWD = ["tiled", "gemm"] if "cuda" in DEVICES else ["default"]  # the two CUDA forward kernels
ops = torch.ops.dlsa_prod if native.available("cpu") else None


def _seed(*parts) -> int:
    """A fixed seed per test case (reported by pytest through the parameters that make it)."""
    return 20261128 + sum(int(p) * 1009 ** i for i, p in enumerate(parts)) % 2**30


def _inputs(b, k, d, device, dtype=torch.float32, seed=None):
    """Random inputs from a fixed seed (derived from the shape unless given); never zeros."""
    g = torch.Generator().manual_seed(_seed(b, k, d) if seed is None else seed)
    u = torch.randn(b, d, generator=g, dtype=torch.float64)
    means = torch.randn(k, d, generator=g, dtype=torch.float64) * 0.5 + 0.1 * u[:1].mean()
    log_det = torch.randn(b, generator=g, dtype=torch.float64) * 3
    return u.to(device, dtype), means.to(device, dtype), log_det.to(device, dtype)


def _check_against_reference(out, u, means, log_det):
    ref = gmm_loglik_broadcast(u.double().cpu(), means.double().cpu(),
                               None if log_det is None else log_det.double().cpu(), return_log_probs=True)
    scale = ref.log_probs[torch.isfinite(ref.log_probs)].abs().max().item() + 1.0
    tol = 64 * torch.finfo(u.dtype).eps * scale  # fp32 rounding of O(|u|^2) terms
    torch.testing.assert_close(out.loglik.double().cpu(), ref.loglik, rtol=0, atol=tol)
    if out.log_probs is not None:
        lp, rp = out.log_probs.double().cpu(), ref.log_probs
        assert torch.equal(torch.isinf(lp), torch.isinf(rp))
        fin = torch.isfinite(rp)
        torch.testing.assert_close(lp[fin], rp[fin], rtol=0, atol=tol)
    top2 = ref.log_probs.topk(min(2, ref.log_probs.shape[1]), dim=1).values
    clear = (top2[:, 0] - top2[:, -1]) > 10 * tol if top2.shape[1] > 1 else torch.ones(len(top2), dtype=torch.bool)
    assert torch.equal(out.cluster.cpu()[clear], ref.cluster[clear])


@pytest.fixture(params=CUDA_FWD)
def cuda_fwd(request):
    """Run the test with each CUDA forward kernel (switched through the op, restored after)."""
    if request.param == "default":
        yield request.param
        return
    before = native.cuda_forward()
    native.cuda_forward(request.param)
    try:
        yield request.param
    finally:
        native.cuda_forward(before)


def test_cuda_forward_selection_is_read_once_and_switchable():
    """DLSA_PROD_CUDA_FWD is read once per process; the op switches it (CPU-only builds too)."""
    before = native.cuda_forward()
    assert before in ("gemm", "tiled")
    try:
        assert native.cuda_forward("tiled") == "tiled" and native.cuda_forward() == "tiled"
        assert native.cuda_forward("gemm") == "gemm"
        with pytest.raises(RuntimeError, match="must be gemm or tiled, got 'fast'"):
            native.cuda_forward("fast")
        assert native.cuda_forward() == "gemm"
    finally:
        native.cuda_forward(before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b,k,d", [(1, 1, 3), (1, 7, 5), (9, 1, 4), (37, 70, 33), (130, 129, 200), (64, 500, 256)])
@pytest.mark.parametrize("with_log_det", [False, True])
def test_forward_matches_float64_reference(device, b, k, d, with_log_det, cuda_fwd):
    u, means, log_det = _inputs(b, k, d, device)
    ld = log_det if with_log_det else None
    for ret in (False, True):
        out = gmm_loglik(u, means, ld, return_log_probs=ret, backend="native")
        assert (out.log_probs is not None) == ret
        _check_against_reference(out, u, means, ld)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device, cuda_fwd):
    u, means, log_det = _inputs(40, 30, 24, device)
    u_nc = u.t().contiguous().t()  # same values, column-major
    means_nc = torch.cat([means, means], dim=1)[:, ::2]  # strided view
    ld_nc = torch.stack([log_det, log_det], 1)[:, 0]
    assert not u_nc.is_contiguous() and not means_nc.is_contiguous() and not ld_nc.is_contiguous()
    out = gmm_loglik(u_nc, means_nc, ld_nc, return_log_probs=True, backend="native")
    _check_against_reference(out, u, means_nc.contiguous(), log_det)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    u, means, _ = _inputs(0, 5, 4, device)
    out = gmm_loglik(u, means, return_log_probs=True, backend="native")
    assert out.loglik.shape == (0,) and out.log_probs.shape == (0, 5)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    u, means, log_det = _inputs(6, 5, 4, device, torch.float64)
    u.requires_grad_()
    log_det.requires_grad_()

    def through_loglik(u_, ld_):
        return ops.gmm_loglik_fwd(u_, means, ld_, False)[0]

    def through_log_probs(u_, ld_):
        ll, _, lp = ops.gmm_loglik_fwd(u_, means, ld_, True)
        w = torch.linspace(-1, 1, lp.shape[1], device=device, dtype=lp.dtype)
        return ll * 0.3 + (torch.softmax(lp, 1) * w).sum(1) + (lp * w).sum(1) * 1e-2

    assert torch.autograd.gradcheck(through_loglik, (u, log_det))
    assert torch.autograd.gradcheck(through_log_probs, (u, log_det))


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_matches_torch_path_in_float32(device):
    u, means, log_det = _inputs(64, 100, 48, device)
    grads = []
    for backend in ("native", "torch"):
        uu, ll = u.clone().requires_grad_(), log_det.clone().requires_grad_()
        out = gmm_loglik(uu, means, ll, return_log_probs=True, backend=backend)
        (out.loglik.sum() + 0.1 * torch.log_softmax(out.log_probs, 1)[:, :7].sum()).backward()
        grads.append((uu.grad, ll.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_log_det", [False, True])
@pytest.mark.parametrize("ret", [False, True])
def test_opcheck(device, with_log_det, ret):
    u, means, log_det = _inputs(8, 6, 5, device)
    u.requires_grad_()
    args = (u, means, log_det.requires_grad_() if with_log_det else None, ret)
    torch.library.opcheck(ops.gmm_loglik_fwd.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward_and_filter(device):
    u, means, log_det = _inputs(8, 6, 5, device)
    ll, _, lp = ops.gmm_loglik_fwd(u, means, log_det, True)
    g = torch.randn(8, generator=torch.Generator().manual_seed(_seed(8, 1))).to(device)
    glp = torch.randn(8, 6, generator=torch.Generator().manual_seed(_seed(8, 6, 1))).to(device)
    torch.library.opcheck(ops._gmm_loglik_bwd.default, (g, glp, u, means, ll, log_det, lp))
    torch.library.opcheck(ops._gmm_loglik_bwd.default, (g, None, u, means, ll, None, None))
    torch.library.opcheck(ops.filter_split.default, (ll, float(ll.median())))


@pytest.mark.parametrize("device", DEVICES)
def test_filter_split_stable_and_complete(device):
    ll = torch.randn(1000, generator=torch.Generator().manual_seed(_seed(1000))).to(device)
    ll[::7] = 0.25
    ll[5] = float("nan")
    out, rest = ops.filter_split(ll, 0.25)
    ref = ll >= 0.25
    assert torch.equal(out.cpu(), torch.nonzero(ref).flatten().cpu())
    assert torch.equal(rest.cpu(), torch.nonzero(~ref).flatten().cpu())  # NaN continues deeper
    assert 5 in rest.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_give_clear_errors(device):
    for args, msg in _bad_forward_inputs(device):
        with pytest.raises(RuntimeError, match=msg):
            ops.gmm_loglik_fwd(*args)


def _bad_forward_inputs(device):
    u, means, log_det = _inputs(4, 3, 5, device)
    cases = [
        ((u[0], means, None, False), "u must be 2-D"),
        ((u, means[:, :4], None, False), "u has dim 5 but means have dim 4"),
        ((u.half(), means.half(), None, False), "float32 or float64"),
        ((u, means.double(), None, False), "means dtype"),
        ((u, means, log_det[:2], False), "log_det must have shape"),
        ((u, means, log_det.double(), False), "log_det dtype"),
        ((u.int(), means, None, False), "float32 or float64"),
        ((u, means[:0], None, False), "at least one centre"),
    ]
    if device == "cuda":
        cases.append(((u, means.cpu(), None, False), "means on cpu but u on cuda"))
    return cases


def test_fake_kernels_check_like_the_kernels():
    """The fake kernels (registered at import) refuse what the C++ kernels refuse, with the same
    message, and give the kernels' output shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        for args, msg in _bad_forward_inputs("cpu"):
            fake = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
            with pytest.raises(RuntimeError, match=msg):
                ops.gmm_loglik_fwd(*fake)
        u, means, log_det = (mode.from_tensor(t) for t in _inputs(7, 4, 5, "cpu"))
        ll, cl, lp = ops.gmm_loglik_fwd(u, means, log_det, True)
        assert (ll.shape, cl.shape, cl.dtype, lp.shape) == ((7,), (7,), torch.int64, (7, 4))
        assert ops.gmm_loglik_fwd(u, means, None, False)[2].shape == (0, 4)
        gu, gld = ops._gmm_loglik_bwd(ll, lp, u, means, ll, log_det, lp)
        assert gu.shape == (7, 5) and gld.shape == (7,)
        with pytest.raises(RuntimeError, match="grad_loglik shape"):
            ops._gmm_loglik_bwd(ll[:3], None, u, means, ll, None, None)
        with pytest.raises(RuntimeError, match=r"\(B, K\) input has shape"):
            ops._gmm_loglik_bwd(ll, lp[:, :2], u, means, ll, None, None)
        with pytest.raises(RuntimeError, match="loglik must be 1-D"):
            ops.filter_split(lp, 0.0)
    # the same backward errors from the real kernel
    u, means, _ = _inputs(7, 4, 5, "cpu")
    ll, _, lp = ops.gmm_loglik_fwd(u, means, None, True)
    with pytest.raises(RuntimeError, match="grad_loglik shape"):
        ops._gmm_loglik_bwd(ll[:3], None, u, means, ll, None, None)
    with pytest.raises(RuntimeError, match=r"\(B, K\) input has shape"):
        ops._gmm_loglik_bwd(ll, lp[:, :2], u, means, ll, None, None)


@contextlib.contextmanager
def _fp32_precision(knob, value):
    saved = knob.fp32_precision
    knob.fp32_precision = value
    try:
        yield knob
    finally:
        knob.fp32_precision = saved


def _assert_same_output(out, ref):
    torch.testing.assert_close(out.loglik, ref.loglik, rtol=0, atol=0)
    torch.testing.assert_close(out.log_probs, ref.log_probs, rtol=0, atol=0)


class _KnobAtOp(TorchDispatchMode):
    """Records a precision knob's value at the moment each matching op runs."""

    def __init__(self, knob, op_name):
        super().__init__()
        self.knob, self.op_name, self.seen = knob, op_name, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.op_name in str(func):
            self.seen.append(self.knob.fp32_precision)
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif("cuda" not in DEVICES, reason="TF32 only affects CUDA matmuls (no GPU here)")
def test_tf32_enabled_globally_does_not_change_results(cuda_fwd):
    u, means, log_det = _inputs(128, 300, 512, "cuda")
    base = gmm_loglik(u, means, log_det, return_log_probs=True, backend="native")
    with _fp32_precision(torch.backends.cuda.matmul, "tf32"):
        # the setting does change a plain product at this size, so the comparison below can fail
        assert not torch.equal(u @ means.t(), u.double().matmul(means.double().t()).float())
        again = gmm_loglik(u, means, log_det, return_log_probs=True, backend="native")
        uu = u.clone().requires_grad_()
        gmm_loglik(uu, means, log_det, backend="native").loglik.sum().backward()
        g_tf32 = uu.grad
    _assert_same_output(again, base)
    uu = u.clone().requires_grad_()
    gmm_loglik(uu, means, log_det, backend="native").loglik.sum().backward()
    torch.testing.assert_close(g_tf32, uu.grad, rtol=0, atol=0)


def test_cpu_reduced_precision_setting_leaves_forward_in_ieee():
    """oneDNN's bf16 fp32-matmul setting (effective only on CPUs with AMX / AVX512-BF16, so the
    numbers alone cannot show it here) must not reach the op's GEMM: the op must run with the
    knob at "ieee", and the caller's setting is restored after."""
    u, means, log_det = _inputs(128, 300, 512, "cpu")
    base = gmm_loglik(u, means, log_det, return_log_probs=True, backend="native")
    knob = torch.backends.mkldnn.matmul
    with _fp32_precision(knob, "bf16"):
        with _KnobAtOp(knob, "dlsa_prod.gmm_loglik_fwd") as seen:
            again = gmm_loglik(u, means, log_det, return_log_probs=True, backend="native")
        assert seen.seen == ["ieee"]
        assert knob.fp32_precision == "bf16"
    _assert_same_output(again, base)


def test_torch_compile_sees_the_op():
    u, means, log_det = _inputs(16, 10, 8, "cpu")

    def f(u_, m_, ld_):
        return ops.gmm_loglik_fwd(u_, m_, ld_, False)[0]

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(u, means, log_det), f(u, means, log_det))


def test_torch_compile_differentiates_through_the_op():
    """aot_autograd traces the C++ autograd (fake kernels for both ops) and gives eager's gradient."""
    u, means, log_det = _inputs(16, 10, 8, "cpu")

    def loss(u_, ld_):
        ll, _, lp = ops.gmm_loglik_fwd(u_, means, ld_, True)
        return ll.sum() + torch.log_softmax(lp, 1)[:, 0].sum()

    grads = []
    for fn in (loss, torch.compile(loss, backend="aot_eager", fullgraph=True)):
        uu, ll = u.clone().requires_grad_(), log_det.clone().requires_grad_()
        fn(uu, ll).backward()
        grads.append((uu.grad, ll.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])


def test_gmm_loglik_uses_native_op_by_default():
    u, means, _ = _inputs(4, 3, 5, "cpu")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        gmm_loglik(u, means)
    assert any("dlsa_prod::gmm_loglik_fwd" in e.name for e in prof.events())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        gmm_loglik(u, means.requires_grad_())  # trainable centres: the torch path handles their gradient
    assert not any("dlsa_prod::gmm_loglik_fwd" in e.name for e in prof.events())


def _float64_grads(u, means, log_det, w_lp):
    """Gradients of loglik.sum() + (log_probs * w_lp).sum() by the float64 torch path."""
    uu = u.detach().double().cpu().requires_grad_()
    ll = log_det.detach().double().cpu().requires_grad_()
    out = gmm_loglik(uu, means.double().cpu(), ll, return_log_probs=True, backend="torch")
    (out.loglik.sum() + (out.log_probs * w_lp.double().cpu()).sum()).backward()
    return uu.grad, ll.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [7, 8, 9, 16, 37])
def test_float32_rows_at_vector_tails(device, k):
    """K around the 8-lane width of the CPU row kernels: forward against the float64 reference,
    backward (through loglik and log_probs) against float64 gradients."""
    u, means, log_det = _inputs(23, k, 12, device)
    out = gmm_loglik(u, means, log_det, return_log_probs=True, backend="native")
    _check_against_reference(out, u, means, log_det)
    w = torch.randn(23, k, generator=torch.Generator().manual_seed(_seed(23, k, 1))).to(device) * 0.1
    uu, ll = u.clone().requires_grad_(), log_det.clone().requires_grad_()
    out = gmm_loglik(uu, means, ll, return_log_probs=True, backend="native")
    (out.loglik.sum() + (out.log_probs * w).sum()).backward()
    ref_u, ref_ld = _float64_grads(u, means, log_det, w)
    torch.testing.assert_close(uu.grad.double().cpu(), ref_u, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ll.grad.double().cpu(), ref_ld, rtol=1e-4, atol=1e-4)


def _with_non_finite_rows(u, log_det):
    """Copies with rows 0..5 made non-finite in the ways a diverging flow does."""
    u, log_det = u.clone(), log_det.clone()
    u[0, 3] = math.nan            # one NaN coordinate: every log p_k NaN
    u[1] = math.nan               # all NaN
    u[2] = 1e30                   # |u|^2 overflows: every log p_k -inf
    log_det[3] = math.inf         # every log p_k +inf
    log_det[4] = -math.inf        # every log p_k -inf
    log_det[5] = math.nan
    return u, log_det


EXPECTED_NON_FINITE = ["nan", "nan", "-inf", "nan", "-inf", "nan"]


def _kind(x: float) -> str:
    return "nan" if math.isnan(x) else ("-inf" if x == -math.inf else ("inf" if x == math.inf else "finite"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [5, 16, 37])
def test_non_finite_rows_same_rule_on_every_path(device, k, cuda_fwd):
    """Rows whose likelihood is not finite: loglik NaN (a NaN or +inf term) or -inf (every term
    -inf), cluster 0, on the native kernel and the torch paths alike; finite rows unchanged and
    every cluster in [0, K) (the op once returned cluster = K here)."""
    u, means, log_det = _inputs(40, k, 9, device)
    ub, ldb = _with_non_finite_rows(u, log_det)
    outs = {b: gmm_loglik(ub, means, ldb, backend=b) for b in ("native", "torch", "broadcast")}
    clean = gmm_loglik(u, means, log_det, backend="native")
    for backend, out in outs.items():
        kinds = [_kind(x) for x in out.loglik[:6].tolist()]
        assert kinds == EXPECTED_NON_FINITE, (backend, kinds)
        assert out.cluster[:6].tolist() == [0] * 6, backend
        assert ((out.cluster >= 0) & (out.cluster < k)).all(), backend
        assert torch.isfinite(out.loglik[6:]).all(), backend
    torch.testing.assert_close(outs["native"].loglik[6:], clean.loglik[6:], rtol=0, atol=0)
    assert torch.equal(outs["native"].cluster[6:], clean.cluster[6:])
    torch.testing.assert_close(outs["native"].loglik[6:], outs["torch"].loglik[6:], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_autograd_edge_uses(device):
    """The C++ autograd: gradient through log_probs alone, a second backward over a retained
    graph (saved buffers must not be overwritten), trainable centres refused at the op."""
    u, means, log_det = _inputs(19, 11, 6, device)
    uu = u.clone().requires_grad_()
    ll, _, lp = ops.gmm_loglik_fwd(uu, means, log_det, True)
    assert ll.requires_grad and lp.requires_grad
    torch.log_softmax(lp, 1)[:, 0].sum().backward(retain_graph=True)
    first = uu.grad.clone()
    ref = u.clone().double().requires_grad_()
    ref_lp = gmm_loglik(ref, means.double(), log_det.double(), return_log_probs=True, backend="torch").log_probs
    torch.log_softmax(ref_lp, 1)[:, 0].sum().backward()
    torch.testing.assert_close(first.double(), ref.grad, rtol=1e-4, atol=1e-4)
    uu.grad = None
    torch.log_softmax(lp, 1)[:, 0].sum().backward()
    torch.testing.assert_close(uu.grad, first, rtol=0, atol=0)
    uu.grad = None
    ll2, _, lp2 = ops.gmm_loglik_fwd(uu, means, log_det, False)
    assert lp2.shape == (0, 11)  # not asked for: the placeholder, though the backward keeps them
    ll2.sum().backward(retain_graph=True)
    g1 = uu.grad.clone()
    ll2.sum().backward()
    torch.testing.assert_close(uu.grad, 2 * g1)
    with pytest.raises(RuntimeError, match="centres are fixed buffers"):
        ops.gmm_loglik_fwd(uu, means.clone().requires_grad_(), None, False)
    with torch.no_grad():  # no gradient wanted: trainable centres are fine
        ops.gmm_loglik_fwd(uu, means.clone().requires_grad_(), None, False)


def test_cpu_row_kernels_both_paths():
    """The CPU float32 row kernels: the SIMD path where the CPU has it, and the portable loops
    (DLSA_PROD_CPU_SIMD=off, in a fresh process) pass the same reference tests."""
    import os
    import subprocess
    import sys

    assert native.cpu_row_isa() in ("avx2+fma", "portable")
    env = dict(os.environ, DLSA_PROD_CPU_SIMD="off", CUDA_VISIBLE_DEVICES="")
    code = ("from dlsa_prod.ops import native; import torch; native.available('cpu'); "
            "print(torch.ops.dlsa_prod.cpu_row_isa())")
    isa = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert isa.stdout.strip() == "portable"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "float32_rows or forward_matches or non_finite or gradient_matches"],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout
