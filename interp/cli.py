"""The ``interp`` command: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from interp.errors import InterpError, UsageError


def _cmd_harvest(args: argparse.Namespace) -> None:
    from interp.activations.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(model=args.model, hooks=args.hook, n_tokens=args.tokens, out=args.out,
                        source=args.source, n_ctx=args.n_ctx, batch_size=args.batch_size,
                        dtype=args.dtype, skip_bos=not args.keep_bos,
                        shard_rows=args.shard_rows, device=args.device)
    t0 = time.time()
    store = harvest(cfg)  # under torchrun: every rank its share, one store
    dt = time.time() - t0
    if int(os.environ.get("RANK", "0")):
        return
    s = store.summary()
    print(f"harvested {s['n_rows']:,} tokens x {len(s['hooks'])} hook(s) in {dt:.1f}s "
          f"({s['n_rows'] / dt:,.0f} tok/s) -> {store.path}")
    for h in s["hooks"]:
        print(f"  {h}: d_in={s['d_in'][h]} dtype={s['dtype']}")


def _harvest_parser(sub) -> None:
    p = sub.add_parser("harvest", help="capture activations at hook points into a store",
                       description="Run a model over a token source and write the "
                       "activations at the given hook points to runs/NAME/activations.")
    p.add_argument("--model", required=True, help="othello, pycode, a TransformerLens "
                   "pretrained name, or a local model folder")
    p.add_argument("--hook", action="append", required=True,
                   help="hook point, e.g. blocks.3.hook_resid_post (repeat for several)")
    p.add_argument("--tokens", type=int, required=True, help="number of tokens to harvest")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--source", default=None, help="othello | pycode[:train] | hf:DATASET[:SPLIT]"
                   " | path to .txt/.jsonl/.parquet (default: the embedded model's corpus)")
    p.add_argument("--n-ctx", type=int, default=None, help="context length (default: the "
                   "model's, at most 128)")
    p.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--keep-bos", action="store_true", help="also store position 0 (BOS)")
    p.add_argument("--shard-rows", type=int, default=2**18, help="rows per shard file")
    p.add_argument("--device", default="cpu")
    _add_force(p)
    p.set_defaults(func=_cmd_harvest)


def _cmd_info(args: argparse.Namespace) -> None:
    from interp.activations.store import open_store

    store = open_store(args.path)
    print(json.dumps(store.summary(), indent=2))


def _info_parser(sub) -> None:
    p = sub.add_parser("info", help="summarise an activation store or run folder",
                       description="Print the manifest summary of a store (validating its files).")
    p.add_argument("path", help="runs/NAME or a store folder")
    p.set_defaults(func=_cmd_info)


def _cmd_model(args: argparse.Namespace) -> None:
    if args.action == "list":
        from interp.models import embedded_models
        from interp.models.zoo import ZOO, model_dir

        for name in embedded_models():
            spec = ZOO[name]
            shipped = (model_dir(name) / "model.safetensors").exists()
            print(f"{name:8s} {spec.n_layers} layers, d_model={spec.d_model}, "
                  f"n_ctx={spec.n_ctx}, vocab={spec.d_vocab} "
                  f"[{'shipped' if shipped else 'not built'}]  {spec.description}")
        print("Any TransformerLens pretrained name (gpt2, pythia-70m, ...) or a local model "
              "folder also works where its weights are available.")
        return
    if not args.name:
        raise UsageError(f"interp model {args.action}: name a model (othello or pycode)")
    if args.action == "train":
        from interp.models.train import train_embedded

        out = train_embedded(args.name, steps=args.steps, threads=args.threads)
        print(f"saved {out}")
    elif args.action == "eval":
        from interp.models.evaluate import evaluate_embedded

        res = evaluate_embedded(args.name, write=args.write, quick=args.quick)
        short = {k: v for k, v in res.items() if not isinstance(v, list)}
        print(json.dumps(short, indent=2))
    elif args.action == "hooks":
        from interp.models import load

        for h in load(args.name).hook_dict:
            print(h)


def _model_parser(sub) -> None:
    p = sub.add_parser("model", help="list, train, evaluate the embedded models",
                       description="list: the embedded models; train NAME: reproduce one from "
                       "scratch into saes/models/NAME; eval NAME: measure its figures; "
                       "hooks NAME: list its hook points.")
    p.add_argument("action", choices=["list", "train", "eval", "hooks"])
    p.add_argument("name", nargs="?", help="othello or pycode (any loadable model for hooks)")
    p.add_argument("--steps", type=int, default=None, help="train: override the recipe's steps")
    p.add_argument("--threads", type=int, default=None, help="train: torch threads")
    p.add_argument("--write", action="store_true", help="eval: write metrics.json")
    p.add_argument("--quick", action="store_true", help="eval: a small, fast sample")
    p.set_defaults(func=_cmd_model)


def _cmd_demo(args: argparse.Namespace) -> None:
    from interp.demo import run_demo

    run_demo(out=args.out, n_tokens=args.tokens, feature_tokens=args.feature_tokens)
    if not args.no_app:
        from interp.app import serve

        print(f"[9/9] starting the app on {args.out} (Ctrl-C stops it)")
        raise SystemExit(serve(args.out, args.port))


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded default",
                       description="Harvest activations from the embedded othello model, "
                       "probe them, train and evaluate a TopK SAE, build its feature store, "
                       "then start the app on the run (its URL is printed; --no-app skips it).")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--tokens", type=int, default=200_000, help="tokens to harvest")
    p.add_argument("--feature-tokens", type=int, default=30_000,
                   help="tokens streamed into the demo SAE's feature store (0: none)")
    p.add_argument("--no-app", action="store_true",
                   help="do not start the app at the end (for scripted use)")
    p.add_argument("--port", type=int, default=8501, help="port of the app at the end")
    p.set_defaults(func=_cmd_demo)


def _train_config(args: argparse.Namespace):
    """The TrainConfig of ``interp train``, with ``--option`` values typed by the SAE
    config's fields (checked before anything is written)."""
    from interp.config import typed_options
    from interp.sae.core import SAEConfig
    from interp.sae.trainer import FLAG_OF_SAE_FIELD, TrainConfig, objective_and_arch

    objective, arch = objective_and_arch(args.arch, args.e2e_act)  # --arch e2e: an objective
    if args.store and args.model and objective == "store":  # which rows would it train on?
        raise UsageError("give --store (a harvested store) or --model with --tokens (its "
                         "forward passes, no store), not both; --model with --store is for "
                         "--arch e2e / e2e+ds")
    for flag in ("latents", "k", "batch_size", "steps", "checkpoint_every"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.eval_rows < 0:
        raise UsageError(f"--eval-rows must be 0 or more, got {args.eval_rows}")
    options = typed_options(args.option, SAEConfig, FLAG_OF_SAE_FIELD)
    return TrainConfig(store=args.store or "", out=args.out, hook=args.hook, arch=arch,
                      hook_out=args.hook_out, objective=objective,
                      clt_layers=args.clt_layers,
                      d_sae=args.latents, k=args.k, sae_options=options,
                      batch_size=args.batch_size, steps=args.steps, lr=args.lr,
                      eval_rows=args.eval_rows, seed=args.seed,
                      checkpoint_every=args.checkpoint_every,
                      wandb_project=args.wandb_project, model=args.model,
                      source=args.source, n_ctx=args.n_ctx, tokens=args.tokens,
                      ds_coeff=args.ds_coeff, encoder_dtype=args.encoder_dtype,
                      compile=args.compile, device=args.device,
                      **({"eval_contexts": args.eval_contexts} if args.eval_contexts else {})
                      ).validate()


def _cmd_train(args: argparse.Namespace) -> None:
    from interp.sae.trainer import train_sae

    res = train_sae(args.train_config)
    if res:
        ev = res["eval"]
        print(f"saved {args.out}: FVU {ev['fvu']:.4f}, L0 {ev['l0']:.1f}, dead "
              f"{100 * ev['dead_fraction']:.1f}%, dense {100 * ev['dense_fraction']:.1f}% "
              f"on {ev['n_tokens']:,} held-out tokens")
        for layer in ev.get("layers", []):  # a cross-layer transcoder: each MLP output
            print(f"  layer {layer['layer']}: FVU {layer['fvu']:.4f}, L0 {layer['l0']:.1f}, "
                  f"dead {100 * layer['dead_fraction']:.1f}%")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train an SAE on an activation store",
                       description="Train one SAE (relu, jumprelu, ksparse, topk, batchtopk, "
                       "matryoshka, hierarchical_topk) on a harvested store, or without one "
                       "from --model's forward passes (--tokens); resumes from "
                       "OUT/checkpoint.pt when it exists. Under torchrun it trains data-"
                       "parallel over the processes.")
    p.add_argument("--store", default=None, help="run folder or store (from interp harvest)")
    p.add_argument("--out", required=True, help="the SAE's folder, e.g. runs/NAME/saes/topk")
    p.add_argument("--hook", default=None, help="hook in the store (when it holds several)")
    p.add_argument("--hook-out", default=None,
                   help="train a transcoder: read --hook, reconstruct this hook of the same "
                   "store, e.g. --hook blocks.1.ln2.hook_normalized --hook-out "
                   "blocks.1.hook_mlp_out (--option skip=true: a skip transcoder)")
    p.add_argument("--clt-layers", type=int_list, default=None, metavar="L,L,...",
                   help="train a cross-layer transcoder over these layers' MLPs: each "
                   "layer's encoder reads blocks.L.ln2.hook_normalized and writes "
                   "blocks.L'.hook_mlp_out for every L' >= L (the store holds them all); "
                   "--latents and --k are per layer")
    p.add_argument("--arch", default="topk", help="relu, jumprelu, ksparse, topk (default), "
                   "batchtopk, matryoshka, hierarchical_topk; or e2e / e2e+ds, the end-to-end "
                   "objectives: an --e2e-act SAE trained from tokens through --model")
    p.add_argument("--latents", type=int, default=4096, help="dictionary size d_sae")
    p.add_argument("--k", type=int, default=32, help="active latents per token (top-k family)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=None, help="default: one epoch")
    p.add_argument("--lr", type=float, default=None, help="default 2e-4/sqrt(latents/2^14)")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda (under torchrun each process takes its local GPU)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the SAE's loss (worth it on a GPU, where the sparse "
                   "ops run as torch code; compiling takes a minute)")
    p.add_argument("--encoder-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="top-k family: dtype of the encoder product x @ W_enc (bfloat16 is "
                   "about 2x faster where the CPU or GPU has it; loss and gradients stay fp32)")
    p.add_argument("--eval-rows", type=int, default=8192, help="held-out rows: at the store's "
                   "end, or (no --store) from contexts before the training ones")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="any other SAE setting, e.g. prefixes=[256,1024,4096], l1_coeff=5, "
                   "tied=true, k_start=128, k_anneal_steps=500 (repeat for several)")
    p.add_argument("--wandb-project", default=None, help="also log to W&B (when installed)")
    p.add_argument("--model", default=None, help="e2e: the model to splice the SAE into; "
                   "without --store: train from this model's forward passes (with --tokens), "
                   "for models too large to harvest")
    p.add_argument("--tokens", type=int, default=None, help="without --store: training tokens "
                   "streamed from --model (default steps: one pass over them)")
    p.add_argument("--source", default=None, help="e2e or no --store: token source (default: "
                   "the model's)")
    p.add_argument("--n-ctx", type=int, default=None, help="e2e or no --store: context length "
                   "(default: the model's, at most 128)")
    p.add_argument("--e2e-act", default="topk", choices=["topk", "relu"],
                   help="e2e: the spliced SAE's activation (relu adds an L1 term)")
    p.add_argument("--ds-coeff", type=float, default=1.0,
                   help="e2e+ds: weight of the downstream reconstruction terms")
    p.add_argument("--eval-contexts", type=int, default=None,
                   help="e2e: held-out contexts for evaluation (default 64)")
    _add_force(p)
    p.set_defaults(func=_cmd_train)


