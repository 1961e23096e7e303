"""Peer TopK SAE trainers for the SAE training-speed benchmark.

Each peer trains its own TopK SAE with its own code: its model class, its loss (with its AuxK
loss and dead-latent bookkeeping), its optimizer, and its per-step weight constraints. This
module only drives them one batch at a time, so that every peer gets the same batches and the
same clock. The peers live in `.venv-bench` (`make bench`), never in the project's `.venv`,
and are imported inside the functions here, so this module imports without them.

    available() -> {peer: version}               peers importable now
    make_step(peer, d_in, d_sae, k, batch_size)  -> (step_fn, module); step_fn(x) -> loss
    make_transcoder_step(peer, d_in, d_sae, k, batch_size, skip=...)
                                                 -> (step_fn, module); step_fn(x, y) -> loss
    encode_topk(peer, module, x)                 -> (values, indices), each (batch, k)
    reconstruct(peer, module, x)                 -> x_hat (batch, d_in)
    fvu(peer, module, x)                         -> fraction of variance unexplained

What one `step_fn(x)` call does, per peer (x: (batch, d_in) float32, already on the device):

saelens (PyPI `sae-lens`): `TopKTrainingSAE` (its defaults: decoder-norm rescaling of the
    pre-activations, decoder init norm 0.1, `b_dec` subtracted from the input, aux-loss
    coefficient 1) driven by SAELens's own `SAETrainer.step(x)`, the per-batch seam its
    `fit()` loop and its multi-SAE trainer call: activation scaler (identity: normalisation
    "none"), `training_forward_pass` with a `TrainStepInput` carrying the trainer's dead-latent
    mask (no firing for `dead_feature_window` = 1000 steps), MSE + TopK AuxK loss, the firing
    statistics update, backward, grad-norm clip at 1, Adam (betas 0.9, 0.999; lr 3e-4 unless
    given), the lr scheduler ("constant", optional linear warm-up) and `zero_grad`. SAELens
    does not renormalise the decoder; its TopK SAE divides by the decoder norms instead. Left
    out: wandb logging, evals, checkpoints and the sparsity-window log (`maybe_reset_sparsity`,
    which only builds a histogram every 2000 steps).

dictionary_learning (PyPI `dictionary-learning`, saprmarks/dictionary_learning): its
    `TopKTrainer.update(step, x)`, called as its `trainSAE` loop calls it: `AutoEncoderTopK`
    forward, L2 loss + AuxK (alpha 1/32, normalised by the residual's variance; latents dead
    after 10M tokens without firing), the running inference threshold (after step 1000),
    backward, removal of the decoder gradient parallel to the decoder directions, grad-norm
    clip at 1, Adam (lr 2e-4 / sqrt(d_sae / 2**14) unless given) with its warm-up schedule
    (1000 steps unless `warmup_steps` is given), and decoder renormalisation. On step 0 it sets
    `b_dec` to the batch's geometric median, as the peer does.

sparsify (PyPI `eai-sparsify`, EleutherAI/sparsify): `SparseCoder` (fused top-k encoder with
    its sparse backward, embedding-bag decoder) with the body of sparsify's `Trainer` for the
    "fvu" loss, one micro-batch and no gradient accumulation, written out here because that
    Trainer only runs as forward hooks on a Hugging Face model: on step 0 `b_dec` = the batch
    mean; decoder renormalised before the forward; the dead-latent mask (10M tokens without
    firing) passed to the forward when AuxK is on; loss = FVU + auxk_alpha * AuxK (+ the
    Multi-TopK term, off by default); backward; removal of the decoder gradient parallel to
    the decoder directions; optimizer step and `zero_grad`; scheduler step; firing counters.
    Optimizer as sparsify's default "signum": schedule-free SignSGD, momentum 0.95, lr
    5e-3 / sqrt(d_sae / 2**14) unless given; or `optimizer="adam"`: Adam with sparsify's
    linear warm-up and linear decay to 0 at `total_steps`. Sparsify's own default is
    auxk_alpha = 0 (no AuxK); `auxk=True` (the default here, for parity with the other peers
    and with our TopK) uses 1/32; `auxk=False` gives sparsify's default. Schedule-free keeps
    the training point y in the weights: `encode_topk`, `reconstruct` and `fvu` switch the
    optimizer to its evaluation weights x around the call, as sparsify does when it saves.

sparsify transcoders (`make_transcoder_step`; sparsify's `--transcode`, and with `skip=True`
    its `--skip_connection`; the only peer here that trains transcoders): `SparseCoder` with
    `transcode=True` (decoder initialised to zeros; `skip_connection` adds `x @ W_skip.T`,
    W_skip (d_in, d_in) zero-initialised) and the body of sparsify's `Trainer` for a
    transcoder under the "fvu" loss, one micro-batch: on step 0 the encoder bias is set to
    -mean(x) @ W_enc.T (pre-activations centred on the inputs) and `b_dec` to the outputs'
    mean; no decoder renormalisation and no gradient projection (sparsify does both only
    when autoencoding); the dead-latent mask when AuxK is on; forward on (x, y) with the
    outputs' total variance; loss = FVU of y + auxk_alpha * AuxK (+ Multi-TopK, off);
    backward; optimizer step and `zero_grad`; scheduler step; firing counters. Optimizer,
    learning rate and `auxk` as for sparsify's SAE above. Left out, as for the SAE: the
    forward hooks on a Hugging Face model that deliver x and y, the token mask and its
    gather, and logging.

Each `step_fn` returns the loss as a Python float, which synchronises, as every peer's own
loop does at least once a step. `step_fn.trainer` / `step_fn.optimizer` expose the peer's
trainer objects (the `module` is the SAE itself).
"""
from __future__ import annotations

