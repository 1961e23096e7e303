import pytest
import torch

from interp.ablations import ablate_circuit, ablate_latents, ablate_units, intervene, shift, steer
from interp.circuits.attribution import Node
from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import make_task
from interp.errors import DataError
from interp.models import load
from interp.sae.release import load_pretrained

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def setup():
    model = load("pycode")
    model.eval()
    spliced = SplicedModel(model, {HOOK: load_pretrained(f"pycode/{HOOK}/topk")})
    task = make_task("pycode-bracket", model, n=16)
    return model, spliced, task


def test_zero_ablation_moves_the_output_exactly_as_the_residual_change_predicts(setup):
    model, spliced, task = setup
    toks = task.clean
    acts = spliced.run(toks).hooks[HOOK].acts
    latent = int(acts[:, -1].sum(0).argmax())
    rep = ablate_latents(spliced, HOOK, toks, [latent], task=task)
    # by hand: resid_post moves by -a * W_dec[latent] everywhere
    shift_vec = -acts[..., latent, None] * spliced.saes[HOOK].W_dec[latent]
    ref = model.run_with_hooks(toks, fwd_hooks=[(HOOK, lambda x, hook: x + shift_vec)])
    lp = ref[:, :-1].log_softmax(-1)
    ref_loss = float(-lp.gather(-1, toks[:, 1:, None]).mean())
    assert rep.loss_after == pytest.approx(ref_loss, abs=1e-4)
    assert rep.metric_after == pytest.approx(float(task.metric(ref).mean()), abs=1e-4)
    assert rep.metric_change != 0 and len(rep.top_up) == 10


def test_mean_resample_steer_clamp(setup):
    model, spliced, task = setup
    toks = task.clean
    for mode in ("mean", "resample"):
        rep = ablate_latents(spliced, HOOK, toks, [3, 7], mode=mode, reference=task.patch)
        assert rep.loss_after > 0
    up = steer(spliced, HOOK, toks, 5, alpha=8.0)
    assert up.loss_change != 0
    same = steer(spliced, HOOK, toks, 5, clamp=None, alpha=0.0)
    assert same.loss_change == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DataError, match="exactly one"):
        steer(spliced, HOOK, toks, 5)
    with pytest.raises(DataError, match="out of range"):
        ablate_latents(spliced, HOOK, toks, [99999])


def test_units_circuit_and_shift(setup):
    from interp.probes.datasets import make_dataset

    model, spliced, task = setup
    rep = ablate_units(model, "blocks.1.mlp.hook_post", task.clean, [0, 1, 2], mode="mean")
    assert rep.loss_after > 0
    last = task.clean.shape[1] - 1
    everything = [Node.from_column(HOOK, p, j, 2048) for p in range(task.clean.shape[1])
                  for j in range(2049)]
    kept = ablate_circuit(spliced, task, everything)
    assert kept["metric_after"] == pytest.approx(kept["metric_full"], abs=1e-4)
    gone = ablate_circuit(spliced, task, [Node.error_term(HOOK, last)], complement=True)
    assert gone["metric_after"] != pytest.approx(gone["metric_full"])
    ds = make_dataset("pycode-in-string", 48)
    res = shift(spliced, HOOK, list(range(64)), "blocks.3.hook_resid_post", ds,
                max_examples=1500)
    assert 0.5 < res["accuracy_before"] <= 1 and 0 <= res["accuracy_after"] <= 1