def _eval_out(args: argparse.Namespace):
    """Where ``interp eval`` writes; a shipped SAE's own files are never rewritten."""
    from interp.outputs import eval_folder

    for flag in ("tokens", "contexts", "games"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    from interp.sae.replacement import is_replacement

    if len(args.sae) > 1 and not args.out:
        raise UsageError("several dictionaries are evaluated as one replacement model: give "
                         "--out FOLDER for its eval.json")
    if is_replacement(args.sae) and (args.k is not None or args.store):
        raise UsageError("a replacement model (several transcoders, a set or a CLT) is "
                         "evaluated on the model's own activations: --k and --store take one "
                         "SAE or transcoder")
    out = eval_folder(args.sae[0], args.out, args.store)
    if out is None:
        kind = "a SAELens release" if args.sae[0].startswith("saelens:") else "a shipped SAE"
        raise UsageError(f"{args.sae[0]} is {kind}, whose files are not rewritten: give "
                         f"--out FOLDER for its evaluation (or --store RUN to write "
                         f"RUN/evals/)")
    return out


def _print_replacement(res: dict) -> None:
    n = len(res["names"])
    print(f"replacement model of {res['model']}: {n} dictionar{'y' if n == 1 else 'ies'} "
          f"replace "
          f"{', '.join(res['replaces'])}")
    for d in res["dictionaries"]:
        print(f"  {d['name']}: FVU {d['fvu']:.4f}, L0 {d['l0']:.1f}, dead "
              f"{100 * d['dead_fraction']:.1f}%, dense {100 * d['dense_fraction']:.1f}%")
        for layer in d.get("layers", []):
            print(f"    layer {layer['layer']}: FVU {layer['fvu']:.4f}, L0 {layer['l0']:.1f}")
    print(f"CE-loss recovered {res['ce_loss_recovered']:.4f} (CE {res['ce_clean']:.4f} -> "
          f"{res['ce_replaced']:.4f}; all replaced MLPs zero-ablated {res['ce_ablated']:.4f}), "
          f"KL {res['kl']:.4f}, top-1 agreement {100 * res['top1_agreement']:.1f}%, total L0 "
          f"{res['total_l0']:.1f} on {res['n_tokens']:,} tokens")
    if "legal_moves" in res:
        lm = res["legal_moves"]
        print(f"legal-move top-1: replaced {100 * lm['replaced']:.2f}%, original "
              f"{100 * lm['original']:.2f}% ({lm['n_games']} games)")


def _cmd_eval(args: argparse.Namespace) -> None:
    from interp.sae.evaluate import evaluate_sae

    from interp.sae.replacement import evaluate_replacement, is_replacement

    if is_replacement(args.sae):
        _print_replacement(evaluate_replacement(args.sae, model=args.model, source=args.source,
                                                contexts=args.contexts, out=args.eval_out,
                                                games=args.games))
        return
    (args.sae,) = args.sae
    res = evaluate_sae(args.sae, store=args.store, model=args.model, source=args.source,
                       tokens=args.tokens, contexts=args.contexts, k=args.k,
                       out=args.eval_out)
    short = {k: v for k, v in res.items() if k not in ("spliced", "reconstruction_by_k")}
    print(json.dumps(short, indent=2))
    if "reconstruction_by_k" in res:
        print("FVU by k': " + ", ".join(f"{k}: {v['fvu']:.4f}"
                                        for k, v in res["reconstruction_by_k"].items()))
    print(f"wrote {args.eval_out}/eval.json and its figures")


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a saved SAE",
                       description="Reconstruction metrics on a store (FVU, MSE, L0, dead and "
                       "dense latents, density histogram; HierarchicalTopK at every k') and, "
                       "with the model, CE-loss recovered and KL with the SAE spliced in. "
                       "Writes eval.json (with the store, hook and model it was computed "
                       "on) and plotly figures into the SAE's folder, or --out; a shipped "
                       "SAE's files are never rewritten. The SAE is checked against the "
                       "store and the model first.")
    p.add_argument("sae", nargs="+", help="SAE folder (cfg.json + sae_weights.safetensors), "
                   "a shipped SAE's name (see `interp saes`) or saelens:RELEASE/SAE_ID (a "
                   "release of SAELens's pretrained directory); several transcoders, a "
                   "folder of them or a cross-layer transcoder: the replacement model (every "
                   "MLP they cover replaced, errors dropped): CE-loss recovered, KL, top-1 "
                   "agreement, per-layer FVU and L0; othello: legal-move accuracy")
    p.add_argument("--store", default=None, help="activation store for the reconstruction "
                   "metrics (its last --tokens rows)")
    p.add_argument("--model", default=None, help="model for the spliced metrics (default: "
                   "the SAE's own)")
    p.add_argument("--source", default=None, help="token source for the spliced metrics")
    p.add_argument("--tokens", type=int, default=50_000)
    p.add_argument("--contexts", type=int, default=64)
    p.add_argument("--games", type=int, default=500, help="othello replacement model: games "
                   "for the legal-move accuracy")
    p.add_argument("--k", type=int, default=None, help="evaluate a top-k SAE at k' <= k")
    p.add_argument("--out", default=None, help="folder for eval.json and the figures "
                   "(default: the SAE's folder; for a shipped SAE, RUN/evals/NAME of the run "
                   "given as --store)")
    _add_force(p)
    p.set_defaults(func=_cmd_eval)


