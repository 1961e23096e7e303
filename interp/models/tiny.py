"""Tiny random checkpoints of the families researchers bring, saved by ``transformers`` as
local Hugging Face folders with pycode's tokenizer: what the tests, notebook 05 and the
"your own model" section of the README run every flow on, offline.

    from interp.models.tiny import save_tiny_checkpoint
    save_tiny_checkpoint("llama", "models/tiny-llama")     # then load("models/tiny-llama")

Each is a few layers of d_model 64 with the quirks of its family: GPT-2 (learned positions,
LayerNorm, GELU), GPT-NeoX/Pythia (rotary on a quarter of each head, attention and MLP in
parallel), Llama (RMSNorm, gated SiLU MLP, grouped-query attention), Qwen2 (Llama's with
biases on q, k, v) and Gemma-2 (norms before and after each sublayer, logit soft caps,
local and global attention layers, a head size that is not d_model / n_heads). The weights
are random (``initializer_range`` 0.2, so the next-token distributions are far from
uniform): flows run and numbers can be checked against ``transformers``, but features mean
little.
"""
from __future__ import annotations

from pathlib import Path

FAMILIES = ("gpt2", "pythia", "llama", "qwen2", "gemma2")
INIT_RANGE = 0.2


def tiny_config(family: str, n_layers: int = 2, d_model: int = 64, vocab: int = 4096,
                n_ctx: int = 128):
    """(the ``transformers`` config, the model class) of a tiny ``family`` checkpoint."""
    import transformers as T

    from interp.data.pycode import BOS_TOKEN, EOT_TOKEN, PAD_TOKEN
    from interp.errors import unknown

    bos, eos, pad = _special_ids((BOS_TOKEN, EOT_TOKEN, PAD_TOKEN))
    heads, common = 4, dict(vocab_size=vocab, initializer_range=INIT_RANGE, bos_token_id=bos,
                            eos_token_id=eos, pad_token_id=pad)
    llama_like = dict(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=heads,
                      num_key_value_heads=2, intermediate_size=2 * d_model,
                      max_position_embeddings=n_ctx, **common)
    if family == "gpt2":
        return (T.GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=heads, n_positions=n_ctx,
                             **common), T.GPT2LMHeadModel)
    if family == "pythia":
        return (T.GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                                num_attention_heads=heads, intermediate_size=4 * d_model,
                                max_position_embeddings=n_ctx, rotary_pct=0.25, **common),
                T.GPTNeoXForCausalLM)
    if family == "llama":
        return T.LlamaConfig(**llama_like), T.LlamaForCausalLM
    if family == "qwen2":
        return T.Qwen2Config(**llama_like), T.Qwen2ForCausalLM
    if family == "gemma2":
        head_dim = 2 * d_model // heads  # Gemma's heads are wider than d_model / n_heads
        return (T.Gemma2Config(**llama_like, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                               sliding_window=8), T.Gemma2ForCausalLM)
    raise unknown("tiny checkpoint family", family, FAMILIES)


def save_tiny_checkpoint(family: str, folder: str | Path, seed: int = 0, **sizes) -> Path:
    """A random ``family`` checkpoint (see :func:`tiny_config` for ``sizes``) and pycode's
    tokenizer, written to ``folder`` as ``save_pretrained`` writes them."""
    import torch

    from interp.data.pycode import save_hf_tokenizer

    cfg, cls = tiny_config(family, **sizes)
    folder = Path(folder)
    torch.manual_seed(seed)
    cls(cfg).eval().save_pretrained(folder)
    save_hf_tokenizer(_pycode_tokenizer(), folder)
    return folder


def _pycode_tokenizer() -> Path:
    from interp.models.zoo import model_dir

    return model_dir("pycode") / "tokenizer.json"


def _special_ids(tokens) -> list[int]:
    from interp.data.pycode import load_tokenizer

    tok = load_tokenizer(_pycode_tokenizer())
    return [tok.token_to_id(t) for t in tokens]
