"""Abdominal organ labels (FLARE21's four): their table, per-organ volume and HU, and a QC figure.

Label maps are uint8 on the CT's own grid: 0 background, 1 liver, 2 kidneys, 3 spleen,
4 pancreas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # figures are written from worker processes without a display
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from mrctprep.imaging.figures import CT_WINDOWS, save_figure  # noqa: E402

#: FLARE21's organs: label, name, abbreviation, colour (the BIDS dseg.tsv columns).
FLARE_ORGANS = (
    (1, 'liver', 'LIV', '#e6194b'),
    (2, 'kidneys', 'KID', '#3cb44b'),
    (3, 'spleen', 'SPL', '#4363d8'),
    (4, 'pancreas', 'PAN', '#f58231'),
)


def dseg_table() -> str:
    """The BIDS ``seg-organs_dseg.tsv``: index, name, abbreviation, color."""
    rows = ['index\tname\tabbreviation\tcolor', '0\tbackground\tBG\t#000000']
    rows += [f'{label}\t{name}\t{abbr}\t{colour}' for label, name, abbr, colour in FLARE_ORGANS]
    return '\n'.join(rows) + '\n'


@dataclass(frozen=True)
class OrganMeasures:
    """One organ of one CT: volume (ml), HU statistics, and whether it touches the edge of
    the field of view (then the volume is a lower bound)."""

    name: str
    volume_ml: float
    mean_hu: float | None
    median_hu: float | None
    touches_fov_edge: bool


def organ_measures(
    labels: npt.NDArray[np.uint8], hu: npt.NDArray[np.floating], zooms: tuple[float, ...]
) -> list[OrganMeasures]:
    """Each FLARE organ's volume, mean and median HU and field-of-view edge flag."""
    voxel_ml = float(np.prod(zooms[:3])) / 1000.0
    edges = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        index = [slice(None)] * 3
        for end in (0, -1):
            index[axis] = end  # type: ignore[call-overload]
            edges[tuple(index)] = True
    measures = []
    for label, name, _, _ in FLARE_ORGANS:
        inside = labels == label
        values = hu[inside]
        measures.append(
            OrganMeasures(
                name=name,
                volume_ml=round(float(inside.sum()) * voxel_ml, 3),
                mean_hu=round(float(values.mean()), 1) if values.size else None,
                median_hu=round(float(np.median(values)), 1) if values.size else None,
                touches_fov_edge=bool((inside & edges).any()),
            )
        )
    return measures


def measures_table(measures: list[OrganMeasures]) -> str:
    """A TSV, one row per organ; missing HU (an organ not found) as ``n/a``."""

    def cell(value: float | None) -> str:
        return 'n/a' if value is None else f'{value:g}'

    rows = ['organ\tlabel\tvolume_ml\tmean_hu\tmedian_hu\ttouches_fov_edge']
    for (label, *_), m in zip(FLARE_ORGANS, measures, strict=True):
        rows.append(
            f'{m.name}\t{label}\t{m.volume_ml:.3f}\t{cell(m.mean_hu)}\t{cell(m.median_hu)}\t'
            f'{str(m.touches_fov_edge).lower()}'
        )
    return '\n'.join(rows) + '\n'


def plot_organ_contours(
    ct: nb.Nifti1Image, labels: npt.NDArray[np.uint8], title: str, out_file: str | Path
) -> Path:
    """One axial and one coronal soft-tissue-window slice through the centre of each organ
    found, with every organ's contour in its colour."""
    hu = np.asanyarray(ct.dataobj, dtype=np.float32)
    level, width = CT_WINDOWS['soft-tissue']
    zooms = ct.header.get_zooms()[:3]
    found = [
        (label, name, colour) for label, name, _, colour in FLARE_ORGANS if (labels == label).any()
    ]
    figure, axes = plt.subplots(
        2, max(len(found), 1), figsize=(3.2 * max(len(found), 1), 6.4), squeeze=False
    )
    for column, (label, name, _) in enumerate(found):
        centre = np.round(np.argwhere(labels == label).mean(axis=0)).astype(int)
        for row, (axis, aspect) in enumerate(((2, zooms[1] / zooms[0]), (1, zooms[2] / zooms[0]))):
            index = [slice(None)] * 3
            index[axis] = int(centre[axis])  # type: ignore[call-overload]
            panel = axes[row][column]
            panel.imshow(
                hu[tuple(index)].T,
                cmap='gray',
                origin='lower',
                aspect=aspect,
                vmin=level - width / 2,
                vmax=level + width / 2,
            )
            for other, _, colour in found:
                outline = (labels[tuple(index)] == other).T
                if outline.any():
                    panel.contour(outline, levels=[0.5], colors=[colour], linewidths=0.8)
            panel.set_title(
                f'{name} ({"axial" if axis == 2 else "coronal"})', color='white', fontsize=9
            )
            panel.axis('off')
    if not found:
        axes[0][0].text(0.5, 0.5, 'no organ found', color='white', ha='center')
        axes[0][0].axis('off')
        axes[1][0].axis('off')
    return save_figure(figure, title, out_file)


#: Label names (a dseg.tsv's ``name`` column, lower case) that mean each FLARE organ.
FLARE_SYNONYMS = {
    'liver': 1,
    'kidneys': 2,
    'kidney': 2,
    'kidney_left': 2,
    'kidney_right': 2,
    'left kidney': 2,
    'right kidney': 2,
    'spleen': 3,
    'pancreas': 4,
}


def flare_labels(labels: npt.NDArray[np.integer], names: dict[int, str]) -> npt.NDArray[np.uint8]:
    """Any label map with named labels (e.g. TotalSegmentator's 117) as FLARE's four organs;
    labels whose names mean none of them become background."""
    lookup = np.zeros(max(max(names), int(labels.max())) + 1, dtype=np.uint8)
    for index, name in names.items():
        lookup[index] = FLARE_SYNONYMS.get(name.strip().lower(), 0)
    return lookup[labels]
