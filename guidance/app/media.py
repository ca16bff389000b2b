"""Files that carry their own recipe: PNG images and animated WebP videos with the resolved run config, the item
record (call index, image index, prompt or label, seed) and the library versions in their metadata.

Videos are animated WebP, not MP4: Pillow writes and reads them with no new dependency (MP4 would need an ffmpeg
binary), every browser plays them in an <img> element (the sweep pages), lossless frames keep a regenerated video
comparable pixel for pixel, and the metadata sits in the file's XMP packet (PNG: text chunks).
"""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..errors import GuidanceError

CONFIG_KEY, ITEM_KEY, VERSIONS_KEY = "guidance:config", "guidance:item", "guidance:versions"
_NAMESPACE = "https://github.com/diffusers-guidance/ns/1.0/"  # the XMP namespace of the three records
_XMP, _RDF = "adobe:ns:meta/", "http://www.w3.org/1999/02/22-rdf-syntax-ns#"


def atomic_write(path: Path, write: Any) -> None:
    """Call write(temporary path) beside `path`, then move it into place: readers never see a partial file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _xmp(records: dict[str, str]) -> bytes:
    """An XMP packet holding `records` as attributes of one rdf:Description."""
    root = ElementTree.Element(f"{{{_XMP}}}xmpmeta")
    rdf = ElementTree.SubElement(root, f"{{{_RDF}}}RDF")
    ElementTree.SubElement(rdf, f"{{{_RDF}}}Description",
                           {f"{{{_NAMESPACE}}}{key.split(':')[1]}": value for key, value in records.items()})
    return ElementTree.tostring(root, encoding="utf-8")


def _from_xmp(packet: bytes | str) -> dict[str, str]:
    try:
        root = ElementTree.fromstring(packet)
    except ElementTree.ParseError:
        return {}
    description = root.find(f"{{{_RDF}}}RDF/{{{_RDF}}}Description")
    if description is None:
        return {}
    prefix = f"{{{_NAMESPACE}}}"
    return {f"guidance:{key[len(prefix):]}": value for key, value in description.attrib.items()
            if key.startswith(prefix)}


def write_image(image: Image.Image, path: Path, records: dict[str, str]) -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in records.items():
        info.add_text(key, value)
    atomic_write(path, lambda temporary: image.save(temporary, format="PNG", pnginfo=info))


def write_video(frames: list[Image.Image], path: Path, records: dict[str, str], fps: int) -> None:
    """Lossless animated WebP, looping, at `fps` frames per second."""
    first, *rest = frames
    atomic_write(path, lambda temporary: first.save(
        temporary, format="WEBP", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0,
        lossless=True, xmp=_xmp(records)))


def read_records(path: Path) -> dict[str, str]:
    """The metadata records of a PNG or WebP written by `guidance generate` ({} when it has none)."""
    try:
        with Image.open(path) as image:
            if image.format == "WEBP":
                return _from_xmp(image.info.get("xmp", b""))
            return dict(getattr(image, "text", {}))
    except OSError:
        raise GuidanceError(f"Cannot read '{path}' as a PNG image or WebP video. Pass a file written by guidance "
                            "generate.") from None


def read_metadata(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config mapping, item record) stored in a file written by `guidance generate`."""
    records = read_records(path)
    if CONFIG_KEY not in records or ITEM_KEY not in records:
        raise GuidanceError(f"'{path}' carries no guidance metadata: only images and videos written by guidance "
                            "generate can be regenerated.")
    return json.loads(records[CONFIG_KEY]), json.loads(records[ITEM_KEY])
