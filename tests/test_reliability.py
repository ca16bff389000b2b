"""Dependable in many hands: nothing unsafe loads, an interrupted run leaves no partial file and a restored
pipeline, and running out of memory names the way out."""

from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path

import pytest
import torch

import guidance
from guidance.app import generate as generate_module
from guidance.app.cli import main
from guidance.pipelines.digits import load_pipeline

FAST = ["--no-progress", "--set", "sampler.steps=2", "--set", "class_labels=[1,2,3]"]


class Marker:
    """A pickle that creates a file when it is unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def pickle_only_copy(folder: Path) -> Path:
    """The digits pipeline saved with pickle weights (.bin) only."""
    load_pipeline().save_pretrained(folder, safe_serialization=False)
    assert list(folder.rglob("*.bin")) and not list(folder.rglob("*.safetensors"))
    return folder


def test_a_pickle_only_model_is_refused_without_unpickling_it(tmp_path, capsys) -> None:
    folder = pickle_only_copy(tmp_path / "model")
    marker = tmp_path / "unpickled"
    weights = next(folder.rglob("*.bin"))
    weights.write_bytes(pickle.dumps(Marker(marker)))
    assert main(["generate", "--set", f"model.path={folder}", "--out", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "pickle" in err and "Traceback" not in err
    assert not marker.exists() and not any((tmp_path / "out").glob("*"))


def test_allow_pickle_loads_a_trusted_pickle_model(tmp_path, capsys) -> None:
    folder = pickle_only_copy(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["generate", "--set", f"model.path={folder}", "--out", str(out), "--allow-pickle", *FAST]) == 0
    assert len(list(out.glob("*.png"))) == 3


def test_code_in_a_model_folder_never_runs(tmp_path, capsys) -> None:
    """A pipeline folder whose model_index names a class from a .py file inside it is refused, the file not run."""
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    marker = tmp_path / "ran"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nfrom diffusers import UNet2DModel as Custom\n"
    (folder / "unet" / "custom_unet.py").write_text(code)
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                          "unet": ["custom_unet", "Custom"]}))
    assert main(["generate", "--set", f"model.path={folder}", "--out", str(tmp_path / "out"), *FAST]) == 2
    assert "Could not load the model" in capsys.readouterr().err
    assert not marker.exists()


def test_an_image_cannot_opt_in_to_pickle(tmp_path, capsys) -> None:
    """--from-image takes the model from the PNG's metadata: the safetensors-only rule applies to it as well."""
    out = tmp_path / "out"
    assert main(["generate", "--out", str(out), *FAST]) == 0
    image = next(out.glob("*.png"))
    folder = pickle_only_copy(tmp_path / "model")
    from PIL import Image, PngImagePlugin

    with Image.open(image) as opened:
        text = dict(opened.text)
        config = json.loads(text[generate_module.CONFIG_KEY])
        config["model"]["path"] = str(folder)
        info = PngImagePlugin.PngInfo()
        for key, value in {**text, generate_module.CONFIG_KEY: json.dumps(config)}.items():
            info.add_text(key, value)
        opened.save(tmp_path / "crafted.png", pnginfo=info)
    assert main(["generate", "--from-image", str(tmp_path / "crafted.png"), "--out", str(tmp_path / "again")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err


def interrupt_on_call(monkeypatch, number: int, error: BaseException) -> None:
    """generate's pipeline call number `number` raises `error` (the earlier ones run)."""
    calls = {"n": 0}
    run = generate_module.run

    @functools.wraps(run)
    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == number:
            raise error
        return run(*args, **kwargs)

    monkeypatch.setattr(generate_module, "run", failing)


@pytest.mark.parametrize("command", ["generate", "sweep"])
def test_ctrl_c_exits_130_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys, command) -> None:
    interrupt_on_call(monkeypatch, 2, KeyboardInterrupt())
    out = tmp_path / "out"
    assert main([command, "--out", str(out), *FAST]) == 130
    assert "interrupted" in capsys.readouterr().err
    written = [p for p in out.rglob("*") if p.is_file()]
    # the finished first image (a sweep: and its call's record); no temporary or partial file
    assert sorted(p.suffix for p in written) == ([".json", ".png"] if command == "sweep" else [".png"])
    monkeypatch.undo()
    assert main([command, "--out", str(out), *FAST] + (["--overwrite"] if command == "generate" else [])) == 0


def test_ctrl_c_inside_guidance_run_restores_the_pipeline() -> None:
    pipe = load_pipeline()
    forward, step = pipe.unet.forward, pipe.scheduler.step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    pipe.unet.forward = interrupted
    with pytest.raises(KeyboardInterrupt):
        guidance.run(pipe, {"scale": 3.0, "rule": "apg"}, class_labels=[1, 2], num_inference_steps=5)
    assert pipe.unet.forward is interrupted and pipe.scheduler.step == step and "step" not in vars(pipe.scheduler)
    pipe.unet.forward = forward
    fresh = load_pipeline()
    kwargs = {"class_labels": [1, 2], "num_inference_steps": 3, "output_type": "latent"}
    assert torch.equal(guidance.run(pipe, {"scale": 3.0}, generator=torch.Generator().manual_seed(0), **kwargs).images,
                       guidance.run(fresh, {"scale": 3.0}, generator=torch.Generator().manual_seed(0), **kwargs).images)


def test_out_of_memory_names_the_options(tmp_path, monkeypatch, capsys) -> None:
    interrupt_on_call(monkeypatch, 1, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    assert main(["generate", "--out", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in ("sampler.batch", "float16", "offload", "20.00 GiB")) and "Traceback" not in err


def test_out_of_memory_in_python_carries_the_options() -> None:
    pipe = load_pipeline()

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    pipe.unet.forward = exhausted
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        guidance.run(pipe, {"scale": 3.0}, class_labels=[1], num_inference_steps=2)
    assert any("offload" in note for note in getattr(info.value, "__notes__", []))
