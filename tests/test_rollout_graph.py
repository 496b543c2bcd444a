"""RolloutGraph (rmmd_core/rollout_graph.py): the rollout as a replayable unit with static buffers and device
seeds. On CPU it runs eagerly and must match ``run_rollout`` with the same seeds as ints, bit for bit; its
body must not read device values on the host (capture forbids it); on CUDA (skipped here) the captured
graph must give the eager results on every replay."""
from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rmmd_core import Denoiser, DiscreteVP
from rmmd_core.rollout_graph import RolloutGraph
from rmmd_core.sampler import read_seeds, rollout_plan, run_rollout, time_grid


class ClassNet(torch.nn.Module):
    """eps-net with class labels: out = tanh(W z + emb[y] + t/1000)."""

    def __init__(self, dim: int = 6, classes: int = 4):
        super().__init__()
        self.lin = torch.nn.Linear(dim, dim)
        self.emb = torch.nn.Embedding(classes, dim)

    def forward(self, z, t, class_labels=None):
        h = self.lin(z) + t.to(z.dtype).view(-1, 1) / 1000
        if class_labels is not None:
            h = h + self.emb(class_labels)
        return torch.tanh(h)


def _setup(K: int, dtype=torch.float32, batch: int = 5, device="cpu"):
    torch.manual_seed(0)
    sch = DiscreteVP.from_diffusers_config(num_train_timesteps=1000)
    den = Denoiser(ClassNet(), sch, prediction="eps", time_input="index").to(device=device, dtype=dtype).eval()
    plan = rollout_plan(sch, time_grid(K, sch), 1.0, K, torch.device(device))
    g = torch.Generator(device=device).manual_seed(1)
    z = torch.randn(batch, 6, generator=g, device=device, dtype=dtype)
    cond = {"class_labels": torch.randint(0, 4, (batch,), generator=g, device=device)}
    seeds = torch.randint(0, 2**62, (plan.seeds_needed,), generator=g, device=device, dtype=torch.int64)
    return den, plan, z, cond, seeds


def _eager(den, plan, z, cond, seeds):
    with torch.no_grad():
        return run_rollout(den, z, plan, cond, seeds=read_seeds([seeds]))[:2]


@pytest.mark.parametrize("K", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_run_rollout_bit_for_bit_on_every_call(K, dtype):
    den, plan, z, cond, seeds = _setup(K, dtype)
    graph = RolloutGraph(den, plan, z, cond)
    assert not graph.capture and graph.seeds.shape == (plan.seeds_needed,)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):  # fresh start noise, seeds and labels each call, as a training loop would pass them
        x, x_hat = graph(z, seeds, cond)
        want_x, want_hat = _eager(den, plan, z, cond, seeds)
        assert torch.equal(x, want_x)
        assert (x_hat is None) == (want_hat is None) and (x_hat is None or torch.equal(x_hat, want_hat))
        z = torch.randn(z.shape, generator=g, dtype=dtype)
        seeds = torch.randint(0, 2**62, seeds.shape, generator=g, dtype=torch.int64)
        cond = {"class_labels": torch.randint(0, 4, (z.shape[0],), generator=g)}


def test_call_counters_advance_per_rollout():
    den, plan, z, cond, seeds = _setup(4)
    calls, nfe = den.calls, den.nfe
    graph = RolloutGraph(den, plan, z, cond, warmup=2)
    assert (den.calls, den.nfe) == (calls, nfe)  # warm-up and capture runs are not counted
    graph(z, seeds, cond)
    assert (den.calls - calls, den.nfe - nfe) == (4, 4 * z.shape[0])
    assert graph._counts == (4, 4 * z.shape[0], 0)


class _HostReads(TorchDispatchMode):
    """Device->host reads (``_local_scalar_dense``) with the rmmd_core frame that made each one."""

    def __init__(self):
        super().__init__()
        self.sites = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frames = [f for f in traceback.extract_stack() if "rmmd_core" in f.filename]
            self.sites.append(f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].name}" if frames else "?")
        return func(*args, **(kwargs or {}))


def test_body_reads_nothing_on_the_host_except_cpu_seed_checks():
    """A CUDA graph cannot capture a device->host read. On CPU the only reads in the body are the seed
    tensors' sign checks in ops._checks.philox_key, which skips them for CUDA tensors."""
    den, plan, z, cond, seeds = _setup(4)
    graph = RolloutGraph(den, plan, z, cond)
    log = _HostReads()
    with log:
        graph(z, seeds, cond)
    assert log.sites == ["_checks.py:philox_key"] * plan.seeds_needed, log.sites


