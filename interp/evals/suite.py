"""The evaluation suite of ``interp evals``: which evaluations apply to a dictionary, where
their results are stored, and one run over several dictionaries.

Results are stored with the dictionary, in ``evals.json`` beside its weights (a run's SAE
folder), or under ``--out`` / ``RUN/evals/NAME`` for a shipped dictionary, whose files are
never rewritten (``interp.outputs.eval_folder``, the rule ``interp eval`` follows). The file
holds one entry per evaluation, each replaced when that evaluation runs again, with the
dictionary's weights digest: results of other weights (the folder was trained again) are
dropped rather than shown beside new ones.

    {"format": "interp-evals/1", "dictionary": NAME, "model": ..., "hook": ...,
     "d_sae": ..., "weights": DIGEST, "evals": {"probing": {summary, details, config,
     seconds}, ...}}
"""
from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from interp.errors import DataError, UsageError

FORMAT = "interp-evals/1"
EVALS_FILE = "evals.json"
EVALS = ("probing", "absorption", "ground_truth", "llm")
DEFAULT_EVALS = ("probing", "absorption", "ground_truth")   # llm: with an endpoint only
EMBEDDED = ("othello", "pycode")


def applies(name: str, model_name: str, model) -> str | None:
    """Why evaluation ``name`` cannot run on ``model_name`` (None: it can). Decided before any
    work, so a refusal comes first and an inapplicable default is skipped with its reason."""
    if name not in EVALS:
        raise UsageError(f"unknown evaluation {name!r}; valid: {', '.join(EVALS)}")
    if name in ("probing", "ground_truth") and model_name not in EMBEDDED:
        return (f"{name} needs the built-in ground-truth properties of the embedded models "
                f"({', '.join(EMBEDDED)}); {model_name} has none")
    if name == "absorption":
        from interp.evals.absorption import applicable

        return applicable(model_name, model)
    if name == "llm" and model_name not in EMBEDDED:
        return (f"the LLM evaluation reads examples from the model's own corpus, which the "
                f"embedded models ({', '.join(EMBEDDED)}) have; {model_name} has none here")
    return None


def weights_digest(sae) -> str:
    """A short digest of the dictionary's parameters (results belong to these weights)."""
    h = hashlib.sha256()
    for name, p in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def read_evals(folder: str | Path) -> dict | None:
    """The evals document in ``folder`` (None when there is none, or it is not ours)."""
    path = Path(folder) / EVALS_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def owns_evals_file(path: Path) -> bool:
    """An existing file that ``interp evals`` may replace (``interp.outputs``'s test)."""
    return read_evals(path.parent) is not None if path.name == EVALS_FILE else False


@dataclass
class Target:
    """One dictionary to evaluate, resolved and checked."""

    spec: str                 # as the user named it
    name: str                 # short name (the folder name or registry name)
    sae: object
    model_name: str
    out: Path                 # folder of evals.json
    evals: list[str]
    skipped: dict[str, str] = field(default_factory=dict)   # default evals that do not apply
    named: bool = False       # the evaluations were named (--only): one that cannot run fails


def make_target(spec: str, out: Path | None, chosen: list[str], named: bool,
                run: str | Path | None = None) -> Target:
    """``spec`` resolved (a folder, a shipped name, a name in RUN/saes) with the evaluations
    of ``chosen`` that apply to its model; one that does not is refused when the user
    ``named`` it, else skipped with its reason. ``out`` None: the dictionary is shipped and
    no other place was given (refused: its files are not rewritten)."""
    from interp.runs import resolve_sae

    resolved = resolve_sae(spec, run)
    if out is None:
        raise UsageError(f"{spec} is a shipped dictionary, whose files are not rewritten: "
                         f"give --out FOLDER or --run RUN (writes RUN/evals/NAME)")
    model_name = (resolved.sae.cfg.metadata or {}).get("model_name")
    if not model_name:
        raise UsageError(f"{spec} does not record its model: evaluations need it")
    why = {w: applies(w, model_name, None) for w in chosen}
    refused = [r for r in why.values() if r and named]
    if refused:
        raise DataError(f"{spec}: {refused[0]}")
    return Target(spec, resolved.short_name, resolved.sae, model_name, Path(out),
                  [w for w in chosen if not why[w]], {w: r for w, r in why.items() if r},
                  named=named)


