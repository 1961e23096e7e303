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
    assert Node(HOOK, 0, 2048).is_error(2048)


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
        if node.latent == 2048:
            return a, patched.err
        a = a.clone()
        a[..., node.latent] = patched.acts[..., node.latent]
        return a, e

    clean = task.metric(spliced.run(task.clean).logits).mean()
    hand = task.metric(spliced.run(task.clean, {HOOK: every_position}).logits).mean() - clean
    assert float(exact[0]) == pytest.approx(float(hand), abs=1e-5)
    everything = [Node(HOOK, ALL_POSITIONS, j) for j in range(2049)]
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
    est = torch.tensor([float(scores[n.hook][n.pos, n.latent]) for n in nodes],
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
