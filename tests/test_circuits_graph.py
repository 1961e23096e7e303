import json
import subprocess
import sys

import pytest

from interp.circuits.attribution import OUTPUT, Edge, Node
from interp.circuits.discover import CircuitConfig, discover, saes_for
from interp.circuits.faithfulness import faithfulness
from interp.circuits.graph import build_graph, figure, load_graph, prune, save_graph
from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import make_task
from interp.errors import CorruptArtifactError
from interp.models import load

H1, H2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"


def toy_graph():
    a, b, c, e = Node(H1, 3, 5), Node(H1, 3, 9), Node(H2, 3, 7), Node.error_term(H2, 3)
    scores = {a: 0.5, b: -0.02, c: 0.8, e: -0.3}
    edges = [Edge(a, c, 0.4), Edge(b, c, -0.01), Edge(a, e, -0.2), Edge(c, OUTPUT, 0.8),
             Edge(e, OUTPUT, -0.3)]
    return build_graph(scores, edges, metadata={"task": "toy"})


def test_graph_attributes_pruning_and_json_round_trip(tmp_path):
    g = toy_graph()
    assert g.nodes[f"{H2}|3|err"]["kind"] == "error"
    assert g.nodes[f"{H1}|3|5"]["layer"] == 1 and g.nodes[f"{H1}|3|5"]["latent"] == 5
    p = prune(g, node_threshold=0.1)
    assert f"{H1}|3|9" not in p and OUTPUT in p
    p2 = prune(g, edge_threshold=0.25)  # a's edges to c (0.4) survive, a->err (0.2) not
    assert p2.has_edge(f"{H1}|3|5", f"{H2}|3|7") and not p2.has_edge(f"{H1}|3|5", f"{H2}|3|err")
    assert f"{H1}|3|9" not in p2  # no longer connected to the output
    path = save_graph(g, tmp_path / "c.json")
    back = load_graph(path)
    assert sorted(back.nodes) == sorted(g.nodes) and back.graph["task"] == "toy"
    assert back.edges[f"{H1}|3|5", f"{H2}|3|7"]["effect"] == 0.4
    assert len(figure(g).data) == g.number_of_edges() + 1
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CorruptArtifactError, match="not a circuit file"):
        load_graph(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def pycode_setup():
    model = load("pycode").requires_grad_(False)
    spliced = SplicedModel(model, saes_for(["pycode/blocks.2.hook_resid_post/topk"]))
    return spliced, make_task("pycode-bracket", model, n=24)


def test_faithfulness_of_everything_and_nothing(pycode_setup):
    spliced, task = pycode_setup
    t = task.clean.shape[1]
    every = [Node.from_column(H2, p, j, 2048) for p in range(t) for j in range(2049)]
    f = faithfulness(spliced, task, every)
    assert f["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert f["completeness"] == pytest.approx(1.0, abs=1e-4)
    f0 = faithfulness(spliced, task, [])
    assert f0["faithfulness"] == pytest.approx(0.0, abs=1e-6)


def test_discover_finds_a_small_faithful_bracket_circuit(pycode_setup):
    spliced, task = pycode_setup
    res = discover(spliced, task, CircuitConfig(method="ig", patch="mean", max_nodes=50))
    assert 0 < len(res["nodes"]) <= 50
    assert res["faithfulness"]["faithfulness"] > 0.5
    assert OUTPUT in res["graph"]


def test_cli_writes_the_graph_and_prints_faithfulness(tmp_path):
    out = tmp_path / "circ.json"
    r = subprocess.run([sys.executable, "-m", "interp.cli", "circuit", "--sae",
                        "othello/blocks.3.hook_resid_post/topk", "--task", "othello-legal",
                        "--prompts", "16", "--method", "atp", "--max-nodes", "20",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "faithfulness" in r.stdout and out.exists() and out.with_suffix(".html").exists()
    data = json.loads(out.read_text())
    assert data["metadata"]["task"] == "othello-legal"
    bad = subprocess.run([sys.executable, "-m", "interp.cli", "circuit", "--sae",
                          "othello/blocks.3.hook_resid_post/topk", "--task", "pycode-bracket"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "for the pycode model" in bad.stderr


def test_one_sae_named_twice_is_spliced_once_two_at_one_hook_are_refused():
    from pathlib import Path

    from interp.errors import DataError

    name = "othello/blocks.3.hook_resid_post/topk"
    folder = Path(__file__).resolve().parent.parent / "saes" / "othello" / \
        "blocks.3.hook_resid_post" / "topk"
    saes = saes_for([name, str(folder)])  # as `--run RUN --sae RUN/saes/x` names it twice
    assert list(saes) == ["blocks.3.hook_resid_post"]
    with pytest.raises(DataError, match="two SAEs for blocks.3.hook_resid_post .*topk and "
                                        ".*matryoshka"):
        saes_for([name, "othello/blocks.3.hook_resid_post/matryoshka"])
