import json

import pytest
import torch

from interp.circuits.attribution import Node, exact_node_effects, node_attribution, spearman, top_nodes
from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import Task, load_task_jsonl, make_task
from interp.errors import DataError, UnknownNameError
from interp.models import load
from interp.sae.release import load_pretrained

HOOK = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def spliced():
    model = load("othello").requires_grad_(False)
    return SplicedModel(model, {HOOK: load_pretrained(f"othello/{HOOK}/topk")})


@pytest.fixture(scope="module")
def task():
    return make_task("othello-legal", n=16)


def test_othello_legal_task_is_what_it_says(task):
    from interp.data import othello as oth

    assert task.clean.shape == task.patch.shape == (16, 21)
    assert (task.clean[:, :-1] == task.patch[:, :-1]).all()
    assert (task.clean[:, -1] != task.patch[:, -1]).all()
    for i in range(4):
        moves = [int(oth.TOKEN_TO_SQUARE[t]) for t in task.clean[i, 1:]]
        legal = oth.replay(moves)[-1].legal_moves()
        assert int(oth.TOKEN_TO_SQUARE[task.answer[i]]) in legal
        assert int(oth.TOKEN_TO_SQUARE[task.wrong[i]]) not in legal


def test_ig_scores_of_a_hook_sum_to_the_effect_of_patching_it_all(spliced, task):
    """Completeness: with many steps IG's scores add up to the whole hook's patch effect."""
    scores = node_attribution(spliced, task, method="ig", steps=32)[HOOK]
    clean = spliced.run(task.clean)
    patched = spliced.run(task.patch)
    pa, pe = patched.hooks[HOOK].acts, patched.hooks[HOOK].err
    whole = spliced.run(task.clean, {HOOK: lambda n, a, e: (pa, pe)})
    effect = float(task.metric(whole.logits).mean() - task.metric(clean.logits).mean())
    assert float(scores.sum()) == pytest.approx(effect, rel=0.02, abs=1e-3)


def test_atp_is_gradient_times_difference(spliced, task):
    scores = node_attribution(spliced, task, method="atp", batch_size=5)[HOOK]
    res = spliced.run(task.clean, track_grads=True)
    task.metric(res.logits).mean().backward()
    patched = spliced.run(task.patch)
    st, pst = res.hooks[HOOK], patched.hooks[HOOK]
    ref = (st.acts.grad * (pst.acts - st.acts.detach())).sum(0)
    torch.testing.assert_close(scores[:, :-1].float(), ref, atol=1e-5, rtol=1e-4)


def test_exact_effects_match_a_hand_patch_and_correlate_with_atp(spliced, task):
    scores = node_attribution(spliced, task)
    top = top_nodes(scores, 12)
    node = top[1][0]
    exact = exact_node_effects(spliced, task, [n for n, _ in top])
    patched = spliced.run(task.patch).hooks[HOOK]
    clean = spliced.run(task.clean)

    def one(name, a, e):
        a = a.clone()
        a[:, node.position, node.latent] = patched.acts[:, node.position, node.latent]
        return a, e

    hand = task.metric(spliced.run(task.clean, {HOOK: one}).logits).mean() \
        - task.metric(clean.logits).mean()
    assert float(exact[1]) == pytest.approx(float(hand), abs=1e-5)
    est = torch.tensor([v for _, v in top], dtype=torch.float64)
    assert spearman(est, exact) > 0.5


def test_zero_and_mean_patches_and_bad_input(spliced, task):
    for patch in ("zero", "mean"):
        s = node_attribution(spliced, task.subset(4), patch=patch, sum_positions=True)
        assert s[HOOK].shape == (2049,) and torch.isfinite(s[HOOK]).all()
    no_cf = Task("t", task.clean, None, task.answer, task.wrong)
    with pytest.raises(DataError, match="no counterfactual"):
        node_attribution(spliced, no_cf)
    with pytest.raises(UnknownNameError, match="patch"):
        node_attribution(spliced, task, patch="resample")
    with pytest.raises(DataError, match="no prompts"):
        Task("t", task.clean[:0], None, task.answer[:0], task.wrong[:0])
    with pytest.raises(UnknownNameError, match="othello-legal"):
        make_task("othello-illegal")
    assert Node.error_term(HOOK, 0).is_error and Node.from_column(HOOK, 0, 2048, 2048).is_error