def _evals_targets(args: argparse.Namespace) -> list:
    """Every dictionary resolved, checked and given its output folder before any work:
    the evaluations that apply to its model (a named one that does not is refused; a
    default one is skipped with its reason)."""
    from interp.evals.suite import DEFAULT_EVALS, EVALS, check_options, make_target
    from interp.outputs import eval_folder

    which = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else None
    for w in which or []:
        if w not in EVALS:
            raise UsageError(f"--only {w!r}: valid evaluations are {', '.join(EVALS)}")
    chosen = which or list(DEFAULT_EVALS) + (["llm"] if args.llm_url else [])
    check_options(chosen, args.llm_url, args.llm_model)
    if len(args.sae) > 1 and args.out:
        outs = [Path(args.out) / s.rstrip("/").replace("/", "__") for s in args.sae]
    else:
        outs = [eval_folder(s, args.out, args.run) for s in args.sae]
    return [make_target(spec, out, chosen, bool(which), args.run)
            for spec, out in zip(args.sae, outs)]


def _cmd_evals(args: argparse.Namespace) -> None:
    from contextlib import ExitStack

    from interp.evals.suite import EVALS_FILE, comparison_rows, owns_evals_file, run_target
    from interp.models import load
    from interp.outputs import Plan, claim
    from interp.provenance import check_dictionary

    targets = _evals_targets(args)
    options = {"llm": {"llm_url": args.llm_url, "llm_model": args.llm_model,
                       "api_key": args.api_key, "n_latents": args.llm_latents}}
    for name in ("probing", "absorption", "ground_truth", "llm"):
        options.setdefault(name, {})["seed"] = args.seed
    models: dict[str, object] = {}
    with ExitStack() as stack:  # every output checked and locked before any work
        for t in targets:
            path = t.out / EVALS_FILE
            stack.enter_context(claim(Plan(path, False, files={path: owns_evals_file}),
                                      force=args.force))
        docs = {}
        for t in targets:
            if t.model_name not in models:
                models[t.model_name] = load(t.model_name).requires_grad_(False)
            check_dictionary(t.sae, name=t.spec, model=models[t.model_name],
                             model_name=t.model_name)
            for w, why in t.skipped.items():
                print(f"{t.name}: {w} skipped: {why}")
            docs[t.name] = run_target(t, models[t.model_name], options)
            print(f"wrote {t.out / EVALS_FILE}")
    if len(docs) > 1:
        names = list(docs)
        print("\n| evaluation | metric | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for row in comparison_rows(docs):
            cells = [row.get(n) for n in names]
            print(f"| {row['evaluation']} | {row['metric']} | " + " | ".join(
                "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
                for v in cells) + " |")


def _evals_parser(sub) -> None:
    p = sub.add_parser("evals", help="evaluate dictionaries against ground truth (and an LLM)",
                       description="Sparse probing (SAEBench's and sae-probes' protocols), "
                       "feature absorption (pycode's first-letter task), ground-truth "
                       "matching of every latent (the embedded models' labels) and, with an "
                       "OpenAI-compatible endpoint, LLM explanations scored by detection and "
                       "fuzzing. Results go to evals.json beside the dictionary (a shipped "
                       "one: --out or --run RUN), one entry per evaluation, and the app's "
                       "Evals page compares dictionaries side by side.")
    p.add_argument("sae", nargs="+", help="dictionaries: folders, shipped names (see "
                   "`interp saes`), folder names in RUN/saes or saelens:RELEASE/SAE_ID; SAEs "
                   "or transcoders")
    p.add_argument("--only", default=None, help="comma-separated: probing, absorption, "
                   "ground_truth, llm (default: the first three, and llm with --llm-url)")
    p.add_argument("--run", default=None, help="a run folder: names in RUN/saes, and "
                   "RUN/evals/NAME for shipped dictionaries")
    p.add_argument("--out", default=None, help="folder for evals.json (several "
                   "dictionaries: OUT/NAME each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-url", default=None, help="an OpenAI-compatible endpoint, e.g. "
                   "http://localhost:8000/v1 (vLLM) or http://localhost:11434/v1 (Ollama)")
    p.add_argument("--llm-model", default=None, help="the model name the endpoint serves")
    p.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY, if set")
    p.add_argument("--llm-latents", type=int, default=50, help="latents explained and scored")
    _add_force(p)
    p.set_defaults(func=_cmd_evals)


def _feature_readout(spec: str):
    """``feature:SAE:LATENT`` -> a Readout of that latent."""
    from interp.circuits.discover import saes_for
    from interp.circuits.tasks import Readout

    _, _, rest = spec.partition(":")
    name, _, latent = rest.rpartition(":")
    if not name or not latent.isdigit():
        raise UsageError(f"--metric {spec!r}: use feature:SAE:LATENT, e.g. "
                         f"feature:othello/blocks.3.hook_resid_post/topk:123")
    (sae,) = saes_for([name]).values()
    return Readout.from_sae(sae, int(latent))


def _num(value: float | None) -> str:
    """A score to three decimals, or "-" where it is undefined (see the note beside it)."""
    return "-" if value is None else f"{value:.3f}"


def _cmd_circuit(args: argparse.Namespace) -> None:
    from interp.circuits.discover import CircuitConfig, discover, saes_for
    from interp.circuits.graph import figure, save_graph
    from interp.circuits.splice import SplicedModel
    from interp.circuits.tasks import BUILTIN, make_task
    from interp.models import load
    from interp.runs import run_saes

    names = list(args.sae or [])
    if args.run:
        names += run_saes(args.run, args.arch)
    if not names:
        raise UsageError("give --run RUN (its SAEs) or --sae NAME_OR_FOLDER")
    saes = saes_for(names)
    model_name = args.model or next(iter(saes.values())).cfg.metadata.get("model_name")
    if not model_name:
        raise UsageError("the SAEs do not record their model; give --model")
    if args.task in BUILTIN and BUILTIN[args.task][0] != model_name:
        raise UsageError(f"task {args.task} is for the {BUILTIN[args.task][0]} model, "
                         f"these SAEs are for {model_name}")
    model = load(model_name).requires_grad_(False)
    spliced = SplicedModel(model, saes)
    task = make_task(args.task, model, n=args.prompts,
                     metric="logit_diff" if args.metric.startswith("feature:") else args.metric)
    if args.metric.startswith("feature:"):
        task = task.use_readout(_feature_readout(args.metric))
    cfg = CircuitConfig(method=args.method, patch=args.patch, steps=args.steps,
                        node_threshold=args.nodes, max_nodes=args.max_nodes,
                        edge_threshold=args.edges, linear=args.linear, ablation=args.ablation,
                        sum_positions=args.sum_positions)
    res = discover(spliced, task, cfg)
    g, f = res["graph"], res["faithfulness"]
    out = save_graph(g, args.out)
    html = out.with_suffix(".html")
    figure(g, f"{task.name}: {len(res['nodes'])} nodes").write_html(html)
    print(f"{task.name} on {model_name} ({len(task)} prompts, hooks {', '.join(spliced.hooks)})")
    if task.readout is not None:
        print(f"metric: {task.readout.name}")
    print(f"circuit: {len(res['nodes'])} nodes, {g.number_of_edges()} edges "
          f"({args.method}, patch={args.patch}); faithfulness {_num(f['faithfulness'])}, "
          f"completeness {_num(f['completeness'])} ({f['ablation']} ablation; m full "
          f"{f['m_full']:.3f}, empty "
          f"{f['m_empty']:.3f}, circuit {f['m_circuit']:.3f}); {res['seconds']:.1f} s")
    if f.get("faithfulness_note"):
        print(f"note: {f['faithfulness_note']}")
    print(f"saved {out} and {html}")
    if args.validate:
        _validate_attribution(spliced, task, args)
    if args.curve:
        _faithfulness_curve(spliced, task, args, out)


def _validate_attribution(spliced, task, args: argparse.Namespace) -> None:
    """``circuit --validate N``: AtP and IG against exact patching of their top N nodes."""
    import torch

    from interp.circuits.attribution import (exact_node_effects, node_attribution, spearman,
                                             top_nodes)

    for method in ("atp", "ig"):
        scores = node_attribution(spliced, task, method=method, patch=args.patch,
                                  steps=args.steps)
        top = top_nodes(scores, args.validate)
        exact = exact_node_effects(spliced, task, [n for n, _ in top], patch=args.patch)
        est = torch.tensor([v for _, v in top], dtype=torch.float64)
        print(f"  {method}: Spearman with exact patching over its top {len(top)} nodes "
              f"{spearman(est, exact):.3f}")


def _faithfulness_curve(spliced, task, args: argparse.Namespace, out) -> None:
    """``circuit --curve 5,10,50``: faithfulness of the top-n nodes, printed and drawn."""
    from interp.circuits.attribution import node_attribution, top_nodes
    from interp.circuits.faithfulness import faithfulness_curve
    from interp.circuits.graph import faithfulness_figure

    scores = node_attribution(spliced, task, method=args.method, patch=args.patch,
                              steps=args.steps, sum_positions=args.sum_positions)
    ranked = [n for n, _ in top_nodes(scores, max(args.curve))]
    curve = faithfulness_curve(spliced, task, ranked, sorted(args.curve),
                               ablation=args.ablation)
    for c in curve:
        print(f"  top {c['nodes']:4d} nodes: faithfulness {_num(c['faithfulness'])}, "
              f"completeness {_num(c['completeness'])}")
    faithfulness_figure(curve).write_html(out.with_name(out.stem + "_faithfulness.html"))


def _circuit_parser(sub) -> None:
    p = sub.add_parser("circuit", help="discover a sparse feature circuit for a task",
                       description="Splice SAEs into their model, attribute the task metric to "
                       "latents and error terms (AtP or integrated gradients), connect the "
                       "retained nodes by edge attribution, prune, and check the circuit by "
                       "mean ablation (faithfulness, completeness). Writes the graph as JSON "
                       "and a plotly HTML figure.")
    p.add_argument("--run", default=None, help="use the SAEs in RUN/saes/ (one per hook)")
    p.add_argument("--arch", default=None, help="with --run: the SAE folder name to use")
    p.add_argument("--sae", action="append", default=None,
                   help="an SAE by registry name (see `interp saes`), folder or "
                   "saelens:RELEASE/SAE_ID; repeatable")
    p.add_argument("--model", default=None, help="default: the SAEs' model")
    p.add_argument("--task", required=True, help="othello-legal, othello-flipped, "
                   "pycode-bracket, pycode-indent, or a JSONL file of prompts")
    p.add_argument("--prompts", type=int, default=64, help="prompts of a built-in task")
    p.add_argument("--metric", default="logit_diff",
                   help="logit_diff, logprob, or feature:SAE:LATENT (that SAE latent's "
                   "activation at the last position; SAE a registry name or folder)")
    p.add_argument("--method", default="ig", choices=["atp", "ig"])
    p.add_argument("--patch", default="counterfactual", choices=["counterfactual", "zero",
                                                                  "mean"])
    p.add_argument("--steps", type=int, default=10, help="integrated-gradient steps")
    p.add_argument("--nodes", type=float, default=0.0, help="node threshold on |effect|")
    p.add_argument("--max-nodes", type=int, default=100)
    p.add_argument("--edges", type=float, default=0.0, help="edge threshold on |effect|")
    p.add_argument("--sum-positions", action="store_true",
                   help="nodes are latents summed over positions (default: one per position)")
    p.add_argument("--linear", action="store_true",
                   help="edges with attention patterns and LayerNorm scales frozen")
    p.add_argument("--curve", type=int_list, default=None,
                   help="also the faithfulness of the top-n nodes for these n, e.g. 5,10,50")
    p.add_argument("--ablation", default=None, choices=["counterfactual", "mean"],
                   help="faithfulness: what nodes outside the circuit are set to (default: "
                   "counterfactual when the task has counterfactual prompts, else mean)")
    p.add_argument("--validate", type=int, default=0, metavar="N",
                   help="also patch the top N nodes one by one (exact) and print the Spearman "
                   "correlation of the AtP and IG scores with it")
    p.add_argument("--out", default=None, help="the circuit JSON (default: "
                   "RUN/circuits/TASK.json with --run, else circuit.json)")
    _add_force(p)
    p.set_defaults(func=_cmd_circuit)


def _cmd_probe(args: argparse.Namespace) -> None:
    from interp.circuits.discover import saes_for
    from interp.runs import run_saes
    from interp.models import load
    from interp.probes.experiment import compare_sources, save, table

    saes = {}
    sources = list(args.source or [])
    if args.sweep:
        from interp.probes.experiment import equal_l0_saes

        swept, target, skipped = equal_l0_saes(args.sweep, args.l0, args.l0_tolerance)
        saes.update(swept)
        sources += [f"sae:{name}" for name in swept]
        print(f"SAEs under {args.sweep} at L0 {target:g} (+-{args.l0_tolerance:.0%}): "
              f"{', '.join(n.rsplit('/', 1)[1] for n in swept)}"
              + ("; skipped (L0): " + ", ".join(f"{n.rsplit('/', 1)[1]} ({v:.1f})"
                                                 for n, v in skipped) if skipped else ""))
    if not sources:
        raise UsageError("give --source (repeatable) or --sweep MODEL/HOOK")
    for spec in sources:
        kind, _, name = spec.partition(":")
        if kind != "sae" or name in saes:
            continue
        if args.run and not name.count("/"):
            folder = run_saes(args.run, name)[0]
            saes[name] = next(iter(saes_for([folder]).values()))
        else:
            saes[name] = next(iter(saes_for([name]).values()))
    model_name = _probe_model(args, saes)
    model = load(model_name)
    model.eval()
    from interp.provenance import check_dictionary

    for name, sae in saes.items():  # each SAE's hook is read from this model
        check_dictionary(sae, name=name.split("@")[0], model=model, model_name=model_name)
    res = compare_sources(model, args.task, sources, saes, ks=args.k, method=args.method,
                          n_contexts=args.contexts, max_examples=args.examples)
    print(table(res))
    out = save(res, args.out)
    print(f"saved {out} and {out.with_suffix('.html')}")


def _probe_model(args: argparse.Namespace, saes: dict) -> str:
    """--model; else a built-in task's (othello-..., pycode-...); else the run's model; else
    the model the SAEs record (each SAE is checked against the model chosen)."""
    from interp.runs import open_run

    builtin = args.task.split("-")[0]
    if args.model or builtin in ("othello", "pycode"):
        return args.model or builtin
    run_model = open_run(args.run)[1].get("model") if args.run else None
    if run_model:
        return run_model
    recorded = {s.cfg.metadata.get("model_name") for s in saes.values()} - {None}
    if len(recorded) == 1:
        return recorded.pop()
    raise UsageError("give --model (or --run) for a labelled-text file")


def _probe_parser(sub) -> None:
    p = sub.add_parser("probe", help="k-sparse probes on neurons or SAE latents",
                       description="Fit k-sparse logistic probes (select k units, then a "
                       "class-balanced logistic regression) for a property on each source, "
                       "on the same examples and split; print F1 / accuracy / AUROC per k "
                       "and write JSON plus an F1-vs-k plotly figure.")
    p.add_argument("--task", required=True, help="othello-{empty,mine,theirs,legal,flipped}-SQ, "
                   "pycode-{in-string,in-comment,keyword,in-brackets,indented,indent-N}, or a "
                   ".csv/.jsonl of labelled text (with --model)")
    p.add_argument("--sweep", default=None, metavar="MODEL/HOOK",
                   help="also compare every shipped SAE architecture at this hook at equal L0 "
                   "(e.g. othello/blocks.3.hook_resid_post)")
    p.add_argument("--l0", type=float, default=None,
                   help="--sweep: the L0 to compare at (default: the median there)")
    p.add_argument("--l0-tolerance", type=float, default=0.25,
                   help="--sweep: relative L0 tolerance")
    p.add_argument("--source", action="append", default=None,
                   help="hook:HOOK (its units, e.g. hook:blocks.1.mlp.hook_post) or sae:NAME "
                   "(a registry name, a folder, saelens:RELEASE/SAE_ID, or with --run a "
                   "folder name in RUN/saes); repeat to compare")
    p.add_argument("--run", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--k", type=int_list,
                   default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--method", default="f_stat",
                   choices=["mean_diff", "f_stat", "l1", "greedy", "exact"])
    p.add_argument("--contexts", type=int, default=256)
    p.add_argument("--examples", type=int, default=10_000)
    p.add_argument("--out", default=None, help="the result JSON (default: "
                   "RUN/probes/TASK.json with --run, else probe.json)")
    _add_force(p)
    p.set_defaults(func=_cmd_probe)


def _cmd_ablate(args: argparse.Namespace) -> None:
    from interp.ablations import intervene
    from interp.circuits.discover import saes_for
    from interp.circuits.splice import SplicedModel
    from interp.circuits.tasks import make_task
    from interp.models import load, token_strings

    saes = saes_for([args.sae])
    hook, sae = next(iter(saes.items()))
    model_name = args.model or sae.cfg.metadata.get("model_name")
    model = load(model_name)
    model.eval()
    spliced = SplicedModel(model, saes)
    task = None
    if args.task:
        task = make_task(args.task, model, n=args.prompts)
        tokens, reference = task.clean, task.patch
    elif args.prompt:
        tokens = model.to_tokens(args.prompt, prepend_bos=True)
        reference = None
    else:
        raise UsageError("give --task TASK or --prompt TEXT")
    latents = args.latents
    if args.alpha is not None and args.clamp is not None:
        raise UsageError("steer with --alpha or with --clamp, not both")
    mode, value = ("alpha", args.alpha) if args.alpha is not None else \
        ("clamp", args.clamp) if args.clamp is not None else (args.mode, None)
    rep = intervene(spliced, hook, tokens, latents, mode, value, reference=reference, task=task)
    what = {"alpha": f"steered latent {latents[0]} by alpha={value}",
            "clamp": f"steered latent {latents[0]} clamped to {value}"}.get(
        mode, f"{mode}-ablated latents {latents}")
    print(f"{what} at {hook} on {tokens.shape[0]} prompt(s) of {tokens.shape[1]} tokens")
    print(f"next-token loss {rep.loss_clean:.4f} -> {rep.loss_after:.4f} "
          f"({rep.loss_change:+.4f})")
    if task is not None:
        print(f"{task.name} metric {rep.metric_clean:.4f} -> {rep.metric_after:.4f} "
              f"({rep.metric_change:+.4f})")
    names = lambda pairs: ", ".join(f"{t!r} {d:+.3f}" for t, d in zip(  # noqa: E731
        token_strings(model_name, [i for i, _ in pairs]), [d for _, d in pairs]))
    print(f"last position, probability up:   {names(rep.top_up[:args.top])}")
    print(f"last position, probability down: {names(rep.top_down[:args.top])}")


def _ablate_parser(sub) -> None:
    p = sub.add_parser("ablate", help="ablate or steer SAE latents and measure the effect",
                       description="Ablate SAE latents (zero, mean or resample) or steer one "
                       "(add alpha times its decoder direction, or clamp it) on a task's "
                       "prompts or on a prompt; print the change of the next-token loss, of "
                       "the task metric, and the tokens whose probability moves most.")
    p.add_argument("--sae", required=True, help="registry name, SAE folder or "
                   "saelens:RELEASE/SAE_ID")
    p.add_argument("--latents", required=True, type=int_list,
                   help="comma-separated latent ids, e.g. 12,40")
    p.add_argument("--mode", default="zero", choices=["zero", "mean", "resample"])
    p.add_argument("--alpha", type=float, default=None, help="steer: add alpha * W_dec[latent]")
    p.add_argument("--clamp", type=float, default=None, help="steer: set the latent to this")
    p.add_argument("--task", default=None, help="a circuit task (its prompts and metric)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--prompt", default=None, help="or one text prompt")
    p.add_argument("--model", default=None)
    p.add_argument("--top", type=int, default=5)
    p.set_defaults(func=_cmd_ablate)


def _cmd_features(args: argparse.Namespace) -> None:
    from interp.features import FeatureConfig, FeatureStore, build_for_run
    from interp.features.build import parse_window

    cfg = FeatureConfig(n_tokens=args.tokens, top_n=args.top, window=parse_window(args.window),
                        batch_size=args.batch, quantile_bins=args.quantile_bins,
                        samples_per_bin=args.samples, top_tokens=args.top_tokens,
                        n_ctx=args.n_ctx, seed=args.seed, device=args.device)
    t0 = time.time()
    out = build_for_run(args.run, args.sae, cfg, out=args.out, source=args.source)
    with FeatureStore(out) as fs:
        s = fs.summary()
    dt = time.time() - t0
    alive = s["d_sae"] - s["dead"]
    stream, build = float(s["meta"]["stream_seconds"]), float(s["meta"]["build_seconds"])
    # the stream's own rate apart: loading the model dominates a small build
    print(f"{s['n_tokens']:,} tokens, {s['d_sae']:,} latents ({alive:,} fired, {s['dead']:,} "
          f"never) in {dt:.1f} s: loading {dt - build:.1f} s, streaming {stream:.1f} s "
          f"({s['n_tokens'] / stream:,.0f} tok/s), finishing {build - stream:.1f} s")
    print(f"feature store: {out}")
    return out


def _features_parser(sub) -> None:
    p = sub.add_parser("features", help="build the feature store of an SAE",
                       description="Stream tokens of the run's source through its model and "
                       "the SAE, and record for every latent: top activating contexts (a "
                       "token window with the latent's activation at each token), samples "
                       "from each interval of its max activation, an activation histogram, "
                       "firing density, mean and max, logit effects (decoder row through "
                       "the unembedding) and the tokens it fires on; written to one DuckDB "
                       "file (default RUN/features/<sae>.duckdb). Query it with "
                       "interp.features.FeatureStore.")
    p.add_argument("--run", default=None, help="run folder (its model and token source); "
                   "optional for a shipped SAE with --out")
    p.add_argument("--sae", required=True, help="SAE folder, shipped SAE name (see `interp "
                   "saes`), a folder name under RUN/saes/, or saelens:RELEASE/SAE_ID")
    p.add_argument("--tokens", type=int, required=True, help="tokens to stream")
    p.add_argument("--top", type=int, default=20, help="top activating examples per latent")
    p.add_argument("--window", default="12,4", help="tokens shown before,after the "
                   "activating token (default 12,4)")
    p.add_argument("--batch", type=int, default=64, help="contexts per forward pass")
    p.add_argument("--quantile-bins", type=int, default=10,
                   help="intervals of the max activation to sample from")
    p.add_argument("--samples", type=int, default=3, help="samples kept per interval")
    p.add_argument("--top-tokens", type=int, default=20,
                   help="per latent: tokens it fires on most, and logit effects kept")
    p.add_argument("--source", default=None, help="token source (default: the run's)")
    p.add_argument("--n-ctx", type=int, default=None, help="context length (default: the "
                   "run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the interval sampling")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="the .duckdb file (default "
                   "RUN/features/<sae>.duckdb)")
    _add_force(p)
    p.set_defaults(func=_cmd_features)


