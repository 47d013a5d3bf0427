import functools
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from d2v.core.errors import InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from d2v.models.preprocessing import (
    DEFAULT_MAX_PIXELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessingConfig,
    ImagePreprocessor,
    Preprocessor,
    build_preprocessor,
    center_crop,
    hflip,
    normalize,
    random_resized_crop,
    resize_shorter_side,
    to_chw_float,
    to_rgb,
)

MEAN = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
STD = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)


def encode(img, fmt, **kwargs):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gradient_rgb(width=320, height=240):
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2).astype(np.uint8), "RGB")


def denormalise(chw):
    return chw * STD + MEAN


@pytest.fixture()
def pre():
    return ImagePreprocessor(ImagePreprocessingConfig())


@functools.cache
def _inputs():
    rgb = gradient_rgb()
    gray16 = Image.fromarray((np.arange(200 * 300, dtype=np.uint32).reshape(200, 300) % 65536).astype(np.uint16))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    return {
        "png": encode(rgb, "PNG"),
        "jpeg": encode(rgb, "JPEG", quality=90),
        "webp": encode(rgb, "WEBP"),
        "palette": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "palette_transparent": encode(rgb.convert("P"), "PNG", transparency=0),
        "rgba": encode(rgba, "PNG"),
        "grayscale": encode(rgb.convert("L"), "PNG"),
        "gray_alpha": encode(rgb.convert("LA"), "PNG"),
        "gray16": encode(gray16, "PNG"),
        "cmyk_jpeg": encode(rgb.convert("CMYK"), "JPEG"),
        "bilevel": encode(rgb.convert("1"), "PNG"),
        "gif": encode(rgb.convert("P"), "GIF"),
        "tiff": encode(rgb, "TIFF"),
        "bmp": encode(rgb, "BMP"),
        "pil": rgb,
    }


@pytest.mark.parametrize("kind", list(_inputs()))
def test_every_mode_gives_normalised_3x224x224(pre, kind):
    out = pre.load_item(_inputs()[kind])
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    pixels = denormalise(out)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert float(pixels.std()) > 0.05  # not a blank image


def test_values_match_reference_transform(pre):
    img = gradient_rgb()
    out = pre.load_item(encode(img, "PNG"))  # shorter side 240 -> 256 (bicubic), then a centred 224 crop
    resized = img.resize((int(256 * 320 / 240), 256), Image.Resampling.BICUBIC)
    left, top = int(round((resized.width - 224) / 2)), int(round((256 - 224) / 2))
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(out, (expected - MEAN) / STD, atol=1e-5)


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(img).getpixel((5, 5)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)


def test_sixteen_bit_grayscale_is_rescaled_not_clipped():
    img = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)
    mid = Image.open(io.BytesIO(encode(Image.fromarray(np.full((8, 8), 32896, np.uint16)), "PNG")))
    assert to_rgb(mid).getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied(pre):
    img = Image.new("RGB", (300, 200), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 150, 200))  # red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the displayed image is 200 wide, 300 high
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    pixels = denormalise(pre.load_item(data))
    # After the transpose red is on top, blue at the bottom.
    assert pixels[0, 5, 112] > 0.9 and pixels[2, 5, 112] < 0.1
    assert pixels[2, 218, 112] > 0.9 and pixels[0, 218, 112] < 0.1
    from_pil = pre.load_item(Image.open(io.BytesIO(data)))
    np.testing.assert_allclose(from_pil, pre.load_item(data))


def _png_header_only(width, height):
    """A PNG whose IHDR claims width x height but carries a tiny (invalid) data stream."""

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_guard(pre, monkeypatch):
    over_our_limit = _png_header_only(8_000, 8_000)  # 64 MP claimed in ~70 bytes; under Pillow's own limit
    load_calls = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: load_calls.append(1))
    with pytest.raises(PayloadTooLarge, match="64.0 megapixels"):
        pre.load_item(over_our_limit)
    assert not load_calls  # refused from the header, before decoding
    monkeypatch.undo()
    bomb = _png_header_only(50_000, 50_000)  # 2.5 GP: Pillow raises DecompressionBombError inside open()
    with pytest.raises(PayloadTooLarge, match="decompression bomb"):
        pre.load_item(bomb)
    tight = build_preprocessor(ImagePreprocessingConfig(), max_pixels=10_000)
    with pytest.raises(PayloadTooLarge):
        tight.load_item(encode(gradient_rgb(), "PNG"))
    with pytest.raises(PayloadTooLarge):
        tight.load_item(gradient_rgb())
    # Pillow's own bomb error (above 2 x Image.MAX_IMAGE_PIXELS) is mapped too when our limit is off.
    unlimited = ImagePreprocessor(ImagePreprocessingConfig(), max_pixels=None)
    with pytest.raises(PayloadTooLarge, match="decompression bomb"):
        unlimited.load_item(bomb)


