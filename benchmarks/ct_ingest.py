"""DICOM-to-NIfTI throughput of mrctprep against dcm2niix on the same series, in one run.

    python benchmarks/ct_ingest.py [--demo DIR] [--repeats N]

Series: the GE gantry-tilted head CT of ../shared/data (28 slices, tilt and spacing
corrected by both tools) and the demo dataset's two DICOM CTs (written into a temporary
folder unless --demo names an existing ``mrctprep demo`` dataset). Both tools read the files
and write one volume, uncompressed (.nii: conversion alone) and gzipped (.nii.gz at each
tool's default level); mrctprep runs in this process, dcm2niix as its command line. The best
of N repeats is kept. Prints slices per second and mrctprep's ratio to dcm2niix (the target
is at least 0.5).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dcm2niix

from mrctprep.imaging.dicom_series import convert_series, group_series, read_headers

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'


def convert_with_mrctprep(folder: Path, out_file: Path) -> None:
    files, _ = read_headers(sorted(p for p in folder.iterdir() if p.is_file()))
    [series] = group_series(files)
    convert_series(series, name=folder.name).image.to_filename(out_file)


def convert_with_dcm2niix(folder: Path, out_file: Path) -> None:
    compress = 'y' if out_file.name.endswith('.gz') else 'n'
    subprocess.run(
        [dcm2niix.bin, '-z', compress, '-b', 'n', '-f', 'ref', '-o', out_file.parent, folder],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


TOOLS = {'mrctprep': convert_with_mrctprep, 'dcm2niix': convert_with_dcm2niix}


def best_seconds(
    convert: Callable[[Path, Path], None], folder: Path, out_file: Path, repeats: int
) -> float:
    times = []
    for _ in range(repeats):
        out_file.parent.mkdir(parents=True, exist_ok=True)
        for old in out_file.parent.iterdir():
            old.unlink()
        start = time.perf_counter()
        convert(folder, out_file)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--demo', type=Path, help='an existing `mrctprep demo` dataset')
    parser.add_argument('--repeats', type=int, default=5)
    opts = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix='mrctprep-bench-'))
    demo = opts.demo
    if demo is None:
        demo = scratch / 'demo'
        subprocess.run(
            [sys.executable, '-m', 'mrctprep', 'demo', str(demo)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    series = {
        'GE gantry tilt (uncompressed)': SHARED_DATA / 'dicom' / 'ct_head_ge_gantry_tilt',
        'demo sub-01 (uncompressed)': demo / 'sourcedata' / 'sub-01' / 'dicom',
        'demo sub-02 (uncompressed)': demo / 'sourcedata' / 'sub-02' / 'dicom',
    }
    print(f'{"series":<32}{"output":<9}{"slices":>7}{"mrctprep":>12}{"dcm2niix":>12}{"ratio":>8}')
    ratios = []
    for label, folder in series.items():
        slices = sum(1 for p in folder.iterdir() if p.is_file())
        for extension in ('.nii', '.nii.gz'):
            ours, theirs = (
                best_seconds(convert, folder, scratch / tool / f'ct{extension}', opts.repeats)
                for tool, convert in TOOLS.items()
            )
            ratio = theirs / ours
            ratios.append(ratio)
            print(
                f'{label:<32}{extension:<9}{slices:>7}{slices / ours:>8.0f} s/s'
                f'{slices / theirs:>8.0f} s/s{ratio:>7.2f}x'
            )
    print(
        f'lowest ratio (mrctprep / dcm2niix slices per second): {min(ratios):.2f}x '
        f'(target >= 0.5x)'
    )


if __name__ == '__main__':
    main()
