"""Read TensorFlow (v2 "bundle") checkpoints without TensorFlow.

A bundle is two files: ``<prefix>.index``, an SSTable (LevelDB table format) that maps each variable name to a
``BundleEntryProto`` (dtype, shape, shard, byte offset and size), and ``<prefix>.data-00000-of-00001``, the raw
little-endian tensor bytes. Both formats are small and stable, so a few dozen lines of parsing replace a 2.6 GB
TensorFlow install for the one thing we need from it: the trained weights that ship inside the ``musicnn`` wheel.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + crc32c (4 bytes)

# tensorflow/core/framework/types.proto -> numpy (only the plain numeric types a checkpoint holds)
_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    19: np.float16,
}


class CheckpointFormatError(ValueError):
    """The files are not a TensorFlow v2 checkpoint this reader understands."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError("Truncated varint in checkpoint index.")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _protobuf_fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)`` of a serialized protobuf message (no schema needed)."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise CheckpointFormatError(f"Unsupported protobuf wire type {wire}.")
        yield field, wire, value


def _block_entries(block: bytes):
    """Yield ``(key, value)`` of one SSTable block (prefix-compressed keys, restart array at the end)."""
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _read_block(table: bytes, handle: bytes) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if table[offset + size] != 0:
        raise CheckpointFormatError("Compressed checkpoint index blocks are not supported.")
    return table[offset : offset + size]


def _parse_entry(value: bytes) -> dict:
    entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0}
    for field, _, v in _protobuf_fields(value):
        if field == 1:
            entry["dtype"] = v
        elif field == 2:  # TensorShapeProto: repeated Dim dim = 2 { int64 size = 1; }
            for f, _, dim in _protobuf_fields(v):
                if f == 2:
                    entry["shape"].append(next((s for g, _, s in _protobuf_fields(dim) if g == 1), 0))
        elif field == 3:
            entry["shard_id"] = v
        elif field == 4:
            entry["offset"] = v
        elif field == 5:
            entry["size"] = v
        elif field == 7:
            raise CheckpointFormatError("Partitioned (sliced) checkpoint variables are not supported.")
    return entry


def read_tf_checkpoint(prefix: str | os.PathLike) -> dict[str, np.ndarray]:
    """Return every variable of the TensorFlow v2 checkpoint at ``prefix`` as ``{name: numpy array}``.

    ``prefix`` is the path without the ``.index`` / ``.data-*`` suffix (musicnn's checkpoints use an empty file
    name, so their prefix is the directory followed by a slash, e.g. ``.../MTT_musicnn/``).
    """
    prefix = str(prefix)
    index_path = Path(prefix + ".index")
    if not index_path.is_file():
        raise FileNotFoundError(f"No TensorFlow checkpoint index at {index_path}.")
    table = index_path.read_bytes()
    if len(table) < _FOOTER_SIZE or struct.unpack_from("<Q", table, len(table) - 8)[0] != _TABLE_MAGIC:
        raise CheckpointFormatError(f"{index_path} is not an SSTable (bad magic number).")
    footer = table[len(table) - _FOOTER_SIZE :]
    _, pos = _varint(footer, 0)  # metaindex handle: offset
    _, pos = _varint(footer, pos)  # metaindex handle: size
    index_block = _read_block(table, footer[pos:])

    entries = {}
    for _, handle in _block_entries(index_block):
        for key, value in _block_entries(_read_block(table, handle)):
            if key:  # the empty key holds the BundleHeaderProto
                entries[key.decode()] = _parse_entry(value)

    shards: dict[int, bytes] = {}
    tensors = {}
    for name, e in entries.items():
        if e["dtype"] not in _DTYPES:
            continue  # strings, resources and the like: never weights
        if e["shard_id"] not in shards:
            num_shards = max(x["shard_id"] for x in entries.values()) + 1
            data_path = Path(f"{prefix}.data-{e['shard_id']:05d}-of-{num_shards:05d}")
            if not data_path.is_file():
                raise FileNotFoundError(f"Checkpoint data shard {data_path} is missing.")
            shards[e["shard_id"]] = data_path.read_bytes()
        dtype = np.dtype(_DTYPES[e["dtype"]]).newbyteorder("<")
        count = int(np.prod(e["shape"], dtype=np.int64))
        if count * dtype.itemsize != e["size"]:
            raise CheckpointFormatError(
                f"Variable {name!r}: shape {e['shape']} does not match {e['size']} bytes."
            )
        raw = shards[e["shard_id"]][e["offset"] : e["offset"] + e["size"]]
        tensors[name] = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(e["shape"])
    return tensors
