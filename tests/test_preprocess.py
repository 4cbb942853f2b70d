"""runtime.preprocess: a person's digit image becomes an MNIST-like 28x28 input.

Missing, empty, broken and truncated image files: the bad-input battery (test_bad_inputs.py).
"""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from runtime.errors import InputError
from runtime.preprocess import preprocess_image

SEVEN = [(0.2, 0.1), (0.8, 0.1), (0.4, 0.9)]  # a "7" as a polyline in unit coordinates


def draw(size=(200, 300), box=(0.2, 0.1, 0.8, 0.9), width=18, dark_on_light=True, mode="L"):
    """Render the 7 into `box` (fractions of the canvas) of an image of `size` pixels."""
    paper, ink = (235, 15) if dark_on_light else (10, 250)
    image = Image.new("L", size, paper)
    x0, y0, x1, y1 = box
    points = [((x0 + px * (x1 - x0)) * size[0], (y0 + py * (y1 - y0)) * size[1]) for px, py in SEVEN]
    ImageDraw.Draw(image).line(points, fill=ink, width=width, joint="curve")
    return image.convert(mode)


def centre_of_mass(digit):
    rows, cols = np.indices(digit.shape)
    return (rows * digit).sum() / digit.sum(), (cols * digit).sum() / digit.sum()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"dark_on_light": False},
        {"size": (1000, 800), "box": (0.05, 0.5, 0.3, 0.95), "width": 40},  # small, off-centre photo
        {"size": (40, 40), "box": (0.1, 0.1, 0.9, 0.9), "width": 3},  # tiny scan
        {"size": (600, 600), "width": 4},  # thin pen stroke, large image
        {"mode": "RGB"},
        {"mode": "RGBA"},
    ],
    ids=["dark-on-light", "light-on-dark", "small-off-centre", "tiny", "thin-stroke", "rgb", "rgba"],
)
def test_normalises_like_mnist(kwargs):
    digit = preprocess_image(draw(**kwargs))
    assert digit.shape == (28, 28) and digit.dtype == np.float32
    assert digit.min() == 0.0 and digit.max() == pytest.approx(1.0)
    rows, cols = np.nonzero(digit > 0.05)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in range(19, 22)  # fits the 20x20 box
    com = centre_of_mass(digit)
    assert abs(com[0] - 13.5) <= 1.0 and abs(com[1] - 13.5) <= 1.0


def test_same_digit_anywhere_gives_the_same_input():
    reference = preprocess_image(draw())
    # the reference 7 is 120x240 px with an 18 px pen; this one is 180x360 px, 27 px pen
    for kwargs in ({"size": (900, 700), "box": (0.7, 0.4, 0.9, 0.9143), "width": 27}, {"dark_on_light": False}):
        other = preprocess_image(draw(**kwargs))
        correlation = np.corrcoef(reference.ravel(), other.ravel())[0, 1]
        assert correlation > 0.8, correlation


def test_transparent_background_is_paper():
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))  # transparent black "paper"
    ImageDraw.Draw(image).line([(50, 10), (50, 90)], fill=(0, 0, 0, 255), width=8)
    digit = preprocess_image(image)
    assert digit[:, 13:15].sum() > digit[:, :5].sum()  # a vertical stroke in the middle


def test_accepts_arrays_and_files(tmp_path):
    image = draw()
    image.save(tmp_path / "seven.png")
    image.save(tmp_path / "seven.jpg", quality=90)
    from_png = preprocess_image(tmp_path / "seven.png")
    np.testing.assert_allclose(from_png, preprocess_image(np.asarray(image)), atol=1e-6)
    assert np.corrcoef(from_png.ravel(), preprocess_image(tmp_path / "seven.jpg").ravel())[0, 1] > 0.95


def test_a_blank_image_has_no_digit(tmp_path):
    Image.new("L", (50, 50), 200).save(tmp_path / "blank.png")
    with pytest.raises(InputError, match="blank.png: no digit found"):
        preprocess_image(tmp_path / "blank.png")
