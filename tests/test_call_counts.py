"""Network calls per iteration of every mode and baseline, counted with forward hooks on the raw modules.

The table these tests pin down (K student steps, N = B*M rows; "grad" = autograd recording during the
call; a CFG teacher call batches the conditional and null rows into ONE call of 2N rows):

====================================  =======================  =========  ===========  ======  ==========
mode                                  student (grad)           teacher    auxiliary    anchor  frozen_aux
====================================  =======================  =========  ===========  ======  ==========
phase 1, off-policy (data)            1 (1)                    1          1 (1)        -       -
phase 1, continuous                   K + 1 (1)                1          1 (1)        -       -
phase 1, discrete (stop at i*)        i* + 1 (1)               1          1 (1)        -       -
+ guidance                            unchanged                1 (2N rows) unchanged   -       -
phase 2 (reward + anchor)             as phase 1               1          1 (1)        1       0
phase 2, reference='frozen_aux'       as phase 1               0          1 (1)        1       1
iteration without student update      K + 1 (0)                1          1 (1)        0       0
====================================  =======================  =========  ===========  ======  ==========

Frozen networks (teacher, anchor, frozen_aux) and the rollout never record a graph; the EMA is never
called. The reference moment serves both the student's cotangent and the auxiliary's teacher-pull term
(one teacher call), and the auxiliary is trained on the same z_s the student's cotangent used.
"""
import pytest
import torch

from rmmd_core import RMMD, Denoiser, RMMDConfig, losses, step
from rmmd_core.baselines import DIpp, DRaFT, BaselineConfig, HyperNoise
from rmmd_core.toy import MLPNet


class Hooks:
    """Per network: calls, calls with grad enabled, outputs that carry a graph (grad_fn), rows evaluated."""

    def __init__(self, nets: dict):
        self.c = {}
        for name, net in nets.items():
            if net is None:
                continue
            self.c[name] = {"calls": 0, "grad": 0, "graph": 0, "rows": 0}
            net.register_forward_hook(lambda mod, args, out, n=name: self._hook(n, args, out))

    def _hook(self, name, args, out):
        d = self.c[name]
        d["calls"] += 1
        d["grad"] += int(torch.is_grad_enabled())
        d["graph"] += int(out.grad_fn is not None)
        d["rows"] += args[0].shape[0]

    def table(self, key="calls"):
        return {n: d[key] for n, d in self.c.items()}

    def reset(self):
        for d in self.c.values():
            d.update(calls=0, grad=0, graph=0, rows=0)


def engine(**cfg):
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0",
                       null_cond=lambda c: torch.zeros_like(c))  # used only when guidance_scale is set
    cfg.setdefault("ema_decay", 0.9)
    return RMMD(teacher, config=RMMDConfig(**cfg), sample_shape=(2,), seed=0)


def hooks_of(eng):
    return Hooks({"student": eng.student.net, "teacher": eng.teacher.net, "aux": eng.auxiliary.net,
                  "anchor": eng.anchor.net if eng.anchor is not None else None,
                  "frozen_aux": eng.frozen_aux.net if eng.frozen_aux is not None else None,
                  "ema": eng.ema.net})


def reward(x, cond=None):
    return -x.pow(2).sum(1)


def check_metrics(m, h):
    """The step's own counters agree with the hooks (the hooks are the truth)."""
    for name, n in h.table().items():
        if name != "ema":
            assert m[f"calls_{name}"] == n, name
    assert m["calls_total"] == sum(n for k, n in h.table().items())
    assert m["calls_grad"] == sum(h.table("grad").values())


def frozen_have_no_graph(h):
    for name in ("teacher", "anchor", "frozen_aux", "ema"):
        if name in h.c:
            assert h.c[name]["grad"] == 0 and h.c[name]["graph"] == 0, name


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("phase,reference", [(1, "teacher"), (2, "teacher"), (2, "frozen_aux")])
def test_continuous_and_off_policy_counts(K, phase, reference):
    eng = engine(num_steps=K)
    if phase == 2:
        eng.start_phase2(reward=reward, reward_weight=0.2, reference=reference)
    h = hooks_of(eng)
    m = step(eng, batch_size=5)  # on-policy, continuous variant
    teacher = int(reference == "teacher")
    want = {"student": K + 1, "teacher": teacher, "aux": 1, "ema": 0}
    if phase == 2:
        want.update(anchor=1, frozen_aux=1 - teacher)
    assert h.table() == want
    assert h.table("grad") == {**{k: 0 for k in want}, "student": 1, "aux": 1}
    assert h.table("graph")["student"] == 1 and h.table("graph")["aux"] == 1
    frozen_have_no_graph(h)
    check_metrics(m, h)
    assert m["calls_total"] == sum(want.values())
    assert m["calls_grad"] == 2

    h.reset()
    m = step(eng, data=torch.randn(5, 2))  # off-policy: no rollout
    assert h.table()["student"] == 1 and h.table("grad")["student"] == 1
    assert h.table()["teacher"] == teacher and h.table()["aux"] == 1
    frozen_have_no_graph(h)
    check_metrics(m, h)


