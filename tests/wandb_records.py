"""Reading an offline wandb run's log (``run-<id>.wandb``) record by record, for the tests that check what a run
logged and how it ended."""

from pathlib import Path


def read_wandb_records(path: Path) -> list:
    """Decode an offline run's ``run-<id>.wandb``: wandb's LevelDB-style log of protobuf ``Record``s (a 7-byte file
    header ``:W&B`` + magic + version, then 32 KiB blocks of chunks with a 7-byte header: CRC-32 of type + data,
    length, type FULL/FIRST/MIDDLE/LAST; a block tail under 7 bytes is padding). wandb 0.31 ships no Python reader
    (its Go core writes and syncs the file), so the test reads the format itself and checks every CRC: a grep of
    the raw bytes would also find key names in the logged config and pass with no metric logged."""
    import struct
    import zlib

    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a wandb run log"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero fill at the end of a block
            continue
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"CRC mismatch at byte {pos}"
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
    return records
