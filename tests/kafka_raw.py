"""A Kafka producer that writes header names as bytes, for tests.

confluent-kafka (and the Java client) take header names as text and always write UTF-8; other
clients write any bytes. This is the Kafka protocol's Produce request (v7, record batch v2),
enough to write such records for real.
"""

from __future__ import annotations

import socket
import struct

from confluent_kafka.admin import AdminClient

RawRecord = tuple[bytes | None, bytes, list[tuple[bytes, bytes]]]  # key, value, headers


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)  # zigzag
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _varbytes(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def _record_batch(records: list[RawRecord], timestamp: int) -> bytes:
    body = b""
    for delta, (key, value, headers) in enumerate(records):
        record = b"\x00" + _varint(0) + _varint(delta) + _varbytes(key) + _varbytes(value)
        record += _varint(len(headers))
        for name, header in headers:
            record += _varbytes(name) + _varbytes(header)
        body += _varint(len(record)) + record
    # attributes, last offset delta, first/max timestamp, producer id/epoch, base sequence, count
    checked = struct.pack(
        ">hiqqqhii", 0, len(records) - 1, timestamp, timestamp, -1, -1, -1, len(records)
    )
    checked += body
    rest = struct.pack(">ibI", -1, 2, _crc32c(checked)) + checked  # leader epoch, magic v2, crc
    return struct.pack(">qi", 0, len(rest)) + rest


def produce_raw(bootstrap: str, topic: str, records: list[RawRecord], timestamp: int) -> int:
    """Append `records` to partition 0 of `topic` (acks=all); returns the first one's offset."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(topic, timeout=10)
    leader = metadata.brokers[metadata.topics[topic].partitions[0].leader]
    batch = _record_batch(records, timestamp)
    name = topic.encode()
    request = struct.pack(">hhih", 0, 7, 1, 3) + b"raw"  # Produce v7, correlation id, client
    request += struct.pack(">hhi", -1, -1, 30_000)  # no transaction, acks=all, timeout
    request += struct.pack(">ih", 1, len(name)) + name + struct.pack(">iii", 1, 0, len(batch))
    request += batch
    with socket.create_connection((leader.host, leader.port), timeout=30) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        response = _receive(sock, struct.unpack(">i", _receive(sock, 4))[0])
    # correlation id, 1 topic: its name, 1 partition: index, error code, base offset
    (length,) = struct.unpack_from(">h", response, 8)
    _, error, offset = struct.unpack_from(">ihq", response, 10 + length + 4)
    assert error == 0, f"Kafka refused the raw produce: error code {error}"
    return int(offset)


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data
