"""Export to circuit-tracer's format (``interp.sae.tracer_export``), checked by loading the
export with circuit-tracer 0.5.0 itself in .venv-tracer (``make tracer-venv``): the
transcoders' codes and outputs, and circuit-tracer's replacement model of the embedded
othello model (forward logits, attribution setup, ``attribute``) against ours."""
import os
import re
import subprocess

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from interp.cli import main
from interp.errors import DataError, MismatchError
from interp.models.zoo import REPO_ROOT
from interp.sae.core import SAEConfig, SparseAutoencoder
from interp.sae.io import load_sae, save_sae
from interp.sae.tracer_export import CLTLayer, export_circuit_tracer, export_clt

TRACER_PY = REPO_ROOT / ".venv-tracer" / "bin" / "python"
PROBE = REPO_ROOT / "tests" / "tracer_probe.py"
needs_tracer = pytest.mark.skipif(
    not (REPO_ROOT / ".venv-tracer" / ".installed").exists(),
    reason="no .venv-tracer with circuit-tracer 0.5.0: build it with `make tracer-venv`")

N_LAYERS, D, M, N_POS = 6, 128, 64, 20
ARCHS = ["relu", "jumprelu", "batchtopk", "matryoshka", "relu", "jumprelu"]


def make_plt(layer: int, arch: str, skip: bool = False, d_sae: int = M,
             model: str = "othello") -> SparseAutoencoder:
    """A random transcoder of othello's MLP ``layer``, with activation scales to fold and
    thresholds that let about a third of the latents fire."""
    cfg = SAEConfig(d_in=D, d_sae=d_sae, d_out=D, arch=arch, k=8, skip=skip, seed=layer,
                    metadata={"model_name": model,
                              "hook_name": f"blocks.{layer}.ln2.hook_normalized",
                              "hook_name_out": f"blocks.{layer}.hook_mlp_out"})
    sae = SparseAutoencoder(cfg)
    g = torch.Generator().manual_seed(100 + layer)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(D, generator=g))
        if skip:
            sae.W_skip.copy_(torch.randn(D, D, generator=g) * 0.05)
        sae.activation_scale.fill_(1.7)
        sae.activation_scale_out.fill_(0.6)
        if arch == "jumprelu":
            sae.load_inference_threshold_(0.5 + torch.rand(d_sae, generator=g))
        elif arch in ("batchtopk", "matryoshka"):
            sae.load_inference_threshold_(torch.full((d_sae,), 0.8))
    return sae


def saved_set(root, skip=False, archs=ARCHS):
    folders = []
    for layer, arch in enumerate(archs):
        folders.append(str(save_sae(make_plt(layer, arch, skip), root / f"plt{layer}")))
    return folders


@pytest.fixture(scope="module")
def othello_io():
    """A game's first tokens and the model's MLP inputs and outputs, logits on them."""
    from interp.data.othello import generate_games
    from interp.models import load

    tokens = torch.as_tensor(generate_games(1, seed=1).tokens()[0, :N_POS], dtype=torch.long)
    model = load("othello")
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[None])
    x = torch.stack([cache[f"blocks.{L}.ln2.hook_normalized"][0] for L in range(N_LAYERS)])
    y = torch.stack([cache[f"blocks.{L}.hook_mlp_out"][0] for L in range(N_LAYERS)])
    return {"tokens": tokens, "x": x, "y": y, "logits": logits[0]}


