"""Your own model, end to end: tiny random checkpoints of GPT-2, Pythia (GPT-NeoX), Llama,
Qwen2 and Gemma-2 saved by ``transformers`` as local folders (``interp.models.tiny``), loaded
as TransformerLens computes them, and every flow run on each through the real CLI (in
process): harvest from a text file, JSONL and Parquet, train a TopK SAE and per-layer
transcoders, eval, features, a JSONL circuit, an attribution graph, a CSV probe, ablation
and steering, and the app opening the run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from interp.models.tiny import FAMILIES, save_tiny_checkpoint
from refusals import refuse, run_cli

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> its folder (Llama's named with "llama" in it, which TransformerLens reads as
    the family before the config)."""
    root = tmp_path_factory.mktemp("checkpoints")
    names = {f: ("my-llama-tiny" if f == "llama" else f) for f in FAMILIES}
    return {f: save_tiny_checkpoint(f, root / names[f]) for f in FAMILIES}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A text file, the same documents as JSONL and Parquet, a CSV of labelled texts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from interp.data import pycode

    root = tmp_path_factory.mktemp("files")
    texts = [t for _, t in pycode.corpus_texts("test")][:40]
    (root / "code.txt").write_text("\n\n".join(texts))
    (root / "code.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    pq.write_table(pa.table({"text": texts}), root / "code.parquet")
    rows = [f'"def f{i}(x): return x",1' for i in range(20)] + \
        [f'"x{i} = {i} + 1",0' for i in range(20)]
    (root / "defs.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("family", FAMILIES)
def test_a_local_checkpoint_computes_what_transformers_computes(family, checkpoints):
    """Log-probabilities of the converted model equal the Hugging Face model's (folding,
    centring, rotary, grouped-query attention, soft caps and all)."""
    from transformers import AutoModelForCausalLM

    from interp.models import load

    folder = checkpoints[family]
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    model = load(str(folder))
    ids = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids).log_softmax(-1), hf(ids).logits.log_softmax(-1)
    assert theirs.std(-1).mean() > 0.5  # far from uniform: the comparison means something
    assert (ours - theirs).abs().max() < 1e-4
    assert model.tokenizer is not None and model.cfg.d_vocab == 4096


def test_families_transformer_lens_cannot_convert_are_refused_naming_them(tmp_path):
    from transformers import GemmaConfig, GemmaForCausalLM

    GemmaForCausalLM(GemmaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                 vocab_size=128)).save_pretrained(tmp_path / "gemma1")
    refuse(["harvest", "--model", tmp_path / "gemma1", "--hook", HOOK, "--tokens", 100,
            "--source", "pycode:test", "--out", tmp_path / "run"],
           "GemmaForCausalLM", "published sizes", watch=[tmp_path])


def test_a_hook_the_family_lacks_is_refused_saying_why(checkpoints, files, tmp_path):
    refuse(["harvest", "--model", checkpoints["pythia"], "--hook", "blocks.0.hook_resid_mid",
            "--tokens", 100, "--source", files / "code.txt", "--out", tmp_path / "run"],
           "GPTNeoXForCausalLM", "parallel", "no hook_resid_mid", "blocks.0.hook_resid_pre")


def cli(*argv) -> str:
    """Run the CLI in process; its stdout (a failure shows stderr)."""
    code, out, err = run_cli([str(a) for a in argv])
    assert code == 0, f"{argv}: exit {code}\n{err}"
    return out


def harvest_and_train(model, files, run):
    """The run: a text-file harvest of the residual stream and both MLPs' inputs and
    outputs; a TopK SAE and a transcoder per layer."""
    from interp.activations.harvest import open_store

    mlp = [h for L in (0, 1) for h in (f"blocks.{L}.ln2.hook_normalized",
                                       f"blocks.{L}.hook_mlp_out")]
    cli("harvest", "--model", model, "--source", files / "code.txt", "--hook", HOOK,
        *[a for h in mlp for a in ("--hook", h)], "--tokens", 20_000, "--n-ctx", 64,
        "--out", run)
    store = open_store(run)
    assert store.n_rows >= 20_000 and store.manifest["source"]["kind"] == "local"
    for kind in ("jsonl", "parquet"):
        cli("harvest", "--model", model, "--source", files / f"code.{kind}", "--hook", HOOK,
            "--tokens", 3_000, "--n-ctx", 64, "--out", run.parent / f"run-{kind}")
        assert open_store(run.parent / f"run-{kind}").n_rows >= 3_000
    small = ("--arch", "topk", "--latents", 256, "--k", 8, "--steps", 200, "--batch-size", 256)
    cli("train", "--store", run, "--hook", HOOK, *small, "--out", run / "saes" / "topk")
    for L in (0, 1):
        cli("train", "--store", run, "--hook", f"blocks.{L}.ln2.hook_normalized", "--hook-out",
            f"blocks.{L}.hook_mlp_out", *small, "--out", run / "saes" / "tc" / str(L))