import contextlib
import importlib
import io
from importlib import metadata
from typing import Callable

import torch

PEERS = ("saelens", "dictionary_learning", "sparsify")
TRANSCODER_PEERS = ("sparsify",)  # the peers that train transcoders

# PyPI distribution of each peer, and the modules its TopK training needs.
_DISTRIBUTIONS = {
    "saelens": "sae-lens",
    "dictionary_learning": "dictionary-learning",
    "sparsify": "eai-sparsify",
}
_MODULES = {
    "saelens": ("sae_lens", "sae_lens.training.sae_trainer"),
    "dictionary_learning": ("dictionary_learning.trainers.top_k",),
    "sparsify": ("sparsify", "schedulefree"),
}

StepFn = Callable[[torch.Tensor], float]


def _check_peer(peer: str) -> None:
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")


def _import_peer(peer: str) -> None:
    _check_peer(peer)
    # sparsify prints a notice at import when Triton is missing (always, on a CPU machine)
    with contextlib.redirect_stdout(io.StringIO()):
        for name in _MODULES[peer]:
            importlib.import_module(name)


def available() -> dict[str, str]:
    """Peer name -> installed version, for the peers that import in this interpreter."""
    found = {}
    for peer in PEERS:
        try:
            _import_peer(peer)
            found[peer] = metadata.version(_DISTRIBUTIONS[peer])
        except Exception:  # not installed, or installed but broken against this torch
            continue
    return found


def make_step(
    peer: str,
    d_in: int,
    d_sae: int,
    k: int,
    batch_size: int,
    lr: float | None = None,
    seed: int = 0,
    *,
    total_steps: int = 10_000,
    warmup_steps: int | None = None,
    auxk: bool = True,
    optimizer: str | None = None,
    device: str = "cpu",
) -> tuple[StepFn, torch.nn.Module]:
    """Build `peer`'s TopK SAE and trainer; return (step_fn, sae).

    `step_fn(x)` does one full training step on x (batch_size, d_in) and returns the loss.
    lr=None uses the peer's own default rule (module docstring); `total_steps` feeds the
    peers' lr schedules; warmup_steps=None keeps each peer's default warm-up (1000 steps for
    dictionary_learning and for sparsify's Adam, none for SAELens and sparsify's signum);
    `optimizer` is for sparsify only ("signum", its default, or "adam").
    """
    _import_peer(peer)
    if optimizer is not None and peer != "sparsify":
        raise ValueError(f"{peer} trains with Adam only; optimizer= is for sparsify")
    if peer == "saelens":
        return _make_saelens(d_in, d_sae, k, batch_size, lr, seed, total_steps,
                             warmup_steps, auxk, device)
    if peer == "dictionary_learning":
        return _make_dictionary_learning(d_in, d_sae, k, lr, seed, total_steps,
                                         warmup_steps, auxk, device)
    return _make_sparsify(d_in, d_sae, k, lr, seed, total_steps, warmup_steps, auxk,
                          optimizer or "signum", device)


