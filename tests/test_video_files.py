"""Videos through the CLI: `guidance generate` on a video pipeline writes animated WebP files that carry the whole
config (regenerable bit for bit), and `sweep` grids show their first frames."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import guidance
from guidance.app.cli import main
from guidance.app.config import validate
from guidance.app.generate import generate
from guidance.app.media import read_metadata
from guidance.errors import GuidanceError
from guidance.pipelines.testing.components import t5_text_encoder, tiny_tokenizer
from guidance.pipelines.testing.tiny import tiny_pipeline

FRAMES = 5


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory) -> Path:
    """A tiny Wan pipeline with a text encoder, saved like a downloaded model."""
    pipe = tiny_pipeline("wan")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    encoder = t5_text_encoder(tokenizer, multilingual=True)
    pipe = type(pipe)(**{**pipe.components, "tokenizer": tokenizer, "text_encoder": encoder})
    folder = tmp_path_factory.mktemp("wan") / "tiny-wan"
    pipe.save_pretrained(folder)
    return folder


def run_config(tmp_path: Path, folder: Path, **sampler) -> Path:
    path = tmp_path / "video.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": str(folder)}, "prompts": ["a cat", "a dog"], "negative_prompt": "blurry",
        "sampler": {"steps": 2, "frames": FRAMES, "height": 16, "width": 16, **sampler},
        "guidance": {"rule": "apg", "scale": 5.0}, "output": {"fps": 8}}))
    return path


def frames_of(path: Path) -> list[np.ndarray]:
    with Image.open(path) as video:
        out = []
        for k in range(video.n_frames):
            video.seek(k)
            out.append(np.asarray(video.convert("RGB")).copy())
        return out


def test_generate_writes_animated_webp_with_config_and_regenerates_it(tmp_path, wan_folder, capsys) -> None:
    out = tmp_path / "out"
    assert main(["generate", "-c", str(run_config(tmp_path, wan_folder)), "--out", str(out), "--no-progress"]) == 0
    assert "Wrote 2 videos" in capsys.readouterr().out
    files = sorted(out.glob("*.webp"))
    assert [f.name for f in files] == ["image-000-00.webp", "image-001-00.webp"]
    with Image.open(files[1]) as video:
        assert video.format == "WEBP" and video.n_frames == FRAMES and video.size == (16, 16)
        video.load()
        assert video.info["duration"] == 125  # 8 fps
    config, item = read_metadata(files[1])
    assert config["sampler"]["frames"] == FRAMES and config["guidance"]["rule"]["name"] == "apg"
    assert item == {"index": 1, "image": 0, "item": "a dog", "seed": 1}
    assert main(["generate", "--from-image", str(files[1]), "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    again = tmp_path / "again" / "image-001-00.webp"
    assert [f.name for f in (tmp_path / "again").iterdir()] == [again.name]
    first, second = frames_of(files[1]), frames_of(again)
    assert len(first) == FRAMES and all((a == b).all() for a, b in zip(first, second, strict=True))
    assert any((a != first[0]).any() for a in first[1:]), "the frames are all the same picture"


def test_the_video_frames_are_the_pipelines_own(tmp_path, wan_folder) -> None:
    """The file holds, losslessly, the frames guidance.run returns for the same call."""
    config = validate(yaml.safe_load(run_config(tmp_path, wan_folder).read_text()), "video.yaml")
    [path] = generate(config, tmp_path / "out", progress=False, only=(0, 0))
    from guidance.app.loading import load_model
    pipe = load_model(config.model)
    expected = guidance.run(pipe, config.guidance, prompt=["a cat"], negative_prompt=["blurry"], num_frames=FRAMES,
                            height=16, width=16, num_inference_steps=2, output_type="pil",
                            generator=torch.Generator().manual_seed(0)).frames[0]
    got = frames_of(path)
    assert all((np.asarray(e) == g).all() for e, g in zip(expected, got, strict=True))


def test_sweep_grid_shows_first_frames_and_lists_the_videos(tmp_path, wan_folder) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "-c", str(run_config(tmp_path, wan_folder)), "--grid", "guidance.scale=1,6",
                 "--seeds", "0", "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "sweep.json").read_text())
    videos = [Path(f) for cell in record["cells"] for f in cell["images"]]
    assert len(videos) == 4 and all(v.suffix == ".webp" and v.is_file() for v in videos)
    with Image.open(out / "grid.png") as grid:
        assert grid.format == "PNG"
        grid = np.asarray(grid.convert("RGB"))
    first = frames_of(videos[0])[0]
    scale = 3  # the grid draws 16-pixel images 3× (cells are at least 48 pixels)
    shown = first.repeat(scale, axis=0).repeat(scale, axis=1)
    size = shown.shape[0]
    assert any((grid[r:r + size, c:c + size] == shown).all() for r in range(grid.shape[0] - size + 1)
               for c in range(grid.shape[1] - size + 1)), "the first video's first frame is not in the grid"


def test_a_video_pipeline_needs_a_frame_count(tmp_path, wan_folder) -> None:
    data = yaml.safe_load(run_config(tmp_path, wan_folder).read_text())
    del data["sampler"]["frames"]
    out = tmp_path / "out"
    with pytest.raises(GuidanceError, match="makes videos: set sampler.frames"):
        generate(validate(data, "video.yaml"), out, pipe=tiny_pipeline("wan"), progress=False)
    assert not any(out.glob("*"))


def test_frames_on_an_image_pipeline_is_refused(tmp_path) -> None:
    config = validate({"sampler": {"frames": 5, "steps": 2}}, "digits.yaml")
    with pytest.raises(GuidanceError, match="sampler.frames is set but .* no `num_frames`"):
        generate(config, tmp_path / "out", progress=False)


def test_the_sweep_page_shows_first_frames_and_plays_the_videos(tmp_path, wan_folder, tab) -> None:
    from browser import load

    out = tmp_path / "sweep"
    assert main(["sweep", "-c", str(run_config(tmp_path, wan_folder)), "--grid", "guidance.scale=1,6",
                 "--seeds", "0", "--out", str(out), "--no-progress"]) == 0
    media = [m for cell in json.loads((out / "sweep.json").read_text())["cells"] for m in cell["media"]]
    assert len(media) == 4 and all(m["video"] and m["src"].endswith(".webp") for m in media)
    load(tab, out / "index.html")
    first = frames_of(out / media[0]["src"])[0]
    box = tab.evaluate("""(() => { const c = document.querySelector('#grid figure canvas');
        const r = c.getBoundingClientRect(); return [c.width, c.height, r.x + scrollX, r.y + scrollY, r.width]; })()""")
    assert box[:2] == [first.shape[1], first.shape[0]]
    shot = tab.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                    clip={"x": box[2], "y": box[3], "width": box[4], "height": box[4], "scale": 1})
    with Image.open(io.BytesIO(base64.b64decode(shot["data"]))) as image:
        shown = np.asarray(image.convert("RGB"))
    zoom = shown.shape[0] / first.shape[0]
    centres = ((np.arange(first.shape[0]) + 0.5) * zoom).astype(int)
    assert np.abs(shown[np.ix_(centres, centres)].astype(int) - first).max() <= 2  # the canvas shows the first frame
    shown = tab.evaluate("""(() => { const f = document.querySelector('#grid figure');
        const b = f.querySelector('button');
        const visible = () => [f.querySelector('canvas'), f.querySelector('img')].map(e => getComputedStyle(e).display);
        const before = visible(); b.click(); return [before, visible()]; })()""")
    assert shown == [["block", "none"], ["none", "block"]]  # ▶ swaps the first frame for the playing video
    assert tab.errors == []
