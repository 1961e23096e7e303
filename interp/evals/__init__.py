"""Evaluations of a dictionary (SAE, transcoder, CLT layer) against the embedded models'
ground truth, and with an LLM where a researcher has one (issue 18).

One module per evaluation, each with ``run(model, sae, model_name, **options) -> dict``:
a JSON-serialisable result ``{"summary": {metric: number}, "details": {...},
"config": {...}, "seconds": float}``. An evaluation that does not apply to a model or a
dictionary raises ``interp.errors.DataError`` with one line saying why and what does apply.

- ``probing``: sparse probing on the built-in properties (SAEBench's and sae-probes'
  protocols);
- ``absorption``: feature absorption on pycode's first-letter task (Chanin et al.);
- ``ground_truth``: each alive latent's best-matching built-in property (precision,
  recall, F1);
- ``llm``: explain-then-score through an OpenAI-compatible endpoint (detection, fuzzing).

``suite`` decides which apply to a dictionary, runs them (``interp evals``, the app's Evals
page) and keeps the results in ``evals.json`` beside the dictionary.
"""