def test_pycode_tasks_and_jsonl(tmp_path):
    model = load("pycode")
    for name in ("pycode-bracket", "pycode-indent"):
        t = make_task(name, model, n=8)
        with torch.no_grad():
            assert (t.metric(model(t.clean)) > t.metric(model(t.patch))).float().mean() >= 0.75
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"clean": "x = f(a", "patch": "x = f a", "answer": ")",
                                "wrong": ","}) + "\n")
    with pytest.raises(DataError, match="same number of tokens"):
        load_task_jsonl(path, model)


def test_nodes_summed_over_positions(spliced, task):
    from interp.circuits.attribution import ALL_POSITIONS
    from interp.circuits.faithfulness import faithfulness

    summed = node_attribution(spliced, task, sum_positions=True)
    per_pos = node_attribution(spliced, task)
    torch.testing.assert_close(summed[HOOK], per_pos[HOOK].sum(0))
    top = top_nodes(summed, 5)
    assert all(n.position == ALL_POSITIONS for n, _ in top)
    node = top[0][0]
    exact = exact_node_effects(spliced, task, [node])
    patched = spliced.run(task.patch).hooks[HOOK]

    def every_position(name, a, e):
        if node.is_error:
            return a, patched.err
        a = a.clone()
        a[..., node.latent] = patched.acts[..., node.latent]
        return a, e

    clean = task.metric(spliced.run(task.clean).logits).mean()
    hand = task.metric(spliced.run(task.clean, {HOOK: every_position}).logits).mean() - clean
    assert float(exact[0]) == pytest.approx(float(hand), abs=1e-5)
    everything = [Node.from_column(HOOK, ALL_POSITIONS, j, 2048) for j in range(2049)]
    assert faithfulness(spliced, task, everything)["faithfulness"] == pytest.approx(1, abs=1e-4)


# ------------------------------------------------------------------ feature metrics
def test_sae_readout_is_the_latents_activation_where_it_fires(spliced, task):
    from interp.circuits.tasks import Readout

    sae = spliced.saes[HOOK]
    res = spliced.run(task.clean)
    last = res.hooks[HOOK].acts[:, -1]                     # (N, m) at the last position
    latent = int(last.gt(0).sum(0).argmax())               # fires on the most prompts
    readout = Readout.from_sae(sae, latent)
    value = readout(res.hooks[HOOK].x)
    fires = last[:, latent] > 0
    torch.testing.assert_close(value[fires], last[fires, latent], rtol=1e-4, atol=1e-4)
    with pytest.raises(DataError, match="out of range"):
        Readout.from_sae(sae, sae.cfg.d_sae)


def test_a_readout_at_the_spliced_hook_makes_atp_exact_there(spliced, task):
    """The readout is linear in the hook's latents and error, so AtP there equals patching."""
    from interp.circuits.tasks import Readout

    feature_task = task.use_readout(Readout.from_sae(spliced.saes[HOOK], 7))
    assert feature_task.reads == (HOOK,) and feature_task.metric_kind == "feature"
    scores = node_attribution(spliced, feature_task, method="atp")
    nodes = [n for n, _ in top_nodes(scores, 8)]
    est = torch.tensor([float(scores[n.hook][n.pos, n.column(2048)]) for n in nodes],
                       dtype=torch.float64) / 1
    exact = exact_node_effects(spliced, feature_task, nodes)
    torch.testing.assert_close(est, exact, rtol=1e-3, atol=1e-4)
    with pytest.raises(DataError, match="capture=task.reads"):
        feature_task.metric(spliced.run(task.clean))


