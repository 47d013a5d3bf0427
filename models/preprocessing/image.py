"""Image preprocessing: bytes / path / PIL image -> RGB -> eval transform -> float32 CHW, ImageNet-normalised.

Eval transform (spec §3.2; torchvision's ``Resize(resize_size)`` + ``CenterCrop(image_size)`` on PIL images,
reproduced exactly): shorter side to ``resize_size`` (bicubic), centre crop ``image_size``, scale to [0, 1],
subtract ``mean`` and divide by ``std`` per channel. Training augmentations (random-resized-crop, flip) live
in training but use the Pillow pieces exposed here so normalisation exists once. Torch-free.

Safety:
* only common raster formats are opened (``ALLOWED_FORMATS``; no EPS/PostScript, which Pillow would hand
  to Ghostscript);
* decompression bombs: the pixel count from the header is checked against ``max_pixels`` right after
  ``Image.open`` and before ``load()`` decodes anything; Pillow's own ``DecompressionBombError`` becomes
  ``PayloadTooLarge`` too. (Pillow's ``DecompressionBombWarning`` fires above ``Image.MAX_IMAGE_PIXELS``,
  89.5 MP, which is above the default ``max_pixels``, so our check refuses those images first; warnings
  filters are process-global and not thread-safe, so they are left alone.)
* animated images (GIF, APNG, WebP) contribute their first frame only.

Mode handling (``to_rgb``): images with transparency (RGBA, LA, PA, palette with a transparent colour) are
composited over a white background; 16-bit and 32-bit grayscale (``I;16``, ``I``, ``F``) are rescaled to
8 bits rather than clipped; everything else goes through Pillow's ``convert("RGB")``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from d2v.core.errors import ConfigError, InvalidInput, PayloadTooLarge, UnsupportedMediaType

from .base import PreprocessorBase, check_batch, is_bytes_like, is_path_like, open_binary
from .config import ImagePreprocessingConfig

DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: a 7300 x 5500 photo; ~120 MB as decoded RGB
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "ICO")
WHITE = (255, 255, 255)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def resample_filter(interpolation: str) -> Image.Resampling:
    try:
        return _RESAMPLE[interpolation]
    except KeyError:
        raise ConfigError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {interpolation!r}") from None


def check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"image has an invalid size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:g} megapixels"
        )


def open_image(raw: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes / a path / a binary file into a fully loaded PIL image (EXIF orientation applied).

    The pixel count is checked from the header before decoding. A PIL image gets the same size check and
    is returned as-is, or as a transposed copy when it carries an EXIF orientation (never modified).
    """
    if isinstance(raw, Image.Image):
        check_pixels(raw.size, max_pixels)
        if raw.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            return ImageOps.exif_transpose(raw)  # a transposed copy; the caller's image is left alone
        return raw
    if not (is_bytes_like(raw) or is_path_like(raw) or hasattr(raw, "read")):
        raise InvalidInput(f"image must be bytes, a path or a PIL image, got {type(raw).__name__}")
    stream = open_binary(raw, "image")
    try:
        try:
            img = Image.open(stream, formats=list(ALLOWED_FORMATS))
        except Image.DecompressionBombError as exc:
            raise PayloadTooLarge(f"image refused as a decompression bomb: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise UnsupportedMediaType(
                f"cannot identify the image format; supported formats: {', '.join(ALLOWED_FORMATS)}"
            ) from exc
        except (OSError, ValueError, SyntaxError) as exc:  # SyntaxError: Pillow's "not a ... file" parsers
            raise InvalidInput(f"cannot decode image: {exc}") from exc
        check_pixels(img.size, max_pixels)
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no-op without an EXIF orientation tag
        except Image.DecompressionBombError as exc:
            raise PayloadTooLarge(f"image refused as a decompression bomb: {exc}") from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InvalidInput(f"cannot decode image (truncated or corrupt data): {exc}") from exc
        return img
    finally:
        if stream is not raw:
            stream.close()


