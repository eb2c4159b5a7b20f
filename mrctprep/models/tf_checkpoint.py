"""TensorFlow checkpoints (the tensor-bundle format) read without TensorFlow.

A checkpoint ``variables`` is a prefix: ``variables.index`` is an SSTable (LevelDB's table
format: prefix-compressed key blocks, an index block, a 48-byte footer ending in a magic number)
whose values are ``BundleEntryProto`` messages (dtype, shape, shard, offset, size, masked
CRC32-C), and ``variables.data-SSSSS-of-NNNNN`` are the shards holding each tensor as raw
little-endian bytes. The empty key holds the ``BundleHeaderProto`` (shard count, endianness).
Protocol-buffer fields are decoded here from their wire format (varints and length-delimited
fields), which is all that these two messages use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mrctprep.core.errors import ResourceError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5  # compression type + CRC of the block
#: TensorFlow's ``DataType`` enum numbers of the dtypes a checkpoint of weights holds.
NUMPY_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype('<f4'),
    2: np.dtype('<f8'),
    3: np.dtype('<i4'),
    4: np.dtype('u1'),
    5: np.dtype('<i2'),
    6: np.dtype('i1'),
    9: np.dtype('<i8'),
    10: np.dtype('?'),
    19: np.dtype('<f2'),
}
DT_STRING = 7
_CRC_MASK_DELTA = 0xA282EAD8


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lies: dtype (TensorFlow's enum), shape, shard, byte range, checksum."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    masked_crc32c: int

    @property
    def dtype_name(self) -> str:
        return 'string' if self.dtype == DT_STRING else str(NUMPY_DTYPES.get(self.dtype, '?'))


def read_varint(buffer: bytes, position: int) -> tuple[int, int]:
    """The unsigned LEB128 varint at ``position`` and the position after it."""
    value = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def protobuf_fields(message: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message's fields in order: (number, varint or fixed value or bytes)."""
    fields: list[tuple[int, int | bytes]] = []
    position = 0
    while position < len(message):
        tag, position = read_varint(message, position)
        number, wire_type = tag >> 3, tag & 7
        value: int | bytes
        if wire_type == 0:
            value, position = read_varint(message, position)
        elif wire_type == 1:
            value = int.from_bytes(message[position : position + 8], 'little')
            position += 8
        elif wire_type == 2:
            length, position = read_varint(message, position)
            value = message[position : position + length]
            position += length
        elif wire_type == 5:
            value = int.from_bytes(message[position : position + 4], 'little')
            position += 4
        else:
            raise ValueError(f'unsupported protobuf wire type {wire_type}')
        fields.append((number, value))
    return fields


def parse_bundle_entry(message: bytes) -> BundleEntry:
    """A ``BundleEntryProto``: 1 dtype, 2 shape (``TensorShapeProto``: 2 dim {1 size}),
    3 shard_id, 4 offset, 5 size, 6 crc32c (fixed32)."""
    values: dict[int, int] = {}
    shape: list[int] = []
    for number, value in protobuf_fields(message):
        if number == 2 and isinstance(value, bytes):
            for dim_number, dim in protobuf_fields(value):
                if dim_number == 2 and isinstance(dim, bytes):
                    size = dict(protobuf_fields(dim)).get(1, 0)
                    shape.append(int(size) if isinstance(size, int) else 0)
        elif isinstance(value, int):
            values[number] = value
    return BundleEntry(
        dtype=values.get(1, 0),
        shape=tuple(shape),
        shard_id=values.get(3, 0),
        offset=values.get(4, 0),
        size=values.get(5, 0),
        masked_crc32c=values.get(6, 0),
    )