def _make_saelens(d_in, d_sae, k, batch_size, lr, seed, total_steps, warmup_steps, auxk,
                  device):
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device=device,
        aux_loss_coefficient=1.0 if auxk else 0.0,
    ))
    lr = 3e-4 if lr is None else lr  # SAELens's runner default
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=total_steps * batch_size,
            train_batch_size_samples=batch_size,
            lr=lr,
            lr_end=lr / 10,  # what the runner config fills in; unused by "constant"
            lr_warm_up_steps=warmup_steps or 0,
            device=device,
            logger=LoggingConfig(log_to_wandb=False),
        ),
        sae=sae,
        data_provider=iter(()),  # batches come through step_fn instead
    )

    def step_fn(x: torch.Tensor) -> float:
        out = trainer.step(x)
        trainer.n_training_steps += 1  # fit() advances this after each step
        return out.loss.item()

    step_fn.trainer = trainer  # type: ignore[attr-defined]
    step_fn.optimizer = trainer.optimizer  # type: ignore[attr-defined]
    return step_fn, sae


def _make_dictionary_learning(d_in, d_sae, k, lr, seed, total_steps, warmup_steps, auxk,
                              device):
    from dictionary_learning.trainers.top_k import TopKTrainer

    trainer = TopKTrainer(
        steps=total_steps,
        activation_dim=d_in,
        dict_size=d_sae,
        k=k,
        layer=0,  # metadata the trainer insists on
        lm_name="benchmark",
        lr=lr,  # None: the trainer's 2e-4 / sqrt(d_sae / 2**14)
        auxk_alpha=1 / 32 if auxk else 0.0,
        warmup_steps=1000 if warmup_steps is None else warmup_steps,
        seed=seed,
        device=device,
    )
    state = {"step": 0}

    def step_fn(x: torch.Tensor) -> float:
        loss = trainer.update(state["step"], x)
        state["step"] += 1
        return loss

    step_fn.trainer = trainer  # type: ignore[attr-defined]
    step_fn.optimizer = trainer.optimizer  # type: ignore[attr-defined]
    return step_fn, trainer.ae


def _make_sparsify(d_in, d_sae, k, lr, seed, total_steps, warmup_steps, auxk, optimizer,
                   device):
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(seed)
    sae = SparseCoder(d_in, SparseCoderConfig(activation="topk", num_latents=d_sae, k=k),
                      device, dtype=torch.float32)
    opt, schedulers = _sparsify_optimizer(sae, lr, optimizer, total_steps, warmup_steps)
    coder_step = _sparsify_step(sae, opt, schedulers, auxk, transcoder=False)

    def step_fn(x: torch.Tensor) -> float:
        return coder_step(x, x)

    step_fn.optimizer = opt  # type: ignore[attr-defined]
    return step_fn, sae


def _sparsify_step(sae, opt, schedulers, auxk: bool, transcoder: bool):
    """One step of sparsify's trainer on a coder, ``step_fn(x, y)`` (an SAE: y is x): its
    first-step init (an SAE: b_dec the inputs' mean; a transcoder: pre-activations centred
    on the inputs, b_dec the outputs' mean), its loss (FVU + AuxK / 32 + multi-top-k FVU
    / 8), an SAE's decoder kept unit-norm (a transcoder's is neither renormalised nor its
    gradient projected), and its dead-latent counters (10M tokens, its TrainConfig
    default)."""
    auxk_alpha = 1 / 32 if auxk else 0.0
    dead_feature_threshold = 10_000_000
    device = sae.b_dec.device
    num_tokens_since_fired = torch.zeros(sae.num_latents, device=device, dtype=torch.long)
    did_fire = torch.zeros(sae.num_latents, device=device, dtype=torch.bool)
    state = {"step": 0}

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> float:
        if state["step"] == 0:
            if transcoder:
                sae.encoder.bias.data = -x.mean(0) @ sae.encoder.weight.data.T
            sae.b_dec.data = y.mean(0).to(sae.dtype)
        if not transcoder:
            sae.set_decoder_norm_to_unit_norm()
        dead_mask = num_tokens_since_fired > dead_feature_threshold if auxk_alpha > 0 else None
        total_variance = (y - y.mean(0)).pow(2).sum()
        out = sae(x=x, y=y, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        if not transcoder:
            sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for scheduler in schedulers:
            scheduler.step()
        with torch.no_grad():
            num_tokens_since_fired.add_(x.shape[0])
            num_tokens_since_fired[did_fire] = 0
            did_fire.zero_()
        state["step"] += 1
        return loss.item()

    step_fn.optimizer = opt  # type: ignore[attr-defined]
    return step_fn


def _sparsify_optimizer(sae, lr, optimizer, total_steps, warmup_steps):
    """(optimizer, lr schedulers) as sparsify's ``Trainer`` builds them for one coder."""
    schedulers = []
    if optimizer == "signum":
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        lr = lr or 5e-3 / (sae.num_latents / 2**14) ** 0.5
        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]),
                                  momentum=0.95)
        opt.train()
        sae._bench_schedule_free = opt  # reconstruct() evaluates at its x weights
    elif optimizer == "adam":
        from transformers import get_linear_schedule_with_warmup

        try:  # as sparsify does; not installed on a CPU machine
            from bitsandbytes.optim import Adam8bit as Adam
        except ImportError:
            from torch.optim import Adam

        lr = lr or 2e-4 / (sae.num_latents / 2**14) ** 0.5
        opt = Adam([dict(params=sae.parameters(), lr=lr)])
        schedulers.append(get_linear_schedule_with_warmup(
            opt, 1000 if warmup_steps is None else warmup_steps, total_steps))
    else:
        raise ValueError(f"sparsify optimizer must be 'signum' or 'adam', not {optimizer!r}")
    return opt, schedulers


