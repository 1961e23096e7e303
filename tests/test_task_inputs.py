"""Users' task files are checked line by line, with one-line errors naming the file and line:
circuit tasks (JSONL), labelled-text probe datasets (CSV / JSONL), ``--window``; and a
faithfulness that cannot be defined says why instead of being NaN."""
import json
import math

import pytest
import torch
from refusals import refuse

from interp.circuits.tasks import load_task_jsonl, make_task
from interp.errors import DataError
from interp.features.build import FeatureConfig, parse_window
from interp.models import load
from interp.probes.datasets import make_dataset

PYCODE_SAE = "pycode/blocks.2.hook_resid_post/topk"
OTHELLO_SAE = "othello/blocks.3.hook_resid_post/topk"
GOOD = {"clean": "x = f(a", "patch": "x = f a b", "answer": ")", "wrong": ","}


@pytest.fixture(scope="module")
def pycode():
    return load("pycode").requires_grad_(False)


def jsonl(path, *lines) -> str:
    """Write ``lines`` (objects are JSON-encoded, str / bytes written as they are)."""
    out = b""
    for line in lines:
        if isinstance(line, bytes):
            out += line
        elif isinstance(line, str):
            out += line.encode()
        else:
            out += json.dumps(line).encode()
        out += b"\n"
    path.write_bytes(out)
    return str(path)


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------ circuit tasks (JSONL)
@pytest.mark.parametrize("line3, fragments", [
    ({**GOOD, "clean": 5}, ["line 3", "'clean' is a number", "expected a text string"]),
    ({**GOOD, "answer": [")"]}, ["line 3", "'answer' is a list", "token string"]),
    ({**GOOD, "patch": {"text": "x"}}, ["line 3", "'patch' is an object"]),
    ([GOOD["clean"], GOOD["answer"]], ["line 3", "is a list, not a JSON object", '"clean"']),
    ("7", ["line 3", "is a number, not a JSON object"]),
    ('{"clean": "x = f(a", ', ["line 3", "not valid JSON"]),
    ({"clean": "x = f(a", "patch": "x = f a b"}, ["line 3", "no 'answer', 'wrong'",
                                                   "it has 'clean', 'patch'"]),
    ({"clean": "x = f(a", "answer": ")", "wrong": ","}, ["line 3 has no 'patch'",
                                                         "line 1 has one"]),
    (b'{"clean": "x = f(\xe9", "answer": ")", "wrong": ","}', ["line 3 is not UTF-8",
                                                               "0xe9"]),
])
def test_bad_task_lines_name_the_file_and_line(tmp_path, pycode, line3, fragments):
    path = jsonl(tmp_path / "t.jsonl", GOOD, "", line3)  # line 2 is blank
    with pytest.raises(DataError) as e:
        load_task_jsonl(path, pycode)
    msg = one_line(e)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, msg


def test_task_file_edge_cases(tmp_path, pycode):
    with pytest.raises(DataError, match="holds no prompts"):
        load_task_jsonl(jsonl(tmp_path / "empty.jsonl", "", "  "), pycode)
    with pytest.raises(DataError, match="it is a folder"):
        load_task_jsonl(tmp_path, pycode)
    with pytest.raises(DataError, match=r"line 2: answer '\)\)\)\)' is 2 tokens"):
        load_task_jsonl(jsonl(tmp_path / "two.jsonl", GOOD, {**GOOD, "answer": "))))"}),
                        pycode)
    with pytest.raises(DataError, match="line 2: the clean prompt is"):
        load_task_jsonl(jsonl(tmp_path / "len.jsonl", GOOD, {**GOOD, "clean": "x = f(a, b"}),
                        pycode)
    with pytest.raises(DataError, match="othello has none.*othello-legal"):
        load_task_jsonl(jsonl(tmp_path / "o.jsonl", GOOD), load("othello"))
    # a BOM, null patches (no counterfactual) and extra fields are fine
    path = tmp_path / "ok.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({**GOOD, "patch": None, "id": 1}).encode()
                     + b"\n" + json.dumps({**GOOD, "clean": "y = f(b", "patch": None}).encode())
    task = make_task(str(path), pycode)
    assert len(task) == 2 and task.patch is None and task.name == "ok"