def run_tracer(export_dir, inputs: dict, tmp_path, model: str | None = None) -> dict:
    """What circuit-tracer computes from the export (tests/tracer_probe.py)."""
    src, dst = tmp_path / "inputs.safetensors", tmp_path / "outputs.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(src))
    cmd = [str(TRACER_PY), str(PROBE), str(export_dir), str(src), str(dst)]
    r = subprocess.run(cmd + (["--model", model] if model else []), capture_output=True,
                       text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    return load_file(str(dst))


def ours(folders, x):
    """(acts, out) of our loaded transcoders, layer by layer."""
    acts, out = [], []
    with torch.no_grad():
        for layer, folder in enumerate(folders):
            sae = load_sae(folder)
            acts.append(sae.encode(x[layer]))
            out.append(sae(x[layer]).x_hat)
    return torch.stack(acts), torch.stack(out)


def check_replacement_model(got, io, acts, out):
    """circuit-tracer's replacement model: the model's own logits; its attribution setup
    sees our codes and errors (position 0 zeroed, as it does); its graph our features."""
    torch.testing.assert_close(got["logits"], io["logits"], atol=1e-4, rtol=1e-4)
    acts, errors = acts.clone(), io["y"] - out
    acts[:, 0], errors[:, 0] = 0, 0
    torch.testing.assert_close(got["setup_acts"], acts, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["errors"], errors, atol=1e-4, rtol=1e-4)
    active = acts.nonzero()
    assert torch.equal(got["graph_features"], active)
    torch.testing.assert_close(got["graph_values"], acts[tuple(active.T)], atol=1e-4,
                               rtol=1e-4)
    # nodes: the features it attributed (at most 128, tracer_probe.py), an error per layer
    # and position, the tokens, 1 to 3 logits
    n_logits = int(got["graph_shape"][0]) - min(len(active), 128) - (N_LAYERS + 1) * N_POS
    assert 1 <= n_logits <= 3


# ------------------------------------------------------------------ the files
def test_export_layout(tmp_path):
    """circuit-tracer's file names, keys, shapes and dtypes; our weights with their scales
    folded in, W_enc and W_skip transposed."""
    folders = saved_set(tmp_path, skip=True)
    out = export_circuit_tracer(folders, tmp_path / "tracer")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert {k: cfg[k] for k in ("model_kind", "model_name", "feature_input_hook",
                                "feature_output_hook")} == {
        "model_kind": "transcoder_set", "model_name": "othello",
        "feature_input_hook": "ln2.hook_normalized", "feature_output_hook": "hook_mlp_out"}
    assert cfg["interp"]["activations"] == ["relu", "jumprelu", "jumprelu", "jumprelu",
                                            "relu", "jumprelu"]
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        f"layer_{L}.safetensors" for L in range(N_LAYERS)]
    for layer, folder in enumerate(folders):
        t = load_file(str(out / f"layer_{layer}.safetensors"))
        sae = load_sae(folder)
        want = {"W_enc": sae.W_enc.T, "W_dec": sae.W_dec, "b_enc": sae.b_enc,
                "b_dec": sae.b_dec, "W_skip": sae.W_skip.T}
        if ARCHS[layer] != "relu":
            want["activation_function.threshold"] = sae.inference_threshold()
        assert t.keys() == want.keys()
        for key, value in want.items():
            assert t[key].dtype == torch.float32
            torch.testing.assert_close(t[key], value.detach(), msg=key)


def test_clt_layout_and_stale_files(tmp_path):
    """A CLT's files; a transcoder set exported into the same folder leaves none of them."""
    out = export_clt(random_clt_layers(jump=True), tmp_path / "tracer", "othello")
    names = sorted(p.name for p in out.glob("*.safetensors"))
    assert names == sorted([f"W_enc_{L}.safetensors" for L in range(N_LAYERS)] +
                           [f"W_dec_{L}.safetensors" for L in range(N_LAYERS)])
    enc = load_file(str(out / "W_enc_2.safetensors"))
    dec = load_file(str(out / "W_dec_2.safetensors"))
    assert {k: tuple(v.shape) for k, v in enc.items()} == {
        "W_enc_2": (M, D), "b_enc_2": (M,), "b_dec_2": (D,), "threshold_2": (M,)}
    assert {k: tuple(v.shape) for k, v in dec.items()} == {"W_dec_2": (M, N_LAYERS - 2, D)}
    assert yaml.safe_load((out / "config.yaml").read_text())["model_kind"] == \
        "cross_layer_transcoder"
    assert main(["export-tracer", *saved_set(tmp_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        f"layer_{L}.safetensors" for L in range(N_LAYERS)]
    assert (out / "export_config.yaml").read_text().startswith("# interp export-tracer:")


def _bad_sets():
    good = [make_plt(L, "relu") for L in range(N_LAYERS)]
    return {
        "topk": (good[:5] + [make_plt(5, "topk")], DataError, "not top-k"),
        "gap": (good[:5], DataError, "missing layer(s) [5]"),
        "duplicate": (good + [good[2]], DataError, "two transcoders for layer 2"),
        "widths": (good[:5] + [make_plt(5, "relu", d_sae=2 * M)], DataError, "width"),
        "skip": (good[:5] + [make_plt(5, "relu", skip=True)], DataError, "skip"),
        "model": (good[:5] + [make_plt(5, "relu", model="pycode")], MismatchError,
                  "different models"),
    }


@pytest.mark.parametrize("case", ["topk", "gap", "duplicate", "widths", "skip", "model"])
def test_refusals_write_nothing(tmp_path, case):
    saes, error, words = _bad_sets()[case]
    with pytest.raises(error, match=re.escape(words)) as e:
        export_circuit_tracer(saes, tmp_path / "tracer")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "tracer").exists()


def test_cli_refuses_an_sae_and_an_sae_folder(tmp_path, capsys):
    folders = saved_set(tmp_path)
    assert main(["export-tracer", *folders, "--out", folders[0]]) == 2
    assert "is an SAE folder" in capsys.readouterr().err
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=M, arch="relu", metadata={
        "model_name": "othello", "hook_name": "blocks.0.ln2.hook_normalized"}))
    with pytest.raises(DataError, match="is an SAE"):
        export_circuit_tracer([sae] + folders[1:], tmp_path / "t")


