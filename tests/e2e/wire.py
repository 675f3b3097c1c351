"""Hand-rolled Kafka wire-protocol helpers for the raw-socket tests.

Only what the tests need: request framing, a few request/response codecs
(ApiVersions v0, Produce v3, JoinGroup v4), and a magic-2 RecordBatch builder with its
CRC-32C. Everything here is written from the public protocol description so
the tests do not depend on any client library's framing.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# Kafka error codes used by the tests.
NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
INVALID_TOPIC_EXCEPTION = 17
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
KAFKA_STORAGE_ERROR = 56
UNSUPPORTED_COMPRESSION_TYPE = 76
MEMBER_ID_REQUIRED = 79
INVALID_RECORD = 87
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48

# API keys.
PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
JOIN_GROUP = 11
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
DESCRIBE_CONFIGS = 32
CREATE_PARTITIONS = 37
INIT_PRODUCER_ID = 22
ADD_PARTITIONS_TO_TXN = 24
END_TXN = 26


def init_producer_id(conn: Connection, transactional_id: str, timeout_ms: int = 60000,
                     correlation_id: int = 25) -> tuple[int, int, int]:
    """InitProducerId v1 (sent to the transaction coordinator): error, producer id, epoch."""
    r = conn.request(INIT_PRODUCER_ID, 1, string(transactional_id) + i32(timeout_ms),
                     correlation_id)
    r.i32()  # throttle_time_ms
    return r.i16(), r.i64(), r.i16()


def add_partitions_to_txn(conn: Connection, transactional_id: str, producer_id: int,
                          epoch: int, topic: str, partitions: list[int],
                          correlation_id: int = 27) -> dict[int, int]:
    """AddPartitionsToTxn v1 of one topic's partitions: each partition's error code."""
    body = (string(transactional_id) + i64(producer_id) + i16(epoch) + i32(1) + string(topic)
            + i32(len(partitions)) + b"".join(i32(p) for p in partitions))
    r = conn.request(ADD_PARTITIONS_TO_TXN, 1, body, correlation_id)
    r.i32()  # throttle_time_ms
    errors = {}
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            p = r.i32()
            errors[p] = r.i16()
    return errors


def end_txn(conn: Connection, transactional_id: str, producer_id: int, epoch: int,
            commit: bool, correlation_id: int = 29) -> int:
    """EndTxn v1: the error code."""
    body = string(transactional_id) + i64(producer_id) + i16(epoch) + i8(1 if commit else 0)
    r = conn.request(END_TXN, 1, body, correlation_id)
    r.i32()  # throttle_time_ms
    return r.i16()


def transactional_batch(values: list[bytes], producer_id: int, epoch: int,
                        sequence: int) -> bytes:
    """A batch of `values` in a transaction of the producer (attributes bit 4)."""
    return build_record_batch(BatchSpec(
        records=[(None, v) for v in values], attributes=0x10, producer_id=producer_id,
        producer_epoch=epoch, base_sequence=sequence))


DESCRIBE_CLUSTER = 60
DESCRIBE_QUORUM = 55


# --------------------------------------------------------------------------
# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, table driven.
# --------------------------------------------------------------------------

def _make_crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------
# Primitive encoders
# --------------------------------------------------------------------------

def zigzag_varint(n: int) -> bytes:
    """Signed varint (zig-zag, as used inside records)."""
    return uvarint((n << 1) ^ (n >> 63))


def uvarint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    """Non-compact (nullable) STRING: i16 length, -1 for null."""
    if s is None:
        return i16(-1)
    raw = s.encode()
    return i16(len(raw)) + raw


def bytes_field(b: bytes | None) -> bytes:
    """Non-compact (nullable) BYTES: i32 length, -1 for null."""
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


# --------------------------------------------------------------------------
# Record batch (magic 2)
# --------------------------------------------------------------------------

def encode_record(offset_delta: int, timestamp_delta: int, key: bytes | None,
                  value: bytes | None, headers: list[tuple[str, bytes]] = ()) -> bytes:
    body = bytearray()
    body += i8(0)  # record attributes (unused)
    body += zigzag_varint(timestamp_delta)
    body += zigzag_varint(offset_delta)
    if key is None:
        body += zigzag_varint(-1)
    else:
        body += zigzag_varint(len(key)) + key
    if value is None:
        body += zigzag_varint(-1)
    else:
        body += zigzag_varint(len(value)) + value
    body += zigzag_varint(len(headers))
    for hkey, hval in headers:
        hk = hkey.encode()
        body += zigzag_varint(len(hk)) + hk
        body += zigzag_varint(len(hval)) + hval
    return zigzag_varint(len(body)) + bytes(body)


@dataclass
class BatchSpec:
    records: list[tuple[bytes | None, bytes | None]]
    base_offset: int = 0
    base_timestamp: int = field(default_factory=lambda: int(time.time() * 1000))
    attributes: int = 0
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    partition_leader_epoch: int = -1


def build_record_batch(spec: BatchSpec) -> bytes:
    """A valid magic-2 RecordBatch (uncompressed)."""
    records = b"".join(
        encode_record(i, 0, k, v) for i, (k, v) in enumerate(spec.records)
    )
    # Everything covered by the CRC: attributes .. end of records.
    after_crc = (
        i16(spec.attributes)
        + i32(len(spec.records) - 1)          # lastOffsetDelta
        + i64(spec.base_timestamp)            # baseTimestamp
        + i64(spec.base_timestamp)            # maxTimestamp
        + i64(spec.producer_id)
        + i16(spec.producer_epoch)
        + i32(spec.base_sequence)
        + i32(len(spec.records))
        + records
    )
    crc = crc32c(after_crc)
    # batchLength counts from partitionLeaderEpoch to the end.
    after_length = i32(spec.partition_leader_epoch) + i8(2) + struct.pack(">I", crc) + after_crc
    return i64(spec.base_offset) + i32(len(after_length)) + after_length


# Compression codec ids of the batch attributes.
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def compress(codec: str, data: bytes) -> bytes:
    """`data` compressed as Kafka clients do: gzip, raw snappy, lz4 frames, zstd frames."""
    if codec == "gzip":
        import gzip
        return gzip.compress(data)
    if codec == "snappy":
        import snappy
        return snappy.compress(data)
    if codec == "lz4":
        import lz4.frame
        return lz4.frame.compress(data)
    if codec == "zstd":
        import zstandard
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(codec)


def build_batch(values: list[bytes], codec: str | None = None, *, body: bytes | None = None,
                count: int | None = None, base_timestamp: int | None = None,
                max_timestamp: int | None = None) -> bytes:
    """A magic-2 RecordBatch of `values`, compressed with `codec` if given, with a correct
    CRC whatever the overrides: `body` replaces the (compressed) records, `count` the record
    count (and the last offset delta with it), `max_timestamp` the header's max timestamp."""
    ts = int(time.time() * 1000) if base_timestamp is None else base_timestamp
    records = b"".join(encode_record(i, i, None, v) for i, v in enumerate(values))
    if body is None:
        body = compress(codec, records) if codec else records
    n = len(values) if count is None else count
    after_crc = (
        i16(CODECS[codec] if codec else 0)
        + i32(n - 1)
        + i64(ts)
        + i64(ts + len(values) - 1 if max_timestamp is None else max_timestamp)
        + i64(-1) + i16(-1) + i32(-1)
        + i32(n)
        + body
    )
    after_length = i32(-1) + i8(2) + struct.pack(">I", crc32c(after_crc)) + after_crc
    return i64(0) + i32(len(after_length)) + after_length