def test_circuit_cli_refuses_a_bad_task_file(tmp_path):
    bad = jsonl(tmp_path / "bad.jsonl", GOOD, {**GOOD, "clean": 5})
    refuse(["circuit", "--sae", PYCODE_SAE, "--task", bad, "--out", tmp_path / "c.json"],
           "line 2", "'clean' is a number", watch=[tmp_path])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(GOOD).encode() + b"\n"
                      + '{"clean": "caf\xe9"}'.encode("latin-1"))
    refuse(["circuit", "--sae", PYCODE_SAE, "--task", latin, "--out", tmp_path / "c.json"],
           "line 2", "not UTF-8", watch=[tmp_path])
    good = jsonl(tmp_path / "good.jsonl", GOOD)
    refuse(["circuit", "--sae", OTHELLO_SAE, "--task", good, "--out", tmp_path / "c.json"],
           "needs a model with a tokenizer", "othello has none", watch=[tmp_path])


# ------------------------------------------------------------------ faithfulness
def test_faithfulness_without_a_gap_says_why(tmp_path, pycode):
    from interp.circuits.attribution import Node
    from interp.circuits.discover import saes_for
    from interp.circuits.faithfulness import faithfulness, no_gap_note
    from interp.circuits.splice import SplicedModel

    same = [{"clean": c, "patch": c, "answer": ")", "wrong": ","}
            for c in ("x = f(a", "y = f(b", "z = g(c")]
    task = load_task_jsonl(jsonl(tmp_path / "same.jsonl", *same), pycode)
    spliced = SplicedModel(pycode, saes_for([PYCODE_SAE]))
    hook = next(iter(spliced.saes))
    f = faithfulness(spliced, task, [Node(hook, 5, 0)])
    assert f["faithfulness"] is None and f["completeness"] is None
    assert f["m_full"] == pytest.approx(f["m_empty"])
    note = f["faithfulness_note"]
    assert "does not move between the full model and the empty circuit" in note
    assert f"m = {f['m_full']:.4g} both" in note and "counterfactual" in note
    json.dumps(f, allow_nan=False)  # no NaN in the result
    assert no_gap_note(2.0, 1.0, "mean") is None
    assert "mean ablation" in no_gap_note(1.0, 1.0 + 1e-7, "mean")
    assert "not finite" in no_gap_note(math.nan, 1.0, "mean")
    # a real gap: a ratio and no note
    task2 = make_task("pycode-bracket", pycode, n=4)
    f2 = faithfulness(spliced, task2, [])
    assert "faithfulness_note" not in f2 and f2["faithfulness"] == pytest.approx(0, abs=1e-6)


