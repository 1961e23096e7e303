"""Config files for CLI runs: parse, merge, override, errors, resolved configs, configs/."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from interp.cli import build_parser, main
from interp.config import ConfigError, load_file as load_config
from interp.config import parse_args, subparsers, values_for
from interp.models.zoo import REPO_ROOT


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def parse(argv):
    return parse_args(build_parser(), argv)


def test_file_fills_options_and_flags_override(tmp_path):
    f = write(tmp_path / "t.yaml", "store: runs/x\nout: runs/x/saes/a\nlatents: 512\n"
              "batch-size: 1024\nlr: 1e-3\nsteps: 7\noption: {prefixes: [8, 16], tied: true}\n")
    a = parse(["train", "--config", str(f), "--steps", "9"])
    assert (a.store, a.out, a.latents, a.batch_size, a.steps) == ("runs/x", "runs/x/saes/a",
                                                                 512, 1024, 9)
    assert a.lr == 1e-3 and isinstance(a.lr, float)  # YAML's "1e-3" is a string: converted
    assert a.option == ["prefixes=[8, 16]", "tied=true"]  # a mapping for --option KEY=VALUE
    assert a.k == 32  # untouched options keep their defaults
    assert a.config_values["latents"] == 512


def test_required_options_and_positionals_can_come_from_the_file(tmp_path):
    f = write(tmp_path / "h.yaml", "model: othello\nhook: blocks.1.hook_resid_post\n"
              "tokens: 200_000\nout: runs/h\n")
    a = parse(["harvest", "--config", str(f)])
    assert a.hook == ["blocks.1.hook_resid_post"] and a.tokens == 200_000
    # a repeatable option given on the command line replaces the file's list
    b = parse(["harvest", "--config", str(f), "--hook", "blocks.2.hook_mlp_out",
               "--hook", "blocks.3.hook_mlp_out"])
    assert b.hook == ["blocks.2.hook_mlp_out", "blocks.3.hook_mlp_out"]
    e = write(tmp_path / "e.yaml", "sae: runs/h/saes/topk\ntokens: 1e4\n")
    c = parse(["eval", "--config", str(e)])
    assert c.sae == ["runs/h/saes/topk"] and c.tokens == 10_000  # several: a replacement
    assert parse(["eval", "other/sae", "--config", str(e)]).sae == ["other/sae"]
    # without the file the required options are required again
    with pytest.raises(SystemExit):
        parse(["harvest", "--model", "othello"])


def test_command_key_and_command_less_form(tmp_path):
    f = write(tmp_path / "c.yaml", "command: probe\ntask: pycode-keyword\nk: [1, 2]\n"
              "source: [hook:blocks.1.mlp.hook_post]\n")
    a = parse(["--config", str(f), "--method", "exact"])
    assert a.command == "probe" and a.k == [1, 2] and a.method == "exact"
    assert a.source == ["hook:blocks.1.mlp.hook_post"]
    assert parse([f"--config={f}"]).command == "probe"
    s = write(tmp_path / "s.yaml", "task: pycode-keyword\nk: '1,4'\n")
    assert parse(["probe", "--config", str(s)]).k == [1, 4]  # a string goes through --k's type
    with pytest.raises(ConfigError, match="is a config for `interp probe`, not `interp train`"):
        parse(["train", "--config", str(f)])
    with pytest.raises(ConfigError, match="does not name its command"):
        parse(["--config", str(s)])


def test_unknown_keys_are_named_with_the_valid_ones(tmp_path):
    f = write(tmp_path / "u.yaml", "store: s\nout: o\nlattents: 5\nbatchsize: 3\n")
    with pytest.raises(ConfigError) as e:
        parse(["train", "--config", str(f)])
    msg = str(e.value)
    assert "unknown keys for `interp train`: 'lattents' (did you mean 'latents'?)" in msg
    assert "'batchsize' (did you mean 'batch_size'?)" in msg
    assert "valid keys: arch, batch_size," in msg and "config" not in msg.split("valid keys")[1]


def test_missing_bad_and_wrongly_typed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        parse(["train", "--config", str(tmp_path / "nope.yaml")])
    bad = write(tmp_path / "b.yaml", "store: s\nout: [o\n")
    with pytest.raises(ConfigError, match=r"b.yaml is not valid YAML \(line 3, column 1\)"):
        parse(["train", "--config", str(bad)])
    lst = write(tmp_path / "l.yaml", "- store\n- out\n")
    with pytest.raises(ConfigError, match="must hold a mapping .* not a list"):
        parse(["train", "--config", str(lst)])
    for text, match in [("latents: many", "latents: expected an integer"),
                        ("latents: 5.5", "latents: expected an integer"),
                        ("lr: fast", "lr: expected a number"),
                        ("arch: [topk]", "arch: expected a single value"),
                        ("encoder_dtype: float64", "'float64' is not one of float32, bfloat16")]:
        f = write(tmp_path / "x.yaml", f"store: s\nout: o\n{text}\n")
        with pytest.raises(ConfigError, match=match):
            parse(["train", "--config", str(f)])
    flag = write(tmp_path / "f.yaml", "model: m\nhook: [h]\ntokens: 5\nout: o\nkeep_bos: yes please\n")
    with pytest.raises(ConfigError, match="keep_bos: expected true or false"):
        parse(["harvest", "--config", str(flag)])
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2  # an error, not a crash


def test_toml_files_work_too(tmp_path):
    f = write(tmp_path / "t.toml", 'command = "train"\nstore = "s"\nout = "o"\nk = 8\n')
    a = parse(["--config", str(f)])
    assert (a.command, a.store, a.k) == ("train", "s", 8)


def test_every_example_config_is_valid():
    parser = build_parser()
    subs = subparsers(parser)
    files = sorted((REPO_ROOT / "configs").glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        data = load_config(f)
        assert data["command"] in subs, f
        values_for(subs[data["command"]], data["command"], data, f)
        parse(["--config", str(f)])  # parses as a whole, required options included


@pytest.mark.slow
def test_harvest_from_a_config_stores_its_resolved_config_and_reruns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = REPO_ROOT / "configs" / "othello_harvest.yaml"
    assert main(["--config", str(cfg), "--tokens", "600", "--out", "runs/a"]) == 0
    saved = yaml.safe_load((tmp_path / "runs/a/config.yaml").read_text())
    assert saved["command"] == "harvest" and saved["tokens"] == 600
    assert saved["hook"] == ["blocks.3.hook_resid_post", "blocks.5.hook_resid_post"]
    assert saved["out"] == "runs/a" and saved["batch_size"] == 64
    assert "config" not in saved and "func" not in saved
    # the resolved config alone reproduces the run (here into another folder)
    assert main(["--config", "runs/a/config.yaml", "--out", "runs/b"]) == 0
    from interp.activations.harvest import open_store

    a, b = open_store("runs/a"), open_store("runs/b")
    np.testing.assert_array_equal(a.tokens(), b.tokens())
    torch.testing.assert_close(a.read_range(0, a.n_rows, "blocks.5.hook_resid_post"),
                               b.read_range(0, b.n_rows, "blocks.5.hook_resid_post"))


@pytest.mark.slow
def test_train_from_a_config_then_again_from_its_resolved_config(tmp_path, sparse_store):
    f = write(tmp_path / "train.yaml",
              f"store: {sparse_store}\nout: {tmp_path / 'one'}\narch: matryoshka\n"
              "latents: 64\nk: 4\nbatch-size: 256\nsteps: 20\nlr: 5e-3\neval_rows: 2048\n"
              "option: {prefixes: [16, 64]}\n")
    assert main(["train", "--config", str(f)]) == 0
    resolved = tmp_path / "one" / "config.yaml"
    saved = yaml.safe_load(resolved.read_text())
    assert saved["command"] == "train" and saved["steps"] == 20 and saved["latents"] == 64
    assert saved["option"] == ["prefixes=[16, 64]"]
    assert main(["--config", str(resolved), "--out", str(tmp_path / "two")]) == 0
    a = load_file(str(tmp_path / "one" / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "two" / "sae_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    again = yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())
    assert {**saved, "out": again["out"]} == again
