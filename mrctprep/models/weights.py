"""Model cards and weights: found offline, checked by SHA-256, saved atomically with their card.

A weights file ``<name>.pt`` (a torch state dict) always travels with its card ``<name>.json``:
the bundled card of the model (``mrctprep/data/models/<name>.json``: architecture, input and
output conventions) plus what made these weights (training summary or source file) and the
file's SHA-256. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from mrctprep.core.derivatives import write_atomically, write_json_atomically
from mrctprep.core.errors import ResourceError, WeightsNotFoundError

LOGGER = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = 'MRCTPREP_WEIGHTS_DIR'
WEIGHTS_SUFFIX = '.pt'


def _bundled_card_folder() -> Traversable:
    return resources.files('mrctprep') / 'data' / 'models'


def model_names() -> list[str]:
    """The models whose cards ship with mrctprep."""
    return sorted(
        card.name.removesuffix('.json')
        for card in _bundled_card_folder().iterdir()
        if card.name.endswith('.json')
    )


def bundled_card(name: str) -> dict[str, Any]:
    """The model's card as shipped: what it is, before any weights exist."""
    if name not in model_names():
        raise ResourceError(f'unknown model {name!r}; models: {", ".join(model_names())}')
    card: dict[str, Any] = json.loads((_bundled_card_folder() / f'{name}.json').read_text())
    return card


def card_path(weights_file: Path) -> Path:
    return weights_file.with_suffix('.json')


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mrctprep/weights`` (``~/.cache/...``): where users keep weights."""
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'mrctprep' / 'weights'


def trained_weights_file(output_dir: Path, name: str) -> Path:
    """Where group-level training writes the weights it trained."""
    return output_dir / 'models' / name / f'{name}{WEIGHTS_SUFFIX}'


def weights_search_path(name: str, output_dir: Path | None = None) -> list[Path]:
    """Where weights are looked for when no file is named, in order."""
    candidates = []
    if output_dir is not None:
        candidates.append(trained_weights_file(output_dir, name))
    if os.environ.get(WEIGHTS_DIR_ENV):
        candidates.append(Path(os.environ[WEIGHTS_DIR_ENV]) / f'{name}{WEIGHTS_SUFFIX}')
    candidates.append(user_cache_dir() / f'{name}{WEIGHTS_SUFFIX}')
    return candidates


@dataclass(frozen=True)
class ModelWeights:
    """A verified weights file and its card."""

    name: str
    path: Path
    card: dict[str, Any]

    @property
    def sha256(self) -> str:
        sha256: str = self.card['sha256']
        return sha256

    @property
    def trained_patch_size(self) -> tuple[int, int, int] | None:
        """The crop size these weights were trained on; None for weights trained on whole
        volumes (or imported)."""
        patch_size = self.card.get('trained', {}).get('PatchSize')
        return tuple(patch_size) if isinstance(patch_size, list) else None

    def load_state_dict(self) -> dict[str, Any]:
        import torch

        state_dict: dict[str, Any] = torch.load(self.path, map_location='cpu', weights_only=True)
        return state_dict


def resolve_weights(
    name: str,
    *,
    explicit: Path | None = None,
    output_dir: Path | None = None,
    upstream_checkpoints: bool = False,
) -> ModelWeights:
    """The weights of model ``name``: ``explicit`` (a file the user named), else the first found on
    :func:`weights_search_path`. Missing, card-less or corrupt weights raise
    :class:`WeightsNotFoundError` saying where they were expected, or :class:`ResourceError`.
    With ``upstream_checkpoints``, a file the user named may come without a card (a checkpoint
    as the model's authors' code writes it): its card is then the bundled one and its SHA-256.
    """
    bundled_card(name)
    if explicit is not None:
        path = explicit.expanduser().resolve()
        if not path.is_file():
            raise WeightsNotFoundError(name, [path], given=explicit)
    else:
        searched = weights_search_path(name, output_dir)
        found = next((p for p in searched if p.is_file()), None)
        if found is None:
            raise WeightsNotFoundError(name, searched)
        path = found
    card_file = card_path(path)
    if not card_file.is_file() and upstream_checkpoints and explicit is not None:
        source = {'File': str(path), 'Card': 'none: an upstream checkpoint'}
        card = {**bundled_card(name), 'source': source, 'sha256': sha256_of(path)}
        return ModelWeights(name=name, path=path, card=card)
    if not card_file.is_file():
        raise ResourceError(
            f'{path}: weights without their model card {card_file.name} beside them, so their '
            'SHA-256 cannot be checked; use the .pt and .json that mrctprep wrote together'
        )
    card = json.loads(card_file.read_text())
    if card.get('name') != name:
        raise ResourceError(
            f'{path}: its card {card_file.name} is for model {card.get("name")!r}, not {name!r}'
        )
    stat = path.stat()
    actual = _verified_sha256(path, stat.st_size, stat.st_mtime_ns)
    if actual != card.get('sha256'):
        raise ResourceError(
            f'{path}: corrupt or changed weights (SHA-256 {actual[:16]}..., its card says '
            f'{str(card.get("sha256"))[:16]}...); copy them again or retrain'
        )
    return ModelWeights(name=name, path=path, card=card)


@cache
def _verified_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """:func:`sha256_of`, once per process for a file of this size and modification time: a
    run resolves the same weights for every subject."""
    del size, mtime_ns  # part of the cache key only: a rewritten file is hashed again
    return sha256_of(path)


def save_weights(
    state_dict: dict[str, Any], path: Path, *, name: str, provenance: dict[str, Any]
) -> ModelWeights:
    """Write ``state_dict`` and its card (bundled card + ``provenance`` + SHA-256), atomically."""
    import torch

    write_atomically(path, lambda tmp: torch.save(state_dict, tmp))
    card = {**bundled_card(name), **provenance, 'sha256': sha256_of(path)}
    write_json_atomically(card_path(path), card)
    return ModelWeights(name=name, path=path, card=card)


def save_trained_weights(
    state_dict: dict[str, Any],
    path: Path,
    *,
    name: str,
    trained: dict[str, Any],
    history: list[dict[str, float]],
    version: str,
) -> ModelWeights:
    """:func:`save_weights` at the end of a training: the card's ``trained`` summary gains the
    final losses, the mrctprep version and the date; the SHA-256 is logged."""
    summary = {
        **trained,
        'FinalLosses': {k: round(v, 5) for k, v in history[-1].items() if k != 'step'},
        'TrainedWith': f'mrctprep {version}',
        'Date': datetime.now(UTC).isoformat(timespec='seconds'),
    }
    weights = save_weights(state_dict, path, name=name, provenance={'trained': summary})
    LOGGER.info('%s weights written to %s (SHA-256 %s)', name, weights.path, weights.sha256[:12])
    return weights