@pytest.mark.parametrize("phase", [1, 2])
def test_discrete_counts(phase):
    K = 4
    eng = engine(num_steps=K, variant="discrete")
    if phase == 2:
        eng.start_phase2(reward=reward, reward_weight=0.2)
    h = hooks_of(eng)
    for _ in range(6):
        h.reset()
        m = step(eng, batch_size=3)
        i_star = round((1 - m["t_mean"]) * K)  # stopped after i* rollout calls: t = t_{K - i*}
        assert h.table()["student"] == i_star + 1 and h.table("grad")["student"] == 1
        assert h.table()["teacher"] == 1 and h.table()["aux"] == 1 and h.table("grad")["aux"] == 1
        if phase == 2:
            assert h.table()["anchor"] == 1 and h.table()["frozen_aux"] == 0
        frozen_have_no_graph(h)
        check_metrics(m, h)


def test_guidance_is_one_batched_teacher_call():
    eng = engine(num_steps=2, guidance_scale=2.0)
    h = hooks_of(eng)
    cond = torch.randn(4, 3)
    eng.student.net.forward = _ignore_cond(eng.student.net.forward)
    for den in (eng.teacher, eng.auxiliary, eng.ema):
        den.net.forward = _ignore_cond(den.net.forward)
    m = step(eng, cond=cond)
    assert h.table() == {"student": 3, "teacher": 1, "aux": 1, "ema": 0}
    assert h.c["teacher"]["rows"] == 8  # conditional + null rows in one call
    assert h.c["student"]["rows"] == 3 * 4
    frozen_have_no_graph(h)
    check_metrics(m, h)
    assert m["nfe"] == (3 * 4 + 8 + 4) / 4


def _ignore_cond(fwd):
    return lambda z, t, cond=None: fwd(z, t)


def test_iteration_without_student_update_makes_no_grad_student_call():
    eng = engine(num_steps=2, student_update_every=2)
    eng.start_phase2(reward=reward, reward_weight=0.2)
    h = hooks_of(eng)
    step(eng, batch_size=4)
    h.reset()
    m = step(eng, batch_size=4)  # auxiliary-only iteration
    assert m["student_update"] == 0.0
    assert h.table() == {"student": 3, "teacher": 1, "aux": 1, "anchor": 0, "frozen_aux": 0, "ema": 0}
    assert h.table("grad") == {"student": 0, "teacher": 0, "aux": 1, "anchor": 0, "frozen_aux": 0, "ema": 0}
    check_metrics(m, h)
    assert m["calls_grad"] == 1


class SavedBytes:
    def __init__(self):
        self.bytes, self.seen = 0, set()

    def pack(self, t):
        key = t.untyped_storage().data_ptr()
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t


@pytest.mark.parametrize("variant", ["continuous", "discrete"])
def test_rollout_keeps_no_activations(variant):
    """What autograd saves for backward does not depend on K: the rollout keeps nothing."""
    saved = []
    for K in (1, 2, 6):
        eng = engine(num_steps=K, variant=variant)
        sb = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(sb.pack, lambda t: t):
            out = losses(eng, batch_size=16)
        saved.append(sb.bytes)
        (out.student_loss + out.aux_loss).backward()
    assert saved[0] > 0 and saved[0] == saved[1] == saved[2], saved


def test_baseline_counts():
    torch.manual_seed(0)
    st = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    cfg = BaselineConfig(num_steps=4, ema_decay=0.9)
    # DRaFT-K: N sampler calls, the last K with grad; one no-grad anchor call per differentiated step
    for k in (1, 3):
        run = DRaFT(st.trainable_copy(), reward, cfg, grad_steps=k, sample_shape=(2,))
        h = Hooks({"student": run.student.net, "anchor": run.anchor.net, "ema": run.ema.net})
        m = run.step(6)
        assert h.table() == {"student": 4, "anchor": k, "ema": 0} and h.table("grad")["student"] == k
        assert m["grad_calls"] == k and m["calls"] == 4
        frozen_have_no_graph(h)
    # DRaFT-LV(n): N no-grad sampler calls, then n differentiated one-step calls (+ n anchor calls)
    run = DRaFT(st.trainable_copy(), reward, cfg, grad_steps=1, lv_samples=2, sample_shape=(2,))
    h = Hooks({"student": run.student.net, "anchor": run.anchor.net})
    run.step(6)
    assert h.table() == {"student": 6, "anchor": 2} and h.table("grad") == {"student": 2, "anchor": 0}
    frozen_have_no_graph(h)
    # DI++: generator 1 (grad), teacher 1 (no grad), auxiliary 1 (grad)
    gen, teacher = st.trainable_copy(), st.frozen_copy()
    run = DIpp(gen, teacher, reward, BaselineConfig(num_steps=1, reward_weight=0.0), sample_shape=(2,))
    h = Hooks({"student": gen.net, "teacher": teacher.net, "aux": run.auxiliary.net})
    run.step(6)
    assert h.table() == {"student": 1, "teacher": 1, "aux": 1}
    assert h.table("grad") == {"student": 1, "teacher": 0, "aux": 1}
    frozen_have_no_graph(h)
    # HyperNoise: K calls of the frozen student, each on the graph (gradient flows to the noise net
    # through the inputs), one noise-net call
    run = HyperNoise(st, reward, BaselineConfig(num_steps=4, anchor_weight=0.01, eta=0.0), sample_shape=(2,))
    h = Hooks({"student": run.student.net, "noise": run.noise_net})
    m = run.step(6)
    assert h.table() == {"student": 4, "noise": 1} and h.table("graph") == {"student": 4, "noise": 1}
    assert all(not p.requires_grad for p in run.student.parameters()) and m["grad_calls"] == 4
