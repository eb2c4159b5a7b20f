"""The digital C-arm: patient placement, arm pose, detector, rays and projection matrices.

World coordinates are the CT's: RAS millimetres, the space of its NIfTI affine.

**Table frame** (DeepDRR's device frame, origin at the isocentre): ``z`` points up from the
table, ``x`` runs along it and ``y = z x x``. A head-first patient lies with the head toward
``-x`` (feet-first: toward ``+x``); a supine one faces ``+z`` (prone: ``-z``). Head-first
supine therefore puts the patient's left on ``+y``, as DeepDRR's ``faceup`` volume.

**Arm pose** (DeepDRR's ``MobileCArm``): the arm rotates about the isocentre by
``Rotation.from_euler('xy', [orbital, angulation])``, i.e. first by the *orbital* angle
(LAO/RAO) about the table's long axis ``x``, then by the *angulation* (CRA/CAU) about ``y``.
The source sits ``source_to_isocentre`` below the isocentre along the arm's ``-z``, the
detector ``source_to_detector`` from the source along ``+z``: at (0, 0) the beam goes up
through a supine patient (posterior to anterior, a PA projection), and for head-first supine
an orbital angle > 0 moves the detector to the patient's right (RAO) and an angulation > 0
toward the feet (CAU), DeepDRR's documented signs.

**Detector** (DeepDRR's ``rotate_camera_left``): image columns increase along the arm's
``-y`` and rows along its ``+x``, so a head-first patient's head is at the top (row 0). The
image is what the X-ray source sees through the patient: in an AP view the patient's left
is on the image's right; a PA view shows the patient from behind. Each view's projection
matrix maps world points (RAS mm, homogeneous) to homogeneous (column, row) indices of the
image array, pixel centres at integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

#: Patient directions in RAS world coordinates.
RIGHT, ANTERIOR, SUPERIOR = np.eye(3)
LEFT = -RIGHT
#: Camera frame from arm frame: DeepDRR's 90 degree roll that puts a head-first head at the top.
_CAMERA_ROLL = Rotation.from_euler('z', 90, degrees=True).as_matrix()


@dataclass(frozen=True)
class CArm:
    """A C-arm's fixed geometry: distances (mm), a square detector of ``pixels`` x ``pixels``."""

    source_to_detector_mm: float
    source_to_isocentre_mm: float
    pixels: int
    pixel_size_mm: float

    def __post_init__(self):
        if min(self.source_to_detector_mm, self.source_to_isocentre_mm, self.pixel_size_mm) <= 0:
            raise ValueError(f'C-arm distances and pixel size must be positive: {self}')
        if self.pixels < 1:
            raise ValueError(f'the detector needs at least one pixel: {self}')


@dataclass(frozen=True)
class Placement:
    """How the patient lies on the table."""

    head_first: bool = True
    supine: bool = True

    @property
    def name(self) -> str:
        lying = 'supine' if self.supine else 'prone'
        return f'{"head" if self.head_first else "feet"}-first {lying}'


@dataclass(frozen=True)
class ViewGeometry:
    """One view in world coordinates: where the source is and where every pixel centre is."""

    source: np.ndarray  # (3,) world mm
    first_pixel: np.ndarray  # (3,) centre of pixel (row 0, column 0)
    column_step: np.ndarray  # (3,) from one column to the next
    row_step: np.ndarray  # (3,) from one row to the next
    pixels: int
    projection_matrix: np.ndarray  # (3, 4)

    @property
    def beam_direction(self) -> np.ndarray:
        """Unit vector from the source to the detector's centre (the principal ray)."""
        centre = self.first_pixel + (self.pixels - 1) / 2 * (self.column_step + self.row_step)
        direction = centre - self.source
        return direction / np.linalg.norm(direction)

    def detector_affine(self) -> np.ndarray:
        """Affine from (column, row, 0) pixel indices to world mm: a NIfTI affine for the image.

        The third axis is the beam direction, one pixel long, so the affine is invertible.
        """
        affine = np.eye(4)
        pixel_size = np.linalg.norm(self.column_step)
        affine[:3, 0], affine[:3, 1] = self.column_step, self.row_step
        affine[:3, 2] = self.beam_direction * pixel_size
        affine[:3, 3] = self.first_pixel
        return affine


def table_from_patient(placement: Placement) -> np.ndarray:
    """Rotation taking RAS direction vectors to table-frame vectors."""
    along_table = (-SUPERIOR if placement.head_first else SUPERIOR).copy()
    up = ANTERIOR if placement.supine else -ANTERIOR
    across_table = np.cross(up, along_table)
    return np.stack([along_table, across_table, up])