def test_a_metric_before_the_spliced_hooks_is_refused(spliced, task):
    from interp.circuits.tasks import Readout

    early = Readout("blocks.1.hook_resid_post", torch.zeros(128))
    with pytest.raises(DataError, match="before the spliced hook"):
        node_attribution(spliced, task.use_readout(early), method="atp")


def test_othello_flipped_task_prompts_flip_the_square_and_the_probe_sees_it(spliced):
    from interp.data import othello as oth

    import re

    task = make_task("othello-flipped", spliced.model, n=16)
    sq = oth.parse_square(re.search(r"'(\w\d) just flipped'", task.readout.name).group(1))
    for i in range(4):
        moves = [int(oth.TOKEN_TO_SQUARE[t]) for t in task.clean[i, 1:]]
        before = oth.replay(moves[:-1])[-1]
        assert sq in before.flips(moves[-1])
        assert sq not in before.flips(int(oth.TOKEN_TO_SQUARE[task.patch[i, -1]]))
    clean = task.metric(spliced.run(task.clean, capture=task.reads))
    patch = task.metric(spliced.run(task.patch, capture=task.reads))
    assert (clean > 0).float().mean() >= 0.6 and (patch < 0).float().mean() >= 0.8


# ------------------------------------------------------------------ zero and mean patches, by hand
def hand_nodes(spliced, task):
    """The clean TopK codes and errors at HOOK computed the slow way, and the gradient of the
    mean logit difference with respect to them, from a plain hook that writes
    ``codes @ W_dec + b_dec + err`` (no splice code involved)."""
    model, sae = spliced.model, spliced.saes[HOOK]
    assert sae.cfg.arch == "topk"
    W, b = sae.W_dec.detach(), sae.b_dec.detach()
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean, names_filter=[HOOK])
        x = cache[HOOK]
        z = (x - b) @ sae.W_enc.detach() + sae.b_enc.detach()
        top = z.topk(sae.cfg.k, dim=-1)
        a0 = torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())
        e0 = x - (a0 @ W + b)
    a, e = a0.clone().requires_grad_(True), e0.clone().requires_grad_(True)
    logits = model.run_with_hooks(task.clean, fwd_hooks=[(HOOK, lambda act, hook: a @ W + b + e)])
    n = len(task)
    metric = sum(logits[i, -1, task.answer[i]] - logits[i, -1, task.wrong[i]]
                 for i in range(n)) / n
    ga, ge = torch.autograd.grad(metric, [a, e])
    return a0, e0, ga, ge


def hand_patch(kind, a0, e0):
    """(T, m) and (T, d): zero, or per position the mean over the task's clean prompts (the
    code's definition)."""
    if kind == "zero":
        return torch.zeros_like(a0[0]), torch.zeros_like(e0[0])
    n = a0.shape[0]
    return sum(a0[i] for i in range(n)) / n, sum(e0[i] for i in range(n)) / n


def test_zero_and_mean_atp_is_grad_times_patch_minus_clean_by_hand(spliced, task):
    from interp.circuits.attribution import PatchValues

    small = task.subset(4)
    a0, e0, ga, ge = hand_nodes(spliced, small)
    clean = spliced.run(small.clean).hooks[HOOK]
    torch.testing.assert_close(a0, clean.acts, atol=1e-4, rtol=0)
    n, t = small.clean.shape
    for kind in ("zero", "mean"):
        pa, pe = hand_patch(kind, a0, e0)
        patches = PatchValues(spliced, small, kind)
        va, ve = patches.values(slice(1, 3))[HOOK]  # a slice of prompts: broadcast values
        assert va.shape == (2, t, 2048) and ve.shape == (2, t, 128)
        torch.testing.assert_close(va, pa.expand(2, t, 2048), atol=1e-5, rtol=0)
        torch.testing.assert_close(ve, pe.expand(2, t, 128), atol=1e-5, rtol=0)
        # score of latent j at position p: sum over prompts of grad * (patch - clean);
        # of the error at p: the same summed over the residual's coordinates too
        hand = torch.zeros(t, 2049)
        for p in range(t):
            hand[p, :-1] = (ga[:, p] * (pa[p] - a0[:, p])).sum(0)
            hand[p, -1] = (ge[:, p] * (pe[p] - e0[:, p])).sum()
        assert hand.abs().max() > 0.1 and (hand[:, :-1] != 0).sum() > 50
        for batch_size in (32, 3):  # one batch, and batches of 3 + 1 prompts
            scores = node_attribution(spliced, small, patch=kind, batch_size=batch_size)[HOOK]
            torch.testing.assert_close(scores.float(), hand, atol=1e-5, rtol=1e-4)
        summed = node_attribution(spliced, small, patch=kind, sum_positions=True)[HOOK]
        torch.testing.assert_close(summed.float(), hand.sum(0), atol=1e-5, rtol=1e-4)
    # a mean that is not zero: the two patches give different scores
    zero = node_attribution(spliced, small, patch="zero")[HOOK]
    mean = node_attribution(spliced, small, patch="mean")[HOOK]
    assert (zero - mean).abs().max() > 0.1