def circuit_task(model_folder, path):
    """A bracket task whose clean and patched prompts have one length in this tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_folder)
    pairs = [(f"y = {f}({a}, b", f"y = {f}[{a}, b") for f in ("foo", "len", "max", "sum")
             for a in ("a", "x", "n")]
    length = lambda s: len(tok(s)["input_ids"])  # noqa: E731
    same = [(c, p) for c, p in pairs if length(c) == length(p) == length(pairs[0][0])]
    assert len(same) >= 3
    path.write_text("".join(json.dumps({"clean": c, "patch": p, "answer": ")", "wrong": "]"})
                            + "\n" for c, p in same))
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_every_flow_on_a_local_checkpoint(family, checkpoints, files, tmp_path, monkeypatch):
    """Lines: every command in turn on one run, each output checked."""
    from interp.features import FeatureStore

    monkeypatch.chdir(tmp_path)
    model, run = checkpoints[family], tmp_path / "run"
    harvest_and_train(model, files, run)
    sae = run / "saes" / "topk"
    # eval without --source: the spliced metrics on the store's held-out contexts
    cli("eval", sae, "--store", run, "--contexts", 16)
    ev = json.loads((sae / "eval.json").read_text())
    assert ev["spliced_on"].startswith("the last 16 contexts of the store")
    assert math.isfinite(ev["ce_loss_recovered"]) and ev["reconstruction"]["fvu"] < 1
    cli("features", "--run", run, "--sae", sae, "--tokens", 3_000)
    fs = FeatureStore(run / "features" / "topk.duckdb")
    assert int(fs.meta["n_tokens"]) >= 3_000 and fs.summary()["dead"] < fs.d_sae
    fs.close()
    task = circuit_task(model, tmp_path / "brackets.jsonl")
    cli("circuit", "--run", run, "--arch", "topk", "--task", task, "--max-nodes", 20,
        "--sae", sae)  # the run's SAE named again: spliced once
    circuit = json.loads((run / "circuits" / "brackets.json").read_text())
    assert circuit["metadata"]["model"] == str(model) and len(circuit["nodes"]) > 1
    assert math.isfinite(circuit["metadata"]["faithfulness"])
    graph = ["graph", "--transcoders", run / "saes" / "tc" / "0", run / "saes" / "tc" / "1",
             "--prompt", "def f(x):\n    return (x", "--out", run / "graphs" / "g.json"]
    out = cli(*graph, "--validate", 2)
    assert "Pearson" in out and len(json.loads((run / "graphs" / "g.json").read_text())
                                    ["nodes"]) > 3
    cli("probe", "--task", files / "defs.csv", "--run", run, "--source", f"hook:{HOOK}",
        "--source", "sae:topk", "--k", "1,4")
    probe = json.loads((run / "probes" / "defs.json").read_text())
    assert probe["sources"]["sae:topk"]["results"][1]["test"]["f1"] > 0.8
    out = cli("ablate", "--sae", sae, "--latents", "1,2", "--task", task)
    assert "logit_diff" in out or "metric" in out
    assert "steer" in cli("ablate", "--sae", sae, "--latents", "1", "--alpha", 5,
                          "--prompt", "def f(x):").lower()
    app_opens_the_run(monkeypatch, run, str(model))


def app_opens_the_run(monkeypatch, run, model: str) -> None:
    """Every page renders on the run with nothing raised; the overview names the model
    folder, features opens the run's SAE, graphs the run's graph."""
    from test_app import app, ok

    at = ok(app(monkeypatch, run))
    assert at.metric[0].value == Path(model).name  # the folder (its path on hover)
    for page in ("activations", "circuits", "probes", "ablations", "evals"):
        ok(app(monkeypatch, run, page))
    at = ok(app(monkeypatch, run, "features"))
    assert at.subheader[0].value.startswith("topk · latent")
    at = ok(app(monkeypatch, run, "graphs"))
    assert at.selectbox(key="graph_file").value.endswith("g.json")


def test_corrupt_checkpoint_folders_are_refused_in_one_line(checkpoints, files, tmp_path):
    """config.json that is not JSON or not an object, weights missing or truncated: one
    line naming the file, no run folder made."""
    import shutil

    cases = {}
    for name in ("not-json", "not-object", "no-weights", "truncated"):
        shutil.copytree(checkpoints["gpt2"], tmp_path / name)
        cases[name] = tmp_path / name
    (cases["not-json"] / "config.json").write_text("{not json")
    (cases["not-object"] / "config.json").write_text("[1, 2]")
    (cases["no-weights"] / "model.safetensors").unlink()
    weights = cases["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    expected = {"not-json": "is not valid JSON", "not-object": "is not a model config",
                "no-weights": "model.safetensors", "truncated": "truncated"}
    for name, folder in cases.items():
        refuse(["harvest", "--model", folder, "--hook", HOOK, "--tokens", 100, "--source",
                files / "code.txt", "--out", tmp_path / f"run-{name}"],
               str(folder), expected[name], watch=[folder])
        assert not (tmp_path / f"run-{name}").exists()
