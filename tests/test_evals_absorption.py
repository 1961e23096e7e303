"""Feature absorption (interp.evals.absorption): the pieces against slow, obvious references
on small synthetic tensors (a planted absorbing latent), the token-labelling rule on
pycode's tokenizer, one reduced end-to-end run on the shipped pycode SAE, and the
refusals (othello, a transcoder, a model without first-letter features)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interp.errors import DataError, InterpError
from interp.evals import absorption as ab

CFG = ab.AbsorptionConfig()


@pytest.fixture(autouse=True)
def _one_thread():
    """As run() computes: small tensors on a busy two-core machine are 100x slower on a
    thread pool (module docstring of interp.evals.absorption.one_thread)."""
    with ab.one_thread():
        yield


# ------------------------------------------------------------------ labelling rule
@pytest.mark.parametrize("token,letter", [
    ("self", "s"), (" self", "s"), (" Return", "r"), ("X", "x"), ("is", "i"),
    ("_init", None), ("x1", None), ("  self", None), ("\n    ", None), ("é", None),
    ("", None), (" ", None), ("(", None), ("\tdef", None)])
def test_first_letter_rule(token, letter):
    assert ab.first_letter(token) == letter


def test_labels_of_known_pycode_tokens():
    from interp.data.pycode import load_tokenizer
    from interp.models.zoo import model_dir

    tok = load_tokenizer(model_dir("pycode") / "tokenizer.json")
    ids = tok.encode("def f(self):\n    return self.x").ids
    pieces = [tok.decode([i]) for i in ids]
    assert pieces == ["def", " f", "(", "self", "):", "\n   ", " return", " self", ".", "x"]
    vocab = [tok.decode([i], skip_special_tokens=False) for i in range(tok.get_vocab_size())]
    labels = ab.letter_of_tokens(vocab)
    assert [labels.get(i) for i in ids] == ["d", "f", None, "s", None, None, "r", "s",
                                            None, "x"]
    assert tok.token_to_id("<|bos|>") not in labels


# ------------------------------------------------------------------ contexts
def test_occurrences_are_real_and_contexts_end_with_the_token():
    rng = np.random.default_rng(0)
    stream = rng.integers(3, 40, size=500)
    stream[3] = 99                       # too early to have a full context: never drawn
    wanted = np.array([5, 7, 99, 123])   # 123 never occurs
    occ = ab.sample_occurrences(stream, wanted, context_tokens=8, rng=np.random.default_rng(1))
    assert set(occ) == {5, 7}
    for token, pos in occ.items():
        assert stream[pos] == token and pos >= 6
    again = ab.sample_occurrences(stream, wanted, 8, np.random.default_rng(1))
    assert again == occ
    # over many draws every valid occurrence of a token comes up
    seen = {ab.sample_occurrences(stream, np.array([5]), 8, np.random.default_rng(s))[5]
            for s in range(200)}
    assert seen == set(np.flatnonzero(stream == 5)[np.flatnonzero(stream == 5) >= 6])
    pos = np.array(sorted(occ.values()))
    ctx = ab.occurrence_contexts(stream, pos, 8, bos_id=0)
    assert ctx.shape == (len(pos), 8) and (ctx[:, 0] == 0).all()
    for row, p in zip(ctx, pos):
        assert row[1:].tolist() == stream[p - 6:p + 1].tolist()


def test_token_cap_samples_per_letter():
    letters = {i: "ab"[i % 2] for i in range(40)}
    occ = {i: 100 + i for i in range(40)}
    chosen = ab.choose_tokens(letters, occ, cap=5, rng=np.random.default_rng(0))
    assert len(chosen) == 10 and sorted(chosen.tolist()) == chosen.tolist()
    assert sum(letters[int(t)] == "a" for t in chosen) == 5
    assert len(ab.choose_tokens(letters, occ, None, np.random.default_rng(0))) == 40


# ------------------------------------------------------------------ probes
def test_batched_logistic_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g) * 2
    y = torch.stack([(x[:, 0] + torch.randn(300, generator=g) > 1.0),
                     (x[:, 1] - x[:, 2] + torch.randn(300, generator=g) > 0.5),
                     (torch.rand(300, generator=g) < 0.1)]).float()
    w, b = ab.fit_balanced_logistic(x, y, l2=1.0)
    for i in range(3):
        ref = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10_000)
        ref.fit(x.numpy(), y[i].numpy())
        np.testing.assert_allclose(w[i].numpy(), ref.coef_[0], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(float(b[i]), ref.intercept_[0], rtol=1e-3, atol=1e-4)
    # per-problem inputs (L, N, k), as k-sparse probing passes them
    w3, b3 = ab.fit_balanced_logistic(x[None].expand(3, -1, -1), y, l2=1.0)
    torch.testing.assert_close(w3, w, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_l1_probe_gradients_match_autograd_and_the_probe_finds_planted_latents():
    g = torch.Generator().manual_seed(0)
    n, m = 400, 30
    acts = torch.rand(n, m, generator=g) * (torch.rand(n, m, generator=g) < 0.15)
    y = torch.stack([(torch.rand(n, generator=g) < 0.3), (torch.rand(n, generator=g) < 0.2)])
    y = y.float()
    acts[:, 4] += 3 * y[0]
    acts[:, 17] += 2 * y[1]
    # the slow reference: autograd through the dense loss SAEBench writes
    weight = (torch.randn(m, 2, generator=g) * 0.1).requires_grad_(True)
    weight.data[3] = 0.0                                  # |w| at 0: subgradient 0
    bias = torch.randn(2, generator=g).requires_grad_(True)
    pos_weight = (n - y.sum(1)) / y.sum(1)
    loss = F.binary_cross_entropy_with_logits(acts @ weight + bias, y.T, pos_weight=pos_weight)
    (loss + 0.01 * weight.abs().sum(0).mean()).backward()
    grad_w, grad_b = ab.l1_probe_gradients(acts.to_sparse_csr(), acts.T.to_sparse_csr(),
                                           y.T.contiguous(), pos_weight, weight.detach(),
                                           bias.detach(), 0.01)
    torch.testing.assert_close(grad_w, weight.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_b, bias.grad, rtol=1e-5, atol=1e-7)
    ranked = ab.rank_latents_l1(acts, y, l1_decay=0.01, steps=60)
    assert ranked.argmax(1).tolist() == [4, 17]


def test_split_latents_rule():
    ranked = [10, 11, 12, 13]
    assert ab.split_latents([0.5, 0.6, 0.61, 0.9], ranked, 0.03) == [10, 11]
    assert ab.split_latents([0.5, 0.52, 0.9, 0.95], ranked, 0.03) == [10]
    assert ab.split_latents([0.1, 0.2, 0.3, 0.4], ranked, 0.03) == ranked
    assert ab.split_latents([0.0, 0.0], ranked[:2], 0.03) == [10]


def test_f1_scores_match_sklearn():
    from sklearn.metrics import f1_score

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 50, generator=g)
    y = (torch.rand(3, 50, generator=g) < 0.3).float()
    y[2] = 0
    got = ab.f1_scores(scores, y)
    for i in range(3):
        assert math.isclose(float(got[i]), f1_score(y[i].numpy(), (scores[i] > 0).numpy(),
                                                    zero_division=0), abs_tol=1e-6)


# ------------------------------------------------------------------ absorption
def planted_absorption():
    """Probe direction e0. Latent 0 is the 's' latent (decoder 2 e0: not unit norm);
    latent 1 is a 'self' latent whose decoder leans on e0 (cos 0.8) and absorbs it;
    latents 2.. are unrelated. Rows 0-5: 's' tokens where latent 0 fires; rows 6-8:
    'self'-like tokens where only latent 1 fires; row 9: both fire (partial)."""
    d, m = 6, 5
    W_dec = torch.zeros(m, d)
    W_dec[0, 0] = 2.0
    W_dec[1, 0], W_dec[1, 1] = 0.8, 0.6
    W_dec[2, 2] = W_dec[3, 3] = W_dec[4, 4] = 1.0
    acts = torch.zeros(10, m)
    acts[:6, 0] = torch.linspace(1.0, 2.0, 6)
    acts[6:9, 1] = torch.tensor([1.5, 2.0, 2.5])
    acts[9, 0], acts[9, 1] = 0.5, 2.0
    acts[:, 2] = 0.7          # an unrelated latent firing everywhere
    x = acts @ W_dec          # b_dec = 0 and no error: P = the contributions' sum
    return x, acts, W_dec, torch.tensor([3.0, 0, 0, 0, 0, 0])


def test_planted_absorbing_latent_gives_the_planted_rate():
    x, acts, W_dec, probe = planted_absorption()
    res = ab.absorption_scores(x, acts, W_dec, probe, main=[0], cfg=CFG)
    assert res.full_absorption.tolist() == [False] * 6 + [True] * 3 + [False]
    expected = [0.0] * 6 + [1.0] * 3
    m_main, a_abs = 0.5 * 2.0, 2.0 * 0.8          # row 9: main and absorber contributions
    expected.append(a_abs / (a_abs + m_main))
    torch.testing.assert_close(res.absorption_fraction, torch.tensor(expected))
    assert res.top_latent[6:].tolist() == [1, 1, 1, 1]
    text = ["s"] * 6 + ["self", " self", "Self", "sel"]
    found = ab.absorbing_latents(res, text, ab.latent_probe_alignment(W_dec, probe)[2])
    assert found == [{"latent": 1, "count": 4, "full": 3, "cosine": 0.8,
                      "tokens": ["self", " self", "Self", "sel"]}]
    # with SAEBench's a * cos weighting latent 0 would carry half its share; ours is exact
    _, along, cos = ab.latent_probe_alignment(W_dec, probe)
    assert float(along[0]) == 2.0 and float(cos[0]) == 1.0


def reference_scores(x, acts, W_dec, probe, main, cfg):
    """SAEBench's per-word logic, one token at a time in plain Python."""
    p = probe / probe.norm()
    out = []
    for r in range(x.shape[0]):
        P = float(x[r] @ p)
        along = [float(W_dec[i] @ p) for i in range(W_dec.shape[0])]
        cos = [along[i] / float(W_dec[i].norm()) for i in range(W_dec.shape[0])]
        contrib = [float(acts[r, i]) * along[i] for i in range(W_dec.shape[0])]
        M = sum(contrib[i] for i in main)
        absorbers = sorted((contrib[i] for i in range(len(contrib)) if i not in main
                            and cos[i] >= cfg.absorption_fraction_cos_threshold
                            and contrib[i] > 0), reverse=True)
        A = sum(absorbers[:cfg.max_absorbing_latents])
        if P <= 0 or M >= P or A / P < cfg.projection_proportion_threshold:
            fraction = 0.0
        elif M <= 0:
            fraction = 1.0
        else:
            absorbed = min(A, P - M)
            fraction = min(1.0, max(0.0, absorbed / (absorbed + M)))
        top = max(range(len(contrib)), key=lambda i: contrib[i])
        full = (all(abs(float(acts[r, i])) < ab.EPS for i in main)
                and cos[top] >= cfg.full_absorption_cos_threshold and P > 0
                and contrib[top] / P >= cfg.projection_proportion_threshold)
        out.append((fraction, full))
    return out


