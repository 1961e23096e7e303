"""Bad, foreign, mismatched and corrupt inputs through the real CLI: each one is refused
with one line (exit 2), no traceback, and every file that existed before unchanged.

The table below runs ``interp.cli.main(argv)`` in this process (tests/refusals.py). Paths
in the argv are placeholders filled from one small world built once: an othello run with a
store of blocks.3.hook_resid_post and a tiny SAE, a pycode run, and a folder of bad files.
Cases that need a process of their own (locks, kill -9, Ctrl-C) follow the table.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from refusals import SHIPPED, refuse, run_cli, snapshot

OTHELLO_SAE = "othello/blocks.3.hook_resid_post/topk"
OTHELLO_L1_SAE = "othello/blocks.1.hook_resid_post/topk"
PYCODE_SAE = "pycode/blocks.2.hook_resid_post/topk"
HOOK = "blocks.3.hook_resid_post"
TINY = ["--latents", "64", "--k", "4", "--batch-size", "256", "--eval-rows", "256"]


def _ok(argv):
    code, out, err = run_cli(argv)
    assert code == 0, f"{argv}: exit {code}\n{err}"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Everything the table's placeholders name (built once for the module)."""
    root = tmp_path_factory.mktemp("bad")
    run, pyrun, bad = root / "run", root / "pyrun", root / "bad"
    bad.mkdir()
    _ok(["harvest", "--model", "othello", "--hook", HOOK, "--tokens", "3000",
         "--out", run, "--batch-size", "16"])
    _ok(["train", "--store", run, "--out", run / "saes" / "topk", *TINY, "--steps", "4"])
    _ok(["harvest", "--model", "pycode", "--hook", "blocks.2.hook_resid_post", "--tokens",
         "1500", "--out", pyrun, "--batch-size", "8"])
    (pyrun / "saes").mkdir()
    w = {"run": run, "pyrun": pyrun, "bad": bad, "root": root,
         "sae": run / "saes" / "topk", "store": run / "activations"}

    def write(name: str, data: bytes | str) -> Path:
        p = bad / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p

    w["file"] = write("plain.txt", "a user's notes\n")
    w["notes_json"] = write("notes.json", '{"mine": true}\n')
    w["user_yaml_dir"] = bad / "user_yaml"
    write("user_yaml/config.yaml", "learning: rate\n")
    # SAE folders with a bad cfg.json, or missing or truncated weights
    weights = (w["sae"] / "sae_weights.safetensors").read_bytes()
    for name, cfg in [("cfg_empty", "{}"), ("cfg_list", "[]"), ("cfg_bad", "{not json")]:
        write(f"{name}/cfg.json", cfg)
        write(f"{name}/sae_weights.safetensors", weights)
    write("no_weights/cfg.json", (w["sae"] / "cfg.json").read_text())
    write("cut_weights/cfg.json", (w["sae"] / "cfg.json").read_text())
    write("cut_weights/sae_weights.safetensors", weights[:100])
    # stores: manifest corrupt in several ways, a shard missing or cut short
    for name in ("store_list", "store_json", "store_nokeys", "store_missing", "store_cut",
                 "store_header", "store_incomplete"):
        shutil.copytree(w["store"], bad / name)
    manifest = json.loads((w["store"] / "manifest.json").read_text())
    write("store_list/manifest.json", "[1, 2]")
    write("store_json/manifest.json", "{oops")
    write("store_nokeys/manifest.json", json.dumps({"complete": True}))
    shard = manifest["shards"][0]["file"]
    (bad / "store_missing" / manifest["hooks"][HOOK]["dir"] / shard).unlink()
    cut = bad / "store_cut" / manifest["hooks"][HOOK]["dir"] / shard
    cut.write_bytes(cut.read_bytes()[:-64])
    edited = json.loads(json.dumps(manifest))  # every file size still adds up
    edited["dtype"] = "float16"
    edited["hooks"][HOOK]["d_in"] *= 2
    write("store_header/manifest.json", json.dumps(edited))
    write("store_incomplete/manifest.json", json.dumps({**manifest, "complete": False}))
    # circuit tasks and probe datasets
    write("task_number.jsonl", '{"clean": 12, "answer": " a", "wrong": " b"}\n')
    write("task_list.jsonl", '[1, 2, 3]\n')
    write("task_latin1.jsonl", b'{"clean": "caf\xe9", "answer": " a", "wrong": " b"}\n')
    write("task_missing.jsonl", '{"clean": "x = f(a"}\n')
    write("task_patch_mixed.jsonl", '{"clean": "x = f(a", "patch": "x = f a b", "answer": ")", '
          '"wrong": ","}\n{"clean": "y = f(b", "answer": ")", "wrong": ","}\n')
    write("task_ok.jsonl", '{"clean": "x = f(a", "answer": ")", "wrong": ","}\n')
    write("probe_empty.csv", "")
    write("probe_one_class.csv", "text,label\nx = 1,0\ny = 2,0\n")
    write("probe_float.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 0.9}\n')
    write("probe_float.csv", "text,label\nx = 1,0.1\ny = 2,0.9\n")
    write("probe_two.csv", "text,label\nx = 1,0\ny = 2,2\n")
    write("probe_latin1.csv", b"text,label\ncaf\xe9,1\nx,0\n")
    write("probe_nolabel.csv", "text\nx = 1\n")
    write("bad.yaml", "store: [unclosed\n")
    write("unknown_key.yaml", "stor: x\n")
    write("no_command.yaml", "model: othello\n")
    # a copy of a shipped SAE outside saes/, and an SAE folder as a harvest --out
    shutil.copytree(SHIPPED / "othello" / "blocks.3.hook_resid_post" / "topk", bad / "sae_copy")
    # a checkpoint that is not ours, and one cut short
    write("foreign_ckpt/checkpoint.pt", b"")
    torch.save({"weights": torch.zeros(2)}, bad / "foreign_ckpt" / "checkpoint.pt")
    write("cut_ckpt/checkpoint.pt", b"PK\x03\x04 not a whole zip")
    return {k: str(v) for k, v in w.items()}


# (id, argv with {placeholders}, fragments the one-line error must contain)
CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # ---------------------------------------------------------------- harvest
    ("harvest-unknown-model", "harvest --model othelo --hook h --tokens 10 --out {root}/h1",
     ("othello",)),
    ("harvest-unknown-hook", f"harvest --model othello --hook blocks.3.hook_resid_pst "
     "--tokens 10 --out {root}/h1", ("unknown hook", "blocks.3.hook_resid_post")),
    ("harvest-tokens-zero", f"harvest --model othello --hook {HOOK} --tokens 0 --out {{root}}/h1",
     ("--tokens",)),
    ("harvest-tokens-negative", f"harvest --model othello --hook {HOOK} --tokens -5 "
     "--out {root}/h1", ("--tokens",)),
    ("harvest-batch-zero", f"harvest --model othello --hook {HOOK} --tokens 10 --batch-size 0 "
     "--out {root}/h1", ("--batch-size",)),
    ("harvest-shard-rows-zero", f"harvest --model othello --hook {HOOK} --tokens 10 "
     "--shard-rows 0 --out {root}/h1", ("--shard-rows",)),
    ("harvest-n-ctx-one", f"harvest --model othello --hook {HOOK} --tokens 10 --n-ctx 1 "
     "--out {root}/h1", ("--n-ctx",)),
    ("harvest-n-ctx-too-long", f"harvest --model othello --hook {HOOK} --tokens 10 "
     "--n-ctx 100000 --out {root}/h1", ("--n-ctx", "2..60")),
    ("harvest-device-cuda", f"harvest --model othello --hook {HOOK} --tokens 10 --device cuda "
     "--out {root}/h1", ("cuda",)),
    ("harvest-device-unknown", f"harvest --model othello --hook {HOOK} --tokens 10 "
     "--device tpu9 --out {root}/h1", ("tpu9",)),
    ("harvest-foreign-source", f"harvest --model othello --hook {HOOK} --tokens 10 "
     "--source pycode --out {root}/h1", ("pycode", "othello")),
    ("harvest-missing-source-file", f"harvest --model othello --hook {HOOK} --tokens 10 "
     "--source {root}/nope.txt --out {root}/h1", ("nope.txt",)),
    ("harvest-out-is-file", f"harvest --model othello --hook {HOOK} --tokens 10 --out {{file}}",
     ("is a file",)),
    ("harvest-out-under-file", f"harvest --model othello --hook {HOOK} --tokens 10 "
     "--out {file}/run", ("is a file",)),
    ("harvest-out-sae-folder", f"harvest --model othello --hook {HOOK} --tokens 10 "
     "--out {sae}", ("an SAE folder",)),
    ("harvest-out-user-config", f"harvest --model othello --hook {HOOK} --tokens 10 "
     "--out {user_yaml_dir}", ("config.yaml", "not what this command writes")),
    ("harvest-out-complete-store", f"harvest --model othello --hook {HOOK} --tokens 3000 "
     "--batch-size 16 --out {run}", ("complete store",)),
    ("harvest-bad-dtype", f"harvest --model othello --hook {HOOK} --tokens 10 --dtype float8 "
     "--out {root}/h1", ("--dtype", "float32")),
    ("harvest-no-hook", "harvest --model othello --tokens 10 --out {root}/h1", ("--hook",)),
    ("harvest-config-missing", "harvest --config {root}/nope.yaml", ("not found",)),
    ("harvest-config-bad-yaml", "harvest --config {bad}/bad.yaml", ("not valid YAML",)),
    ("harvest-config-unknown-key", "harvest --config {bad}/unknown_key.yaml",
     ("unknown key", "stor")),
    ("config-without-command", "--config {bad}/no_command.yaml", ("does not name its command",)),
    ("unknown-subcommand", "harvset --model othello", ("harvset",)),
    # ---------------------------------------------------------------- info
    ("info-missing", "info {root}/nowhere", ("no activation store",)),
    ("info-manifest-list", "info {bad}/store_list", ("manifest",)),
    ("info-manifest-bad-json", "info {bad}/store_json", ("not valid JSON",)),
    ("info-manifest-no-keys", "info {bad}/store_nokeys", ("manifest",)),
    ("info-shard-missing", "info {bad}/store_missing", ("missing",)),
    ("info-shard-cut", "info {bad}/store_cut", ("truncated",)),
    ("info-header-mismatch", "info {bad}/store_header", ("manifest.json says",)),
    ("info-incomplete", "info {bad}/store_incomplete", ("incomplete",)),
    # ---------------------------------------------------------------- model
    ("model-eval-no-name", "model eval", ("name a model",)),
    ("model-hooks-unknown", "model hooks othelo", ("othello",)),
    ("model-bad-action", "model fly othello", ("fly",)),
    # ---------------------------------------------------------------- train
    ("train-no-store", "train --out {root}/t1", ("--store",)),
    ("train-store-missing", "train --store {root}/nowhere --out {root}/t1",
     ("no activation store",)),
    ("train-store-incomplete", "train --store {bad}/store_incomplete --out {root}/t1",
     ("incomplete",)),
    ("train-store-corrupt", "train --store {bad}/store_header --out {root}/t1",
     ("manifest.json says",)),
    ("train-hook-not-in-store", "train --store {run} --hook blocks.5.hook_resid_post "
     "--out {root}/t1", ("blocks.5.hook_resid_post", HOOK)),
    ("train-arch-unknown", "train --store {run} --arch topkk --out {root}/t1", ("topk",)),
    ("train-latents-zero", "train --store {run} --latents 0 --out {root}/t1", ("--latents",)),
    ("train-k-zero", "train --store {run} --k 0 --out {root}/t1", ("--k",)),
    ("train-k-above-latents", "train --store {run} --latents 8 --k 9 --out {root}/t1",
     ("k=9",)),
    ("train-batch-above-rows", "train --store {run} --batch-size 100000 --out {root}/t1",
     ("too few",)),
    ("train-steps-negative", "train --store {run} --steps -3 --out {root}/t1", ("--steps",)),
    ("train-lr-negative", "train --store {run} --lr -1 --out {root}/t1", ("--lr",)),
    ("train-option-d_in", "train --store {run} --option d_in=64 --out {root}/t1",
     ("d_in", "the store")),
    ("train-option-k-abc", "train --store {run} --option k=abc --out {root}/t1", ("--k",)),
    ("train-option-arch", "train --store {run} --option arch=relu --out {root}/t1",
     ("--arch",)),
    ("train-option-bad-list", "train --store {run} --arch matryoshka --option prefixes=[1,2 "
     "--out {root}/t1", ("prefixes", "list of integers")),
    ("train-option-bad-float", "train --store {run} --arch relu --option l1_coeff=abc "
     "--out {root}/t1", ("l1_coeff", "a number")),
    ("train-option-bad-bool", "train --store {run} --arch ksparse --option tied=maybe "
     "--out {root}/t1", ("tied", "true or false")),
    ("train-option-no-value", "train --store {run} --option tied --out {root}/t1",
     ("KEY=VALUE",)),
    ("train-option-unknown", "train --store {run} --option l1_coef=2 --out {root}/t1",
     ("l1_coef", "l1_coeff")),
    ("train-option-tied-topk", "train --store {run} --option tied=true --out {root}/t1",
     ("ksparse",)),
    ("train-out-run-folder", "train --store {run} --out {run}", ("a run folder",)),
    ("train-out-is-file", "train --store {run} --out {file}", ("is a file",)),
    ("train-out-under-file", "train --store {run} --out {file}/sae", ("is a file",)),
    ("train-out-trained", "train --store {run} --out {sae} " + " ".join(TINY),
     ("already holds a trained SAE",)),
    ("train-out-user-config", "train --store {run} --out {user_yaml_dir}",
     ("config.yaml", "not what this command writes")),
    ("train-encoder-dtype", "train --store {run} --encoder-dtype int8 --out {root}/t1",
     ("--encoder-dtype",)),
    ("train-e2e-no-model", "train --arch e2e --hook " + HOOK + " --out {root}/t1",
     ("--model",)),
    ("train-e2e-foreign-source", "train --arch e2e --model othello --hook " + HOOK +
     " --source pycode --out {root}/t1", ("pycode", "does not fit the model 'othello'")),
    ("train-device-cuda", "train --store {run} --device cuda --out {root}/t1", ("cuda",)),
    ("train-foreign-checkpoint", "train --store {run} --out {bad}/foreign_ckpt " + " ".join(TINY),
     ("not an interp training checkpoint",)),
    ("train-cut-checkpoint", "train --store {run} --out {bad}/cut_ckpt " + " ".join(TINY),
     ("corrupt or truncated",)),
    # ---------------------------------------------------------------- eval
    ("eval-unknown-name", "eval othello/blocks.3.hook_resid_post/topkk --out {root}/e1",
     ("othello/blocks.3.hook_resid_post/topk",)),
    ("eval-missing-weights", "eval {bad}/no_weights --out {root}/e1",
     ("sae_weights.safetensors",)),
    ("eval-cfg-empty", "eval {bad}/cfg_empty --out {root}/e1", ("cfg.json",)),
    ("eval-cfg-list", "eval {bad}/cfg_list --out {root}/e1", ("cfg.json",)),
    ("eval-cfg-bad-json", "eval {bad}/cfg_bad --out {root}/e1", ("not valid JSON",)),
    ("eval-cut-weights", "eval {bad}/cut_weights --out {root}/e1", ("truncated or corrupt",)),
    ("eval-foreign-model-store", f"eval {PYCODE_SAE} --store {{run}} --out {{root}}/e1",
     ("pycode", "othello")),
    ("eval-foreign-hook-store", f"eval {OTHELLO_L1_SAE} --store {{run}} --out {{root}}/e1",
     ("blocks.1.hook_resid_post", HOOK)),
    ("eval-shipped-in-place", f"eval {OTHELLO_SAE}", ("shipped",)),
    ("eval-shipped-folder-in-place", f"eval {SHIPPED / OTHELLO_SAE} --tokens 10",
     ("shipped",)),
    ("eval-tokens-zero", "eval {sae} --store {run} --tokens 0", ("--tokens",)),
    ("eval-store-missing", "eval {sae} --store {root}/nowhere --out {root}/e1",
     ("no activation store",)),
    ("eval-foreign-model", "eval {sae} --model pycode --out {root}/e1", ("pycode", "othello")),
    ("eval-foreign-source", "eval {sae} --source pycode --out {root}/e1",
     ("pycode", "does not fit the model 'othello'")),
    ("eval-out-is-file", "eval {sae} --out {file}", ("is a file",)),
    # ---------------------------------------------------------------- circuit
    ("circuit-no-sae", "circuit --task othello-legal --out {root}/c.json", ("--sae",)),
    ("circuit-foreign-model", f"circuit --sae {PYCODE_SAE} --model othello --task othello-legal "
     "--out {root}/c.json", ("pycode", "othello")),
    ("circuit-unknown-task", f"circuit --sae {OTHELLO_SAE} --task othello-legl "
     "--out {root}/c.json", ("othello-legal",)),
    ("circuit-task-other-model", f"circuit --sae {PYCODE_SAE} --task othello-legal "
     "--out {root}/c.json", ("othello", "pycode")),
    ("circuit-task-number", f"circuit --sae {OTHELLO_SAE} --task {{bad}}/task_number.jsonl "
     "--out {root}/c.json", ("line 1",)),
    ("circuit-task-not-object", f"circuit --sae {OTHELLO_SAE} --task {{bad}}/task_list.jsonl "
     "--out {root}/c.json", ("line 1",)),
    ("circuit-task-latin1", f"circuit --sae {OTHELLO_SAE} --task {{bad}}/task_latin1.jsonl "
     "--out {root}/c.json", ("UTF-8",)),
    ("circuit-task-missing-field", f"circuit --sae {OTHELLO_SAE} "
     "--task {bad}/task_missing.jsonl --out {root}/c.json", ("line 1", "'answer'")),
    ("circuit-task-patch-mixed", f"circuit --sae {PYCODE_SAE} "
     "--task {bad}/task_patch_mixed.jsonl --out {root}/c.json", ("line 2", "patch")),
    ("circuit-task-no-tokenizer", f"circuit --sae {OTHELLO_SAE} --task {{bad}}/task_ok.jsonl "
     "--out {root}/c.json", ("tokenizer",)),
    ("circuit-task-missing", f"circuit --sae {OTHELLO_SAE} --task {{root}}/nope.jsonl "
     "--out {root}/c.json", ("nope.jsonl",)),
    ("circuit-bad-metric", f"circuit --sae {OTHELLO_SAE} --task othello-legal "
     "--metric feature:x --out {root}/c.json", ("feature:SAE:LATENT",)),
    ("circuit-out-is-folder", f"circuit --sae {OTHELLO_SAE} --task othello-legal --out {{bad}}",
     ("is a folder",)),
    ("circuit-out-user-json", f"circuit --sae {OTHELLO_SAE} --task othello-legal "
     "--out {notes_json}", ("not what this command writes",)),
    ("circuit-out-under-file", f"circuit --sae {OTHELLO_SAE} --task othello-legal "
     "--out {file}/c.json", ("is a file",)),
    ("circuit-out-run-json", f"circuit --sae {OTHELLO_SAE} --task othello-legal "
     "--out {run}/run.json", ("not what this command writes",)),
    ("circuit-run-without-saes", "circuit --run {pyrun} --task pycode-bracket "
     "--out {root}/c.json", ("no SAEs",)),
    ("circuit-two-saes-one-hook", f"circuit --sae {OTHELLO_SAE} --sae {{sae}} "
     "--task othello-legal --out {root}/c.json", ("two SAEs",)),
    ("circuit-bad-method", f"circuit --sae {OTHELLO_SAE} --task othello-legal --method xx",
     ("--method",)),
    ("circuit-bad-curve", f"circuit --sae {OTHELLO_SAE} --task othello-legal --curve a,b",
     ("--curve", "integers")),
    ("circuit-unknown-sae", "circuit --sae othello/blocks.3.hook_resid_post/tpok "
     "--task othello-legal --out {root}/c.json", ("othello/blocks.3.hook_resid_post/topk",)),
    # ---------------------------------------------------------------- probe
    ("probe-no-source", "probe --task othello-legal-d3 --out {root}/p.json", ("--source",)),
    ("probe-unknown-task", "probe --task othello-lgal-d3 --source hook:" + HOOK +
     " --out {root}/p.json", ("othello",)),
    ("probe-foreign-sae", f"probe --task othello-legal-d3 --source sae:{PYCODE_SAE} "
     "--out {root}/p.json", ("pycode", "othello")),
    ("probe-unknown-hook", "probe --task othello-legal-d3 --source hook:blocks.3.hook_nope "
     "--out {root}/p.json", ("blocks.3.hook_nope",)),
    ("probe-bad-k", "probe --task othello-legal-d3 --source hook:" + HOOK + " --k a,b",
     ("--k",)),
    ("probe-float-labels", "probe --task {bad}/probe_float.csv --model pycode --source "
     "hook:blocks.1.hook_resid_post --out {root}/p.json", ("0.1",)),
    ("probe-labels-0-2", "probe --task {bad}/probe_two.csv --model pycode --source "
     "hook:blocks.1.hook_resid_post --out {root}/p.json", ("2",)),
    ("probe-latin1", "probe --task {bad}/probe_latin1.csv --model pycode --source "
     "hook:blocks.1.hook_resid_post --out {root}/p.json", ("UTF-8",)),
    ("probe-no-label-column", "probe --task {bad}/probe_nolabel.csv --model pycode --source "
     "hook:blocks.1.hook_resid_post --out {root}/p.json", ("label",)),
    ("probe-empty-file", "probe --task {bad}/probe_empty.csv --model pycode --source "
     "hook:blocks.1.hook_resid_post --out {root}/p.json", ("is empty",)),
    ("probe-one-class", "probe --task {bad}/probe_one_class.csv --model pycode --source "
     "hook:blocks.1.hook_resid_post --out {root}/p.json", ("every label is 0",)),
    ("probe-float-jsonl", "probe --task {bad}/probe_float.jsonl --model pycode --source "
     "hook:blocks.1.hook_resid_post --out {root}/p.json", ("line 2", "0.9")),
    ("probe-text-without-model", "probe --task {bad}/probe_two.csv --source "
     "hook:blocks.1.hook_resid_post --out {root}/p.json", ("--model",)),
    ("probe-out-user-json", "probe --task othello-legal-d3 --source hook:" + HOOK +
     " --out {notes_json}", ("not what this command writes",)),
    # ---------------------------------------------------------------- ablate
    ("ablate-latents-letters", f"ablate --sae {OTHELLO_SAE} --latents a,b --task othello-legal",
     ("--latents", "integers")),
    ("ablate-latent-out-of-range", f"ablate --sae {OTHELLO_SAE} --latents 99999 "
     "--task othello-legal --prompts 4", ("99999",)),
    ("ablate-no-prompt", f"ablate --sae {OTHELLO_SAE} --latents 1", ("--task",)),
    ("ablate-steer-two", f"ablate --sae {OTHELLO_SAE} --latents 1,2 --alpha 2 "
     "--task othello-legal --prompts 4", ("one latent",)),
    ("ablate-unknown-sae", "ablate --sae othello/nope --latents 1 --task othello-legal",
     ("SAE",)),
    ("ablate-foreign-model", f"ablate --sae {PYCODE_SAE} --model othello --latents 1 "
     "--task othello-legal --prompts 4", ("pycode", "othello")),
    ("ablate-mean-one-prompt", f"ablate --sae {PYCODE_SAE} --latents 1 --mode mean "
     "--prompt x=1", ("single prompt",)),
    ("ablate-bad-mode", f"ablate --sae {OTHELLO_SAE} --latents 1 --mode half --task x",
     ("--mode",)),
    # ---------------------------------------------------------------- features
    ("features-window-no-after", f"features --sae {OTHELLO_SAE} --tokens 100 --window 12 "
     "--out {root}/f.duckdb", ("--window",)),
    ("features-window-negative", f"features --sae {OTHELLO_SAE} --tokens 100 --window=-1,4 "
     "--out {root}/f.duckdb", ("--window", "BEFORE,AFTER")),
    ("features-window-three", f"features --sae {OTHELLO_SAE} --tokens 100 --window 1,2,3 "
     "--out {root}/f.duckdb", ("--window",)),
    ("features-window-letters", f"features --sae {OTHELLO_SAE} --tokens 100 --window a,b "
     "--out {root}/f.duckdb", ("--window",)),
    ("features-tokens-zero", f"features --sae {OTHELLO_SAE} --tokens 0 --out {{root}}/f.duckdb",
     ("tokens",)),
    ("features-unknown-sae", "features --sae othello/blocks.3.hook_resid_post/tpk --tokens 100 "
     "--out {root}/f.duckdb", ("othello/blocks.3.hook_resid_post/topk",)),
    ("features-out-user-file", f"features --sae {OTHELLO_SAE} --tokens 100 --out {{file}}",
     ("not what this command writes",)),
    ("features-run-missing", "features --run {root}/nowhere --sae topk --tokens 100",
     ("nowhere",)),
    ("features-foreign-run", f"features --run {{run}} --sae {PYCODE_SAE} --tokens 100",
     ("pycode", "othello")),
    ("features-device-cuda", f"features --sae {OTHELLO_SAE} --tokens 100 --device cuda "
     "--out {root}/f.duckdb", ("cuda",)),
    ("features-foreign-source", f"features --sae {OTHELLO_SAE} --tokens 100 --source pycode "
     "--out {root}/f.duckdb", ("pycode", "does not fit the model 'othello'")),
    ("features-shipped-no-out", f"features --sae {OTHELLO_SAE} --tokens 100", ("--out",)),
    # ---------------------------------------------------------------- app, demo
    ("app-missing-run", "app {root}/nowhere", ("no run folder",)),
    ("demo-out-sae-folder", "demo --out {sae} --no-app", ("an SAE folder",)),
]