def _cmd_export_tracer(args: argparse.Namespace) -> str:
    from interp.sae.tracer_export import CONFIG_FILE, export_circuit_tracer

    out = export_circuit_tracer(args.sae, args.out, model_name=args.model)
    print(f"wrote {out} in circuit-tracer's format (see {out / CONFIG_FILE}); load it with "
          f"circuit_tracer.utils.caching.load_transcoders_from_cache({out.name!r}, "
          f"cache_dir={str(out.resolve().parent)!r}, dtype=torch.float32)")
    return str(out)


def _export_tracer_parser(sub) -> None:
    p = sub.add_parser("export-tracer", help="export transcoders in circuit-tracer's format",
                       description="Write per-layer transcoders (one for every layer of the "
                       "model, one width; relu, jumprelu, batchtopk or matryoshka: "
                       "circuit-tracer has no top-k) or one cross-layer transcoder as a "
                       "folder circuit-tracer loads: config.yaml and layer_L.safetensors "
                       "(a CLT: W_enc_L / W_dec_L.safetensors).")
    p.add_argument("sae", nargs="+", help="transcoder folders, shipped names or "
                   "saelens:RELEASE/SAE_ID, one per layer (or one cross-layer transcoder "
                   "folder)")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--model", default=None, help="the model (default: the one the "
                   "transcoders record)")
    _add_force(p)
    p.set_defaults(func=_cmd_export_tracer)


