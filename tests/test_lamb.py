"""framework.training.lamb: the LAMB update rule, edge cases, precision, state round trip, and training."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from framework.training.lamb import Lamb


def reference_lamb(
    weights: list[np.ndarray],
    grads_per_step: list[list[np.ndarray]],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    max_ratio: float,
    min_ratio: float,
    bias_correction: bool = True,
    eps_inside_sqrt: bool = False,
) -> tuple[list[np.ndarray], list[list[float]]]:
    """LAMB as DeepSpeed's fused_lamb_cuda_kernel.cu computes it, written out in float64 numpy."""
    b1, b2 = betas
    w = [x.astype(np.float64).copy() for x in weights]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    ratios: list[list[float]] = []
    for t, grads in enumerate(grads_per_step, start=1):
        step_ratios = []
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = np.sqrt(v[i] + eps) if eps_inside_sqrt else np.sqrt(v[i]) + eps
            update = m[i] / denom + weight_decay * w[i]
            w_norm, u_norm = np.linalg.norm(w[i]), np.linalg.norm(update)
            ratio = 1.0
            if w_norm != 0 and u_norm != 0:
                ratio = min(max(w_norm / u_norm, min_ratio), max_ratio)
            step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t) if bias_correction else lr
            w[i] = w[i] - step_size * ratio * update
            step_ratios.append(ratio)
        ratios.append(step_ratios)
    return w, ratios


def run_lamb(
    weights: list[np.ndarray], grads_per_step: list[list[np.ndarray]], dtype: torch.dtype = torch.float32, **options
) -> tuple[list[torch.Tensor], list[list[float]], Lamb]:
    """Feed fixed gradients to :class:`Lamb` and return the final weights and per-step trust ratios."""
    params = [torch.nn.Parameter(torch.tensor(w, dtype=dtype)) for w in weights]
    opt = Lamb(params, **options)
    ratios = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        ratios.append(opt.get_lamb_coeffs())
    return [p.detach() for p in params], ratios, opt


def random_problem(
    seed: int, shapes: list[tuple[int, ...]], steps: int
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Random weights and gradient sequences (float32-representable) of the given shapes."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0, 0.5, size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(0, 0.1, size=s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return weights, grads


@pytest.mark.parametrize("weight_decay", [0.0, 0.01, 0.5])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_matches_reference_rule_over_several_steps(weight_decay: float, bias_correction: bool) -> None:
    weights, grads = random_problem(0, [(7, 5), (5,), (3, 4, 2)], steps=6)
    options = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=weight_decay, bias_correction=bias_correction)
    got, got_ratios, _ = run_lamb(weights, grads, max_trust_ratio=10.0, min_trust_ratio=0.01, **options)
    want, want_ratios = reference_lamb(weights, grads, max_ratio=10.0, min_ratio=0.01, **options)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(got_ratios), np.array(want_ratios), rtol=1e-5)
    # The trust ratio really varies per tensor and is not stuck at a clamp: the test exercises the rule itself.
    assert len({round(r, 4) for r in got_ratios[-1]}) == 3
    assert all(0.01 < r < 10.0 for r in got_ratios[-1])


def test_eps_inside_sqrt_matches_reference() -> None:
    weights, grads = random_problem(1, [(4, 4)], steps=4)
    options = dict(lr=0.02, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1)
    got, _, _ = run_lamb(weights, grads, eps_inside_sqrt=True, max_trust_ratio=10.0, min_trust_ratio=0.01, **options)
    want, _ = reference_lamb(weights, grads, eps_inside_sqrt=True, max_ratio=10.0, min_ratio=0.01, **options)
    np.testing.assert_allclose(got[0].numpy(), want[0], rtol=1e-5, atol=1e-6)
    plain, _, _ = run_lamb(weights, grads, max_trust_ratio=10.0, min_trust_ratio=0.01, **options)
    assert not torch.allclose(plain[0], got[0])