def test_the_table_is_large_and_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 100, len(ids)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line(world, case):
    _, argv, fragments = case
    args = [a.format(**world) for a in argv.split()]
    refuse(args, *fragments, watch=[world["root"]])


# ---------------------------------------------------------------- typed options
def test_option_values_are_typed_by_the_config_field():
    from interp.config import typed_options
    from interp.sae.core import SAEConfig
    from interp.sae.trainer import FLAG_OF_SAE_FIELD

    got = typed_options(["tied=False", "k_start=null", "prefixes=[8,16]", "l1_coeff=2",
                         "b_dec_init=mean"], SAEConfig, FLAG_OF_SAE_FIELD)
    assert got == {"tied": False, "k_start": None, "prefixes": (8, 16), "l1_coeff": 2.0,
                   "b_dec_init": "mean"}
    assert typed_options({"tied": True}, SAEConfig, FLAG_OF_SAE_FIELD) == {"tied": True}


def test_tied_false_trains_an_untied_ksparse_sae(world, tmp_path):
    out = tmp_path / "ks"
    _ok(["train", "--store", world["run"], "--out", out, "--arch", "ksparse", *TINY,
         "--steps", "2", "--option", "tied=False"])
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["interp"]["tied"] is False


# ---------------------------------------------------------------- provenance, eval output
def test_eval_records_what_it_was_computed_on_and_spares_shipped_files(world, tmp_path):
    out = tmp_path / "ev"
    _ok(["eval", OTHELLO_SAE, "--store", world["run"], "--out", out, "--tokens", "500",
         "--contexts", "4"])
    res = json.loads((out / "eval.json").read_text())
    assert res["hook"] == HOOK and res["store"].endswith("activations")
    assert res["model"] == "othello"
    # a shipped SAE evaluated on a run writes into the run, not into saes/
    before = snapshot([SHIPPED])
    _ok(["eval", OTHELLO_SAE, "--store", world["run"], "--tokens", "500", "--contexts", "4"])
    assert snapshot([SHIPPED]) == before
    evals = Path(world["run"]) / "evals" / OTHELLO_SAE.replace("/", "__") / "eval.json"
    assert json.loads(evals.read_text())["store"] == res["store"]
    shutil.rmtree(Path(world["run"]) / "evals")