def _high_bit_depth_gray_to_l(img: Image.Image) -> Image.Image:
    """``I;16*`` / ``I`` / ``F`` grayscale -> 8-bit ``L`` by rescaling (Pillow's convert would clip at 255)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        finite_max = float(np.nanmax(arr)) if arr.size else 0.0
        scale = 255.0 if finite_max <= 1.0 else 1.0  # float images in [0, 1] or already in [0, 255]
        arr = np.nan_to_num(arr * scale, nan=0.0, posinf=255.0, neginf=0.0)
    else:
        arr = arr.astype(np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:  # 16-bit samples (PNG/TIFF) -> 8-bit
            arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any Pillow mode -> ``RGB``; transparency is composited over ``background`` (white by default)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _high_bit_depth_gray_to_l(img)
    elif img.mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def resize_shorter_side(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """torchvision ``Resize(size)``: shorter side -> ``size``, longer side ``int(size * long / short)``."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_size == img.size:
        return img
    return img.resize(new_size, resample_filter(interpolation))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop(size)`` (zero padding when the image is smaller than the crop)."""
    width, height = img.size
    if width < size or height < size:
        padded = Image.new(img.mode, (max(width, size), max(height, size)), 0)
        padded.paste(img, (max(size - width, 0) // 2, max(size - height, 0) // 2))
        img = padded
        width, height = img.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def resize_center_crop(img: Image.Image, resize_size: int, crop_size: int, interpolation: str = "bicubic"):
    """The eval geometry: shorter side to ``resize_size``, then a centred ``crop_size`` square."""
    return center_crop(resize_shorter_side(img, resize_size, interpolation), crop_size)


def random_resized_crop(
    img: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
) -> Image.Image:
    """torchvision ``RandomResizedCrop`` with a numpy ``rng``: a random area/aspect box resized to size x size."""
    width, height = img.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:  # fallback: the largest centred box whose aspect ratio lies within ``ratio``
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        box = (left, top, left + w, top + h)
    return img.resize((size, size), resample_filter(interpolation), box=box)


def hflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def to_chw_float(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> float32 ``[3, H, W]`` in [0, 1] (torchvision ``ToTensor``)."""
    if img.mode != "RGB":
        img = to_rgb(img)
    return np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0))


def normalize(chw: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Per-channel ``(x - mean) / std`` on a float32 ``[3, H, W]`` array (torchvision ``Normalize``)."""
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return ((chw - mean_arr) / std_arr).astype(np.float32, copy=False)


class ImagePreprocessor(PreprocessorBase):
    """Bytes / path / PIL image -> float32 ``[3, image_size, image_size]`` -> ``{"pixel_values": [B,3,H,W]}``."""

    modality = "image"

    def __init__(
        self,
        cfg: ImagePreprocessingConfig | None = None,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        background: tuple[int, int, int] = WHITE,
    ) -> None:
        self.cfg = cfg or ImagePreprocessingConfig()
        if self.cfg.image_size <= 0 or self.cfg.resize_size <= 0:
            raise ConfigError(f"image sizes must be positive: {self.cfg.image_size}, {self.cfg.resize_size}")
        if len(self.cfg.mean) != 3 or len(self.cfg.std) != 3 or min(self.cfg.std) <= 0:
            raise ConfigError(f"image mean/std must be 3 values with std > 0: {self.cfg.mean}, {self.cfg.std}")
        resample_filter(self.cfg.interpolation)  # validate early
        self.image_size = int(self.cfg.image_size)
        self.resize_size = int(self.cfg.resize_size)
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        self.background = background

    def open(self, raw: Any) -> Image.Image:
        """Decode and orient, convert to RGB; no geometry. Training starts its augmentations from here."""
        img = open_image(raw, self.max_pixels)
        try:
            return to_rgb(img, self.background)
        except (ValueError, OSError) as exc:  # a mode Pillow has no conversion to RGB for
            raise UnsupportedMediaType(f"cannot convert a {img.mode} image to RGB: {exc}") from exc

    def eval_geometry(self, img: Image.Image) -> Image.Image:
        return resize_center_crop(img, self.resize_size, self.image_size, self.cfg.interpolation)

    def to_model_input(self, img: Image.Image) -> np.ndarray:
        """An RGB image already at its final size -> normalised float32 ``[3, H, W]``."""
        return normalize(to_chw_float(img), self.cfg.mean, self.cfg.std)

    def load_item(self, raw: Any) -> np.ndarray:
        return self.to_model_input(self.eval_geometry(self.open(raw)))

    def collate(self, items: list[np.ndarray]) -> dict[str, np.ndarray]:
        check_batch(items, self.modality)
        shapes = {getattr(item, "shape", None) for item in items}
        if len(shapes) != 1 or len(next(iter(shapes)) or ()) != 3:
            found = sorted(map(str, shapes))
            raise InvalidInput(f"image collate expects [3, H, W] arrays of one shape, got shapes {found}")
        return {"pixel_values": np.stack(items).astype(np.float32, copy=False)}

    def describe(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "interpolation": self.cfg.interpolation,
            "max_pixels": self.max_pixels,
            "formats": list(ALLOWED_FORMATS),
        }
