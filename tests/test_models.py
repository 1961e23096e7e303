import json
import shutil

import pytest
import torch

from interp.errors import UnknownNameError
from interp.models import ModelUnavailableError, load
from interp.models.io import CorruptModelError
from interp.models.zoo import ZOO, model_dir


@pytest.fixture(scope="module")
def othello():
    return load("othello")


@pytest.fixture(scope="module")
def pycode():
    return load("pycode")


def test_shipped_models_load_with_their_configs(othello, pycode):
    for model, name in ((othello, "othello"), (pycode, "pycode")):
        spec = ZOO[name]
        assert model.cfg.n_layers == spec.n_layers and model.cfg.d_model == spec.d_model
        assert model.cfg.d_vocab == spec.d_vocab
        metrics = json.loads((model_dir(name) / "metrics.json").read_text())
        assert metrics, "the shipped model carries its measured figures"


def test_othello_model_plays_legal_moves(othello):
    from interp.models.evaluate import othello_legal_move_accuracy

    res = othello_legal_move_accuracy(othello, n_games=100)
    assert res["legal_move_top1_accuracy"] > 0.9


def test_pycode_tokenizer_and_prediction(pycode):
    toks = pycode.to_tokens("import os\nimport sys\n")
    assert toks[0, 0].item() == 0  # <|bos|>
    assert pycode.to_string(toks[0, 1:]) == "import os\nimport sys\n"
    # after "def f(self" a trained model puts ")" or "," among its top guesses
    logits = pycode("class A:\n    def f(self")[0, -1]
    top = [pycode.to_string(t) for t in logits.topk(5).indices]
    assert any(t.startswith((")", ",")) for t in top), top


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownNameError, match="closest matches: .*gpt2"):
        load("gtp2")
    with pytest.raises(UnknownNameError, match="othello"):
        load("othelo")


def test_pretrained_name_offline_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelUnavailableError, match="pythia-70m.*not in the local Hugging Face"):
        load("pythia-70m")


def test_local_hf_folder_matches_transformers(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                     bos_token_id=0, eos_token_id=0)
    cfg.n_ctx = 16
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "tiny")
    model = load(str(tmp_path / "tiny"))
    x = torch.randint(0, 50, (2, 9))
    a, b = hf(x).logits, model(x)
    # TransformerLens centres the unembedding: compare logits up to a per-position constant
    torch.testing.assert_close(a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True),
                               atol=1e-4, rtol=1e-4)


def test_a_gpt2_folder_without_n_ctx_loads(tmp_path):
    """``GPT2Config(...).save_pretrained`` writes n_positions but no n_ctx with transformers
    5; TransformerLens needs n_ctx: the loader fills it in (the folder is not touched)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=24)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "tiny")
    before = (tmp_path / "tiny" / "config.json").read_text()
    assert "n_ctx" not in json.loads(before)
    model = load(str(tmp_path / "tiny"))
    assert model.cfg.n_ctx == 24 and model.cfg.model_name == "tiny"
    assert (tmp_path / "tiny" / "config.json").read_text() == before
    x = torch.randint(0, 50, (2, 9))
    a, b = hf(x).logits, model(x)
    torch.testing.assert_close(a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True),
                               atol=1e-4, rtol=1e-4)


def test_corrupt_model_folders_are_named(tmp_path):
    src = model_dir("othello")
    dst = tmp_path / "othello"
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CorruptModelError, match="model.safetensors is truncated"):
        load(str(dst))
    weights.unlink()
    with pytest.raises(CorruptModelError, match="missing model.safetensors"):
        load(str(dst))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptModelError, match="no config.json"):
        load(str(tmp_path / "empty"))


def test_linear_probe_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from interp.models.evaluate import fit_linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 12, generator=g)
    logits = x @ torch.randn(12, 3, generator=g) * 2
    y = torch.distributions.Categorical(logits=logits).sample((1,), ).T  # noisy labels
    ours = fit_linear_probe(x[:2000], y[:2000], x[2000:], y[2000:], n_classes=3)
    ref = LogisticRegression(max_iter=2000).fit(x[:2000].numpy(), y[:2000, 0].numpy())
    acc_ref = (ref.predict(x[2000:].numpy()) == y[2000:, 0].numpy()).mean()
    assert abs(float(ours[0]) - acc_ref) < 0.01