def _cmd_graph(args: argparse.Namespace) -> None:
    from interp.graphs.trace import trace

    last = [0.0]

    def progress(done: int, total: int) -> None:  # a line every 10% of the feature rows
        if total and (done == total or done / total >= last[0] + 0.1):
            last[0] = done / total
            print(f"  rows: {done:,} / {total:,} features", flush=True)

    doc, _ = trace(args.model, args.transcoders, args.prompt, args.target,
                   max_feature_nodes=args.max_feature_nodes or None,
                   batch_size=args.batch_size, node_threshold=args.node_threshold,
                   edge_threshold=args.edge_threshold, max_features=args.max_features,
                   validate_top=args.validate, out=args.out, tracer_out=args.tracer_json,
                   progress=progress)
    c, s = doc["counts"], doc["scores"]
    print(f"{doc['model']}: {len(doc['tokens'])} tokens, {c['active_features']:,} active "
          f"features ({c['attributed_features']:,} attributed) in {doc['seconds']:.2f} s")
    for t in doc["targets"]:
        print(f"  target {t['label']}: value {t['value']:.4f}, weight {t['weight']:.3f}")
    print(f"replacement score {s['replacement']:.3f}, completeness {s['completeness']:.3f}")
    print(f"pruned: {c['kept_features']:,} features, {c['kept_nodes']:,} nodes, "
          f"{c['kept_edges']:,} edges (node threshold {args.node_threshold}, edge threshold "
          f"{args.edge_threshold})")
    for v in doc["validation"]:
        print(f"intervention check ({v['mode']}, attention {v['attention']}, "
              f"{v['n_features']} features ablated): Pearson {v['pearson']:.4f} over "
              f"{v['n_values']:,} predicted vs measured changes")
    out = Path(args.out)
    print(f"saved {out} and {out.with_suffix('.html')}"
          + (f"; circuit-tracer JSON {args.tracer_json}" if args.tracer_json else ""))