# Byte offsets inside a serialized batch.
BATCH_LENGTH_OFFSET = 8
BATCH_CRC_OFFSET = 17


def with_crc_flipped(batch: bytes) -> bytes:
    b = bytearray(batch)
    b[BATCH_CRC_OFFSET] ^= 0xFF
    return bytes(b)


def with_batch_length(batch: bytes, new_length: int) -> bytes:
    b = bytearray(batch)
    b[BATCH_LENGTH_OFFSET:BATCH_LENGTH_OFFSET + 4] = i32(new_length)
    return bytes(b)


def batch_length(batch: bytes) -> int:
    return struct.unpack_from(">i", batch, BATCH_LENGTH_OFFSET)[0]


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------

class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _take(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def i8(self) -> int:
        return self._take(">b")

    def i16(self) -> int:
        return self._take(">h")

    def i32(self) -> int:
        return self._take(">i")

    def i64(self) -> int:
        return self._take(">q")

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n]
        if len(s) != n:
            raise ValueError("truncated string")
        self.pos += n
        return s.decode()

    def uvarint(self) -> int:
        n, shift = 0, 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return n

    def remaining(self) -> int:
        return len(self.data) - self.pos


# --------------------------------------------------------------------------
# Connection
# --------------------------------------------------------------------------

def request_header_v1(api_key: int, api_version: int, correlation_id: int,
                      client_id: str | None = "caudal-e2e") -> bytes:
    return i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id)