def make_transcoder_step(
    peer: str, d_in: int, d_sae: int, k: int, batch_size: int, lr: float | None = None,
    seed: int = 0, *, skip: bool = False, total_steps: int = 10_000,
    warmup_steps: int | None = None, auxk: bool = True, optimizer: str | None = None,
    device: str = "cpu",
) -> tuple[Callable[[torch.Tensor, torch.Tensor], float], torch.nn.Module]:
    """Build `peer`'s TopK transcoder (``skip``: a skip transcoder) and its trainer's step;
    return (step_fn, coder). `step_fn(x, y)` trains on inputs x and targets y, both
    (batch_size, d_in): sparsify's transcoders write a space as wide as they read, as an
    MLP's input and output are. Only sparsify trains transcoders (``TRANSCODER_PEERS``);
    the other arguments are `make_step`'s.
    """
    _import_peer(peer)
    if peer not in TRANSCODER_PEERS:
        raise ValueError(f"{peer} trains no transcoders; expected one of {TRANSCODER_PEERS}")
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(seed)
    sae = SparseCoder(d_in, SparseCoderConfig(activation="topk", num_latents=d_sae, k=k,
                                              transcode=True, skip_connection=skip),
                      device, dtype=torch.float32)
    opt, schedulers = _sparsify_optimizer(sae, lr, optimizer or "signum", total_steps,
                                          warmup_steps)
    return _sparsify_step(sae, opt, schedulers, auxk, transcoder=True), sae


@contextlib.contextmanager
def _eval_weights(module: torch.nn.Module):
    """Sparsify's schedule-free optimizer: evaluate at x, then return to the training point."""
    opt = getattr(module, "_bench_schedule_free", None)
    if opt is not None:
        opt.eval()
    try:
        yield
    finally:
        if opt is not None:
            opt.train()


@torch.no_grad()
def encode_topk(peer: str, module: torch.nn.Module,
                x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices), each (batch, k), of the peer's TopK latents for x (values >= 0)."""
    _check_peer(peer)
    if peer == "saelens":
        _, hidden_pre = module.encode_with_hidden_pre(x)
        values, indices = hidden_pre.topk(module.cfg.k, dim=-1, sorted=False)
        return values.relu(), indices  # what its TopK activation keeps
    if peer == "dictionary_learning":
        _, values, indices, _ = module.encode(x, return_topk=True)
        return values, indices
    with _eval_weights(module):
        values, indices, _ = module.encode(x)
    return values, indices


@torch.no_grad()
def reconstruct(peer: str, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The peer's reconstruction of x, (batch, d_in)."""
    _check_peer(peer)
    if peer in ("saelens", "dictionary_learning"):
        return module(x)
    with _eval_weights(module):
        values, indices, _ = module.encode(x)
        return module.decode(values, indices)


@torch.no_grad()
def fvu(peer: str, module: torch.nn.Module, x: torch.Tensor, chunk: int = 8192) -> float:
    """Fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2."""
    err = sum(float((c - reconstruct(peer, module, c)).pow(2).sum()) for c in x.split(chunk))
    return err / float((x - x.mean(0)).pow(2).sum())
