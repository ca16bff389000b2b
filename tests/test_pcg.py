"""PCG, predictor-corrector guidance (Bradley & Nakkiran, arXiv 2408.09000; docs/CONVENTIONS.md §32).

- A hand-written PCG loop (diffusers' own DDIM step on the conditional prediction, then the Langevin formula written
  out here) on the analytic mixture equals guidance.run's, noise draw for noise draw.
- The paper's claims on exact scores: with many corrector steps PCG samples p(x|c)^γ p(x)^{1−γ} (a two-sample test
  against exact samples, drawn by rejection, passes) where DDIM-CFG at w = γ does not; DDPM-CFG at w equals PCG with
  one corrector step at γ = 2w − 1 (and not at γ = w).
- On every family: the corrector's denoiser calls see the predictor's latents and the time embedding of the next
  pipeline step, read by hooks on diffusers' modules; rows and telemetry; refusals.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from scipy import stats

import guidance
from guidance.errors import GuidanceError
from guidance.pipelines.digits import load_pipeline
from guidance.pipelines.gmm import GaussianMixtureDenoiser, gmm_pipeline, two_class_2d
from guidance.pipelines.stepping import step_table
from guidance.pipelines.testing.tiny import FAMILIES, tiny_call_kwargs, tiny_pipeline
from guidance.telemetry import effective_scales

from conftest import denoisers, first_layer, strip_scales


def hand_pcg(model: GaussianMixtureDenoiser, labels: torch.Tensor, latents: torch.Tensor, steps: int, gamma: float,
             corrector_steps: int, step_size: float, generator: torch.Generator) -> torch.Tensor:
    """PCG written out: x_j = DDIM(x_i, ε_c); then K times x ← x − δ/s_j·ε_γ + sqrt(2δ)·z at level j, with
    δ = r·s_j²·(1 − σ_j²/σ_i²)/2, σ² = (1 − ᾱ)/ᾱ, s_j² = 1 − ᾱ_j; no corrector after the last step."""
    scheduler = DDIMScheduler.from_config(gmm_pipeline(model).scheduler.config)
    scheduler.set_timesteps(steps)
    alphas = scheduler.alphas_cumprod.double()
    null = torch.full_like(labels, model.null_class)
    x = latents.clone()
    timesteps = scheduler.timesteps.tolist()
    for i, t in enumerate(timesteps):
        x = scheduler.step(model(x, t, class_labels=labels).sample, t, x).prev_sample
        if i + 1 == steps:
            break
        t_next = timesteps[i + 1]
        bar_i, bar_j = alphas[t].item(), alphas[t_next].item()
        sigma2_i, sigma2_j = (1 - bar_i) / bar_i, (1 - bar_j) / bar_j
        delta = step_size * (1 - bar_j) * (1 - sigma2_j / sigma2_i) / 2
        for _ in range(corrector_steps):
            eps_c = model(x, t_next, class_labels=labels).sample
            eps_u = model(x, t_next, class_labels=null).sample
            eps = eps_u + gamma * (eps_c - eps_u)
            z = randn_tensor(x.shape, generator=generator, dtype=torch.float32).double()
            x = x - delta / math.sqrt(1 - bar_j) * eps + math.sqrt(2 * delta) * z
    return x


def test_pcg_equals_the_hand_loop():
    model = two_class_2d()
    labels = torch.tensor([0, 1, 0, 1])
    latents = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = hand_pcg(model, labels, latents, 6, 3.0, 2, 0.7, torch.Generator().manual_seed(7))
    spec = {"rule": {"name": "pcg", "corrector_steps": 2, "step_size": 0.7}, "scale": 3.0}
    out = guidance.run(gmm_pipeline(model), spec, class_labels=labels, latents=latents, num_inference_steps=6,
                       generator=torch.Generator().manual_seed(7), output_type="latent").images
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    plain = hand_pcg(model, labels, latents, 6, 3.0, 0, 1.0, torch.Generator())  # K = 0: conditional DDIM
    assert (out - plain).abs().max() > 0.05


# One-dimensional two-class mixture: p(x | 0) = N(−0.5, 0.6²), p(x | 1) = N(0.8, 0.4²), equal weights.
MIXTURE = GaussianMixtureDenoiser(means=[[-0.5], [0.8]], stds=[0.6, 0.4], weights=[0.5, 0.5], classes=[0, 1])
N_SAMPLES = 3000
GAMMA = 3.0


def powered_samples(label: int, gamma: float, n: int) -> torch.Tensor:
    """Exact samples of p(x|c)^γ p(x)^{1−γ} ∝ p(x|c)·p(c|x)^{γ−1}: draws of p(x|c) kept with chance p(c|x)^{γ−1}."""
    generator, kept = torch.Generator().manual_seed(0), []
    log_prior = math.log(0.5)
    while sum(len(k) for k in kept) < n:
        x = MIXTURE.sample_exact(label, 4 * n, generator)
        log_posterior = MIXTURE.log_density(x, label) - MIXTURE.log_density(x, MIXTURE.null_class) + log_prior
        accept = ((gamma - 1) * log_posterior).exp()
        kept.append(x[torch.rand(len(x), generator=generator, dtype=torch.float64) < accept])
    return torch.cat(kept)[:n, 0]


def samples(spec: dict, steps: int, ddpm: bool = False, seed: int = 1) -> torch.Tensor:
    pipe = gmm_pipeline(MIXTURE)
    if ddpm:
        pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    out = guidance.run(pipe, spec, class_labels=[0] * N_SAMPLES, num_inference_steps=steps, output_type="latent",
                       generator=torch.Generator().manual_seed(seed))
    return out.images[:, 0]


def ks_pvalue(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(stats.ks_2samp(a.numpy(), b.numpy()).pvalue)


def test_pcg_with_many_corrector_steps_samples_the_powered_distribution():
    exact = powered_samples(0, GAMMA, N_SAMPLES)
    pcg = samples({"rule": {"name": "pcg", "corrector_steps": 20}, "scale": GAMMA}, 50)
    ddim_cfg = samples({"scale": GAMMA}, 50)
    assert ks_pvalue(pcg, exact) > 0.05  # measured 0.44
    assert ks_pvalue(ddim_cfg, exact) < 1e-20  # measured 4e-227: DDIM-CFG over-sharpens (mean −1.11 vs −0.70)


def test_ddpm_cfg_is_pcg_with_one_corrector_step_at_twice_w_minus_one():
    w = 2.0
    pcg = samples({"rule": {"name": "pcg", "corrector_steps": 1}, "scale": 2 * w - 1}, 500)
    assert ks_pvalue(pcg, samples({"scale": w}, 500, ddpm=True, seed=2)) > 0.05
    assert ks_pvalue(pcg, samples({"scale": 2 * w - 1}, 500, ddpm=True, seed=3)) < 1e-6


def test_rows_and_telemetry_count_the_corrector():
    pipe = gmm_pipeline(two_class_2d())
    spec = {"rule": {"name": "pcg", "corrector_steps": 3}, "scale": 2.0}
    steps, batch = 5, 2
    with guidance.attach(pipe, spec) as session:
        pipe(class_labels=[0, 1], num_inference_steps=steps, guidance_scale=2.0, output_type="latent",
             callback_on_step_end=session.callback)
    records = session.stats["steps"]
    assert session.stats["denoiser_rows"] == steps * batch + (steps - 1) * 3 * 2 * batch
    predictor = [r for r in records if r["corrector"] == 0]
    assert [r["step"] for r in predictor] == list(range(steps))
    assert all(r["branches"] == ["cond"] and r["denoiser_rows"] == batch for r in predictor)
    assert all(r["latent_rms"] is not None for r in predictor)
    corrector = [r for r in records if r["corrector"]]
    assert [(r["step"], r["corrector"]) for r in corrector] == [(j, k) for j in range(1, steps) for k in (1, 2, 3)]
    assert all(r["w"] == 2.0 and r["denoiser_rows"] == 2 * batch for r in corrector)


class Inputs:
    """What the denoiser's modules receive, by hooks on diffusers' modules, per call: the first layer's input and the
    time embedding's input (the time features of the time the pipeline passed), labelled with the session's
    (step, corrector iteration) at the call."""

    def __init__(self, pipe) -> None:
        self.session = None
        self.first: list[tuple[tuple[int, int], int, torch.Tensor]] = []  # (label, which denoiser, input)
        self.times: list[tuple[tuple[int, int], int, torch.Tensor]] = []
        self.handles = []
        for index, denoiser in enumerate(denoisers(pipe)):
            self.handles.append(first_layer(pipe, denoiser).register_forward_pre_hook(self._keep(self.first, index)))
            embedder = next((m for name, m in denoiser.named_modules()
                             if name.endswith(("timestep_embedder", "time_embedding", "time_embedder"))), None)
            if embedder is not None:
                self.handles.append(embedder.register_forward_pre_hook(self._keep(self.times, index)))

    def _keep(self, into: list, index: int):
        def hook(module, args) -> None:
            run = self.session.current_run
            into.append(((run.step, run.correcting), index, args[0].detach().float().clone()))
        return hook

    @staticmethod
    def at(kept: list, label: tuple[int, int]) -> torch.Tensor:
        return next(value for key, _, value in kept if key == label)

    @staticmethod
    def denoiser_at(kept: list, label: tuple[int, int]) -> int:
        return next(index for key, index, _ in kept if key == label)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def pcg_ready(family: str):
    pipe = tiny_pipeline(family)
    if type(pipe.scheduler).__name__ not in ("FlowMatchEulerDiscreteScheduler", "CogVideoXDDIMScheduler"):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def labelled_run(family: str, spec: dict, steps: int) -> tuple[Inputs, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Run `spec` through guidance.attach on the family's tiny pipeline (DDIM, or its flow-matching Euler); the hooks'
    inputs and the scheduler's (x_i, x_j) of every step, from a wrapper someone put on scheduler.step."""
    pipe = pcg_ready(family)
    stepped: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = pipe.scheduler.step

    @functools.wraps(original)
    def step(model_output, timestep, sample, *args, **kwargs):
        out = original(model_output, timestep, sample, *args, **kwargs)
        stepped.append((sample.detach().float().clone(), (out[0] if isinstance(out, tuple) else out.prev_sample)
                        .detach().float().clone()))
        return out

    pipe.scheduler.step = step
    inputs = Inputs(pipe)
    try:
        with guidance.attach(pipe, spec) as session:
            inputs.session = session
            pipe(**tiny_call_kwargs(family, batch=1, num_inference_steps=steps))
    finally:
        inputs.close()
    return inputs, stepped