def test_ablate_cli(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "interp.cli", "ablate", "--sae",
                        f"pycode/{HOOK}/topk", "--latents", "100", "--alpha", "10",
                        "--prompt", "def f(x):"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "next-token loss" in r.stdout and "probability up" in r.stdout


# ------------------------------------------------------------------ by hand
# Each experiment below is checked against the same intervention built by hand: the SAE's
# codes computed the slow way, the intervened activation written as x_hat' + err (the error
# kept), the model run with a plain TransformerLens hook that writes it, and the loss and
# metric computed from those logits with torch's own cross-entropy.
class ByHand:
    """The clean activation at ``hook`` split into TopK codes and error, the slow way."""

    def __init__(self, model, sae, hook, tokens, task):
        assert sae.cfg.arch == "topk"
        self.model, self.sae, self.hook, self.tokens, self.task = model, sae, hook, tokens, task
        self.W, self.b = sae.W_dec.detach(), sae.b_dec.detach()
        self.x = self.resid(tokens)
        self.a = self.codes(self.x)
        self.err = self.x - (self.a @ self.W + self.b)
        with torch.no_grad():
            self.clean_logits = model(tokens)

    @torch.no_grad()
    def resid(self, tokens):
        _, cache = self.model.run_with_cache(tokens, names_filter=[self.hook])
        return cache[self.hook]

    @torch.no_grad()
    def codes(self, x):
        """z = (x - b_dec) W_enc + b_enc; keep the k largest, ReLU; zeros elsewhere."""
        sae = self.sae
        z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = z.topk(sae.cfg.k, dim=-1)
        return torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())

    @torch.no_grad()
    def run_x(self, x_new):
        return self.model.run_with_hooks(self.tokens,
                                         fwd_hooks=[(self.hook, lambda act, hook: x_new)])

    def run_codes(self, a_new):
        """Logits with the codes replaced by ``a_new`` and the error kept."""
        return self.run_x(a_new @ self.W + self.b + self.err)

    def loss(self, logits):
        v = logits.shape[-1]
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v),
                                                       self.tokens[:, 1:].reshape(-1)))

    def metric(self, logits):
        t = self.task
        vals = [float(logits[i, -1, t.answer[i]] - logits[i, -1, t.wrong[i]])
                for i in range(len(self.tokens))]
        return sum(vals) / len(vals)

    def check(self, rep, logits, tol=1e-5):
        """The report's figures against the hand-made run's."""
        assert rep.loss_clean == pytest.approx(self.loss(self.clean_logits), abs=tol)
        assert rep.metric_clean == pytest.approx(self.metric(self.clean_logits), abs=tol)
        assert rep.loss_after == pytest.approx(self.loss(logits), abs=tol)
        assert rep.metric_after == pytest.approx(self.metric(logits), abs=tol)


@pytest.fixture(scope="module")
def by_hand(setup):
    model, spliced, task = setup
    small = task.subset(4)
    hand = ByHand(model, spliced.saes[HOOK], HOOK, small.clean, small)
    # the slow codes are the splice's codes (else the references below prove nothing)
    torch.testing.assert_close(hand.a, spliced.run(small.clean).hooks[HOOK].acts,
                               atol=1e-4, rtol=0)
    latents = hand.a[:, -1].sum(0).topk(3).indices.tolist()  # active at the last position
    reference = task.clean[4:10]  # six other prompts of the same length
    return spliced, small, hand, latents, reference


def test_mean_ablation_equals_the_reference_mean_written_by_hand(by_hand):
    spliced, task, hand, latents, reference = by_hand
    ref_a = hand.codes(hand.resid(reference))
    n_ref, t = ref_a.shape[:2]
    # the code's definition: per position, the mean over the reference prompts
    mean = torch.stack([sum(ref_a[r, p, latents] for r in range(n_ref)) / n_ref
                        for p in range(t)])                                  # (T, k)
    a_new = hand.a.clone()
    a_new[:, :, latents] = mean
    logits = hand.run_codes(a_new)
    rep = ablate_latents(spliced, HOOK, task.clean, latents, mode="mean", reference=reference,
                         task=task)
    hand.check(rep, logits)
    same = intervene(spliced, HOOK, task.clean, latents, "mean", reference=reference, task=task)
    hand.check(same, logits)
    # a mean that is not zero: the test tells mean from zero ablation
    zero = ablate_latents(spliced, HOOK, task.clean, latents, mode="zero", task=task)
    assert abs(zero.metric_after - rep.metric_after) > 1e-2
    assert abs(rep.metric_change) > 1e-2
    # the report's probability changes at the last position, by hand
    p0 = hand.clean_logits[:, -1].softmax(-1).mean(0)
    p1 = logits[:, -1].softmax(-1).mean(0)
    d = p1 - p0
    assert rep.top_up[0][0] == int(d.argmax())
    assert rep.top_up[0][1] == pytest.approx(float(d.max()), abs=1e-6)
    assert rep.top_down[0][0] == int(d.argmin())
    assert rep.top_down[0][1] == pytest.approx(float(d.min()), abs=1e-6)
    assert rep.top_after[0] == (int(p1.argmax()), pytest.approx(float(p1.max()), abs=1e-6))
    assert rep.top_clean[0] == (int(p0.argmax()), pytest.approx(float(p0.max()), abs=1e-6))


