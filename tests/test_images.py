"""Image loading with explicit per-file failures (spatialreward.images)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from spatialreward.errors import InputError
from spatialreward.images import load_image


def craft_png(path: Path, width: int, height: int, mode: str = "RGB") -> Path:
    """A real 8x8 PNG whose IHDR claims ``width`` x ``height`` (valid CRC)."""
    buf = io.BytesIO()
    Image.new(mode, (8, 8), 7 if mode == "L" else (1, 2, 3)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail loudly if any pixel data is decoded."""

    def boom(self, *args, **kwargs):
        raise AssertionError("image data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


def test_loads_landscape_photo(photos):
    image = load_image(photos["coffee"])
    assert image.mode == "RGB"
    assert image.size == (600, 400)


def test_loads_portrait_photo_and_jpeg(photos):
    assert load_image(photos["astronaut"]).size == (300, 512)
    gray = load_image(str(photos["coffee_gray"]))
    assert gray.mode == "RGB"
    assert gray.size == (600, 400)


def test_pixels_match_the_file(photos):
    with Image.open(photos["coffee_red_square"]) as ref:
        expected = ref.convert("RGB").getpixel((450, 190))
    assert load_image(photos["coffee_red_square"]).getpixel((450, 190)) == expected == (220, 20, 20)


def test_non_rgb_file_converted(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (10, 6), (10, 20, 30, 40)).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (10, 6)
    path = tmp_path / "palette.gif"
    Image.new("P", (5, 7)).save(path)
    assert load_image(path).mode == "RGB"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)
    assert info.value.stage == "input"


def test_directory(tmp_path):
    folder = tmp_path / "dir.png"
    folder.mkdir()
    with pytest.raises(InputError) as info:
        load_image(folder)
    assert str(folder) in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "empty" in str(info.value)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path, photos):
    data = Path(photos["coffee"]).read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path, photos):
    data = Path(photos["coffee_gray"]).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_role_in_message(tmp_path):
    with pytest.raises(InputError, match=r"^source image "):
        load_image(tmp_path / "x.png", role="source image")


def test_over_max_pixels_refused_without_decoding(photos, no_decoding):
    with pytest.raises(InputError) as info:
        load_image(photos["coffee"], max_pixels=1000)
    message = str(info.value)
    assert str(photos["coffee"]) in message
    assert "600x400" in message
    assert "limit" in message and "1,000" in message


def test_exactly_max_pixels_accepted(photos):
    assert load_image(photos["coffee"], max_pixels=600 * 400).size == (600, 400)
    with pytest.raises(InputError):
        load_image(photos["coffee"], max_pixels=600 * 400 - 1)


def test_crafted_header_over_custom_limit(tmp_path, no_decoding):
    path = craft_png(tmp_path / "bomb.png", 5000, 5000)
    with pytest.raises(InputError) as info:
        load_image(path, max_pixels=1_000_000)
    assert str(path) in str(info.value)
    assert "limit" in str(info.value)


def test_decompression_bomb_default_limit(tmp_path, no_decoding):
    """A PNG whose header says 20000x20000 (400 Mpx) must be refused from the
    header with the size-limit message (the one that tells the user about
    SPATIALREWARD_MAX_IMAGE_PIXELS), not as an unreadable image."""
    path = craft_png(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(InputError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message
    assert "limit" in message
    assert "20000x20000" in message


def test_max_pixels_above_pillow_limit_is_honoured(tmp_path):
    """max_pixels (SPATIALREWARD_MAX_IMAGE_PIXELS) raised above Pillow's own
    limit (~89.5 Mpx) must let a 9500x9500 (90.25 Mpx) image past the size
    check: this crafted one then fails as truncated data, not as a bomb."""
    assert 9500 * 9500 > Image.MAX_IMAGE_PIXELS
    path = craft_png(tmp_path / "big.png", 9500, 9500, mode="L")
    with pytest.raises(InputError) as info:
        load_image(path, max_pixels=200_000_000)
    message = str(info.value)
    assert "DecompressionBomb" not in message
    assert "corrupt or truncated" in message


def test_pil_image_input_rgb_returned():
    image = Image.new("RGB", (12, 8), (5, 6, 7))
    out = load_image(image)
    assert out.mode == "RGB"
    assert out.size == (12, 8)
    assert out.getpixel((0, 0)) == (5, 6, 7)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_pil_image_input_converted_to_rgb(mode):
    image = Image.new(mode, (9, 4))
    out = load_image(image)
    assert out.mode == "RGB"
    assert out.size == (9, 4)


def test_pil_image_input_size_checked():
    with pytest.raises(InputError, match="limit"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=9999)


def test_pil_zero_size_refused():
    with pytest.raises(InputError, match="zero-size"):
        load_image(Image.new("RGB", (0, 10)))


def test_exif_orientation_applied(tmp_path, photos):
    with Image.open(photos["coffee"]) as photo:
        base = photo.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    base.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(path) as raw:
        assert raw.size == (600, 400)  # stored landscape
        assert raw.getexif().get(0x0112) == 6
    image = load_image(path)
    assert image.size == (400, 600)  # shown portrait
    assert image.mode == "RGB"


def test_exif_orientation_rotation_direction(tmp_path):
    # left half red, right half blue; orientation 6 rotates 90 degrees clockwise,
    # so the red half ends up on top
    base = Image.new("RGB", (64, 32), (0, 0, 255))
    base.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "o6.jpg"
    base.save(path, "JPEG", exif=exif.tobytes(), quality=100)
    image = load_image(path)
    assert image.size == (32, 64)
    top = image.getpixel((16, 8))
    bottom = image.getpixel((16, 56))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("raw", ["abc", "64M", "-5", "0", "1.5"])
def test_bad_max_image_pixels_env_is_one_clear_line_when_used(raw, monkeypatch, photos):
    from spatialreward import constants
    from spatialreward.errors import ConfigError

    monkeypatch.setattr(constants, "_MAX_IMAGE_PIXELS_RAW", raw)
    with pytest.raises(ConfigError, match=r"SPATIALREWARD_MAX_IMAGE_PIXELS=.*must be a positive whole number"):
        load_image(photos["coffee"])


def test_max_image_pixels_env_is_honoured(monkeypatch, photos):
    from spatialreward import constants

    monkeypatch.setattr(constants, "_MAX_IMAGE_PIXELS_RAW", "100_000")
    with pytest.raises(InputError, match="over the limit of 100,000"):
        load_image(photos["coffee"])
    monkeypatch.setattr(constants, "_MAX_IMAGE_PIXELS_RAW", " 240000 ")
    assert load_image(photos["coffee"]).size == (600, 400)


def test_bad_env_does_not_break_help(tmp_path):
    from conftest import run_cli

    proc = run_cli("--help", env={"SPATIALREWARD_MAX_IMAGE_PIXELS": "abc"})
    assert proc.returncode == 0 and "judge" in proc.stdout
    proc = run_cli("judge", "--help", env={"SPATIALREWARD_MAX_IMAGE_PIXELS": "64M"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