def holds(layer_input: torch.Tensor, latents: torch.Tensor) -> bool:
    """Whether the leading part of a first-layer input is `latents` tiled over its rows."""
    if layer_input.ndim != latents.ndim or layer_input.shape[0] % latents.shape[0]:
        return False
    part = layer_input
    for dim in range(1, latents.ndim):
        if part.shape[dim] < latents.shape[dim]:
            return False
        part = part.narrow(dim, 0, latents.shape[dim])
    tiled = latents.repeat(part.shape[0] // latents.shape[0], *([1] * (latents.ndim - 1)))
    return torch.allclose(part, tiled.to(part.dtype), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("zimage", "wan22_5b_i2v")])
def test_the_corrector_evaluates_the_next_level(family):
    """PCG's corrector call after step i gets the time features of native CFG's call at step i + 1, and where the
    pipeline's own call at step i hands the first layer the step's latents x_i, the corrector's hands it x_{i+1}."""
    steps = 3
    native, _ = labelled_run(family, {"scale": 3.0}, steps)
    pcg, stepped = labelled_run(family, {"rule": "pcg", "scale": 3.0}, steps)
    labels = [key for key, _, _ in pcg.first]
    assert sorted(set(labels)) == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    for j in (1, 2):  # Wan 2.2: the expert the pipeline runs at that level
        assert pcg.denoiser_at(pcg.first, (j, 1)) == native.denoiser_at(native.first, (j, 0))
        if native.times:
            assert torch.equal(pcg.at(pcg.times, (j, 1)), native.at(native.times, (j, 0))), f"time at level {j}"
    own = [holds(pcg.at(pcg.first, (i, 0)), stepped[i][0]) for i in range(steps)]
    if all(own):  # the first layer sees the latents: so must the corrector's calls, at the predictor's output
        for j in (1, 2):
            assert holds(pcg.at(pcg.first, (j, 1)), stepped[j - 1][1]), f"latents at level {j}"