def test_mean_ablation_at_some_positions_by_hand(by_hand):
    spliced, task, hand, latents, reference = by_hand
    ref_a = hand.codes(hand.resid(reference))
    positions = [3, task.clean.shape[1] - 1]
    a_new = hand.a.clone()
    for p in positions:
        for j in latents:
            a_new[:, p, j] = ref_a[:, p, j].mean()
    logits = hand.run_codes(a_new)
    rep = ablate_latents(spliced, HOOK, task.clean, latents, mode="mean", reference=reference,
                         task=task, positions=positions)
    hand.check(rep, logits)
    # the other positions matter: ablating everywhere would give another loss
    everywhere = hand.a.clone()
    everywhere[:, :, latents] = ref_a[:, :, latents].mean(0)
    assert abs(hand.loss(hand.run_codes(everywhere)) - rep.loss_after) > 1e-4


def test_resample_ablation_takes_the_latents_of_the_drawn_reference_prompts(by_hand):
    spliced, task, hand, latents, reference = by_hand
    ref_a = hand.codes(hand.resid(reference))
    n, n_ref = len(task), len(reference)
    for seed in (0, 3):
        # the code's draw: prompt i takes every position of reference prompt picks[i]
        picks = torch.randint(0, n_ref, (n,), generator=torch.Generator().manual_seed(seed))
        a_new = hand.a.clone()
        for i in range(n):
            for j in latents:
                a_new[i, :, j] = ref_a[int(picks[i]), :, j]
        logits = hand.run_codes(a_new)
        rep = ablate_latents(spliced, HOOK, task.clean, latents, mode="resample",
                             reference=reference, task=task, seed=seed)
        hand.check(rep, logits)
        if seed == 0:
            hand.check(intervene(spliced, HOOK, task.clean, latents, "resample",
                                 reference=reference, task=task), logits)
        assert abs(rep.metric_change) > 1e-2
    # at some positions only
    positions = [task.clean.shape[1] - 2, task.clean.shape[1] - 1]
    picks = torch.randint(0, n_ref, (n,), generator=torch.Generator().manual_seed(5))
    a_new = hand.a.clone()
    for i in range(n):
        for p in positions:
            a_new[i, p, latents] = ref_a[int(picks[i]), p, latents]
    rep = ablate_latents(spliced, HOOK, task.clean, latents, mode="resample",
                         reference=reference, task=task, positions=positions, seed=5)
    hand.check(rep, hand.run_codes(a_new))


def test_zero_ablation_by_hand(by_hand):
    spliced, task, hand, latents, _ = by_hand
    a_new = hand.a.clone()
    a_new[:, :, latents] = 0
    logits = hand.run_codes(a_new)
    hand.check(ablate_latents(spliced, HOOK, task.clean, latents, task=task), logits)
    hand.check(intervene(spliced, HOOK, task.clean, latents, "zero", task=task), logits)


