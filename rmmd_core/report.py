"""Write a demo / Pareto report folder: ``report.md``, ``metrics.json`` and PNGs.

``prepare_outdir`` refuses an existing folder unless ``overwrite=True`` (checked before any training,
so a long run never fails at the end on its output path).
"""
from __future__ import annotations

import json
import math
import pathlib
import shutil

import torch

PNG_GRIDS, PNG_PARETO, PNG_CURVES = "samples.png", "pareto.png", "curves.png"


def prepare_outdir(path, overwrite: bool) -> pathlib.Path:
    out = pathlib.Path(path)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"output folder {out} already exists; pass --overwrite to replace it "
                                  "or choose another --out")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True)
    return out


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_grids(grids: dict, path: pathlib.Path) -> None:
    """One row of up to 16 samples per model, labelled on the left."""
    plt = _plt()
    names = list(grids)
    rows = []
    for n in names:
        x = ((grids[n][:16] + 1) / 2).clamp(0, 1)
        x = torch.cat([x, torch.ones(16 - len(x), *x.shape[1:])]) if len(x) < 16 else x
        pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=1.0)          # (16, 3, 18, 18)
        rows.append(pad.permute(2, 0, 3, 1).reshape(18, 16 * 18, 3))
    img = torch.cat(rows, 0).numpy()
    fig, ax = plt.subplots(figsize=(10, 0.62 * len(names) + 0.4))
    ax.imshow(img, interpolation="nearest")
    ax.set_yticks([18 * i + 9 for i in range(len(names))], names, fontsize=8)
    ax.set_xticks([])
    ax.set_title("samples (same noise seed for every model)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_pareto(points: list, fronts: dict, reference: list, path: pathlib.Path, labels: dict) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (m, front) in enumerate(fronts.items()):
        c = colors[i % len(colors)]
        pts = [p for p in points if p["method"] == m]
        ax.scatter([p["reward"] for p in pts], [p["fd"] for p in pts], color=c, alpha=0.35, s=14)
        ax.plot([p["reward"] for p in front], [p["fd"] for p in front], "-o", color=c, ms=4, label=labels.get(m, m))
    for r in reference:
        if r["name"].startswith("teacher"):
            ax.scatter([r["reward"]], [r["fd"]], marker="*", s=160, color="k", label=r["name"], zorder=5)
    ax.set_xlabel("mean reward (higher is better)")
    ax.set_ylabel("Fréchet distance to held-out data (lower is better)")
    ax.set_title("FD vs reward: one Pareto front per method (faint dots: all checkpoints)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(y, k=10):
    out, acc = [], []
    for v in y:
        acc.append(v)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out


def save_curves(curves: list, path: pathlib.Path, labels: dict) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for c in curves:
        if c["method"] == "mm":
            a1.plot(c["iteration"], _smooth(c["aux_loss"]), label="auxiliary loss")
            a1.plot(c["iteration"], _smooth(c["mm_surrogate"]), label="MM surrogate")
        else:
            y = [v for v in c["reward_mean"]]
            a2.plot(c["iteration"], _smooth(y), label=f"{labels.get(c['method'], c['method'])} λ={c['lam']:g}")
    a1.set_title("phase 1: MM (smoothed over 10 iterations)", fontsize=9)
    a1.set_xlabel("iteration")
    a1.legend(fontsize=8)
    a2.set_title("phase 2: training-batch reward (smoothed)", fontsize=9)
    a2.set_xlabel("iteration")
    a2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v, nd=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{nd}f}"


def markdown(res: dict, labels: dict, command: str) -> str:
    s = res["settings"]
    L = [f"# RMMD demo report: task `{res['task']}`, reward `{res['reward']}`", ""]
    if res["reward"] == "classifier":
        L.append(f"Reward: log-probability of class {res['target_class']} under the project's classifier.")
    L += [f"Command: `{command}`", "",
          f"Students use K = {s['num_steps']} steps; phase 1 = {s['mm_iters']} MM iterations (off-policy, "
          f"batch {s['batch']}); phase 2 = {s['iters']} iterations per (method, λ), evaluated every "
          f"{s['eval_every']} iterations on {s['n_eval']} samples. FD = Fréchet distance in the classifier's "
          "feature space to held-out data (lower is better). All phase-2 methods start from the same phase-1 "
          "models, with the same optimiser, lr and EMA.", "",
          "## Reference rows", "", "| model | NFE | FD | mean reward |", "|---|---|---|---|"]
    L += [f"| {r['name']} | {r['nfe']} | {_fmt(r['fd'])} | {_fmt(r['reward'])} |" for r in res["reference"]]
    L += ["", "## Every run at its last checkpoint", "", "| method | λ | NFE | FD | mean reward |", "|---|---|---|---|---|"]
    last = {}
    for p in res["points"]:
        if p["iteration"] > 0:
            last[(p["method"], p["lam"])] = p
    L += [f"| {labels.get(m, m)} | {lam:g} | {p['nfe']} | {_fmt(p['fd'])} | {_fmt(p['reward'])} |"
          for (m, lam), p in last.items()]
    an = res["analysis"]
    methods = list(res["fronts"])
    L += ["", "## Pareto fronts: lowest FD reaching each reward level", "",
          "| reward ≥ | " + " | ".join(labels.get(m, m) for m in methods) + " | lowest FD |",
          "|---|" + "---|" * (len(methods) + 1)]
    for lv in an["levels"]:
        L.append(f"| {lv['reward']:.3f} | " + " | ".join(_fmt(lv["best"].get(m)) for m in methods)
                 + f" | {labels.get(lv['winner'], lv['winner'])} |")
    L += ["", "– : the method's front does not reach that reward.", "", "## Which fronts dominate where", ""]
    L += [f"* {x}" for x in an["summary"]]
    L += ["", "These statements are computed from the numbers above (`rmmd_core.pareto.compare`); they are "
          "not edited by hand. Small runs on a small model: differences of a few percent in FD are within "
          "run-to-run noise (FD on a few hundred samples).", "",
          "## Figures", "", f"![samples]({PNG_GRIDS})", "", f"![pareto]({PNG_PARETO})", "", f"![curves]({PNG_CURVES})",
          "", "## Timings (seconds)", "", "| stage | s |", "|---|---|"]
    L += [f"| {k} | {v:.1f} |" for k, v in res["timings"].items()]
    t, c = res.get("teacher", {}), res.get("classifier", {})
    L += ["", f"Teacher checkpoint: {t.get('steps')} training steps, final loss {_fmt(t.get('final_loss'), 4)}. "
          f"Classifier: held-out accuracy {_fmt(c.get('heldout_accuracy'), 4)}.", ""]
    return "\n".join(L)


def write_report(out: pathlib.Path, res: dict, labels: dict, command: str) -> dict:
    """Write all files into ``out`` (already prepared); returns the JSON that was written."""
    save_grids(res["grids"], out / PNG_GRIDS)
    save_pareto(res["points"], res["fronts"], res["reference"], out / PNG_PARETO, labels)
    save_curves(res["curves"], out / PNG_CURVES, labels)
    data = {k: v for k, v in res.items() if k not in ("grids", "curves")}
    data["curves"] = res["curves"]
    data["command"] = command
    (out / "metrics.json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    (out / "report.md").write_text(markdown(res, labels, command))
    return data