# ------------------------------------------------------------------ circuit-tracer itself
@needs_tracer
@pytest.mark.slow
@pytest.mark.parametrize("skip", [False, True], ids=["plt", "skip-plt"])
def test_circuit_tracer_loads_the_set(tmp_path, othello_io, skip):
    folders = saved_set(tmp_path, skip=skip)
    assert main(["export-tracer", *folders, "--out", str(tmp_path / "tracer")]) == 0
    x = othello_io["x"]
    got = run_tracer(tmp_path / "tracer", {"x": x, "tokens": othello_io["tokens"]},
                     tmp_path, model="othello")
    acts, out = ours(folders, x)
    assert 0.05 < float((acts > 0).float().mean()) < 0.8  # the check sees codes fire
    torch.testing.assert_close(got["acts"], acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["out"], out, atol=1e-5, rtol=1e-5)
    check_replacement_model(got, othello_io, acts, out)


def random_clt_layers(jump: bool) -> list[CLTLayer]:
    g = torch.Generator().manual_seed(7)
    return [CLTLayer(torch.randn(D, M, generator=g) / D ** 0.5 * 1.7,
                     torch.randn(M, generator=g) * 0.3,
                     torch.randn(M, N_LAYERS - L, D, generator=g) * 0.1,
                     torch.randn(D, generator=g),
                     0.5 + torch.rand(M, generator=g) if jump else None)
            for L in range(N_LAYERS)]


def clt_reference(layers: list[CLTLayer], x):
    """The obvious formula: a_L = act(x_L W_enc_L + b_enc_L); y_L' = b_dec_L' +
    sum_{L <= L'} a_L W_dec_L[:, L' - L]."""
    acts = []
    for L, lay in enumerate(layers):
        z = x[L] @ lay.W_enc + lay.b_enc
        acts.append(z.relu() if lay.threshold is None else z * (z > lay.threshold))
    out = torch.stack([lay.b_dec.expand(x.shape[1], -1).clone() for lay in layers])
    for L, lay in enumerate(layers):
        for j in range(N_LAYERS - L):
            out[L + j] += acts[L] @ lay.W_dec[:, j]
    return torch.stack(acts), out


@needs_tracer
@pytest.mark.slow
@pytest.mark.parametrize("jump", [False, True], ids=["relu", "jumprelu"])
def test_circuit_tracer_loads_a_clt(tmp_path, othello_io, jump):
    layers = random_clt_layers(jump)
    export_clt(layers, tmp_path / "clt", "othello")
    x = othello_io["x"]
    got = run_tracer(tmp_path / "clt", {"x": x, "tokens": othello_io["tokens"]}, tmp_path,
                     model="othello" if jump else None)
    acts, out = clt_reference(layers, x)
    assert 0.05 < float((acts > 0).float().mean()) < 0.8
    torch.testing.assert_close(got["acts"], acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["out"], out, atol=1e-5, rtol=1e-5)
    if jump:
        check_replacement_model(got, othello_io, acts, out)


@needs_tracer
@pytest.mark.slow
def test_circuit_tracer_loads_our_clt_folder(tmp_path, othello_io):
    """A CrossLayerTranscoder saved by interp.sae.clt, exported by the CLI: circuit-tracer
    computes what its forward pass does."""
    clt_mod = pytest.importorskip("interp.sae.clt")
    hooks = [f"blocks.{L}.ln2.hook_normalized" for L in range(N_LAYERS)]
    cfg = clt_mod.CLTConfig(SAEConfig(d_in=D, d_sae=M, arch="jumprelu", seed=1),
                            tuple(range(N_LAYERS)), D, {
                                "model_name": "othello", "hook_names": hooks,
                                "hook_names_out": [f"blocks.{L}.hook_mlp_out"
                                                   for L in range(N_LAYERS)]})
    clt = clt_mod.CrossLayerTranscoder(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for enc in clt.encoders:
            enc.b_enc.copy_(torch.randn(M, generator=g) * 0.3)
            enc.b_dec.copy_(torch.randn(enc.b_dec.shape, generator=g))
            enc.load_inference_threshold_(0.5 + torch.rand(M, generator=g))
    clt_mod.save_clt(clt, tmp_path / "clt")
    assert main(["export-tracer", str(tmp_path / "clt"), "--out", str(tmp_path / "t")]) == 0
    x = othello_io["x"]
    got = run_tracer(tmp_path / "t", {"x": x}, tmp_path)
    with torch.no_grad():
        want = clt_mod.load_clt(tmp_path / "clt")(x.transpose(0, 1)).x_hat.transpose(0, 1)
    torch.testing.assert_close(got["out"], want, atol=1e-5, rtol=1e-5)