def test_zero_norm_weights_take_a_plain_adam_step() -> None:
    # A zero-initialised bias: ||w|| = 0, so the ratio is 1 instead of 0 (which would freeze it forever).
    grads = [[np.full((3,), 0.5, dtype=np.float32)]]
    got, ratios, _ = run_lamb([np.zeros(3, dtype=np.float32)], grads, lr=0.1, weight_decay=0.01)
    assert ratios == [[1.0]]
    # First bias-corrected Adam step is lr * sign(g) (up to eps).
    np.testing.assert_allclose(got[0].numpy(), -0.1 * np.ones(3), rtol=1e-4)


def test_zero_update_leaves_weights_unchanged_with_ratio_one() -> None:
    weights = [np.ones((2, 2), dtype=np.float32)]
    got, ratios, _ = run_lamb(weights, [[np.zeros((2, 2), dtype=np.float32)]] * 3, lr=0.1, weight_decay=0.0)
    assert ratios == [[1.0]] * 3
    np.testing.assert_array_equal(got[0].numpy(), weights[0])


def test_all_zero_param_and_grad_stays_finite() -> None:
    got, ratios, _ = run_lamb([np.zeros(4, dtype=np.float32)], [[np.zeros(4, dtype=np.float32)]] * 2, lr=0.1)
    assert torch.isfinite(got[0]).all() and ratios == [[1.0], [1.0]]


def test_trust_ratio_is_clamped_at_both_ends() -> None:
    big = [np.full((4,), 1000.0, dtype=np.float32)]
    small = [np.full((4,), 1e-4, dtype=np.float32)]
    grads = [[np.full((4,), 0.3, dtype=np.float32)]]
    _, high, _ = run_lamb(big, grads, lr=0.01, weight_decay=0.0, max_trust_ratio=5.0)
    _, low, _ = run_lamb(small, grads, lr=0.01, weight_decay=0.0, min_trust_ratio=0.02)
    assert high == [[5.0]]
    assert low == [[pytest.approx(0.02)]]
    # The clamped reference agrees on the resulting weights too.
    got, _, _ = run_lamb(big, grads, lr=0.01, weight_decay=0.0, max_trust_ratio=5.0)
    want, _ = reference_lamb(big, grads, lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                             max_ratio=5.0, min_ratio=0.01)
    np.testing.assert_allclose(got[0].numpy(), want[0], rtol=1e-6)


