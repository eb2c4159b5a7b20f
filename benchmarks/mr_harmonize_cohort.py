"""IGUANe on a travelling-subject cohort: what validation selection bought, on held-out data.

    mrctprep demo BIDS --participants-per-site 8
    mrctprep BIDS OUT participant -w WORK --pipelines mr-preproc
    mrctprep BIDS OUT group -w WORK --train iguane --train-patch-size 32 --steps 2000 \\
        --validate-every 400
    python benchmarks/mr_harmonize_cohort.py BIDS OUT WORK [--threads 2]

Reads the held-out participants from the model card, and evaluates on them both the generator
that validation selected (``OUT/models/iguane/iguane.pt``) and the last one (the training
checkpoint in ``WORK``), in crops of the training size: the travelling-subject difference (mean
absolute difference in the brain between a traveller's images from two sites, before and
after), the SSIM of each harmonized image to its input (in the brain), and the site effect of
regional means (eta squared) raw, after ComBat (fitted on every participant) and after each
generator. Prints the validation scores logged during training, and the seconds per volume.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import torch

from mrctprep.core.devices import set_torch_threads
from mrctprep.group.harmonization import (
    ModelInput,
    combat_harmonize,
    combat_installed,
    find_model_inputs,
    regional_table,
    site_effect,
)
from mrctprep.group.sites import read_participant_sites
from mrctprep.imaging.similarity import structural_similarity
from mrctprep.models.iguane import IguaneGenerator, harmonize_volume


def generators(out: Path, work: Path) -> dict[str, IguaneGenerator]:
    best, last = IguaneGenerator(), IguaneGenerator()
    best.load_state_dict(torch.load(out / 'models/iguane/iguane.pt', weights_only=True))
    checkpoint = torch.load(work / 'train/iguane/checkpoint.pt', weights_only=False)
    last.load_state_dict(checkpoint['task']['generator'])
    return {'selected': best.eval(), 'last': last.eval()}


def travelling_pairs(subjects, sites):
    return [
        (a, b)
        for a, b in itertools.combinations(subjects, 2)
        if sites[a].traveller and sites[a].traveller == sites[b].traveller
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('bids', type=Path)
    parser.add_argument('out', type=Path)
    parser.add_argument('work', type=Path)
    parser.add_argument('--threads', type=int, default=2)
    opts = parser.parse_args()
    set_torch_threads(opts.threads)

    card = json.loads((opts.out / 'models/iguane/iguane.json').read_text())['trained']
    held_out = card['HeldOut']
    tile = tuple(card['PatchSize']) if isinstance(card['PatchSize'], list) else None
    print(f'trained {card["Steps"]} steps, crops {card["PatchSize"]}, sites {card["Sites"]}')
    print(f'held out: {", ".join(held_out)}; selected: {card.get("Validation")}')
    log = pd.read_csv(opts.out / 'models/iguane/training_log.tsv', sep='\t', na_values='n/a')
    scored = log.dropna(subset=['val_score'])
    print(scored[['step', *[c for c in log if c.startswith('val_')]]].to_string(index=False))

    all_inputs = find_model_inputs_of(opts)
    sites = read_participant_sites(opts.bids, sorted({i.subject for i in all_inputs}))
    inputs = {i.subject: i for i in all_inputs if i.subject in held_out}
    data = {s: nb.load(i.norm).get_fdata(dtype=np.float32) for s, i in inputs.items()}
    pairs = travelling_pairs(sorted(inputs), sites)

    table = regional_table(all_inputs, sites, opts.out)
    if combat_installed():
        table['combat'] = combat_harmonize(table, sites, card['ReferenceSite'])
    held_rows = table[table['participant_id'].isin([f'sub-{s}' for s in held_out])]
    effects = {'raw': site_effect(held_rows, 'raw')}
    if 'combat' in held_rows:
        effects['combat'] = site_effect(held_rows, 'combat')

    for name, generator in generators(opts.out, opts.work).items():
        start = time.perf_counter()
        outputs = {s: harmonize_volume(x, generator, 'cpu', tile=tile) for s, x in data.items()}
        seconds = (time.perf_counter() - start) / len(outputs)
        ssim = [structural_similarity(outputs[s], data[s], data[s] > 0) for s in outputs]
        falls = []
        for a, b in pairs:
            brain = (data[a] > 0) & (data[b] > 0)
            before = np.abs(data[a] - data[b])[brain].mean()
            after = np.abs(outputs[a] - outputs[b])[brain].mean()
            falls.append(100 * (1 - after / before))
        model_inputs = []
        for s, item in inputs.items():
            path = opts.work / f'bench_{name}_{s}.nii.gz'
            nb.Nifti1Image(outputs[s], nb.load(item.norm).affine).to_filename(path)
            model_inputs.append(ModelInput(s, None, item.norm, path))
        effects[name] = site_effect(regional_table(model_inputs, sites, opts.out), 'iguane')
        print(
            f'{name}: travelling-subject difference down {np.mean(falls):.1f} % (pairs: '
            f'{", ".join(f"{f:.1f}" for f in falls)}; target >= 10 %); SSIM to input min '
            f'{min(ssim):.3f}, mean {np.mean(ssim):.3f} (target >= 0.9); {seconds:.1f} s/volume'
        )
    print(
        'site effect of the held-out images (eta squared, 0 = none): '
        + ', '.join(f'{k} {v:.3f}' for k, v in effects.items())
    )


def find_model_inputs_of(opts: argparse.Namespace) -> list[ModelInput]:
    from mrctprep.core.config import InputOptions

    return find_model_inputs(InputOptions(bids_dir=opts.bids, output_dir=opts.out))


if __name__ == '__main__':
    main()