def _block_entries(table: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one table block; keys share prefixes with their predecessor."""
    if table[offset + size] != 0:
        raise ValueError(f'compressed block at byte {offset} (type {table[offset + size]})')
    block = table[offset : offset + size]
    restarts = struct.unpack_from('<I', block, len(block) - 4)[0]
    end = len(block) - 4 * (restarts + 1)
    entries, key, position = [], b'', 0
    while position < end:
        shared, position = read_varint(block, position)
        unshared, position = read_varint(block, position)
        value_length, position = read_varint(block, position)
        key = key[:shared] + block[position : position + unshared]
        position += unshared
        entries.append((key, block[position : position + value_length]))
        position += value_length
    return entries


def read_table(index_file: Path) -> dict[str, bytes]:
    """Every key and value of an SSTable file (a tensor bundle's ``.index``)."""
    table = index_file.read_bytes()
    if len(table) < FOOTER_BYTES or struct.unpack('<Q', table[-8:])[0] != TABLE_MAGIC:
        raise ResourceError(f'{index_file}: not a TensorFlow checkpoint index (no table magic)')
    footer = table[-FOOTER_BYTES:]
    _, position = read_varint(footer, 0)  # metaindex offset: tensor bundles leave it empty
    _, position = read_varint(footer, position)
    index_offset, position = read_varint(footer, position)
    index_size, _ = read_varint(footer, position)
    entries = {}
    try:
        for _, handle in _block_entries(table, index_offset, index_size):
            block_offset, position = read_varint(handle, 0)
            block_size, _ = read_varint(handle, position)
            for key, value in _block_entries(table, block_offset, block_size):
                entries[key.decode()] = value
    except (IndexError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ResourceError(f'{index_file}: corrupt TensorFlow checkpoint index ({exc})') from exc
    return entries


def checkpoint_prefix(folder_or_prefix: Path) -> Path:
    """The checkpoint prefix (``.../variables``) of a SavedModel folder, its ``variables``
    folder, a ``.index`` file or a prefix itself."""
    path = folder_or_prefix
    if path.suffix == '.index':
        return path.with_suffix('')
    if (path / 'variables' / 'variables.index').is_file():
        return path / 'variables' / 'variables'
    if (path / 'variables.index').is_file():
        return path / 'variables'
    if path.with_name(path.name + '.index').is_file():
        return path
    raise ResourceError(
        f'{folder_or_prefix}: no TensorFlow checkpoint there (looked for variables.index in it, '
        'in its variables/ folder and beside it)'
    )


def read_checkpoint_index(prefix: Path) -> dict[str, BundleEntry]:
    """The tensors of a checkpoint by key (the header under the empty key left out)."""
    table = read_table(prefix.with_name(prefix.name + '.index'))
    return {key: parse_bundle_entry(value) for key, value in table.items() if key}


def shard_file(prefix: Path, shard_id: int, shards: int) -> Path:
    return prefix.with_name(f'{prefix.name}.data-{shard_id:05d}-of-{shards:05d}')


def shard_count(prefix: Path) -> int:
    """The number of data shards, from the ``BundleHeaderProto`` (field 1) under key ''."""
    header = read_table(prefix.with_name(prefix.name + '.index')).get('', b'')
    count = dict(protobuf_fields(header)).get(1, 1)
    return count if isinstance(count, int) else 1


def read_tensor(
    prefix: Path, key: str, entry: BundleEntry, shards: int
) -> npt.NDArray[np.generic]:
    """One numeric tensor's values, their CRC32-C checked."""
    if entry.dtype not in NUMPY_DTYPES:
        raise ResourceError(f'{prefix}: tensor {key} has dtype {entry.dtype}, not numeric')
    path = shard_file(prefix, entry.shard_id, shards)
    if not path.is_file():
        raise ResourceError(f'{path}: missing data shard of checkpoint {prefix.name}')
    with path.open('rb') as stream:
        stream.seek(entry.offset)
        raw = stream.read(entry.size)
    if len(raw) != entry.size or masked_crc32c(raw) != entry.masked_crc32c:
        raise ResourceError(f'{path}: tensor {key} is truncated or corrupt (CRC32-C mismatch)')
    dtype = NUMPY_DTYPES[entry.dtype]
    array: npt.NDArray[np.generic] = np.frombuffer(raw, dtype=dtype).reshape(entry.shape)
    return array.astype(dtype.newbyteorder('='))


@cache
def _crc32c_table() -> npt.NDArray[np.uint32]:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1)
    return table.astype(np.uint32)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TensorFlow stores for every tensor."""
    table = [int(value) for value in _crc32c_table()]
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked form: rotate right by 15 bits and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def read_string_scalar(prefix: Path, key: str, entry: BundleEntry, shards: int) -> bytes:
    """A scalar string tensor: its length as a varint, the lengths' checksum, then the bytes."""
    with shard_file(prefix, entry.shard_id, shards).open('rb') as stream:
        stream.seek(entry.offset)
        raw = stream.read(entry.size)
    length, position = read_varint(raw, 0)
    value = raw[position + 4 : position + 4 + length]
    if len(value) != length:
        raise ResourceError(f'{prefix}: string tensor {key} is truncated')
    return value


def object_graph_paths(prefix: Path) -> dict[str, list[str]]:
    """Every object path (``model/unet/contracting_layers/level0/layers/0/kernel``) that leads to
    each checkpointed variable, from the checkpoint's ``TrackableObjectGraph``: nodes (field 1)
    with children (1: {1 node id, 2 local name}) and attributes (2: {3 checkpoint key})."""
    key = '_CHECKPOINTABLE_OBJECT_GRAPH'
    entries = read_checkpoint_index(prefix)
    graph = read_string_scalar(prefix, key, entries[key], shard_count(prefix))
    children: list[list[tuple[int, str]]] = []
    keys: dict[int, str] = {}
    for index, node in enumerate(v for n, v in protobuf_fields(graph) if n == 1):
        assert isinstance(node, bytes)
        children.append([])
        for number, value in protobuf_fields(node):
            assert isinstance(value, bytes)
            fields = dict(protobuf_fields(value))
            if number == 1:
                child, name = fields.get(1, 0), fields.get(2, b'')
                assert isinstance(child, int) and isinstance(name, bytes)
                children[index].append((child, name.decode()))
            elif number == 2 and isinstance(fields.get(3), bytes):
                keys[index] = fields[3].decode()  # type: ignore[union-attr]
    paths: dict[str, list[str]] = {}
    # the graph is a DAG (one variable under several parents); walk every path from the root
    pending = [(0, '')]
    while pending:
        node, path = pending.pop()
        if node in keys:
            paths.setdefault(keys[node], []).append(path)
        pending += [(child, f'{path}/{name}'.lstrip('/')) for child, name in children[node]]
    return paths