def test_the_sae_records_the_digest_of_its_model(world):
    from interp.models import load
    from interp.provenance import model_digest
    from interp.sae.io import load_sae

    sae = load_sae(world["sae"])
    assert sae.cfg.metadata["model_digest"] == model_digest(load("othello"))


# ---------------------------------------------------------------- resume
def _checkpoint(world, out: Path, steps: int = 6, stop: int = 2, **kw) -> None:
    from interp.sae.trainer import TrainConfig, train_sae

    cfg = TrainConfig(store=world["run"], out=str(out), d_sae=64, k=4, batch_size=256,
                      eval_rows=256, steps=steps, checkpoint_every=1, stop_after=stop,
                      log_every=1, **kw)
    train_sae(cfg, progress=False)


@pytest.mark.parametrize("flags,what", [
    (["--batch-size", "128"], "batch_size 256 -> 128"),
    (["--seed", "3"], "seed 0 -> 3"),
    (["--steps", "9"], "steps 6 -> 9"),
    (["--option", "aux_alpha=0.5"], "sae_options"),
    (["--store", "{pyrun}"], "data"),
])
def test_resume_refuses_other_settings(world, tmp_path, flags, what):
    out = tmp_path / "r"
    _checkpoint(world, out)
    base = {"--store": world["run"], "--latents": "64", "--k": "4", "--batch-size": "256",
            "--eval-rows": "256", "--steps": "6", "--out": str(out)}
    for i in range(0, len(flags), 2):
        base[flags[i]] = flags[i + 1].format(**world)
    argv = ["train", *[x for kv in base.items() for x in kv]]
    refuse(argv, "other settings", what, watch=[out])


