"""docs/results.md is generated from benchmarks/results/*.json and must match what the script writes."""

import importlib.util
import json
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "results_page.py")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PAGE = os.path.join(ROOT, "docs", "results.md")


@pytest.fixture(scope="module")
def results_page():
    spec = importlib.util.spec_from_file_location("results_page", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_page_is_what_the_script_writes(results_page, tmp_path):
    output = tmp_path / "results.md"
    assert results_page.main(["--output", str(output)]) == 0
    with open(PAGE, encoding="utf-8") as f:
        committed = f.read()
    assert output.read_text(encoding="utf-8") == committed, (
        "docs/results.md is stale: run `python benchmarks/results_page.py` and commit it"
    )
    assert results_page.main(["--check"]) == 0


def test_one_row_per_json_with_its_links(results_page):
    page = results_page.render()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    names = sorted(n for n in os.listdir(RESULTS) if n.endswith(".json"))
    assert [row.split("`")[1] + ".json" for row in rows] == names
    assert "[json](../benchmarks/results/train_fashion_mnist.json)" in page
    assert "[png](../benchmarks/results/layer_gating_ind15.png)" in page
    # the longer stem owns its plot: layer_gating_ind15.png is not layer_gating's
    (layer_row,) = [row for row in rows if row.startswith("| `layer_gating` ")]
    assert "layer_gating_ind15.png" not in layer_row
    assert "[risk_coverage.png](../benchmarks/results/risk_coverage.png)" in page


def test_rendering_is_deterministic(results_page):
    assert results_page.render() == results_page.render()


def test_a_changed_value_changes_the_page(results_page, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy)
    before = results_page.render(str(copy))
    path = copy / "gate_overhead.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["gated_over_dense"] = 1.42
    path.write_text(json.dumps(data), encoding="utf-8")
    after = results_page.render(str(copy))
    assert after != before
    assert "gated / dense 1.42" in after


def test_check_fails_on_a_stale_page(results_page, tmp_path, capsys):
    stale = tmp_path / "results.md"
    stale.write_text("# Results\n", encoding="utf-8")
    assert results_page.main(["--check", "--output", str(stale)]) == 1
    assert "stale" in capsys.readouterr().err


def test_unknown_json_gets_a_generic_row(results_page, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "new_study.json").write_text(json.dumps({"benchmark": "new_study", "top1": 0.5}), encoding="utf-8")
    (folder / "new_study.png").write_bytes(b"")
    page = results_page.render(str(folder))
    assert "| `new_study` | new_study | top1 0.5 |" in page
    assert "[png](../benchmarks/results/new_study.png)" in page