def test_terms_act_in_the_corrector_only():
    """A term adds its reference's rows to every corrector evaluation, none to the predictor (§32)."""
    pipe = gmm_pipeline(two_class_2d())
    spec = {"rule": {"name": "pcg", "corrector_steps": 2}, "scale": 2.0, "terms": [{"reference": "icg", "scale": 1.0}]}
    steps, batch = 4, 2
    with guidance.attach(pipe, spec) as session:
        pipe(class_labels=[0, 1], num_inference_steps=steps, guidance_scale=2.0, output_type="latent")
    assert session.stats["denoiser_rows"] == steps * batch + (steps - 1) * 2 * 3 * batch
    assert all(bool(r["terms"]) == bool(r["corrector"]) for r in session.stats["steps"])


@pytest.mark.parametrize(("change", "words"), [
    ({"scheduler": "euler"}, "is not DDIM"),
    ({"eta": 0.5}, "eta = 0"),
    ({"rule": {"name": "pcg", "corrector_steps": -1}}, "corrector_steps"),
    ({"rule": {"name": "pcg", "step_size": 0.0}}, "step_size"),
    ({"terms": [{"reference": "icg", "scale": 1.0, "rule": "pcg"}]}, "only be the main rule"),
    ({"policy": {"name": "linear_ag", "coefficients": "pipelines/models/digits/linear-ag-25.json"}}, "adaptive"),
])
def test_refusals(change, words):
    pipe = gmm_pipeline(two_class_2d())
    if change.pop("scheduler", None):
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    eta = change.pop("eta", 0.0)
    spec = {"rule": "pcg", "scale": 2.0, **change}
    with pytest.raises(GuidanceError, match=words):
        guidance.run(pipe, spec, class_labels=[0], num_inference_steps=3, eta=eta, output_type="latent")