def test_bad_inputs_name_the_argument():
    den, plan, z, cond, seeds = _setup(2)
    graph = RolloutGraph(den, plan, z, cond)
    with pytest.raises(ValueError, match=r"z must be a torch.float32 tensor of shape \(5, 6\)"):
        graph(z[:3], seeds, cond)
    with pytest.raises(ValueError, match=r"z must be"):
        graph(z.double(), seeds, cond)
    with pytest.raises(ValueError, match=r"seeds must be an int64 tensor of shape \(1,\)"):
        graph(z, seeds.int(), cond)
    with pytest.raises(ValueError, match=r"seeds must be"):
        graph(z, torch.zeros(3, dtype=torch.int64), cond)
    with pytest.raises(ValueError, match=r"cond must have the captured keys \['class_labels'\]"):
        graph(z, seeds, {"labels": cond["class_labels"]})
    with pytest.raises(ValueError, match=r"cond\['class_labels'\] must be a torch.int64 tensor of shape \(5,\)"):
        graph(z, seeds, {"class_labels": cond["class_labels"][:2]})
    with pytest.raises(ValueError, match="cond was None when the rollout was captured"):
        RolloutGraph(den, plan, z, None)(z, seeds, cond)
    with pytest.raises(ValueError, match="capture=True needs CUDA tensors"):
        RolloutGraph(den, plan, z, cond, capture=True)
    with pytest.raises(TypeError, match="z_like must be a floating"):
        RolloutGraph(den, plan, torch.zeros(5, 6, dtype=torch.int64), cond)
    with pytest.raises(ValueError, match="warmup must be an integer >= 1"):
        RolloutGraph(den, plan, z, cond, warmup=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("K", [1, 4])
def test_cuda_graph_replays_the_eager_rollout(K):
    den, plan, z, cond, seeds = _setup(K, device="cuda")
    graph = RolloutGraph(den, plan, z, cond)
    assert graph.capture and graph.graph is not None
    g = torch.Generator(device="cuda").manual_seed(3)
    for _ in range(3):
        x, _ = graph(z, seeds, cond)
        want, _ = _eager(den, plan, z, cond, seeds)
        torch.testing.assert_close(x, want, rtol=0, atol=0)
        z = torch.randn(z.shape, generator=g, device="cuda")
        seeds = torch.randint(0, 2**62, seeds.shape, generator=g, device="cuda", dtype=torch.int64)


def test_bench_rollout_graph_smoke(tmp_path, capsys):
    """benchmarks/bench_rollout_graph.py --smoke: both rows per config and K, outputs checked equal inside,
    times recorded (never asserted)."""
    import importlib.util
    import json
    import pathlib

    pytest.importorskip("diffusers")
    bench_dir = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("bench_rollout_graph", bench_dir / "bench_rollout_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "rg.json"
    assert mod.main(["--smoke", "--threads", "1", "--json", str(out)]) == 0
    assert "| config | impl | ms / rollout |" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["impl"]) for r in rows] == [
        ("unet-xs K=1", "eager"), ("unet-xs K=1", "graph (eager: no CUDA)"),
        ("unet-xs K=2", "eager"), ("unet-xs K=2", "graph (eager: no CUDA)")]
    assert all(r["ms_median"] > 0 and len(r["ms_all"]) == 2 for r in rows)


@pytest.mark.parametrize("variant", ["continuous", "discrete"])
def test_step_with_graph_rollout_matches_the_default_bit_for_bit(variant):
    """RMMDConfig(graph_rollout=True): the engine's rollout goes through a cached RolloutGraph fed the same
    seeds as device tensors; on CPU (eager body) weights and metrics equal the default step's exactly."""
    from rmmd_core import RMMD, RMMDConfig, step

    results = []
    for flag in (False, True):
        torch.manual_seed(0)
        sch = DiscreteVP.from_diffusers_config(num_train_timesteps=1000)
        teacher = Denoiser(ClassNet(), sch, prediction="eps", time_input="index")
        eng = RMMD(teacher, config=RMMDConfig(num_steps=3, variant=variant, graph_rollout=flag), sample_shape=(6,),
                   seed=0)
        cond = {"class_labels": torch.arange(5) % 4}
        metrics = [step(eng, cond=cond) for _ in range(4)]
        results.append(([p.detach().clone() for p in eng.student.parameters()], metrics, eng))
    (w0, m0, e0), (w1, m1, e1) = results
    assert all(torch.equal(a, b) for a, b in zip(w0, w1))
    for a, b in zip(m0, m1):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]), (k, a[k], b[k])
    assert not hasattr(e0, "_rollout_graphs") and len(e1._rollout_graphs) >= 1
    with pytest.raises(ValueError, match="graph_rollout must be a bool"):
        RMMDConfig(graph_rollout=1)