# ------------------------------------------------------------------ probe datasets
def csv_file(path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


ROWS = "".join(f"def f{i}(x): return x,{i % 2}\n" for i in range(6))


@pytest.mark.parametrize("content, fragments", [
    ("text,label\na,0.1\nb,0.9\n", ["line 2", "label '0.1' is not an integer"]),
    ("text,label\na,0\nb,2\nc,0\n", ["labels are {0, 2}", "counts 0: 2, 2: 1",
                                     "0 and 1 for a binary property"]),
    ("text,label\na,1\nb,3\nc,2\n", ["labels are {1, 2, 3}"]),
    ("text,label\na,0\nb,0\n", ["every label is 0", "both classes"]),
    ("text,label\na,yes\n", ["line 2", "label 'yes'"]),
    ("text,label\na,\n", ["line 2", "label ''"]),
    ("text,label\na,0\nb\n", ["line 3 has 1 of the header's 2 cells (text,label)"]),
    ("sentence,y\na,0\n", ["needs the columns text and label", "'sentence', 'y'"]),
    ("", ["is empty"]),
    ("text,label\n", ["holds no examples"]),
    (b"text,label\na,0\ncaf\xe9,1\n", ["line 3 is not UTF-8", "0xe9"]),
])
def test_bad_labelled_csv(tmp_path, pycode, content, fragments):
    path = csv_file(tmp_path / "d.csv", content)
    with pytest.raises(DataError) as e:
        make_dataset(path, model=pycode)
    msg = one_line(e)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, msg


@pytest.mark.parametrize("lines, fragments", [
    ([{"text": "a", "label": 0}, {"text": "b", "label": 0.9}], ["line 2", "label 0.9"]),
    ([{"text": "a", "label": 0}, {"text": 3, "label": 1}], ["line 2", "text is 3"]),
    ([{"text": "a", "label": 0}, {"text": "b"}], ["line 2", "needs the fields text and label",
                                                 "it has 'text'"]),
    ([{"text": "a", "label": 0}, ["b", 1]], ["line 2", "not an object"]),
    ([{"text": "a", "label": 0}, {"text": "b", "label": None}], ["line 2", "label null"]),
    ([{"text": "a", "label": 0}, {"text": "b", "label": 2}], ["labels are {0, 2}"]),
    ([b'{"text": "a", "label": 0}', b'{"text": "\xff", "label": 1}'], ["line 2 is not UTF-8"]),
    ([{"text": "ab", "spans": [[0, 1]]}, {"text": "b", "spans": [[1.5, 2]]}],
     ["line 2", "spans is [[1.5, 2]]", "[[start, end], ...]"]),
    ([{"text": "ab", "spans": [[0, 1]]}, {"text": "b", "spans": [[2, 1]]}],
     ["line 2", "0 <= start <= end"]),
    ([{"text": "ab", "spans": [[0, 1]]}, {"text": "b"}], ["line 2", "text and spans"]),
    (["", " "], ["is empty"]),
])
def test_bad_labelled_jsonl(tmp_path, pycode, lines, fragments):
    path = jsonl(tmp_path / "d.jsonl", *lines)
    with pytest.raises(DataError) as e:
        make_dataset(path, model=pycode)
    msg = one_line(e)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, msg


def test_good_labelled_text(tmp_path, pycode):
    ds = make_dataset(csv_file(tmp_path / "bom.csv", b"\xef\xbb\xbftext,label\n" + ROWS.encode()),
                      model=pycode)
    assert ds.labels.tolist() == [i % 2 for i in range(6)]
    ds = make_dataset(csv_file(tmp_path / "f.csv", "text,label\na,1.0\nb,0\n\nc, 1 \n"),
                      model=pycode)
    assert ds.labels.tolist() == [1, 0, 1]
    ds = make_dataset(jsonl(tmp_path / "m.jsonl", *[{"text": t, "label": lbl} for t, lbl in
                                                    [("a", 0), ("b", 2), ("c", 1), ("d", True)]]),
                      model=pycode)
    assert ds.labels.tolist() == [0, 2, 1, 1] and ds.labels.dtype == torch.int64


def test_probe_cli_refuses_bad_labels(tmp_path):
    bad = csv_file(tmp_path / "d.csv", "text,label\nx = 1,0.1\ny = 2,0.9\n")
    refuse(["probe", "--task", bad, "--model", "pycode", "--source",
            "hook:blocks.1.mlp.hook_post", "--out", tmp_path / "p.json"],
           "line 2", "not an integer", watch=[tmp_path])
    two = csv_file(tmp_path / "two.csv", "text,label\nx = 1,0\ny = 2,2\n")
    refuse(["probe", "--task", two, "--model", "pycode", "--source",
            "hook:blocks.1.mlp.hook_post", "--out", tmp_path / "p.json"],
           "labels are {0, 2}", watch=[tmp_path])


# ------------------------------------------------------------------ --window
@pytest.mark.parametrize("window", ["12", "12,", ",4", "a,b", "-1,4", "1,2,3", "1.5,2", ""])
def test_bad_windows_name_the_flag_and_form(window):
    with pytest.raises(DataError) as e:
        parse_window(window)
    msg = one_line(e)
    assert "--window" in msg and "BEFORE,AFTER" in msg and repr(window) in msg
    with pytest.raises(DataError, match="--window"):
        FeatureConfig(n_tokens=10, window=window).validate()


def test_good_windows():
    assert parse_window("12,4") == (12, 4) and parse_window(" 0 , 3 ") == (0, 3)
    assert parse_window((2, 5)) == (2, 5) and parse_window([1, 1]) == (1, 1)
    assert FeatureConfig(n_tokens=10, window=[3, 1]).validate().window == (3, 1)


def test_features_cli_refuses_a_bad_window(tmp_path):
    out = tmp_path / "f.duckdb"
    refuse(["features", "--sae", OTHELLO_SAE, "--tokens", "100", "--window=-1,4",
            "--out", out], "--window", "BEFORE,AFTER", watch=[tmp_path])