def test_resume_truncates_the_log_to_the_checkpoint(world, tmp_path):
    out = tmp_path / "r"
    _checkpoint(world, out, stop=3)
    log = out / "train_log.jsonl"
    log.write_text(log.read_text() + json.dumps({"step": 5, "loss": 1.0}) + "\n"
                   + '{"step": 6, "lo')  # steps a killed run logged after its checkpoint
    _ok(["train", "--store", world["run"], "--out", out, *TINY, "--steps", "6"])
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()
             if "eval" not in json.loads(x)]
    assert steps == [1, 2, 3, 6]  # the old 5 is gone; the resumed run logs its last step


# ---------------------------------------------------------------- processes
def _interp(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "interp.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **kw)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120,
              poll: float = 0.2) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} did not appear"
        time.sleep(poll)


def _train_args(world, out, steps, every=2):
    return ["train", "--store", world["run"], "--out", out, *TINY, "--steps", str(steps),
            "--checkpoint-every", str(every)]


def test_a_second_writer_is_refused_and_the_first_is_unharmed(world, tmp_path):
    out = tmp_path / "two"
    first = _interp(*_train_args(world, out, 400))
    try:
        _wait_for(out / "checkpoint.pt", first)
        line = refuse(_train_args(world, out, 400), "being written by process "
                      f"{first.pid}", watch=[], allow_new=True)
        assert str(out) in line
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    last = err.strip().splitlines()[-1]  # after the progress bar's lines
    assert "Traceback" not in err
    assert last.startswith("interrupted: training stopped at step"), err
    assert last.endswith("rerun the same command to resume"), err
    assert (out / "checkpoint.pt").exists() and not (out / ".interp.lock").exists()


