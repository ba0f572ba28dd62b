import numpy as np
import pytest
from PIL import Image

from clipsam.core.image import fit_long_side, load_image
from clipsam.errors import ImageError


def _save(tmp_path, img, name):
    path = tmp_path / name
    img.save(path)
    return path


def test_rgb_png_and_jpeg_paths(tmp_path, chelsea):
    png = _save(tmp_path, Image.fromarray(chelsea), "c.png")
    np.testing.assert_array_equal(load_image(png), chelsea)
    jpg = load_image(_save(tmp_path, Image.fromarray(chelsea), "c.jpg"))
    assert jpg.shape == chelsea.shape and jpg.dtype == np.uint8
    assert load_image(str(png)).shape == chelsea.shape


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255  # white band on the left
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    out = load_image(path)
    assert out.shape == (20, 10, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the band is now on top


def test_modes_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((4, 5), 77, np.uint8), mode="L")
    assert (load_image(gray) == 77).all()
    pal = gray.convert("P")
    assert load_image(pal).shape == (4, 5, 3)
    cmyk = Image.new("CMYK", (5, 4), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(tmp_path, cmyk, "c.jpg"))
    assert out.shape == (4, 5, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_alpha_is_composited_on_background():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # opaque red
    rgba[1, 1, 3] = 0  # fully transparent
    out = load_image(rgba)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[1, 1]) == (255, 255, 255)
    out_pil = load_image(Image.fromarray(rgba, mode="RGBA"), background=(0, 0, 0))
    assert tuple(out_pil[1, 1]) == (0, 0, 0)


def test_sixteen_bit_is_scaled(tmp_path):
    arr16 = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    out = load_image(arr16)
    assert out[..., 0].tolist() == [[0, 255], [128, 1]]
    path = tmp_path / "g16.png"
    Image.fromarray(arr16).save(path)
    assert load_image(path)[..., 0].tolist() == [[0, 255], [128, 1]]


def test_float_and_bool_arrays():
    f = np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    assert load_image(f)[..., 1].tolist() == [[0, 255], [128, 64]]
    assert load_image(np.eye(2, dtype=bool))[0, 0, 0] == 255
    with pytest.raises(ImageError, match=r"\[0, 1\].*255"):
        load_image(np.full((2, 2, 3), 200.0))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((2, 2), np.nan))


@pytest.mark.parametrize("shape", [(2, 2, 2), (2, 2, 5), (3,), (1, 2, 2, 3)])
def test_bad_array_shapes(shape):
    with pytest.raises(ImageError, match="expected shape"):
        load_image(np.zeros(shape, np.uint8))


def test_bad_dtype():
    with pytest.raises(ImageError, match="dtype"):
        load_image(np.zeros((2, 2), np.complex64))


def test_bad_files_name_the_file(tmp_path):
    cases = {
        "missing.png": None,
        "empty.png": b"",
        "text.png": b"this is not an image at all",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ImageError) as info:
            load_image(path)
        assert str(path) in str(info.value)
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="expected a file path"):
        load_image(12)


def test_truncated_file(tmp_path, chelsea):
    path = tmp_path / "t.png"
    Image.fromarray(chelsea).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageError, match="t.png"):
        load_image(path)


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(path)
    with pytest.raises(ImageError, match="exceeds.*limit"):
        load_image(path, max_pixels=100_000)
    monkeypatch.setenv("CLIPSAM_MAX_PIXELS", "1000")
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)
    with pytest.raises(ImageError, match="exceeds"):
        load_image(np.zeros((100, 100), np.uint8))


def test_fit_long_side():
    img = np.zeros((300, 451, 3), np.uint8)
    assert fit_long_side(img, 1024) is img
    small = fit_long_side(img, 100)
    assert small.shape == (67, 100, 3)
    assert fit_long_side(img, None) is img


def test_broken_file_is_reported_as_such_after_ultralytics_patched_pil(tmp_path, monkeypatch):
    """Ultralytics replaces PIL.Image.open with an opener that imports pi_heif on unknown files."""
    from PIL import Image

    from clipsam.core import image as I

    original = I._PIL_OPEN

    def patched(fp, *args, **kwargs):
        try:
            return original(fp, *args, **kwargs)
        except Image.UnidentifiedImageError:
            raise ModuleNotFoundError("No module named 'pi_heif'") from None

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    monkeypatch.setattr(Image, "open", patched)  # clipsam imported first: keeps Pillow's own
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        I.load_image(bad)
    monkeypatch.setattr(I, "_PIL_OPEN", patched)  # clipsam imported after the patch
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        I.load_image(bad)