def _graph_parser(sub) -> None:
    from interp.graphs.trace import TARGET_FORMS

    p = sub.add_parser("graph", help="attribution graph of one prompt over transcoders",
                       description="Trace one prompt through a replacement model (per-layer "
                       "or cross-layer transcoders for every MLP, optionally attention-output "
                       "SAEs) with attention patterns and LayerNorm scales frozen: every edge "
                       "is an exact direct effect. Prune by influence, score, save our JSON "
                       "(and circuit-tracer's with --tracer-json) and a figure.")
    p.add_argument("--transcoders", nargs="+", required=True,
                   help="shipped names (othello/plt, othello/clt), folders, set folders "
                   "or saelens:RELEASE/SAE_ID; "
                   "add attention SAEs (othello/attn) to replace attention outputs too")
    p.add_argument("--prompt", required=True, help="othello: moves (f5 d6 c3); else text")
    p.add_argument("--target", action="append", default=None,
                   help=f"what to trace from, repeatable: {TARGET_FORMS} (default: logits)")
    p.add_argument("--out", required=True, help="the graph JSON to write (a .html beside)")
    p.add_argument("--model", default=None, help="default: the one the dictionaries record")
    p.add_argument("--max-feature-nodes", type=int, default=8192,
                   help="attribute at most this many features, the most influential "
                   "first (0: all)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per backward pass")
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument("--max-features", type=int, default=None,
                   help="keep at most this many feature nodes when pruning")
    p.add_argument("--validate", type=int, default=0, metavar="N",
                   help="check the N most influential features by intervention")
    p.add_argument("--tracer-json", default=None,
                   help="also write circuit-tracer's graph JSON (its frontend, Neuronpedia)")
    _add_force(p)
    p.set_defaults(func=_cmd_graph)