def test_zero_and_mean_atp_equal_patching_for_a_linear_readout(spliced, task):
    """A readout of the spliced hook is linear in its latents and errors: AtP, exact patching
    and ``readout . (patch - clean) W_dec`` by hand all agree, node by node (for the mean
    patch all three are zero: the mean of a linear function is its value at the mean)."""
    from interp.circuits.tasks import Readout

    small = task.subset(4)
    sae = spliced.saes[HOOK]
    readout = Readout.from_sae(sae, 7)
    feature_task = small.use_readout(readout)
    a0, e0, _, _ = hand_nodes(spliced, small)
    last = small.clean.shape[1] - 1
    w_dec = sae.W_dec.detach()
    for kind in ("zero", "mean"):
        pa, pe = hand_patch(kind, a0, e0)
        pa, pe = pa.expand_as(a0), pe.expand_as(e0)
        scores = node_attribution(spliced, feature_task, patch=kind)[HOOK]
        assert (scores[:last] == 0).all()  # earlier positions cannot reach the readout
        nodes = [nd for nd, _ in top_nodes({HOOK: scores}, 8)] + [Node.error_term(HOOK, last)]
        hand = []
        for nd in nodes:
            if nd.is_error:
                delta = pe[:, last] - e0[:, last]                            # (n, d)
            else:
                delta = (pa[:, last, nd.latent] - a0[:, last, nd.latent])[:, None] \
                    * w_dec[nd.latent]
            hand.append(float((delta @ readout.direction).mean()))
        hand = torch.tensor(hand, dtype=torch.float64)
        est = torch.tensor([float(scores[nd.pos, nd.column(2048)]) for nd in nodes],
                           dtype=torch.float64)
        exact = exact_node_effects(spliced, feature_task, nodes, patch=kind)
        if kind == "zero":
            assert hand.abs().max() > 0.02
        else:  # a linear metric averaged over the prompts whose mean is the patch: no effect
            assert hand.abs().max() < 1e-5
        torch.testing.assert_close(est, hand, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(exact, hand, rtol=1e-3, atol=1e-4)


def test_zero_and_mean_atp_track_exact_patching_of_single_latents(spliced, task):
    """With the logit difference (not linear) a single latent's AtP estimate is first order:
    near the exact effect of patching it, and ranking the nodes alike."""
    small = task.subset(4)
    last = small.clean.shape[1] - 1
    for kind in ("zero", "mean"):
        scores = node_attribution(spliced, small, patch=kind)[HOOK]
        latents = scores[last, :-1].abs().topk(12).indices.tolist()
        nodes = [Node(HOOK, last, j) for j in latents]
        est = torch.tensor([float(scores[last, j]) for j in latents], dtype=torch.float64)
        exact = exact_node_effects(spliced, small, nodes, patch=kind)
        assert spearman(est, exact) > 0.8
        assert ((est - exact).abs() <= 0.45 * exact.abs() + 0.05).all(), (est, exact)