def frame(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


class Connection:
    """A blocking TCP connection speaking length-prefixed Kafka frames."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(
                    f"connection closed after {len(buf)} of {n} expected bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (size,) = struct.unpack(">i", self._recv_exact(4))
        if size < 0 or size > 64 * 1024 * 1024:
            raise ValueError(f"implausible response frame size {size}")
        return self._recv_exact(size)

    def request(self, api_key: int, api_version: int, body: bytes,
                correlation_id: int = 1) -> Reader:
        """Send one non-flexible (header v1) request and return a Reader
        positioned after the response's correlation id (checked)."""
        self.send_raw(frame(request_header_v1(api_key, api_version, correlation_id) + body))
        r = Reader(self.recv_frame())
        got = r.i32()
        if got != correlation_id:
            raise AssertionError(f"correlation id mismatch: sent {correlation_id}, got {got}")
        return r

    def wait_closed(self, timeout: float) -> bool:
        """True if the peer closes (EOF or reset) within `timeout` seconds.
        Any bytes the broker sends before closing are discarded."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True


# --------------------------------------------------------------------------
# ApiVersions
# --------------------------------------------------------------------------

@dataclass
class ApiVersionsResponse:
    error_code: int
    api_keys: dict[int, tuple[int, int]]


def api_versions(conn: Connection, version: int = 0, correlation_id: int = 7) -> ApiVersionsResponse:
    """ApiVersions with an empty body. For version 0 (and for any version the
    broker does not support) the response is in the v0 layout."""
    r = conn.request(API_VERSIONS, version, b"", correlation_id)
    error = r.i16()
    n = r.i32()
    keys = {}
    for _ in range(max(n, 0)):
        key, lo, hi = r.i16(), r.i16(), r.i16()
        keys[key] = (lo, hi)
    return ApiVersionsResponse(error, keys)


# --------------------------------------------------------------------------
# Produce v3
# --------------------------------------------------------------------------

def produce_v3_body(topic: str, partition: int, records: bytes, acks: int = -1,
                    timeout_ms: int = 10000, transactional_id: str | None = None) -> bytes:
    return (
        string(transactional_id)
        + i16(acks)
        + i32(timeout_ms)
        + i32(1)                  # topics
        + string(topic)
        + i32(1)                  # partitions
        + i32(partition)
        + bytes_field(records)
    )


@dataclass
class ProducePartitionResult:
    topic: str
    partition: int
    error_code: int
    base_offset: int
    log_append_time: int
    error_message: str | None = None


def produce(conn: Connection, topic: str, partition: int, records: bytes, version: int = 3,
            correlation_id: int = 13, timeout_ms: int = 10000,
            transactional_id: str | None = None) -> ProducePartitionResult:
    """Produce v3 to v8 (one request layout; the responses grow) of one batch, acks=all."""
    assert 3 <= version <= 8, version
    body = produce_v3_body(topic, partition, records, timeout_ms=timeout_ms,
                           transactional_id=transactional_id)
    r = conn.request(PRODUCE, version, body, correlation_id)
    results = []
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            result = ProducePartitionResult(name, r.i32(), r.i16(), r.i64(), r.i64())
            if version >= 5:
                r.i64()  # log_start_offset
            if version >= 8:
                for _ in range(r.i32()):
                    r.i32()
                    r.string()
                result.error_message = r.string()
            results.append(result)
    assert len(results) == 1, f"expected one partition result, got {results}"
    return results[0]


def produce_v3(conn: Connection, topic: str, partition: int, records: bytes,
               correlation_id: int = 11) -> ProducePartitionResult:
    r = conn.request(PRODUCE, 3, produce_v3_body(topic, partition, records), correlation_id)
    results = []
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            results.append(ProducePartitionResult(name, r.i32(), r.i16(), r.i64(), r.i64()))
    r.i32()  # throttle_time_ms
    assert len(results) == 1, f"expected one partition result, got {results}"
    return results[0]


# --------------------------------------------------------------------------
# JoinGroup v4 (the first version with KIP-394's MEMBER_ID_REQUIRED)
# --------------------------------------------------------------------------

def consumer_subscription_v0(topics: list[str]) -> bytes:
    """A ConsumerProtocolSubscription v0: the metadata of a "consumer" protocol."""
    return i16(0) + i32(len(topics)) + b"".join(string(t) for t in topics) + bytes_field(None)


@dataclass
class JoinGroupResponse:
    error_code: int
    generation_id: int
    protocol_name: str | None
    leader: str | None
    member_id: str | None
    members: list[tuple[str | None, bytes]]


def join_group_v4(conn: Connection, group: str, member_id: str, topics: list[str],
                  session_timeout_ms: int, rebalance_timeout_ms: int,
                  correlation_id: int = 13) -> JoinGroupResponse:
    """One JoinGroup v4 for the "consumer" protocol type with the range assignor.
    Blocks until the broker answers (a real join waits for its rebalance)."""
    body = (
        string(group)
        + i32(session_timeout_ms)
        + i32(rebalance_timeout_ms)
        + string(member_id)
        + string("consumer")
        + i32(1)                  # protocols
        + string("range")
        + bytes_field(consumer_subscription_v0(topics))
    )
    r = conn.request(JOIN_GROUP, 4, body, correlation_id)
    r.i32()  # throttle_time_ms
    error, generation = r.i16(), r.i32()
    protocol, leader, member = r.string(), r.string(), r.string()
    members = []
    for _ in range(max(r.i32(), 0)):
        mid = r.string()
        n = r.i32()
        members.append((mid, r.data[r.pos:r.pos + max(n, 0)]))
        r.pos += max(n, 0)
    return JoinGroupResponse(error, generation, protocol, leader, member, members)


# --------------------------------------------------------------------------
# DescribeCluster v0 (flexible): which node is the active controller
# --------------------------------------------------------------------------

FIND_COORDINATOR = 10


def find_coordinator(conn: Connection, key: str, key_type: int = 0,
                     correlation_id: int = 23) -> tuple[int, int]:
    """FindCoordinator v1 for a group (key type 0) or a transactional id (1): the error code
    and the coordinator's node id (-1 with an error)."""
    r = conn.request(FIND_COORDINATOR, 1, string(key) + i8(key_type), correlation_id)
    r.i32()  # throttle_time_ms
    error = r.i16()
    r.string()  # error_message
    return error, r.i32()


DESCRIBE_CLUSTER = 60


def describe_cluster_controller(conn: Connection, correlation_id: int = 21) -> int:
    """The controller id a DescribeCluster v0 answers (the active controller, where Metadata
    names any live broker, as Kafka 4 does)."""
    header = i16(DESCRIBE_CLUSTER) + i16(0) + i32(correlation_id) + string("caudal-e2e") + b"\x00"
    body = b"\x00" + b"\x00"  # include_cluster_authorized_operations = false; no tagged fields
    conn.send_raw(frame(header + body))
    r = Reader(conn.recv_frame())
    got = r.i32()
    assert got == correlation_id, f"correlation id mismatch: sent {correlation_id}, got {got}"
    r.uvarint()  # response header tagged fields
    r.i32()  # throttle_time_ms
    error = r.i16()
    assert error == 0, f"DescribeCluster error {error}"
    n = r.uvarint()  # error_message, compact nullable
    if n > 0:
        r.pos += n - 1
    n = r.uvarint()  # cluster_id, compact
    r.pos += n - 1
    return r.i32()


def _compact_string(s: str) -> bytes:
    b = s.encode()
    return uvarint(len(b) + 1) + b


def _read_compact_string(r: Reader) -> str | None:
    n = r.uvarint()
    if n == 0:
        return None
    s = r.data[r.pos:r.pos + n - 1].decode()
    r.pos += n - 1
    return s


def _skip_tagged_fields(r: Reader) -> None:
    for _ in range(r.uvarint()):
        r.uvarint()  # tag
        r.pos += r.uvarint()


def describe_quorum(conn: Connection, version: int = 1,
                    topics: list[tuple[str, list[int]]] | None = None,
                    correlation_id: int = 55) -> dict:
    """DescribeQuorum (flexible at every version: request header v2, response header v1),
    decoded into plain dicts. `topics` defaults to `__cluster_metadata` partition 0."""
    if topics is None:
        topics = [("__cluster_metadata", [0])]
    header = (i16(DESCRIBE_QUORUM) + i16(version) + i32(correlation_id) + string("caudal-e2e")
              + b"\x00")
    body = uvarint(len(topics) + 1)
    for name, partitions in topics:
        body += _compact_string(name) + uvarint(len(partitions) + 1)
        for p in partitions:
            body += i32(p) + b"\x00"
        body += b"\x00"
    body += b"\x00"
    conn.send_raw(frame(header + body))
    r = Reader(conn.recv_frame())
    got = r.i32()
    assert got == correlation_id, f"correlation id mismatch: sent {correlation_id}, got {got}"
    _skip_tagged_fields(r)

    def replicas() -> list[dict]:
        out = []
        for _ in range(r.uvarint() - 1):
            replica = {"id": r.i32()}
            if version >= 2:
                r.pos += 16  # replica directory id
            replica["log_end_offset"] = r.i64()
            if version >= 1:
                replica["last_fetch_timestamp"] = r.i64()
                replica["last_caught_up_timestamp"] = r.i64()
            _skip_tagged_fields(r)
            out.append(replica)
        return out

    answer: dict = {"error_code": r.i16(), "topics": [], "nodes": []}
    if version >= 2:
        answer["error_message"] = _read_compact_string(r)
    for _ in range(r.uvarint() - 1):
        topic = {"name": _read_compact_string(r), "partitions": []}
        for _ in range(r.uvarint() - 1):
            p = {"index": r.i32(), "error_code": r.i16()}
            if version >= 2:
                p["error_message"] = _read_compact_string(r)
            p["leader_id"] = r.i32()
            p["leader_epoch"] = r.i32()
            p["high_watermark"] = r.i64()
            p["voters"] = replicas()
            p["observers"] = replicas()
            _skip_tagged_fields(r)
            topic["partitions"].append(p)
        _skip_tagged_fields(r)
        answer["topics"].append(topic)
    if version >= 2:
        for _ in range(r.uvarint() - 1):
            node = {"id": r.i32(), "listeners": []}
            for _ in range(r.uvarint() - 1):
                name = _read_compact_string(r)
                host = _read_compact_string(r)
                port = struct.unpack_from(">H", r.data, r.pos)[0]
                r.pos += 2
                _skip_tagged_fields(r)
                node["listeners"].append((name, host, port))
            _skip_tagged_fields(r)
            answer["nodes"].append(node)
    _skip_tagged_fields(r)
    assert r.remaining() == 0, f"{r.remaining()} bytes left after DescribeQuorum v{version}"
    return answer