def _cmd_saes(args: argparse.Namespace) -> None:
    from interp.sae.release import entry_architecture, registry

    reg = registry()
    if not reg:
        print("no shipped SAEs registered yet: build them with `make saes`")
        return
    fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
    # the number of active latents is a setting of the top-k family only
    k_of = lambda e: e["k"] if entry_architecture(e).uses_k else "-"  # noqa: E731
    if args.markdown:  # the README's table
        print("| name | latents | k | FVU | L0 | dead % | CE-loss recovered | KL (nats/token) |")
        print("|---|---|---|---|---|---|---|---|")
        for name, e in reg.items():
            k = k_of(e)
            dead = e.get("dead_fraction")
            print(f"| `{name}` | {e['d_sae']} | {k} | {fmt(e.get('fvu'), '.3f')} | "
                  f"{fmt(e.get('l0'), '.1f')} | {fmt(None if dead is None else 100 * dead, '.1f')} "
                  f"| {fmt(e.get('ce_loss_recovered'), '.3f')} | {fmt(e.get('kl'), '.3f')} |")
        return
    print(f"{'name':52s} {'d_sae':>6s} {'k':>3s} {'FVU':>7s} {'L0':>6s} {'CE rec.':>7s}")
    for name, e in reg.items():
        k = k_of(e)
        print(f"{name:52s} {e['d_sae']:6d} {k:>3} {fmt(e.get('fvu'), '7.4f')} "
              f"{fmt(e.get('l0'), '6.1f')} {fmt(e.get('ce_loss_recovered'), '7.3f')}")
    print("load one with interp.sae.release.load_pretrained(NAME), or its folder with "
          "sae_lens.SAE.load_from_disk")


