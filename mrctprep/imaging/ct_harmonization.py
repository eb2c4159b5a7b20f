"""The QC figure of CT harmonization: input, harmonized, their difference and the sampling SD."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # figures are written from worker processes without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from mrctprep.imaging.figures import CT_WINDOWS, save_figure  # noqa: E402

#: the difference and SD panels' range (HU): kernel and dose change noise by tens of HU
DIFFERENCE_RANGE_HU = 100.0
FloatVolume = npt.NDArray[np.float32]


def plot_harmonization(
    source: FloatVolume,
    harmonized: FloatVolume,
    std: FloatVolume | None,
    title: str,
    out_file: str | Path,
) -> Path:
    """The middle axial slice in the soft-tissue and the lung window (rows): input, harmonized,
    harmonized - input and, with several samples, the SD (columns)."""
    middle = source.shape[2] // 2
    panels = [('input', source), ('harmonized', harmonized)]
    columns = 3 + (std is not None)
    figure, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.4), squeeze=False)
    for row, window in enumerate(('soft-tissue', 'lung')):
        level, width = CT_WINDOWS[window]
        for column, (name, volume) in enumerate(panels):
            _show(axes[row][column], volume[:, :, middle], f'{name} ({window})', 'gray',
                  level - width / 2, level + width / 2)  # fmt: skip
        difference = harmonized[:, :, middle] - source[:, :, middle]
        _show(axes[row][2], difference, 'harmonized - input', 'coolwarm',
              -DIFFERENCE_RANGE_HU, DIFFERENCE_RANGE_HU)  # fmt: skip
        if std is not None:
            _show(axes[row][3], std[:, :, middle], 'SD of the samples', 'magma', 0,
                  DIFFERENCE_RANGE_HU)  # fmt: skip
    return save_figure(figure, title, out_file)


def _show(panel: Axes, image: FloatVolume, title: str, cmap: str, low: float, high: float) -> None:
    panel.imshow(image.T, cmap=cmap, origin='lower', vmin=low, vmax=high)
    panel.set_title(title, color='white', fontsize=9)
    panel.axis('off')
