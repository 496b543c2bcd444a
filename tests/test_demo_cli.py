"""`rmmd demo --quick` end to end (report files, metrics.json keys) and the CLI's bad-input paths."""
import json
import time

import pytest
import torch

from rmmd_core.__main__ import main
from rmmd_core.methods import METHODS

REPORT_FILES = ("report.md", "metrics.json", "samples.png", "pareto.png", "curves.png")


@pytest.fixture(autouse=True)
def _restore_threads():
    # the CLI sets 1 intra-op thread for its process; give the rest of the suite its default back
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    rc = main(["demo", "--quick", "--no-progress", "--out", str(out)])
    seconds = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return out, rc, seconds


def test_quick_demo_writes_the_report(quick_report):
    out, rc, seconds = quick_report
    assert rc == 0
    for f in REPORT_FILES:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    m = json.loads((out / "metrics.json").read_text())
    for key in ("task", "reward", "settings", "reference", "points", "fronts", "analysis", "timings", "curves"):
        assert key in m, key
    assert m["task"] == "shapes" and m["reward"] == "classifier"
    names = [r["name"] for r in m["reference"]]
    assert names[0].startswith("teacher") and any(n.startswith("MM student") for n in names)
    assert set(m["fronts"]) == set(METHODS)
    for p in m["points"]:
        assert {"method", "lam", "iteration", "fd", "reward", "nfe"} <= set(p)
        assert p["fd"] >= 0 and p["reward"] <= 0  # log-probability reward
    # NFE: one step for DI++, K for the multi-step methods
    assert {p["nfe"] for p in m["points"] if p["method"] == "dipp"} == {1}
    assert {p["nfe"] for p in m["points"] if p["method"] == "rmmd"} == {m["settings"]["num_steps"]}
    assert m["analysis"]["summary"] and "## Which fronts dominate where" in (out / "report.md").read_text()


def test_existing_folder_is_not_overwritten(quick_report, capsys):
    out, _, _ = quick_report
    before = (out / "metrics.json").read_text()
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before


def test_unknown_names_list_the_valid_ones(tmp_path, capsys):
    assert main(["demo", "--quick", "--methods", "rmmd,dpo", "--out", str(tmp_path / "a")]) == 2
    assert not (tmp_path / "a").exists()
    err = capsys.readouterr().err
    assert "dpo" in err and "draft1" in err and "hypernoise" in err
    for bad in (["--task", "imagenet"], ["--reward", "clip"]):
        with pytest.raises(SystemExit):
            main(["demo", *bad, "--out", str(tmp_path / "b")])
        err = capsys.readouterr().err
        assert "invalid choice" in err and ("toy2d" in err or "laplacian" in err)


def test_toy2d_task_writes_a_report(tmp_path):
    out = tmp_path / "toy"
    assert main(["demo", "--task", "toy2d", "--quick", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "toy2d" and [r["name"].split(" (")[0] for r in m["rows"]][-1] == "RMMD student"
