"""Run inside .venv-tracer (circuit-tracer 0.5.0) by tests/test_tracer_export.py: load an
export with circuit-tracer's own loader and write what circuit-tracer computes from it.

    python tracer_probe.py EXPORT_DIR INPUTS OUTPUTS [--model NAME]

INPUTS (safetensors): ``x`` (n_layers, n_pos, d_model), one input per layer; with --model
also ``tokens`` (n_pos,). OUTPUTS (safetensors): ``acts`` (n_layers, n_pos, d_sae) and
``out`` (n_layers, n_pos, d_model), the transcoders' codes and outputs on x; with --model,
circuit-tracer's replacement model built from our model's config and weights: ``logits``
(n_pos, d_vocab) of its forward pass, ``setup_acts`` and ``errors`` of its attribution
setup on the tokens, and of ``attribute``: ``graph_features`` (n, 3: layer, pos, latent),
``graph_values`` (n,) and ``graph_shape``.
"""
import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from circuit_tracer import attribute
from circuit_tracer.replacement_model.replacement_model_transformerlens import (
    TransformerLensReplacementModel,
)
from circuit_tracer.utils.caching import load_transcoders_from_cache


class TokenizerStub:
    """What ``attribute`` asks of a tokenizer, for a model that has none (othello)."""

    def __init__(self, bos: int, vocab_size: int):
        self.all_special_ids = [bos]
        self.bos_token_id = self.pad_token_id = self.eos_token_id = bos
        self.vocab_size = vocab_size
        self.padding_side = "right"  # TransformerLens's forward asks

    def decode(self, ids):
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return " ".join(str(i) for i in ([ids] if isinstance(ids, int) else ids))


def transcoder_outputs(transcoders, x: torch.Tensor) -> dict:
    """Codes and outputs of a TranscoderSet or a CrossLayerTranscoder (one interface)."""
    acts = transcoders.encode(x)
    return {"acts": acts, "out": transcoders.decode(acts, x)}


def replacement_model_outputs(transcoders, model_name: str, tokens: torch.Tensor) -> dict:
    from interp.models import load
    from interp.sae.tracer_export import load_replacement_weights

    base = load(model_name)
    model = TransformerLensReplacementModel.from_config(base.cfg, transcoders)
    load_replacement_weights(model, base.state_dict())
    model.tokenizer = TokenizerStub(int(tokens[0]), base.cfg.d_vocab)
    with torch.no_grad():
        logits = model(tokens[None])[0]
    ctx = model.setup_attribution(tokens)
    graph = attribute(tokens, model, max_n_logits=3, batch_size=128, max_feature_nodes=128)
    return {"logits": logits, "setup_acts": ctx.activation_matrix.to_dense(),
            "errors": ctx.error_vectors,
            "graph_features": graph.active_features,
            "graph_values": graph.activation_values,
            "graph_shape": torch.tensor(graph.adjacency_matrix.shape)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("export")
    p.add_argument("inputs")
    p.add_argument("outputs")
    p.add_argument("--model", default=None)
    a = p.parse_args()
    folder = Path(a.export).resolve()
    transcoders, _ = load_transcoders_from_cache(folder.name, cache_dir=folder.parent,
                                                 device=torch.device("cpu"),
                                                 dtype=torch.float32)
    inputs = load_file(a.inputs)
    with torch.no_grad():
        out = transcoder_outputs(transcoders, inputs["x"])
    if a.model:
        out.update(replacement_model_outputs(transcoders, a.model, inputs["tokens"]))
    save_file({k: v.detach().contiguous() for k, v in out.items()}, a.outputs)


if __name__ == "__main__":
    main()