def arm_rotation(orbital_deg: float, angulation_deg: float) -> np.ndarray:
    """Table-from-arm rotation: orbital about the table's x, then angulation about its y."""
    return Rotation.from_euler('xy', [orbital_deg, angulation_deg], degrees=True).as_matrix()


def view_geometry(
    carm: CArm,
    placement: Placement,
    isocentre: np.ndarray,
    orbital_deg: float,
    angulation_deg: float,
) -> ViewGeometry:
    """Source, pixel positions and projection matrix of one C-arm pose (world RAS mm)."""
    isocentre = np.asarray(isocentre, dtype=np.float64)
    # camera = rotation @ (world - isocentre) + (0, 0, source_to_isocentre)
    rotation = _CAMERA_ROLL @ arm_rotation(orbital_deg, angulation_deg).T
    rotation = rotation @ table_from_patient(placement)
    to_source = np.array([0.0, 0.0, carm.source_to_isocentre_mm])
    focal = carm.source_to_detector_mm / carm.pixel_size_mm
    centre = (carm.pixels - 1) / 2
    intrinsics = np.array([[focal, 0.0, centre], [0.0, focal, centre], [0.0, 0.0, 1.0]])
    extrinsics = np.column_stack([rotation, to_source - rotation @ isocentre])

    def world(camera_point: np.ndarray) -> np.ndarray:
        return isocentre + rotation.T @ (camera_point - to_source)

    first_pixel_camera = np.array(
        [-centre * carm.pixel_size_mm, -centre * carm.pixel_size_mm, carm.source_to_detector_mm]
    )
    return ViewGeometry(
        source=world(np.zeros(3)),
        first_pixel=world(first_pixel_camera),
        column_step=rotation.T @ np.array([carm.pixel_size_mm, 0.0, 0.0]),
        row_step=rotation.T @ np.array([0.0, carm.pixel_size_mm, 0.0]),
        pixels=carm.pixels,
        projection_matrix=intrinsics @ extrinsics,
    )


def view_grid(start: float, stop: float, step: float) -> list[tuple[float, float]]:
    """Every (orbital, angulation) pair of ``start, start + step, ..., stop`` in both angles."""
    if step <= 0 or stop < start:
        raise ValueError(f'a view grid needs start <= stop and step > 0: {start}:{stop}:{step}')
    angles = np.arange(start, stop + step / 2, step)
    return [(float(a), float(b)) for a in angles for b in angles]


def gensyn_angled_views() -> list[tuple[float, float]]:
    """The thesis' 20 angled views: (a, b) in {-10, -5, 0, 5, 10}^2 without (0, 0) and the
    four pairs where one angle is 0 and the other +-5 (``data_prep/radchest-angle.py``)."""
    return [
        (a, b)
        for a, b in view_grid(-10.0, 10.0, 5.0)
        if (a, b) != (0.0, 0.0) and not (0.0 in (a, b) and 5.0 in (abs(a), abs(b)))
    ]


def view_label(placement: Placement, orbital_deg: float, angulation_deg: float) -> str:
    """A BIDS ``desc-`` label naming the view by where the detector is relative to the patient.

    (0, 0) is ``pa`` when the detector faces the patient's front, ``ap`` when it faces the
    back (also at orbital 180). Other orbital angles add the detector's side and front/back
    with the angle (``rao10``, ``lpo30``); angulation adds ``cra``/``cau`` with its angle:
    ``rao10cau5``, ``pacra15``. Decimals are written with ``p`` (``2p5``).
    """
    to_patient = table_from_patient(placement).T
    detector = to_patient @ arm_rotation(orbital_deg, angulation_deg) @ np.array([0.0, 0, 1])
    toward_left, toward_front = float(detector @ LEFT), float(detector @ ANTERIOR)
    if abs(toward_left) < 1e-9:
        orbital = 'pa' if toward_front > 0 else 'ap'
    else:
        side = 'l' if toward_left > 0 else 'r'
        orbital = f'{side}{"ao" if toward_front >= 0 else "po"}{_angle_text(orbital_deg)}'
    if angulation_deg == 0:
        return orbital
    toward_head = float(detector @ SUPERIOR)
    return f'{orbital}{"cra" if toward_head > 0 else "cau"}{_angle_text(angulation_deg)}'


def unique_view_labels(placement: Placement, views: Sequence[tuple[float, float]]) -> list[str]:
    """The labels of ``views``; two views with one label (orbital 180 and -180) are refused."""
    labels = [view_label(placement, *view) for view in views]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f'several views would be named {", ".join(repeated)}; drop duplicates')
    return labels


def _angle_text(degrees: float) -> str:
    return f'{abs(degrees):.2f}'.rstrip('0').rstrip('.').replace('.', 'p')