@pytest.mark.parametrize("family", ["zimage", "wan22_5b_i2v"])
def test_pipelines_whose_input_is_not_the_latents_are_refused(family):
    kwargs = strip_scales(tiny_call_kwargs(family, batch=1, num_inference_steps=2))
    with pytest.raises(GuidanceError, match="PCG"):
        guidance.run(tiny_pipeline(family), {"rule": "pcg", "scale": 2.0}, **kwargs)


def test_flow_pipelines_draw_the_corrector_noise_from_the_calls_generator():
    """Flux's scheduler step gets no generator: guidance.run hands the call's to the corrector, so a seed repeats."""
    kwargs = strip_scales(tiny_call_kwargs("flux", batch=1, num_inference_steps=3))
    spec = {"rule": "pcg", "scale": 2.0}

    def image(seed: int) -> torch.Tensor:
        out = guidance.run(tiny_pipeline("flux"), spec, **{**kwargs, "generator": torch.Generator().manual_seed(seed),
                                                           "output_type": "latent"})
        return out.images

    torch.manual_seed(1)
    first = image(0)
    torch.manual_seed(2)
    assert torch.equal(first, image(0))
    assert not torch.equal(first, image(1))


@pytest.mark.parametrize("extra", [
    {"schedule": {"name": "interval", "sigma_lo": 0.5, "sigma_hi": 5.0}},
    {"schedule": "linear", "rescale": 0.7},
    {"policy": {"name": "adaptive", "threshold": 0.9}},
    {"reference": "tsg"},
    {"reference": {"name": "autoguidance", "model": "digits-weak"}},
], ids=["interval", "linear+rescale", "adaptive", "tsg", "autoguidance"])
def test_pcg_composes_with_the_axes(extra):
    """On the digits model: every corrector iteration at level j runs at the schedule's γ_j (1: conditional only)
    with the spec's reference and policy, and the samples stay finite."""
    spec = guidance.load({"rule": {"name": "pcg", "corrector_steps": 2}, "scale": 4.0, **extra})
    pipe = load_pipeline()
    stats: dict = {}
    out = guidance.run(pipe, spec, class_labels=[3, 7], num_inference_steps=6, output_type="latent", stats=stats,
                       generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.images).all()
    table = DDIMScheduler.from_config(pipe.scheduler.config)
    table.set_timesteps(6)
    expected = spec.rule.step_scales(spec.scale, spec.schedule, step_table(table))
    for record in stats["steps"]:
        if record["corrector"]:
            w = expected[record["step"]]
            assert record["w"] == (1.0 if w is None else pytest.approx(w))
            if w is None:
                assert record["branches"] == ["cond"]


def test_effective_scale_of_a_pcg_step_is_ddpm_cfgs_w():
    """Each corrector iteration at γ adds r·(γ − 1)/2 to its pipeline step's effective scale (the DDPM-CFG w it amounts
    to, §32); AG's share of guided samples scales it; the corrector records themselves have none."""
    def record(branches, w, corrector=0, reference_rows=2):
        return {"branches": list(branches), "w": w, "sigma": 1.0, "reference_rows": reference_rows, "samples": 2,
                "corrector": corrector}

    steps = [record(["cond"], 1.0, reference_rows=0), record(["cond", "reference"], 5.0, 1),
             record(["cond", "reference"], 5.0, 2, reference_rows=1), record(["cond"], 1.0, reference_rows=0),
             record(["cond"], 1.0, 1, reference_rows=0), record(["cond"], 1.0, reference_rows=0)]
    rule = {"name": "pcg", "corrector_steps": 2, "step_size": 0.5}
    assert effective_scales(steps, rule) == [1 + 0.5 * 4 / 2 + 0.5 * 4 / 2 * 0.5, None, None, 1.0, None, 1.0]
