"""Speed and memory of EfficientSCN inference against a single-stage 3D U-Net, in one run.

    python benchmarks/organ_seg.py --localization-weights FILE.pt [--threads 2]
        [--filters 32 --spatial-filters 16]

The CT: ``ct/totalseg_example_ct.nii.gz`` (abdomen, 3 mm) resampled linearly to 512 x 512 x 300
voxels (0.71 x 0.59 x 1.12 mm), a clinical size. Two-stage: the whole of organ-seg's inference
(localization with the given weights at 6 mm, SCN in the box at 2 mm, labels back on the CT
grid). Baseline: the same kind of U-Net as the SCN's local appearance (UnetAvgLinear3D, 5 levels
of ``--filters``) with 5 outputs on the whole scan area-resampled to 2 mm, argmax and labels
back on the CT grid. The SCN's and the baseline's weights are random: time and memory do not
depend on their values. Each runs in its own process (peak RSS = that process's VmHWM, the
CT included); prints seconds, peak MB and the ratios baseline / two-stage.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
CLINICAL_SHAPE = (512, 512, 300)


def make_clinical_ct(out_file: Path) -> None:
    from scipy.ndimage import zoom

    ct = nb.load(SHARED_DATA / 'ct' / 'totalseg_example_ct.nii.gz')
    data = np.asarray(ct.dataobj, dtype=np.float32)
    factors = [n / m for n, m in zip(CLINICAL_SHAPE, data.shape, strict=True)]
    resampled = zoom(data, factors, order=1, grid_mode=True, mode='grid-constant', cval=-1024)
    affine = ct.affine.copy()
    affine[:3, :3] = ct.affine[:3, :3] / np.array(factors)
    # keep the outer corner of the first voxel where it was
    affine[:3, 3] = ct.affine[:3, 3] + ct.affine[:3, :3] @ (0.5 / np.array(factors) - 0.5)
    image = nb.Nifti1Image(np.rint(resampled).astype(np.int16), affine)
    image.to_filename(out_file)


def peak_rss_mb() -> float:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def run_two_stage(ct_file: Path, opts: argparse.Namespace) -> dict[str, float]:
    import torch

    from mrctprep.models.efficientscn import SpatialConfigurationNet
    from mrctprep.models.efficientscn_inference import load_localization_net, segment_organs

    localization = load_localization_net(torch.load(opts.localization_weights), 'cpu')
    scn = SpatialConfigurationNet(
        filters=opts.filters, spatial_filters=opts.spatial_filters
    ).eval()
    start = time.perf_counter()
    result = segment_organs(nb.load(ct_file), localization, scn, 'cpu')
    seconds = time.perf_counter() - start
    return {
        'seconds': seconds,
        'peak_mb': peak_rss_mb(),
        'scn_voxels': float(np.prod(result.scn_size)),
    }


def run_single_stage(ct_file: Path, opts: argparse.Namespace) -> dict[str, float]:
    import torch

    from mrctprep.core.devices import fast_precision
    from mrctprep.imaging.organ_boxes import (
        Crop,
        area_resize,
        from_lps_array,
        labels_on_crop,
        network_intensity,
        size_for_spacing,
        to_lps_volume,
    )
    from mrctprep.models.efficientscn import UnetAvgLinear3D

    unet = torch.nn.Sequential(
        UnetAvgLinear3D(1, opts.filters, 5), torch.nn.Conv3d(opts.filters, 5, 1)
    ).eval()
    image = nb.load(ct_file)
    start = time.perf_counter()
    volume = to_lps_volume(image)
    size = size_for_spacing(volume.array.shape, volume.spacing, (2.0, 2.0, 2.0))
    padded = tuple(-(-n // 16) * 16 for n in size)  # 4 poolings: multiples of 16
    scan = network_intensity(area_resize(volume.array, padded))
    with torch.no_grad(), fast_precision('cpu'):
        probabilities = unet(torch.from_numpy(scan)[None, None]).float()[0].numpy()
    whole = Crop((0, 0, 0), volume.array.shape, (0, 0, 0), (0, 0, 0))
    from_lps_array(labels_on_crop(probabilities, whole), image)
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'peak_mb': peak_rss_mb(), 'scn_voxels': float(np.prod(padded))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--localization-weights', type=Path, required=True)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--filters', type=int, default=32)
    parser.add_argument('--spatial-filters', type=int, default=16)
    parser.add_argument('--measure', choices=('two-stage', 'single-stage'), help=argparse.SUPPRESS)
    parser.add_argument('--ct', type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.measure:
        import torch

        torch.set_num_threads(opts.threads)
        run = run_two_stage if opts.measure == 'two-stage' else run_single_stage
        print(json.dumps(run(opts.ct, opts)))
        return
    ct_file = Path(tempfile.mkdtemp(prefix='mrctprep-bench-')) / 'ct_512x512x300.nii.gz'
    make_clinical_ct(ct_file)
    figures = {}
    for measure in ('two-stage', 'single-stage'):
        args = [sys.executable, __file__, '--measure', measure, '--ct', str(ct_file)]
        args += ['--localization-weights', str(opts.localization_weights)]
        args += ['--threads', str(opts.threads), '--filters', str(opts.filters)]
        args += ['--spatial-filters', str(opts.spatial_filters)]
        output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        figures[measure] = json.loads(output.strip().splitlines()[-1])
    print(
        f'CT {"x".join(map(str, CLINICAL_SHAPE))}, {opts.threads} threads, filters {opts.filters}'
    )
    print('method         seconds  peak MB  network voxels')
    for measure, row in figures.items():
        print(
            f'{measure:<14} {row["seconds"]:7.1f}  {row["peak_mb"]:7.0f}  {row["scn_voxels"]:.3g}'
        )
    two, one = figures['two-stage'], figures['single-stage']
    print(
        f'single-stage / two-stage: {one["seconds"] / two["seconds"]:.2f}x time, '
        f'{one["peak_mb"] / two["peak_mb"]:.2f}x peak memory'
    )


if __name__ == '__main__':
    main()