def _saes_parser(sub) -> None:
    p = sub.add_parser("saes", help="list the SAEs shipped in saes/",
                       description="List the registry of SAEs this project trained on its "
                       "embedded models (saes/registry.json) with their headline metrics.")
    p.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    p.set_defaults(func=_cmd_saes)


def _cmd_app(args: argparse.Namespace) -> None:
    from pathlib import Path

    from interp.app import serve

    run = args.run_option or args.run
    if not Path(run).exists():
        raise UsageError(f"no run folder at {run}; create one with `interp harvest` or "
                         f"`make demo`")
    raise SystemExit(serve(run, args.port, args.address))


def _app_parser(sub) -> None:
    p = sub.add_parser("app", help="browse a run folder in the Streamlit app",
                       description="Start the Streamlit app on a run folder (it only reads).")
    p.add_argument("run", nargs="?", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--run", dest="run_option", default=None, help="the run folder, as an option")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="localhost",
                   help="address to serve on (default localhost; 0.0.0.0 for every interface)")
    p.set_defaults(func=_cmd_app)


def int_list(text: str) -> list[int]:
    """``"1,2,8"`` -> [1, 2, 8] (an argparse type: a bad value is a one-line usage error)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,8; "
                                         f"got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: interp CMD: what was wrong (see --help)``."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace output files even when they "
                   "are not what this command writes (never needed to resume)")


PARSERS = (_harvest_parser, _info_parser, _model_parser, _demo_parser, _train_parser, _eval_parser, _evals_parser, _circuit_parser, _probe_parser, _ablate_parser, _features_parser, _export_tracer_parser, _graph_parser, _saes_parser, _app_parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``interp`` parser: one small function per subcommand adds its own."""
    p = Parser(prog="interp", description=__doc__.splitlines()[0] + " "
                                "Run `interp SUBCOMMAND --help` for each subcommand.")
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for add in PARSERS:
        add(sub)
    return p


# checks of a command's flags that run before its output is claimed (nothing written yet)
def _run_out(kind: str, fallback: str):
    """--out, else ``RUN/<kind>/<task>.json`` with --run (a task file by its stem), else
    ``fallback`` in the working directory."""
    def resolve(a: argparse.Namespace) -> None:
        if a.out is None:
            a.out = (str(Path(a.run) / kind / f"{Path(a.task).stem}.json") if a.run
                     else fallback)
    return resolve


BEFORE_WORK = {"train": lambda a: setattr(a, "train_config", _train_config(a)),
               "eval": lambda a: setattr(a, "eval_out", _eval_out(a)),
               "circuit": _run_out("circuits", "circuit.json"),
               "probe": _run_out("probes", "probe.json")}


class _StdoutHandler(logging.StreamHandler):
    """Notes of the library (``logging.getLogger("interp...")``) on the command's stdout,
    as plain lines; sys.stdout is looked up at each line, so redirections apply."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _notes_to_stdout() -> None:
    logger = logging.getLogger("interp")
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        logger.addHandler(_StdoutHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run one command: parse (a --config file merged in), check the flags, claim and lock
    the output (``interp.outputs``), work, store the resolved config. A user's error is one
    line and exit 2; Ctrl-C one line and exit 130."""
    from interp.config import SAVE_BEFORE, parse_args, save_resolved
    from interp.errors import Interrupted
    from interp.outputs import PLANS, claim

    _notes_to_stdout()
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
        if getattr(args, "device", None) is not None:  # before any model loads
            from interp.distributed import check_device

            check_device(args.device)
        if args.command in BEFORE_WORK:
            BEFORE_WORK[args.command](args)
        plan = PLANS[args.command](args) if args.command in PLANS else None
        with claim(plan, force=getattr(args, "force", False)):
            if args.command in SAVE_BEFORE:
                save_resolved(parser, args)
            ret = args.func(args)
            if args.command not in SAVE_BEFORE:
                save_resolved(parser, args, ret)  # e.g. OUT/config.yaml: `interp --config` it
    except InterpError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        said = str(e) if isinstance(e, Interrupted) else ""
        print(f"interrupted{': ' + said if said else ''}; rerun the same command to "
              f"{'resume' if said else 'start again'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
