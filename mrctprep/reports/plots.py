"""Group-level plots as inline SVG text, and subject thumbnails as PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')  # drawn without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: Colour per site, in site order (matplotlib's colour-blind-friendly tableau cycle).
_COLOURS = [plt.get_cmap('tab10')(index) for index in range(10)]


def _svg_text(figure) -> str:
    """The figure as an ``<svg>`` element to inline (no XML prolog or DOCTYPE)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format='svg', bbox_inches='tight')
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index('<svg') :]


def _strip(axis, values_by_site: Mapping[str, Sequence[float]], jitter_seed: int = 0) -> None:
    """Each site's values as jittered points over a box, sites left to right."""
    rng = np.random.default_rng(jitter_seed)
    sites = list(values_by_site)
    axis.boxplot(
        [values_by_site[site] for site in sites],
        positions=range(len(sites)),
        widths=0.5,
        showfliers=False,
        medianprops={'color': 'black'},
    )
    for index, site in enumerate(sites):
        values = np.asarray(values_by_site[site], dtype=float)
        x = index + rng.uniform(-0.15, 0.15, size=values.size)
        axis.scatter(x, values, s=14, color=_COLOURS[index % len(_COLOURS)], zorder=3)
    axis.set_xticks(range(len(sites)), sites)
    axis.grid(axis='y', alpha=0.3)


def site_distributions(measures: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """One panel per measure: its values by site. ``measures``: name -> site -> values."""
    count = len(measures)
    columns = min(count, 3)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.axis('off')
    for axis, (name, by_site) in zip(axes.flat, measures.items(), strict=False):
        _strip(axis, by_site)
        axis.set_title(name, fontsize=10)
    figure.tight_layout()
    return _svg_text(figure)


def harmonization_by_site(relative: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """One panel per method (raw, ComBat, IGUANe): regional means relative to each region's
    mean over all images, by site; a site effect shows as boxes that do not line up."""
    figure, axes = plt.subplots(
        1, len(relative), figsize=(4 * len(relative), 3.2), squeeze=False, sharey=True
    )
    for axis, (method, by_site) in zip(axes[0], relative.items(), strict=True):
        _strip(axis, by_site)
        axis.axhline(1.0, color='grey', linewidth=0.8)
        axis.set_title(method, fontsize=10)
    axes[0][0].set_ylabel('regional mean / mean over images')
    figure.tight_layout()
    return _svg_text(figure)


def thumbnail_uri(image: np.ndarray, window: tuple[float, float], *, width_px: int = 160) -> str:
    """A 2D image (rows from the top) as a grey PNG ``data:`` URI about ``width_px`` wide,
    shown between ``window``'s (low, high) values."""
    rows, columns = image.shape
    dpi = 100
    figure = plt.figure(figsize=(width_px / dpi, width_px * rows / columns / dpi), dpi=dpi)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.imshow(image, cmap='gray', vmin=window[0], vmax=window[1], aspect='auto')
    axis.axis('off')
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=dpi, facecolor='black')
    plt.close(figure)
    return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode('ascii')