def document(target: Target, previous: dict | None) -> dict:
    """The evals document for ``target``, keeping ``previous`` results of the same weights."""
    from interp.hooks import sae_hook

    digest = weights_digest(target.sae)
    kept = previous.get("evals", {}) if previous and previous.get("weights") == digest else {}
    return {"format": FORMAT, "dictionary": target.spec, "model": target.model_name,
            "hook": sae_hook(target.sae), "d_sae": int(target.sae.cfg.d_sae),
            "weights": digest, "evals": dict(kept)}


def run_target(target: Target, model, options: dict[str, dict],
               report: Callable[[str], None] = print) -> dict:
    """Run ``target``'s evaluations in order, writing ``evals.json`` after each one (a long
    LLM evaluation interrupted keeps what finished). ``options``: keyword options per
    evaluation. Returns the document."""
    doc = document(target, read_evals(target.out))
    target.out.mkdir(parents=True, exist_ok=True)
    doc["skipped"] = dict(target.skipped)
    for name in target.evals:
        report(f"{target.name}: {name} ...")
        t0 = time.perf_counter()
        module = importlib.import_module(f"interp.evals.{name}")
        try:
            result = module.run(model, target.sae, target.model_name, **options.get(name, {}))
        except DataError as e:
            # a default evaluation the data cannot support (e.g. no first-letter signal in
            # the model for absorption) is skipped with its reason; a named one fails
            if target.named:
                raise
            doc["skipped"][name] = str(e)
            doc["evals"].pop(name, None)
            write_evals(target.out, doc)
            report(f"{target.name}: {name} skipped: {e}")
            continue
        result.setdefault("seconds", time.perf_counter() - t0)
        doc["evals"][name] = result
        doc["skipped"].pop(name, None)
        write_evals(target.out, doc)
        report(f"{target.name}: {name} done in {time.perf_counter() - t0:.1f} s: "
               f"{summary_line(result['summary'], name)}")
    return doc


def write_evals(folder: Path, doc: dict) -> Path:
    """Write the document atomically (a reader never sees half a file)."""
    path = Path(folder) / EVALS_FILE
    tmp = path.with_name(f".{EVALS_FILE}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_jsonable), encoding="utf-8")
    tmp.replace(path)
    return path


def _jsonable(v):
    """numpy and torch scalars and arrays inside a result."""
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


# the metrics a line of progress shows for each evaluation (all of them are in evals.json)
HEADLINES = {"probing": ("saebench_accuracy_k1", "saebench_accuracy_k5", "sae_probes_auc_k16",
                         "properties"),
             "absorption": ("mean_absorption_fraction", "mean_full_absorption_rate",
                            "n_letters"),
             "ground_truth": ("frac_alive_f1_ge_0.5", "frac_alive_f1_ge_0.8",
                              "properties_covered_f1_ge_0.5", "alive_latents"),
             "llm": ("detection", "fuzzing", "n_scored_detection", "n_failures")}


def summary_line(summary: dict, name: str | None = None, n: int = 6) -> str:
    """An evaluation's headline metrics (else the first ``n``) on one line."""
    keys = [k for k in HEADLINES.get(name, ()) if k in summary] or list(summary)[:n]
    parts = []
    for k in keys:
        v = summary[k]
        parts.append(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


def comparison_rows(docs: dict[str, dict]) -> list[dict]:
    """{metric: value per dictionary} rows of every summary metric, for a side-by-side
    table: one row per (evaluation, metric), one column per dictionary name."""
    rows: dict[tuple[str, str], dict] = {}
    for name, doc in docs.items():
        for ev, result in (doc.get("evals") or {}).items():
            for metric, value in (result.get("summary") or {}).items():
                if isinstance(value, (int, float)) or value is None:
                    rows.setdefault((ev, metric), {"evaluation": ev, "metric": metric})[name] = value
    return list(rows.values())


def check_options(which: list[str], llm_url: str | None, llm_model: str | None) -> None:
    """The LLM evaluation needs an endpoint and a model name; nothing else does."""
    if "llm" in which and not (llm_url and llm_model):
        raise UsageError("the LLM evaluation needs --llm-url (an OpenAI-compatible server: "
                         "vLLM, Ollama at http://localhost:11434/v1, or a hosted one) and "
                         "--llm-model")
    if (llm_url or llm_model) and "llm" not in which:
        raise DataError("--llm-url/--llm-model were given but the LLM evaluation is not "
                        "selected (add llm to --only)")