def test_vectorised_scores_match_the_per_token_reference():
    g = torch.Generator().manual_seed(3)
    n, m, d = 300, 40, 12
    W_dec = torch.randn(m, d, generator=g) * 1.7
    probe = torch.randn(d, generator=g)
    W_dec[:6] += 2.0 * probe / probe.norm()          # latents aligned with the probe
    acts = torch.rand(n, m, generator=g) * (torch.rand(n, m, generator=g) < 0.15)
    main = [0, 1]
    acts[: n // 2, :2] = 0.0                          # main latents silent on half
    acts[:, 2:6] += 2.0 * (torch.rand(n, 4, generator=g) < 0.3)
    x = acts @ W_dec + 0.5 * torch.randn(n, d, generator=g)
    res = ab.absorption_scores(x, acts, W_dec, probe, main, CFG)
    ref = reference_scores(x, acts, W_dec, probe, main, CFG)
    np.testing.assert_allclose(res.absorption_fraction.numpy(), [f for f, _ in ref],
                               atol=1e-5)
    assert res.full_absorption.tolist() == [full for _, full in ref]
    assert 0 < sum(full for _, full in ref) < n   # both outcomes are exercised
    assert 0 < sum(0 < f < 1 for f, _ in ref)


# ------------------------------------------------------------------ on pycode
@pytest.fixture(scope="module")
def pycode_model():
    from interp.models import load

    return load("pycode")


@pytest.fixture(scope="module")
def pycode_sae():
    from interp.sae.release import load_pretrained

    return load_pretrained("pycode/blocks.2.hook_resid_post/topk")


REDUCED = dict(letters=("s", "t", "c"), max_tokens_per_letter=30)


def test_reduced_run_on_the_shipped_sae(pycode_model, pycode_sae):
    # pycode does not encode first letters (module docstring), so SAEBench's probe gate
    # would skip every letter; min_probe_f1=0 runs the whole procedure to check it
    res = ab.run(pycode_model, pycode_sae, "pycode", min_probe_f1=0.0, **REDUCED)
    json.dumps(res)
    assert set(res) == {"summary", "details", "config", "seconds"} and res["seconds"] > 0
    s = res["summary"]
    assert 1 <= s["n_letters"] <= 3
    assert 0 <= s["mean_absorption_fraction"] <= 1 and 0 <= s["mean_full_absorption_rate"] <= 1
    assert 1 <= s["mean_num_split_latents"] <= CFG.max_k
    details = res["details"]
    assert set(details["letters"]) | set(details["skipped"]) == {"s", "t", "c"}
    assert details["n_tokens"] == details["n_train_tokens"] + details["n_test_tokens"]
    assert details["n_tokens"] <= 26 * 30
    for letter, r in details["letters"].items():
        assert r["main_latents"] == r["ranked_latents"][:r["num_split_latents"]]
        assert all(0 <= i < pycode_sae.cfg.d_sae for i in r["ranked_latents"])
        assert len(r["f1_by_k"]) == CFG.max_k and all(0 <= f <= 1 for f in r["f1_by_k"])
        assert 0 <= r["n_full_absorption"] <= r["n_probe_true_positives"] <= r["n_test_tokens"]
        assert sum(a["count"] for a in r["absorbing_latents"]) <= r["n_probe_true_positives"]
        for a in r["absorbing_latents"]:
            assert a["latent"] not in r["main_latents"] and a["full"] <= a["count"]
    assert res["config"]["hook"] == "blocks.2.hook_resid_post"
    assert res["config"]["letters"] == ["s", "t", "c"]


def test_the_probe_gate_refuses_pycode_in_one_line(pycode_model, pycode_sae):
    with pytest.raises(DataError) as err:
        ab.run(pycode_model, pycode_sae, "pycode", **REDUCED)
    msg = str(err.value)
    assert "\n" not in msg and "no ground truth" in msg and "min_probe_f1" in msg


def test_transcoders_and_unknown_options_are_refused(pycode_model):
    from interp.sae.release import load_pretrained

    with pytest.raises(DataError, match="transcoder"):
        ab.run(pycode_model, load_pretrained("pycode/plt/L0"), "pycode")
    with pytest.raises(InterpError, match="absorption option"):
        ab.run(pycode_model, None, "pycode", max_kk=3)
    with pytest.raises(DataError, match="letters"):
        ab.run(pycode_model, None, "pycode", letters=["1"])


def test_applicable_decides_from_the_name_before_any_work():
    assert ab.applicable("pycode") is None
    assert "no text tokens" in ab.applicable("othello", None)
    assert "pycode" in ab.applicable("gpt2", None)


def test_othello_is_refused_in_one_line():
    from interp.models import load
    from interp.sae.release import load_pretrained

    model = load("othello")
    sae = load_pretrained("othello/blocks.1.hook_resid_post/topk")
    with pytest.raises(DataError) as err:
        ab.run(model, sae, "othello")
    msg = str(err.value)
    assert "\n" not in msg and "pycode" in msg and "othello" in msg