def test_corrupt_and_unsupported(pre, tmp_path):
    with pytest.raises(UnsupportedMediaType, match="cannot identify"):
        pre.load_item(b"this is not an image at all")
    with pytest.raises(InvalidInput, match="corrupt|decode"):
        pre.load_item(encode(gradient_rgb(), "PNG")[:200])
    with pytest.raises(InvalidInput, match="empty"):
        pre.load_item(b"")
    with pytest.raises(NotFound):
        pre.load_item(tmp_path / "missing.png")
    with pytest.raises(InvalidInput, match="must be bytes"):
        pre.load_item(np.zeros((4, 4, 3)))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(UnsupportedMediaType):  # never handed to Ghostscript
        pre.load_item(eps)


def test_path_input_and_collate(pre, tmp_path):
    path = tmp_path / "img.png"
    gradient_rgb().save(path)
    items = [pre.load_item(path), pre.load_item(str(path)), pre.load_item(path.read_bytes())]
    batch = pre.collate(items)
    assert list(batch) == ["pixel_values"]
    assert batch["pixel_values"].shape == (3, 3, 224, 224) and batch["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(batch["pixel_values"][0], batch["pixel_values"][2])
    with pytest.raises(InvalidInput, match="one shape"):
        pre.collate([items[0], items[0][:, :100]])


def test_geometry_helpers():
    img = gradient_rgb(320, 240)
    assert resize_shorter_side(img, 256).size == (341, 256)
    assert resize_shorter_side(img.rotate(90, expand=True), 256).size == (256, 341)
    assert center_crop(img, 224).size == (224, 224)
    small = center_crop(Image.new("RGB", (100, 50), (255, 255, 255)), 120)
    assert small.size == (120, 120) and small.getpixel((0, 0)) == (0, 0, 0) and small.getpixel((60, 60)) == (255,) * 3
    rng = np.random.default_rng(0)
    crops = [random_resized_crop(img, 96, rng, scale=(0.2, 1.0)) for _ in range(5)]
    assert all(c.size == (96, 96) for c in crops)
    assert len({c.tobytes() for c in crops}) == 5
    again = [random_resized_crop(img, 96, np.random.default_rng(0), scale=(0.2, 1.0))]
    assert again[0].tobytes() == crops[0].tobytes()
    flipped = to_chw_float(hflip(img))
    np.testing.assert_array_equal(flipped, to_chw_float(img)[:, :, ::-1])
    chw = to_chw_float(img)
    assert chw.shape == (3, 240, 320) and chw.min() >= 0 and chw.max() <= 1
    np.testing.assert_allclose(normalize(chw, IMAGENET_MEAN, IMAGENET_STD), (chw - MEAN) / STD, rtol=1e-6)


def test_protocol_and_describe(pre):
    assert isinstance(pre, Preprocessor) and pre.modality == "image"
    assert pre.describe()["max_pixels"] == DEFAULT_MAX_PIXELS


def test_custom_sizes_and_training_path():
    pre = ImagePreprocessor(ImagePreprocessingConfig(image_size=32, resize_size=36, interpolation="bilinear"))
    assert pre.load_item(gradient_rgb()).shape == (3, 32, 32)
    img = pre.open(encode(gradient_rgb().convert("P"), "PNG"))
    assert img.mode == "RGB"
    for mode in ("LAB", "HSV", "YCbCr", "CMYK", "F", "1"):
        assert pre.load_item(Image.new(mode, (40, 30))).shape == (3, 32, 32)
    augmented = pre.to_model_input(hflip(random_resized_crop(img, 32, np.random.default_rng(1))))
    assert augmented.shape == (3, 32, 32) and augmented.dtype == np.float32
