"""End-to-end test of the weather recipe (python/weather_gencast.py --quick).

Runs the whole pipeline — stochastic Lorenz-96 data, EDM teacher training, MM phase 1, RMMD phase 2 with the
CRPS reward (off- and on-policy), autoregressive ensemble evaluation, report and plots — at a tiny size
(well under 2 minutes on 2 cores). It checks that the pipeline works and its outputs are consistent,
not that the students win (that is the full run's report).
"""
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "python", "weather_gencast.py")


def test_weather_recipe_quick_end_to_end(tmp_path):
    out = tmp_path / "weather"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    ckpt = tmp_path / "teacher.pt"
    cmd = [sys.executable, RECIPE, "--quick", "--out", str(out), "--teacher-ckpt", str(ckpt), "--set", "threads=1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert ckpt.exists()  # the run creates the teacher checkpoint it can reuse

    m = json.loads((out / "metrics.json").read_text())
    s = m["settings"]
    names = ["teacher", "MM student", "RMMD off-policy", "RMMD on-policy"]
    assert list(m["results"]) == names
    assert m["results"]["teacher"]["nfe"] == s["teacher_steps"]
    for n in names[1:]:
        assert m["results"][n]["nfe"] == s["student_steps"]
        c = m["comparison"][n]
        assert c["targets"] == s["K"] * len(s["leads"])
        assert 0.0 <= c["win_rate"] <= 1.0 and math.isfinite(c["crps_improvement"])
        assert math.isfinite(c["pooled_crps_improvement"]) and c["pooled_crps_improvement_se"] > 0
    for n in names:
        for lead in map(str, s["leads"]):
            sc = m["results"][n]["scores"][lead]
            assert len(sc["crps_var"]) == s["K"]
            assert all(v > 0 and math.isfinite(v) for v in sc["crps_var"])
            assert sc["ssr"] > 0 and math.isfinite(sc["ssr"])
    # phase 2 really optimised the CRPS reward (finite, negative rewards logged)
    for v in ("off-policy", "on-policy"):
        assert m["training"][v]["reward_mean"] < 0
    report = (out / "report.md").read_text()
    assert "| RMMD on-policy | 8 |" in report and "win rate" in report and "quick" in report
    for png in ("crps_vs_lead.png", "ssr_vs_lead.png", "ensemble_example.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000

    # a second run reuses the teacher checkpoint instead of retraining it
    res2 = subprocess.run(cmd[:4] + [str(tmp_path / "w2")] + cmd[5:], env=env, capture_output=True, text=True,
                          timeout=300)
    assert res2.returncode == 0, res2.stdout[-3000:] + res2.stderr[-3000:]
    assert "loaded teacher from" in res2.stdout
