"""Step 1: focus measures of an SEM image, the inputs of the five ensemble members."""

import numpy as np

FEATURES = ("laplacian_var", "tenengrad", "brenner", "high_freq_ratio", "norm_var", "entropy")


def measures(image: np.ndarray) -> np.ndarray:
    """A (1, 6) row of classic autofocus measures of one 2-d greyscale image."""
    img = np.asarray(image, dtype=np.float64)
    img = (img - img.mean()) / (img.std() + 1e-9)
    lap = (-4 * img[1:-1, 1:-1] + img[:-2, 1:-1] + img[2:, 1:-1]
           + img[1:-1, :-2] + img[1:-1, 2:])
    gx, gy = np.diff(img, axis=1)[:-1, :], np.diff(img, axis=0)[:, :-1]
    brenner = np.mean((img[:, 2:] - img[:, :-2]) ** 2)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(img))) ** 2
    h, w = img.shape
    yy, xx = np.ogrid[:h, :w]
    far = np.hypot(yy - h / 2, xx - w / 2) > min(h, w) / 4
    hist, _ = np.histogram(np.asarray(image, dtype=np.float64), bins=32)
    p = hist[hist > 0] / hist.sum()
    row = [np.log(lap.var() + 1e-9), np.log(np.mean(gx ** 2 + gy ** 2) + 1e-9),
           np.log(brenner + 1e-9), spectrum[far].sum() / spectrum.sum(),
           float(np.var(image) / (np.mean(image) ** 2 + 1e-9)), float(-(p * np.log(p)).sum())]
    return np.asarray([row], dtype=np.float64)
