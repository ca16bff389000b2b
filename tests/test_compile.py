"""The plugin on a `torch.compile`d denoiser: both `torch.compile(unet)` and `unet.compile()` give the eager
results, without compiling the plugin into the graph, and are restored on exit."""

import pytest
import torch

from guidance.pipelines import run
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor


def _compiler_reason() -> str | None:
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
    except Exception as error:  # no C++ compiler or an unsupported platform
        return f"torch.compile does not work here: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return None


REASON = _compiler_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _kwargs():
    kwargs = tiny_call_kwargs("sd", batch=1, num_inference_steps=4) | {"output_type": "latent"}
    kwargs.pop("guidance_scale")
    return kwargs


@pytest.mark.parametrize("form", ["torch.compile(unet)", "unet.compile()"])
def test_compiled_denoiser(form):
    torch._dynamo.reset()
    eager = tiny_pipeline("sd")
    pipe = tiny_pipeline("sd")
    if form == "unet.compile()":
        pipe.unet.compile()
    else:
        pipe.unet = torch.compile(pipe.unet)
    apg = {"rule": {"name": "apg", "eta": 0.0, "norm_threshold": 2.0}, "scale": 5.0}
    entries = {k: vars(pipe.unet).get(k) for k in ("forward", "_compiled_call_impl")}
    native = output_tensor(pipe(**_kwargs(), guidance_scale=5.0))
    assert torch.allclose(native, output_tensor(eager(**_kwargs(), guidance_scale=5.0)), atol=1e-4)
    for spec in ({"scale": 5.0}, apg):
        compiled = output_tensor(run(pipe, spec, **_kwargs()))
        assert torch.allclose(compiled, output_tensor(run(eager, spec, **_kwargs())), atol=1e-4)
    assert torch.equal(output_tensor(run(pipe, {"scale": 5.0}, **_kwargs())), native)  # same compiled graph
    assert {k: vars(pipe.unet).get(k) for k in entries} == entries  # restored: the same objects
    after = output_tensor(pipe(**_kwargs(), guidance_scale=5.0))
    assert torch.equal(after, native)