def test_kill_and_resume_train_equals_an_uninterrupted_run(world, tmp_path):
    from safetensors.torch import load_file

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = lambda out: _train_args(world, out, 2000, every=20)  # noqa: E731
    _ok(args(whole))
    proc = _interp(*args(killed))
    _wait_for(killed / "checkpoint.pt", proc, poll=0.01)
    proc.kill()  # at once: the run is a few seconds long
    proc.communicate()
    assert not (killed / "sae_weights.safetensors").exists(), "the run ended before the kill"
    _ok(args(killed))
    a = load_file(str(whole / "sae_weights.safetensors"))
    b = load_file(str(killed / "sae_weights.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps_logged = [json.loads(x)["step"] for x in (killed / "train_log.jsonl").read_text()
                    .splitlines() if "eval" not in json.loads(x)]
    assert steps_logged == sorted(set(steps_logged))  # no step twice


def test_ctrl_c_in_a_harvest_is_one_line_and_resumes(tmp_path):
    out = tmp_path / "h"
    args = ["harvest", "--model", "othello", "--hook", HOOK, "--tokens", "400000",
            "--shard-rows", "2048", "--out", out]
    proc = _interp(*args)
    manifest = out / "activations" / "manifest.json"
    _wait_for(manifest, proc)
    while not json.loads(manifest.read_text())["shards"]:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    last = err.strip().replace("\r", "\n").splitlines()[-1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert last.startswith("interrupted: the harvest in") and last.endswith("to resume"), last
    assert not (out / ".interp.lock").exists()
    assert not json.loads(manifest.read_text())["complete"]