def test_parameter_groups_override_weight_decay() -> None:
    weights, grads = random_problem(2, [(6,), (6,)], steps=3)
    params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
    opt = Lamb([{"params": [params[0]]}, {"params": [params[1]], "weight_decay": 0.0}], lr=0.01, weight_decay=0.3)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        opt.step()
    common = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, max_ratio=10.0, min_ratio=0.01)
    want_decay, _ = reference_lamb([weights[0]], [[g[0]] for g in grads], weight_decay=0.3, **common)
    want_plain, _ = reference_lamb([weights[1]], [[g[1]] for g in grads], weight_decay=0.0, **common)
    np.testing.assert_allclose(params[0].detach().numpy(), want_decay[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params[1].detach().numpy(), want_plain[0], rtol=1e-5, atol=1e-6)


def test_parameters_without_grad_are_skipped() -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = Lamb([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    assert len(opt.get_lamb_coeffs()) == 1


def test_bf16_params_keep_fp32_state_and_follow_the_rule() -> None:
    weights, grads = random_problem(3, [(16, 8)], steps=4)
    weights = [torch.tensor(weights[0]).bfloat16().float().numpy()]  # start from bf16-representable values
    got, _, opt = run_lamb(weights, grads, dtype=torch.bfloat16, lr=0.01, weight_decay=0.01)
    state = next(iter(opt.state.values()))
    assert got[0].dtype == torch.bfloat16
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    # Gradients are rounded to bf16 too, so compare against the rule with tolerances of bf16 rounding.
    bf16_grads = [[torch.tensor(g).bfloat16().float().numpy() for g in step] for step in grads]
    want, _ = reference_lamb(weights, bf16_grads, lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                             max_ratio=10.0, min_ratio=0.01)
    np.testing.assert_allclose(got[0].float().numpy(), want[0], rtol=2e-2, atol=2e-2)
    assert not np.allclose(got[0].float().numpy(), weights[0])  # it did move


def test_state_dict_round_trip_continues_identically() -> None:
    weights, grads = random_problem(4, [(5, 3)], steps=6)
    straight, _, _ = run_lamb(weights, grads, lr=0.01)

    params = [torch.nn.Parameter(torch.tensor(weights[0]))]
    opt = Lamb(params, lr=0.01)
    for g in grads[:3]:
        params[0].grad = torch.tensor(g[0])
        opt.step()
    saved_param, saved_state = params[0].detach().clone(), copy.deepcopy(opt.state_dict())

    resumed = [torch.nn.Parameter(saved_param)]
    opt2 = Lamb(resumed, lr=0.01)
    opt2.load_state_dict(saved_state)
    for g in grads[3:]:
        resumed[0].grad = torch.tensor(g[0])
        opt2.step()
    torch.testing.assert_close(resumed[0].detach(), straight[0], rtol=0, atol=0)


def test_trains_a_tiny_model() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = (x @ torch.randn(16, 1) + 0.1 * torch.randn(256, 1)).squeeze(1)
    y = y / y.std()  # unit-variance target: the starting loss is about 1
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = Lamb([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0.02, weight_decay=0.01)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_closure_is_evaluated_with_grad_enabled() -> None:
    w = torch.nn.Parameter(torch.tensor([2.0]))
    opt = Lamb([w], lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(4.0)
    assert w.item() < 2.0


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(lr=-1.0), "lr"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(eps=0.0), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(max_trust_ratio=0.001), "min_trust_ratio <= max_trust_ratio"),
    ],
)
def test_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Lamb([torch.nn.Parameter(torch.ones(1))], **options)


def test_sparse_gradients_are_rejected() -> None:
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = Lamb(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed FusedLamb is CUDA-only")
def test_matches_deepspeed_fused_lamb_on_cuda() -> None:
    from deepspeed.ops.lamb import FusedLamb

    weights, grads = random_problem(5, [(64, 32), (32,)], steps=5)
    options = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True)
    ours = [torch.nn.Parameter(torch.tensor(w, device="cuda")) for w in weights]
    theirs = [torch.nn.Parameter(torch.tensor(w, device="cuda")) for w in weights]
    opt_ours = Lamb(ours, max_trust_ratio=10.0, min_trust_ratio=0.01, **options)
    opt_theirs = FusedLamb(theirs, max_coeff=10.0, min_coeff=0.01, **options)
    for step_grads in grads:
        for a, b, g in zip(ours, theirs, step_grads):
            a.grad = torch.tensor(g, device="cuda")
            b.grad = torch.tensor(g, device="cuda")
        opt_ours.step()
        opt_theirs.step()
        np.testing.assert_allclose(opt_ours.get_lamb_coeffs(), opt_theirs.get_lamb_coeffs(), rtol=1e-4)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# The foreach (multi-tensor) step against the per-tensor loop and the reference rule


def run_both(make_params, grads_for, steps: int, groups=None, **options):  # noqa: ANN001, ANN201
    """Run the foreach and the per-tensor Lamb on identical copies; return (params, ratios) of each."""
    out = []
    for foreach in (True, False):
        params = make_params()
        param_groups = groups(params) if groups is not None else params
        opt = Lamb(param_groups, foreach=foreach, **options)
        ratios = []
        for t in range(steps):
            for i, p in enumerate(params):
                g = grads_for(t, i, p)
                p.grad = None if g is None else g.to(p.dtype)
            opt.step()
            ratios.append(opt.get_lamb_coeffs())
        out.append(([p.detach().clone() for p in params], ratios))
    return out


def test_foreach_is_the_default() -> None:
    assert Lamb([torch.nn.Parameter(torch.ones(2))]).foreach is True


@pytest.mark.parametrize("eps_inside_sqrt", [False, True])
def test_foreach_matches_the_per_tensor_loop_bit_for_bit(eps_inside_sqrt: bool) -> None:
    # Mixed dtypes in one group, a weight-decay and a no-decay group, gradients missing at some steps (so step
    # counts, hence bias corrections, differ between tensors of a bucket).
    shapes = [(9, 7), (7,), (4, 3, 2), (5,), (6, 6), (3,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.float16, torch.bfloat16, torch.float32]

    def make_params() -> list[torch.nn.Parameter]:
        g = torch.Generator().manual_seed(7)
        return [torch.nn.Parameter(torch.randn(s, generator=g).to(d)) for s, d in zip(shapes, dtypes)]

    def grads_for(t: int, i: int, p: torch.Tensor) -> torch.Tensor | None:
        if (t + i) % 4 == 3:
            return None
        return torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * t + i)) * 0.1

    def groups(params: list[torch.nn.Parameter]) -> list[dict]:
        return [{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.0}]

    (fe, fe_ratios), (loop, loop_ratios) = run_both(make_params, grads_for, 7, groups, lr=0.01, weight_decay=0.1,
                                                    eps_inside_sqrt=eps_inside_sqrt)
    for a, b in zip(fe, loop):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert fe_ratios == loop_ratios
    # get_lamb_coeffs lists the updated tensors in parameter order, skipping those without a gradient this step.
    assert [len(r) for r in fe_ratios] == [sum((t + i) % 4 != 3 for i in range(6)) for t in range(7)]


def test_foreach_with_lagging_steps_follows_the_reference_per_tensor() -> None:
    # A tensor that had no gradient at some steps continues its own bias-correction count (as FusedLamb does).
    weights, grads = random_problem(11, [(6, 4), (4,)], steps=6)
    present = [[True] * 6, [t % 2 == 0 for t in range(6)]]
    params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
    opt = Lamb(params, lr=0.02, weight_decay=0.01)
    for t in range(6):
        for i, p in enumerate(params):
            p.grad = torch.tensor(grads[t][i]) if present[i][t] else None
        opt.step()
    common = dict(lr=0.02, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_ratio=10.0, min_ratio=0.01)
    for i, p in enumerate(params):
        own = [[grads[t][i]] for t in range(6) if present[i][t]]
        want, _ = reference_lamb([weights[i]], own, **common)
        np.testing.assert_allclose(p.detach().numpy(), want[0], rtol=1e-5, atol=1e-6)


def test_foreach_chunks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import framework.training.lamb as lamb_module

    weights, grads = random_problem(12, [(10, 10), (10,), (30,), (5, 5)], steps=3)
    whole, whole_ratios, _ = run_lamb(weights, grads, lr=0.01)
    for budget in ("FOREACH_CHUNK_ELEMENTS", "CPU_FOREACH_CHUNK_ELEMENTS"):
        monkeypatch.setattr(lamb_module, budget, 40)  # one tensor per call, the 100-element one alone
    chunked, chunked_ratios, _ = run_lamb(weights, grads, lr=0.01)
    tensors = [torch.zeros(s) for s in [(10, 10), (10,), (30,), (5, 5)]]
    calls = lamb_module._foreach_chunks(tensors, [0, 1, 2, 3])
    assert [[i for _, i in call] for call in calls] == [[0], [1, 2], [3]]  # 100 alone; 10 + 30 fit in 40
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)
    assert whole_ratios == chunked_ratios
    want, want_ratios = reference_lamb(weights, grads, lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                                       max_ratio=10.0, min_ratio=0.01)
    np.testing.assert_allclose(np.array(chunked_ratios), np.array(want_ratios), rtol=1e-5)


def test_state_dict_moves_between_foreach_and_per_tensor() -> None:
    weights, grads = random_problem(13, [(5, 3), (3,)], steps=6)
    straight, _, _ = run_lamb(weights, grads, lr=0.01)
    params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
    opt = Lamb(params, lr=0.01, foreach=False)
    for step_grads in grads[:3]:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        opt.step()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = Lamb(resumed, lr=0.01, foreach=True)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for step_grads in grads[3:]:
        for p, g in zip(resumed, step_grads):
            p.grad = torch.tensor(g)
        opt2.step()
    for a, b in zip(resumed, straight):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


def test_foreach_step_of_an_empty_or_gradless_group_is_a_no_op() -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = Lamb([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=0.1)
    opt.step()
    assert opt.get_lamb_coeffs() == [] and not opt.state
    b.grad = torch.ones(2)
    opt.step()
    assert len(opt.get_lamb_coeffs()) == 1 and torch.equal(a.detach(), torch.ones(3))
