"""The embedded models: tiny GPTs the project trains itself and ships in ``saes/models/``.

Each model folder holds ``config.json`` (the HookedTransformerConfig plus our metadata),
``model.safetensors``, ``metrics.json`` (the figures measured after training) and, for
pycode, ``tokenizer.json``. ``interp model train NAME`` reproduces a folder from scratch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ZOO_DIR = REPO_ROOT / "saes" / "models"


@dataclass(frozen=True)
class TrainRecipe:
    steps: int
    batch_size: int
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 200
    # an optional warm restart after ``steps``: a second cosine from restart_lr to a tenth
    # of it over restart_steps (the first phase's checkpoint is exactly its start)
    restart_steps: int = 0
    restart_lr: float = 0.0
    # "bf16": forward and backward matmuls under bf16 autocast (fp32 weights, optimizer and
    # loss); about 2x faster on a CPU with AVX512-BF16
    precision: str = "fp32"

    @property
    def total_steps(self) -> int:
        return self.steps + self.restart_steps


@dataclass(frozen=True)
class ZooSpec:
    name: str
    description: str
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    n_ctx: int
    d_vocab: int
    recipe: TrainRecipe
    act_fn: str = "gelu"

    def transformer_config(self) -> dict:
        return dict(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads, d_mlp=self.d_mlp, n_ctx=self.n_ctx,
            d_vocab=self.d_vocab, act_fn=self.act_fn, normalization_type="LN",
            positional_embedding_type="standard", model_name=self.name, seed=self.recipe.seed,
            default_prepend_bos=True,
        )

    def to_dict(self) -> dict:
        return asdict(self)


# Sizes chosen so that each trains in well under an hour on a 2-core CPU (fp32).
ZOO: dict[str, ZooSpec] = {
    "othello": ZooSpec(
        name="othello",
        description="GPT on uniformly random legal Othello games (the Othello-GPT setting); "
                    "tokens: <bos>, the 60 playable squares, <pad>",
        n_layers=6, d_model=128, n_heads=4, d_mlp=512, n_ctx=60, d_vocab=62,
        recipe=TrainRecipe(steps=12000, batch_size=64, lr=2e-3, warmup_steps=200,
                           precision="bf16"),
    ),
    "pycode": ZooSpec(
        name="pycode",
        description="GPT on the CPython standard-library source, byte-level BPE of 4096 tokens",
        n_layers=4, d_model=128, n_heads=4, d_mlp=512, n_ctx=128, d_vocab=4096,
        recipe=TrainRecipe(steps=2000, batch_size=32, lr=2e-3, warmup_steps=150),
    ),
}


def model_dir(name: str) -> Path:
    return ZOO_DIR / name