def test_clamp_steering_sets_the_latent_to_the_value(by_hand):
    spliced, task, hand, latents, _ = by_hand
    j, last = latents[0], task.clean.shape[1] - 1
    reps = {}
    for value in (0.0, 7.5):
        a_new = hand.a.clone()
        a_new[:, :, j] = value
        logits = hand.run_codes(a_new)
        reps[value] = steer(spliced, HOOK, task.clean, j, clamp=value, task=task)
        hand.check(reps[value], logits)
        hand.check(intervene(spliced, HOOK, task.clean, [j], "clamp", value=value, task=task),
                   logits)
        assert abs(reps[value].loss_change) > 1e-4
    # clamping to zero is zero ablation; to 7.5 it is not
    zero = ablate_latents(spliced, HOOK, task.clean, [j], task=task)
    assert reps[0.0].loss_after == pytest.approx(zero.loss_after, abs=1e-6)
    assert abs(reps[7.5].loss_after - zero.loss_after) > 1e-3
    a_new = hand.a.clone()
    a_new[:, last, j] = 7.5
    rep = steer(spliced, HOOK, task.clean, j, clamp=7.5, task=task, positions=[last])
    hand.check(rep, hand.run_codes(a_new))


def test_alpha_steering_adds_the_decoder_direction(by_hand):
    spliced, task, hand, latents, _ = by_hand
    j = latents[1]
    direction = hand.sae.W_dec[j].detach()
    for alpha in (6.0, -3.0):
        logits = hand.run_x(hand.x + alpha * direction)  # x + alpha W_dec[j], nothing else
        rep = steer(spliced, HOOK, task.clean, j, alpha=alpha, task=task)
        hand.check(rep, logits)
        hand.check(intervene(spliced, HOOK, task.clean, [j], "alpha", value=alpha, task=task),
                   logits)
        assert abs(rep.metric_change) > 1e-2
    last = task.clean.shape[1] - 1
    x_new = hand.x.clone()
    x_new[:, [0, last]] += 6.0 * direction
    rep = steer(spliced, HOOK, task.clean, j, alpha=6.0, task=task, positions=[0, last])
    hand.check(rep, hand.run_x(x_new))


def test_ablate_units_zero_and_mean_by_hand(by_hand):
    spliced, task, hand, _, reference = by_hand
    model, hook = hand.model, "blocks.1.mlp.hook_post"
    units = [5, 40, 301]
    with torch.no_grad():
        _, cache = model.run_with_cache(reference, names_filter=[hook])
    ref = cache[hook]
    n_ref, t = ref.shape[:2]
    mean = torch.stack([sum(ref[r, p, units] for r in range(n_ref)) / n_ref
                        for p in range(t)])                                  # (T, units)
    assert mean.abs().min() > 0  # the mean is not zero ablation

    def writer(values):
        def fn(act, hook):
            act = act.clone()
            act[:, :, units] = values
            return act
        return fn

    for mode, values in (("zero", 0.0), ("mean", mean)):
        with torch.no_grad():
            logits = model.run_with_hooks(task.clean, fwd_hooks=[(hook, writer(values))])
        rep = ablate_units(model, hook, task.clean, units, mode=mode, reference=reference,
                           task=task)
        hand.check(rep, logits)
        assert abs(rep.loss_change) > 1e-4
    # no reference: the mean over the prompts themselves
    _, cache = model.run_with_cache(task.clean, names_filter=[hook])
    own = cache[hook][:, :, units].mean(0)
    with torch.no_grad():
        logits = model.run_with_hooks(task.clean, fwd_hooks=[(hook, writer(own))])
    hand.check(ablate_units(model, hook, task.clean, units, mode="mean", task=task), logits)


def test_splice_interventions_keep_the_error_and_can_replace_it(by_hand):
    """What every experiment above rests on: a latent change decodes through W_dec with the
    error kept; an error change is added as it is."""
    spliced, task, hand, latents, _ = by_hand
    j = latents[0]

    def both(name, a, e):
        a = a.clone()
        a[..., j] = 2.0
        return a, torch.zeros_like(e)

    a_new = hand.a.clone()
    a_new[..., j] = 2.0
    res = spliced.run(task.clean, {HOOK: both})
    torch.testing.assert_close(res.logits, hand.run_x(a_new @ hand.W + hand.b),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(res.hooks[HOOK].acts, a_new, atol=1e-4, rtol=0)
