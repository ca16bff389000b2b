"""attach leaves no trace (docs/CONVENTIONS.md §8, §11, §19): after `with guidance.attach(pipe, spec)` the
pipeline is exactly as before — same denoiser object and forward, same hooks, same scheduler with the same instance
attributes — also when the pipeline call raises inside the block; a native run afterwards equals a native run before.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch

import guidance
from guidance.pipelines.testing.tiny import FAMILIES, tiny_call_kwargs, tiny_pipeline

from conftest import denoisers, first_layer, output_tensor, strip_scales

B = 2
N = 4
SPEC = {"scale": 5.0, "rule": {"name": "apg", "momentum": -0.5}, "reference": "tsg"}
OTHER_SPECS = {
    "cfgpp": {"scale": 0.6, "rule": "cfgpp"},  # also wraps the scheduler's step (sampler correction)
    "icg_adaptive": {"scale": 5.0, "reference": "icg", "policy": {"name": "adaptive", "threshold": 0.5}},
}


class Boom(RuntimeError):
    pass


def denoiser_of(pipe) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def has_step_callback(pipe) -> bool:
    return "callback_on_step_end" in inspect.signature(pipe.__call__).parameters


def call_kwargs(family: str, session=None, **extra) -> dict:
    """Fresh (seeded) call kwargs with CFG batching on (guidance_scale / Flux's true_cfg_scale = 3)."""
    kwargs = tiny_call_kwargs(family, batch=B, num_inference_steps=N)
    if session is not None and has_step_callback(session.pipe):
        kwargs["callback_on_step_end"] = session.callback
    return {**kwargs, **extra}


def native(pipe, family: str) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(pipe(**call_kwargs(family)))


def hooks(module: torch.nn.Module) -> dict:
    """Every submodule's forward hooks and pre-hooks (handle id → hook function)."""
    return {name: (tuple(m._forward_hooks.items()), tuple(m._forward_pre_hooks.items()),
                   tuple(m._forward_hooks_with_kwargs.items()), tuple(m._forward_pre_hooks_with_kwargs.items()))
            for name, m in module.named_modules()}


_MISSING = object()


def snapshot(pipe) -> dict:
    denoiser, scheduler = denoiser_of(pipe), pipe.scheduler
    experts = {}  # a second expert (Wan 2.2) is routed and hooked too
    for expert in denoisers(pipe)[1:]:
        experts |= {"expert": expert, "expert.__dict__['forward']": expert.__dict__.get("forward", _MISSING),
                    "expert hooks": hooks(expert)}
    return {
        **experts,
        "denoiser": denoiser,
        "denoiser.__dict__['forward']": denoiser.__dict__.get("forward", _MISSING),
        "class forward": type(denoiser).forward,
        "scheduler": scheduler,
        "scheduler.__dict__['step']": scheduler.__dict__.get("step", _MISSING),
        "scheduler.__dict__['set_timesteps']": scheduler.__dict__.get("set_timesteps", _MISSING),
        "class step": type(scheduler).step,
        "class set_timesteps": type(scheduler).set_timesteps,
        "hooks": hooks(denoiser),
    }


def assert_same(before: dict, after: dict) -> None:
    for key, value in before.items():
        if key in ("hooks", "expert hooks"):
            changed = {name for name in value if value[name] != after[key].get(name)}
            assert not changed, f"{key} differ after exit on: {sorted(changed)}"
            assert set(value) == set(after[key])
        else:
            assert after[key] is value, f"{key} is not the same object after exit ({value!r} → {after[key]!r})"


def assert_patched_inside(pipe, before: dict, time_hooks: bool) -> None:
    """Non-vacuity: inside the block the session really changed the pipeline."""
    now = snapshot(pipe)
    assert now["denoiser.__dict__['forward']"] is not before["denoiser.__dict__['forward']"]
    if "expert" in before:
        assert now["expert.__dict__['forward']"] is not before["expert.__dict__['forward']"]
    assert now["scheduler.__dict__['step']"] is not before["scheduler.__dict__['step']"]
    if time_hooks:
        assert now["hooks"] != before["hooks"], "reference tsg should hook the time embedding inside the block"
        if "expert" in before:
            assert now["expert hooks"] != before["expert hooks"], "tsg should hook the second expert's too"


@pytest.mark.parametrize("family", FAMILIES)
def test_attach_restores_everything(family, row_counter):
    pipe = tiny_pipeline(family)
    reference = native(pipe, family)
    before = snapshot(pipe)
    with guidance.attach(pipe, SPEC) as session:
        assert_patched_inside(pipe, before, time_hooks=True)
        counter = row_counter(pipe)
        with torch.no_grad():
            guided = output_tensor(pipe(**call_kwargs(family, session)))
        counter.close()
        stats = session.stats  # readable inside the block, after the call
        assert stats["runs"] == 1
        assert stats["denoiser_rows"] == counter.rows == 2 * B * N
        assert len(stats["steps"]) == N
        assert [r["step"] for r in stats["steps"]] == list(range(N))
    assert_same(before, snapshot(pipe))
    assert not torch.equal(guided, reference), "the guided run should differ from native CFG at 3"
    assert torch.equal(native(pipe, family), reference), "a native run after exit differs from one before"


@pytest.mark.parametrize("name", OTHER_SPECS)
@pytest.mark.parametrize("family", FAMILIES)
def test_attach_restores_after_other_methods(family, name):
    pipe = tiny_pipeline(family)
    reference = native(pipe, family)
    before = snapshot(pipe)
    with guidance.attach(pipe, OTHER_SPECS[name]) as session, torch.no_grad():
        assert_patched_inside(pipe, before, time_hooks=False)
        guided = output_tensor(pipe(**call_kwargs(family, session)))
        assert len(session.stats["steps"]) == N
    assert_same(before, snapshot(pipe))
    assert not torch.equal(guided, reference)
    assert torch.equal(native(pipe, family), reference), "a native run after exit differs from one before"


def raising_step_end(session):
    def callback(pipeline, step, timestep, callback_kwargs):
        callback_kwargs = session.callback(pipeline, step, timestep, callback_kwargs)
        if step == 1:
            raise Boom("callback raised at step 1")
        return callback_kwargs

    return callback


def put_wrappers(pipe, fail_at_step: int | None = None) -> dict:
    """Someone else's instance wrappers on scheduler.step / set_timesteps and on the denoiser's forward."""
    scheduler, denoiser = pipe.scheduler, denoiser_of(pipe)
    seen = {"steps": 0, "set_timesteps": 0, "forward": 0}
    step, set_timesteps, forward = scheduler.step, scheduler.set_timesteps, denoiser.forward

    @functools.wraps(step)
    def step_wrapper(*args, **kwargs):
        seen["steps"] += 1
        if fail_at_step is not None and seen["steps"] == fail_at_step + 1:
            raise Boom(f"scheduler.step wrapper raised at step {fail_at_step}")
        return step(*args, **kwargs)

    @functools.wraps(set_timesteps)
    def set_timesteps_wrapper(*args, **kwargs):
        seen["set_timesteps"] += 1
        return set_timesteps(*args, **kwargs)

    @functools.wraps(forward)
    def forward_wrapper(*args, **kwargs):
        seen["forward"] += 1
        return forward(*args, **kwargs)

    scheduler.step = step_wrapper
    scheduler.set_timesteps = set_timesteps_wrapper
    denoiser.forward = forward_wrapper
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_restore_after_exception_in_the_call(family):
    pipe = tiny_pipeline(family)
    reference = native(pipe, family)
    calls = []

    def fail_in_step_one(module, inputs):
        calls.append(inputs[0].shape[0])
        if len(calls) == 2:  # the one evaluation of step 1
            raise Boom("the denoiser raised in step 1")

    # DiT and PixArt have no step-end callback: a pre-hook of ours on the first layer raises instead
    handle = None if has_step_callback(pipe) else first_layer(pipe).register_forward_pre_hook(fail_in_step_one)
    before = snapshot(pipe)
    with pytest.raises(Boom), guidance.attach(pipe, SPEC) as session:
        assert_patched_inside(pipe, before, time_hooks=True)
        with torch.no_grad():
            if handle is None:
                pipe(**call_kwargs(family, callback_on_step_end=raising_step_end(session)))
            else:
                pipe(**call_kwargs(family))
    assert_same(before, snapshot(pipe))
    if handle is not None:
        assert len(calls) == 2
        handle.remove()
    assert torch.equal(native(pipe, family), reference), "a native run after the failed block differs"


@pytest.mark.parametrize("family", ["sd", "sd3", "flux", "dit"])
def test_foreign_instance_wrappers_are_put_back(family):
    """docs/CONVENTIONS.md §19: wrappers someone else put on scheduler.step/set_timesteps and forward come back
    (identity)."""
    pipe = tiny_pipeline(family)
    reference = native(pipe, family)
    seen = put_wrappers(pipe)
    before = snapshot(pipe)
    assert before["scheduler.__dict__['step']"] is not _MISSING
    with guidance.attach(pipe, SPEC) as session, torch.no_grad():
        pipe(**call_kwargs(family, session))
    assert seen["steps"] == N and seen["set_timesteps"] == 1, "the session must call through the wrappers"
    assert seen["forward"] >= N
    assert_same(before, snapshot(pipe))
    assert "step" in pipe.scheduler.__dict__ and "set_timesteps" in pipe.scheduler.__dict__
    assert "forward" in denoiser_of(pipe).__dict__
    assert torch.equal(native(pipe, family), reference), "the put-back wrappers must still pass through"
    assert seen["steps"] == 2 * N, "after exit the foreign step wrapper is the one in use again"


@pytest.mark.parametrize("family", ["sd", "flux", "dit"])
def test_foreign_wrappers_put_back_after_exception(family):
    pipe = tiny_pipeline(family)
    put_wrappers(pipe, fail_at_step=1)
    before = snapshot(pipe)
    with pytest.raises(Boom), guidance.attach(pipe, SPEC) as session, torch.no_grad():
        pipe(**call_kwargs(family, session))
    assert_same(before, snapshot(pipe))


def test_hooks_of_others_survive(row_counter):
    """A hook someone registered on the time embedding before attach (TSG hooks it too) is kept, the session's
    own hook removed."""
    pipe = tiny_pipeline("sd")
    seen = []
    handle = pipe.unet.time_embedding.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    counter = row_counter(pipe)  # a pre-hook on conv_in
    before = snapshot(pipe)
    with guidance.attach(pipe, SPEC) as session:
        assert len(pipe.unet.time_embedding._forward_hooks) == 2
        with torch.no_grad():
            pipe(**call_kwargs("sd", session))
    assert_same(before, snapshot(pipe))
    assert list(pipe.unet.time_embedding._forward_hooks) == [handle.id]
    assert seen == counter.calls == [2 * B] * N
    handle.remove()


@pytest.mark.parametrize("reference", ["tsg", "icg"])
@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "pixart", "dit"])
def test_second_call_in_one_session_repeats_the_first(family, reference):
    """APG momentum and TSG's / ICG's generators reset at every pipeline call (docs/CONVENTIONS.md §8, §11, §13,
    §14)."""
    pipe = tiny_pipeline(family)
    spec = {**SPEC, "reference": reference}
    with guidance.attach(pipe, spec) as session, torch.no_grad():
        first = output_tensor(pipe(**call_kwargs(family, session)))
        second = output_tensor(pipe(**call_kwargs(family, session)))
        stats = session.stats
    assert stats["runs"] == 2 and len(stats["steps"]) == 2 * N
    assert stats["denoiser_rows"] == 2 * (2 * B * N)
    assert [r["run"] for r in stats["steps"]] == [0] * N + [1] * N
    assert torch.equal(first, second), f"second call differs by {float((first - second).abs().max())}"
    for a, b in zip(stats["steps"][:N], stats["steps"][N:], strict=True):
        assert a["delta_norm"] == b["delta_norm"]
    # the same as a fresh session's single call
    with guidance.attach(pipe, spec) as session, torch.no_grad():
        fresh = output_tensor(pipe(**call_kwargs(family, session)))
    assert torch.equal(first, fresh)
    # non-vacuity: the momentum and the reference's random draws do change the result, so leaked state would show
    no_momentum = {**spec, "rule": {"name": "apg", "momentum": 0.0}}
    other_seed = {**spec, "reference": {"name": reference, "seed": 1}}
    for spec in (no_momentum, other_seed):
        with guidance.attach(pipe, spec) as session, torch.no_grad():
            other = output_tensor(pipe(**call_kwargs(family, session)))
        assert not torch.allclose(first, other), f"{spec} gives the same output"


def test_plain_wrappers_by_others_keep_working() -> None:
    """Someone else's wrappers without functools.wraps (signature *args, **kwargs) on forward and step."""
    pipe = tiny_pipeline("sd")
    unet_forward, scheduler_step = pipe.unet.forward, pipe.scheduler.step
    calls = {"forward": 0, "step": 0}

    def forward(*args, **kwargs):
        calls["forward"] += 1
        return unet_forward(*args, **kwargs)

    def step(*args, **kwargs):
        calls["step"] += 1
        return scheduler_step(*args, **kwargs)

    pipe.unet.forward, pipe.scheduler.step = forward, step
    kwargs = strip_scales(tiny_call_kwargs("sd", batch=2, seed=0))
    out = guidance.run(pipe, {"rule": "cfgpp", "scale": 0.6}, **kwargs).images
    assert torch.isfinite(out).all() and calls == {"forward": 4, "step": 4}
    assert pipe.unet.forward is forward and pipe.scheduler.step is step
