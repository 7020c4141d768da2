"""Every Pillow mode becomes the picture a viewer shows, checked against a
known mean; what has no defined range is refused, never guessed."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from spatialreward.errors import InputError
from spatialreward.images import load_image

W, H = 64, 32


def ramp(high: int, dtype) -> np.ndarray:
    """A horizontal ramp 0..high: its mean is high / 2."""
    row = np.rint(np.linspace(0, high, W)).astype(dtype)
    return np.tile(row, (H, 1))


def png16_rgb(path, values: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    height, width, _ = values.shape
    raw = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def make(kind: str, tmp_path):
    """(file, expected mean of the RGB result, expected opened mode)."""
    if kind == "16-bit grey":
        path = tmp_path / "g16.png"
        Image.fromarray(ramp(65535, np.uint16)).save(path)
        return path, 127.5, "I;16"
    if kind == "32-bit int grey (16-bit data)":
        path = tmp_path / "i32.tif"
        Image.fromarray(ramp(65535, np.int32)).save(path)
        return path, 127.5, "I"
    if kind == "32-bit float grey 0..1":
        path = tmp_path / "f32.tif"
        Image.fromarray(np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))).save(path)
        return path, 127.5, "F"
    if kind == "LA half transparent black":
        path = tmp_path / "la.png"
        la = np.zeros((H, W, 2), np.uint8)
        la[..., 1] = 128  # black at alpha 128 over white -> 127
        Image.fromarray(la, "LA").save(path)
        return path, 127.0, "LA"
    if kind == "RGBA transparent":
        path = tmp_path / "rgba.png"
        Image.new("RGBA", (W, H), (0, 0, 0, 0)).save(path)  # fully transparent black -> white
        return path, 255.0, "RGBA"
    if kind == "P with transparency":
        path = tmp_path / "p.png"
        image = Image.new("P", (W, H), 0)
        image.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
        pixels = np.zeros((H, W), np.uint8)
        pixels[:, W // 2:] = 1  # left half: transparent black (white); right: grey 200
        image = Image.fromarray(pixels, "P")
        image.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
        image.save(path, transparency=0)
        return path, (255 + 200) / 2, "P"
    if kind == "CMYK":
        path = tmp_path / "cmyk.tif"
        Image.new("CMYK", (W, H), (0, 0, 0, 128)).save(path)
        return path, 127.0, "CMYK"
    if kind == "16-bit RGB":
        path = tmp_path / "rgb16.png"
        png16_rgb(path, np.stack([ramp(65535, np.uint16)] * 3, axis=-1))
        return path, 127.5, "RGB"
    if kind == "1-bit":
        path = tmp_path / "bits.png"
        bits = np.zeros((H, W), bool)
        bits[:, W // 2:] = True
        Image.fromarray(bits).save(path)
        return path, 127.5, "1"
    raise AssertionError(kind)


KINDS = ["16-bit grey", "32-bit int grey (16-bit data)", "32-bit float grey 0..1", "LA half transparent black",
         "RGBA transparent", "P with transparency", "CMYK", "16-bit RGB", "1-bit"]


@pytest.mark.parametrize("kind", KINDS)
def test_mode_converts_faithfully(kind, tmp_path):
    path, mean, mode = make(kind, tmp_path)
    assert Image.open(path).mode == mode  # the test really exercises that mode
    for source in (path, Image.open(path)):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (W, H)
        assert np.asarray(image, dtype=np.float64).mean() == pytest.approx(mean, abs=1.0), kind


def test_32_bit_values_outside_16_bits_are_refused(tmp_path):
    path = tmp_path / "big.tif"
    Image.fromarray(np.full((H, W), 70000, np.int32)).save(path)
    with pytest.raises(InputError, match=r"big\.tif: 32-bit integer image with values 70000\.\.70000"):
        load_image(path)


@pytest.mark.parametrize("value", [2.0, -0.5, float("nan")])
def test_float_images_outside_0_1_are_refused(tmp_path, value):
    path = tmp_path / "f.tif"
    Image.fromarray(np.full((H, W), value, np.float32)).save(path)
    with pytest.raises(InputError, match="32-bit float image with values outside 0..1"):
        load_image(path)


def test_extreme_aspect_ratio_is_an_input_error(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (2010, 10), (10, 20, 30)).save(path)
    with pytest.raises(InputError, match=r"strip\.png: 2010x10 is more than 200 times"):
        load_image(path)
    load_image(Image.new("RGB", (2000, 10)))  # exactly 200: accepted


def test_pillow_warnings_do_not_leak(tmp_path, recwarn):
    """A file that makes Pillow warn (here: a truncated EXIF block) still loads;
    the warning goes to the log, not to stderr."""
    path = tmp_path / "badexif.jpg"
    Image.new("RGB", (W, H), (90, 90, 90)).save(path, exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00")
    load_image(path)
    assert not [w for w in recwarn if "PIL" in str(w.filename) or "exif" in str(w.message).lower()]
