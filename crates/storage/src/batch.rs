//! RecordBatch (magic 2) headers: parsing, validation and the in-place patches the broker makes.
//!
//! Layout (Kafka's `DefaultRecordBatch`):
//! ```text
//!  0 base_offset i64          27 base_timestamp i64
//!  8 batch_length i32         35 max_timestamp i64
//! 12 partition_leader_epoch   43 producer_id i64
//! 16 magic i8                 51 producer_epoch i16
//! 17 crc u32 (CRC-32C of 21..) 53 base_sequence i32
//! 21 attributes i16           57 records_count i32
//! 23 last_offset_delta i32    61 records...
//! ```
//! The CRC does not cover the base offset nor the leader epoch, so the broker can assign offsets
//! by rewriting those two fields without touching the records.

/// Bytes before the records of a batch.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before `batch_length`'s coverage starts: base offset and the length itself.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;
const MAGIC: i8 = 2;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Why a batch was refused. Every variant maps to Kafka's CORRUPT_MESSAGE except where noted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: {available} bytes where the header needs {BATCH_HEADER_LEN}")]
    TruncatedHeader { available: usize },
    #[error("batch length {batch_length} is impossible (minimum {min})", min = BATCH_HEADER_LEN - LOG_OVERHEAD)]
    BadLength { batch_length: i32 },
    #[error("batch says {declared} bytes but only {available} follow")]
    Truncated { declared: usize, available: usize },
    #[error("unsupported record batch magic {0} (only magic 2 is accepted)")]
    BadMagic(i8),
    #[error("CRC-32C mismatch: header says {stored:#010x}, bytes give {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("records count {count} does not match last offset delta {last_offset_delta}")]
    BadCount { count: i32, last_offset_delta: i32 },
    #[error("records do not parse: {0}")]
    BadRecords(&'static str),
    #[error("record {index} has offset delta {offset_delta}; a produced batch numbers its records from 0")]
    BadOffsetDelta { index: i32, offset_delta: i32 },
    #[error("unknown compression codec {0}")]
    UnknownCodec(i16),
    #[error("compressed records do not decompress: {0}")]
    BadCompression(String),
    #[error("compressed records inflate past {limit} bytes (message.max.bytes times message.max.decompression.factor)")]
    InflatesTooMuch { limit: usize },
    /// Kafka's INVALID_RECORD: commit and abort markers are written by the broker alone.
    #[error("clients may not write control records (transaction markers)")]
    ControlFromClient,
    /// Kafka's INVALID_RECORD: a transactional batch names its producer.
    #[error("a transactional batch without a producer id")]
    TransactionalWithoutProducer,
}

impl BatchError {
    /// Whether Kafka answers this refusal INVALID_RECORD rather than CORRUPT_MESSAGE: the batch
    /// is intact, but not one a client may write.
    pub fn is_invalid_record(&self) -> bool {
        matches!(
            self,
            BatchError::ControlFromClient | BatchError::TransactionalWithoutProducer
        )
    }
}

/// A transaction marker: the one record of a control batch, as Kafka writes it (key: version 0,
/// type 0 abort or 1 commit; value: version 0, the coordinator's epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMarker {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// A control batch of one marker for `producer_id` at `producer_epoch`, offsets from 0 (the
/// append assigns them).
pub fn control_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: ControlMarker,
    timestamp_ms: i64,
) -> Vec<u8> {
    // One record: length 16, attributes, timestamp and offset deltas 0, a 4-byte key, a 6-byte
    // value, no headers (varints zigzag-encoded).
    let mut record = vec![32, 0, 0, 0, 8, 0, 0, 0, u8::from(marker.commit), 12, 0, 0];
    record.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    record.push(0);
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + record.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    let batch_length = (BATCH_HEADER_LEN - LOG_OVERHEAD + record.len()) as i32;
    b.extend_from_slice(&batch_length.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(MAGIC as u8);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&(ATTR_TRANSACTIONAL | ATTR_CONTROL).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&producer_epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&record);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The marker of a control batch (validated, uncompressed as Kafka writes them); `None` for a
/// batch that is not one, or whose first record is not a commit or abort marker.
pub fn control_marker(batch: &[u8]) -> Option<ControlMarker> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() || header.compression() != 0 {
        return None;
    }
    let records = batch.get(BATCH_HEADER_LEN..header.total_len().ok()?)?;
    let (len, used) = read_varint(records)?;
    let mut r = Fields(records.get(used..used.checked_add(usize::try_from(len).ok()?)?)?);
    r.take(1)?;
    r.varlong()?;
    r.varint()?;
    let key_len = usize::try_from(r.varint()?).ok()?;
    let key = r.take(key_len)?;
    let value_len = usize::try_from(r.varint()?).ok()?;
    let value = r.take(value_len)?;
    if key.len() < 4 || value.len() < 6 {
        return None;
    }
    let commit = match i16_at(key, 2) {
        0 => false,
        1 => true,
        _ => return None,
    };
    Some(ControlMarker {
        commit,
        coordinator_epoch: i32_at(value, 2),
    })
}

/// A read-only view of a batch header. Constructed only over at least [`BATCH_HEADER_LEN`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct BatchHeader<'a>(&'a [u8]);

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

impl<'a> BatchHeader<'a> {
    /// Views the header at the start of `bytes`, checking only that it is long enough.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BatchError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(BatchError::TruncatedHeader {
                available: bytes.len(),
            });
        }
        Ok(BatchHeader(bytes))
    }
    pub fn base_offset(&self) -> i64 {
        i64_at(self.0, 0)
    }
    pub fn batch_length(&self) -> i32 {
        i32_at(self.0, 8)
    }
    /// The whole batch's size on disk, or an error if `batch_length` is impossible.
    pub fn total_len(&self) -> Result<usize, BatchError> {
        let batch_length = self.batch_length();
        match usize::try_from(batch_length) {
            Ok(n) if n >= BATCH_HEADER_LEN - LOG_OVERHEAD => Ok(n + LOG_OVERHEAD),
            _ => Err(BatchError::BadLength { batch_length }),
        }
    }
    /// The epoch of the leader that appended the batch (-1 as producers send it).
    pub fn partition_leader_epoch(&self) -> i32 {
        i32_at(self.0, 12)
    }
    pub fn magic(&self) -> i8 {
        self.0[16] as i8
    }
    pub fn crc(&self) -> u32 {
        i32_at(self.0, 17) as u32
    }
    pub fn attributes(&self) -> i16 {
        i16_at(self.0, 21)
    }
    /// Compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> i16 {
        self.attributes() & ATTR_COMPRESSION_MASK
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & ATTR_TIMESTAMP_TYPE != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }
    pub fn last_offset_delta(&self) -> i32 {
        i32_at(self.0, 23)
    }
    /// The batch's last offset. Saturating: on a corrupt header read from disk (the CRC does
    /// not cover the base offset) this must not overflow.
    pub fn last_offset(&self) -> i64 {
        self.base_offset()
            .saturating_add(i64::from(self.last_offset_delta()))
    }
    pub fn base_timestamp(&self) -> i64 {
        i64_at(self.0, 27)
    }
    pub fn max_timestamp(&self) -> i64 {
        i64_at(self.0, 35)
    }
    pub fn producer_id(&self) -> i64 {
        i64_at(self.0, 43)
    }
    pub fn producer_epoch(&self) -> i16 {
        i16_at(self.0, 51)
    }
    pub fn base_sequence(&self) -> i32 {
        i32_at(self.0, 53)
    }
    pub fn records_count(&self) -> i32 {
        i32_at(self.0, 57)
    }
}

/// A batch that passed [`validate_batch`]: what the log needs to know to append it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidBatch {
    pub total_len: usize,
    pub last_offset_delta: i32,
    /// The largest record timestamp (for a produced batch, computed from its records).
    pub max_timestamp: i64,
    pub records_count: i32,
    /// The header's max timestamp (or timestamp type) disagrees with the records: the stored
    /// header must carry `max_timestamp`, as CreateTime, with its CRC recomputed.
    pub rewrite_max_timestamp: bool,
}

/// Checks the first batch in `bytes` as stored: header lengths, magic, CRC-32C, and that the
/// records fit the offset range (a compacted batch may have gaps: fewer records than offsets).
/// For uncompressed batches the records' own length prefixes are walked too (no allocation, no
/// copy); compressed records are left compressed.
pub fn validate_batch(bytes: &[u8]) -> Result<ValidBatch, BatchError> {
    let valid = check_header(bytes)?;
    if BatchHeader::parse(bytes)?.compression() == 0 {
        check_record_framing(
            &bytes[BATCH_HEADER_LEN..valid.total_len],
            valid.records_count,
        )?;
    }
    Ok(valid)
}

/// The header checks of [`validate_batch`]: lengths, magic, CRC-32C, count against offsets.
fn check_header(bytes: &[u8]) -> Result<ValidBatch, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    let total_len = header.total_len()?;
    if total_len > bytes.len() {
        return Err(BatchError::Truncated {
            declared: total_len,
            available: bytes.len(),
        });
    }
    if header.magic() != MAGIC {
        return Err(BatchError::BadMagic(header.magic()));
    }
    let computed = crc32c::crc32c(&bytes[CRC_START..total_len]);
    if computed != header.crc() {
        return Err(BatchError::BadCrc {
            stored: header.crc(),
            computed,
        });
    }
    let count = header.records_count();
    let last_offset_delta = header.last_offset_delta();
    if count < 0 || last_offset_delta < 0 || i64::from(count) > i64::from(last_offset_delta) + 1 {
        return Err(BatchError::BadCount {
            count,
            last_offset_delta,
        });
    }
    Ok(ValidBatch {
        total_len,
        last_offset_delta,
        max_timestamp: header.max_timestamp(),
        records_count: count,
        rewrite_max_timestamp: false,
    })
}

/// A decompressed batch larger than this is not kept for the next one.
const SCRATCH_KEPT_BYTES: usize = 8 << 20;

thread_local! {
    /// Where a produced batch's records are decompressed to be checked, reused batch after batch.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks a batch as a producer sent it, as Kafka's log validator does before it stores one:
/// [`validate_batch`]'s header checks; at least one record and one offset per record with no
/// gaps (only compaction may leave gaps); then every record walked, decompressing it first if
/// compressed (into at most `max_decompressed_bytes`): its framing, that offset deltas count
/// from 0, and the largest timestamp, which the header must carry.
pub fn validate_produced_batch(
    bytes: &[u8],
    max_decompressed_bytes: usize,
) -> Result<ValidBatch, BatchError> {
    let mut valid = check_header(bytes)?;
    let header = BatchHeader::parse(bytes)?;
    if header.is_control() {
        return Err(BatchError::ControlFromClient);
    }
    if header.is_transactional() && header.producer_id() < 0 {
        return Err(BatchError::TransactionalWithoutProducer);
    }
    if valid.records_count < 1 || valid.last_offset_delta != valid.records_count - 1 {
        return Err(BatchError::BadCount {
            count: valid.records_count,
            last_offset_delta: valid.last_offset_delta,
        });
    }
    let body = &bytes[BATCH_HEADER_LEN..valid.total_len];
    let base_timestamp = header.base_timestamp();
    let max_timestamp = match header.compression() {
        0 => walk_records(body, valid.records_count, base_timestamp)?,
        codec => SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let walked =
                crate::compression::decompress(codec, body, max_decompressed_bytes, &mut scratch)
                    .and_then(|n| walk_records(&scratch[..n], valid.records_count, base_timestamp));
            if scratch.len() > SCRATCH_KEPT_BYTES {
                *scratch = Vec::new();
            }
            walked
        })?,
    };
    valid.rewrite_max_timestamp =
        header.max_timestamp() != max_timestamp || header.is_log_append_time();
    valid.max_timestamp = max_timestamp;
    Ok(valid)
}

/// Walks `count` records that must fill `records` exactly, checking each one's fields as
/// Kafka's `DefaultRecord` reads them; returns the largest timestamp (-1 if none has one).
fn walk_records(mut records: &[u8], count: i32, base_timestamp: i64) -> Result<i64, BatchError> {
    let bad = BatchError::BadRecords;
    let mut max_timestamp = -1i64;
    for index in 0..count {
        let (len, used) = read_varint(records).ok_or(bad("bad length varint"))?;
        let len = usize::try_from(len).map_err(|_| bad("negative record length"))?;
        let end = used
            .checked_add(len)
            .filter(|&end| end <= records.len())
            .ok_or(bad("record runs past the batch"))?;
        let mut r = Fields(&records[used..end]);
        r.take(1).ok_or(bad("record without attributes"))?;
        let timestamp_delta = r.varlong().ok_or(bad("bad timestamp delta"))?;
        let offset_delta = r.varint().ok_or(bad("bad offset delta"))?;
        if offset_delta != index {
            return Err(BatchError::BadOffsetDelta {
                index,
                offset_delta,
            });
        }
        r.bytes(true).ok_or(bad("bad key"))?;
        r.bytes(true).ok_or(bad("bad value"))?;
        let headers = r.varint().ok_or(bad("bad header count"))?;
        if headers < 0 {
            return Err(bad("negative header count"));
        }
        for _ in 0..headers {
            r.bytes(false).ok_or(bad("bad header key"))?;
            r.bytes(true).ok_or(bad("bad header value"))?;
        }
        if !r.0.is_empty() {
            return Err(bad("bytes left inside a record"));
        }
        let timestamp = base_timestamp
            .checked_add(timestamp_delta)
            .ok_or(bad("timestamp overflows"))?;
        max_timestamp = max_timestamp.max(timestamp);
        records = &records[end..];
    }
    if records.is_empty() {
        Ok(max_timestamp)
    } else {
        Err(bad("bytes left after the last record"))
    }
}

/// The fields of one record, read front to back.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn varint(&mut self) -> Option<i32> {
        let (v, used) = read_varint(self.0)?;
        self.0 = &self.0[used..];
        Some(v)
    }
    fn varlong(&mut self) -> Option<i64> {
        let (v, used) = read_varlong(self.0)?;
        self.0 = &self.0[used..];
        Some(v)
    }
    /// A varint length and that many bytes; -1 (null) only if `nullable`.
    fn bytes(&mut self, nullable: bool) -> Option<()> {
        match self.varint()? {
            -1 if nullable => Some(()),
            n => self.take(usize::try_from(n).ok()?).map(|_| ()),
        }
    }
}

/// Writes `max_timestamp` into a batch header as a CreateTime max timestamp and recomputes the
/// CRC over the new header and `body` (the rest of the batch), as Kafka's validator does for a
/// batch whose header disagrees with its records.
pub fn rewrite_max_timestamp(header: &mut [u8; BATCH_HEADER_LEN], body: &[u8], max_timestamp: i64) {
    let attributes = i16_at(header, 21) & !ATTR_TIMESTAMP_TYPE;
    header[21..23].copy_from_slice(&attributes.to_be_bytes());
    header[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[CRC_START..]), body);
    header[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Walks uncompressed records by their varint length prefixes: exactly `count` of them must fill
/// `records` exactly.
fn check_record_framing(mut records: &[u8], count: i32) -> Result<(), BatchError> {
    for _ in 0..count {
        let (len, used) =
            read_varint(records).ok_or(BatchError::BadRecords("bad length varint"))?;
        let len = usize::try_from(len).map_err(|_| BatchError::BadRecords("negative length"))?;
        let end = used
            .checked_add(len)
            .filter(|&end| end <= records.len())
            .ok_or(BatchError::BadRecords("record runs past the batch"))?;
        records = &records[end..];
    }
    if records.is_empty() {
        Ok(())
    } else {
        Err(BatchError::BadRecords("bytes left after the last record"))
    }
}

/// Reads a zigzag varint (at most 5 bytes for an i32); returns the value and bytes used.
pub fn read_varint(bytes: &[u8]) -> Option<(i32, usize)> {
    let mut raw: u32 = 0;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        raw |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((raw >> 1) as i32) ^ -((raw & 1) as i32), i + 1));
        }
    }
    None
}

/// Reads a zigzag varlong (at most 10 bytes); returns the value and bytes used.
pub fn read_varlong(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), i + 1));
        }
    }
    None
}

/// Writes the broker-assigned fields into a batch header: base offset and leader epoch. Neither is
/// covered by the CRC, so the batch stays valid.
pub fn assign_offset(header: &mut [u8; BATCH_HEADER_LEN], base_offset: i64, leader_epoch: i32) {
    header[0..8].copy_from_slice(&base_offset.to_be_bytes());
    header[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Iterates the complete batches at the start of `bytes`, stopping at the first that is cut off
/// or has an impossible length. Yields `(position, header)`.
pub struct BatchIter<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BatchIter { bytes, position: 0 }
    }
    /// Bytes covered by the batches yielded so far.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = (usize, BatchHeader<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.bytes[self.position..];
        let header = BatchHeader::parse(rest).ok()?;
        let len = header.total_len().ok()?;
        if len > rest.len() {
            return None;
        }
        let at = self.position;
        self.position += len;
        Some((at, header))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn zigzag(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }
    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = zigzag(v);
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    /// A record for the test batch builders: key and value, None for null.
    pub(crate) type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    /// Builds a valid uncompressed batch of `values` with the given base timestamp.
    pub(crate) fn batch(values: &[&[u8]], timestamp: i64) -> Vec<u8> {
        let keyed: Vec<KeyValue<'_>> = values.iter().map(|v| (None, Some(*v))).collect();
        keyed_batch(&keyed, timestamp)
    }

    /// Builds a valid uncompressed batch of `(key, value)` records (None is null).
    pub(crate) fn keyed_batch(records_in: &[KeyValue<'_>], timestamp: i64) -> Vec<u8> {
        let mut records = Vec::new();
        for (i, (k, v)) in records_in.iter().enumerate() {
            let mut r = Vec::new();
            r.push(0); // attributes
            put_varint(&mut r, i as i64); // timestamp delta
            put_varint(&mut r, i as i64); // offset delta
            match k {
                Some(k) => {
                    put_varint(&mut r, k.len() as i64);
                    r.extend_from_slice(k);
                }
                None => put_varint(&mut r, -1),
            }
            match v {
                Some(v) => {
                    put_varint(&mut r, v.len() as i64);
                    r.extend_from_slice(v);
                }
                None => put_varint(&mut r, -1),
            }
            put_varint(&mut r, 0); // headers
            put_varint(&mut records, r.len() as i64);
            records.extend_from_slice(&r);
        }
        let n = records_in.len() as i32;
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(
            &((BATCH_HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes(),
        );
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(n - 1).to_be_bytes());
        b.extend_from_slice(&timestamp.to_be_bytes());
        b.extend_from_slice(&(timestamp + i64::from(n - 1)).to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Re-encodes an uncompressed test batch with its records compressed by `codec`.
    pub(crate) fn compressed(plain: &[u8], codec: i16) -> Vec<u8> {
        let mut b = plain[..BATCH_HEADER_LEN].to_vec();
        b.extend_from_slice(&crate::compression::tests::compress(
            codec,
            &plain[BATCH_HEADER_LEN..],
        ));
        b[21..23].copy_from_slice(&codec.to_be_bytes());
        reseal(&mut b);
        b
    }

    /// Fixes a test batch's length and CRC after its bytes were changed.
    pub(crate) fn reseal(b: &mut [u8]) {
        let batch_length = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    const LIMIT: usize = 1 << 20;

    #[test]
    fn produced_batches_of_every_codec_are_walked_record_by_record() {
        let values: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("value {i}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let plain = batch(&refs, 1000);
        for codec in [0, 1, 2, 3, 4] {
            let b = if codec == 0 {
                plain.clone()
            } else {
                compressed(&plain, codec)
            };
            let v = validate_produced_batch(&b, LIMIT).unwrap();
            assert_eq!(
                (v.records_count, v.max_timestamp),
                (200, 1199),
                "codec {codec}"
            );
            assert!(!v.rewrite_max_timestamp, "codec {codec}");
            // A body that is not what the codec says, under a correct CRC.
            let mut garbage = b.clone();
            for byte in &mut garbage[BATCH_HEADER_LEN + 4..] {
                *byte = byte.wrapping_mul(31).wrapping_add(7);
            }
            reseal(&mut garbage);
            assert!(
                validate_produced_batch(&garbage, LIMIT).is_err(),
                "codec {codec}: a garbage body was accepted"
            );
            // A record count that lies (and a last offset delta that agrees with the lie).
            let mut lying = b.clone();
            lying[23..27].copy_from_slice(&200i32.to_be_bytes());
            lying[57..61].copy_from_slice(&201i32.to_be_bytes());
            reseal(&mut lying);
            assert!(
                matches!(
                    validate_produced_batch(&lying, LIMIT),
                    Err(BatchError::BadRecords(_))
                ),
                "codec {codec}: a lying count was accepted"
            );
        }
    }

    #[test]
    fn a_compressed_batch_that_inflates_past_the_limit_is_refused() {
        let zeros = vec![0u8; 4 << 20];
        let plain = batch(&[&zeros], 0);
        for codec in [1, 3, 4] {
            let bomb = compressed(&plain, codec);
            assert!(bomb.len() < 64 << 10, "codec {codec}: {} bytes", bomb.len());
            assert!(
                matches!(
                    validate_produced_batch(&bomb, LIMIT),
                    Err(BatchError::InflatesTooMuch { .. })
                ),
                "codec {codec}"
            );
            assert!(
                validate_produced_batch(&bomb, 8 << 20).is_ok(),
                "codec {codec}"
            );
        }
    }

    #[test]
    fn records_numbered_other_than_from_zero_are_refused() {
        let mut b = batch(&[b"a", b"b"], 0);
        // The second record's offset delta is its third byte (length, attributes, ts delta).
        let second = BATCH_HEADER_LEN + 1 + usize::from(b[BATCH_HEADER_LEN]) / 2;
        assert_eq!(b[second + 3], 2, "zigzag 1");
        b[second + 3] = 4;
        reseal(&mut b);
        assert!(matches!(
            validate_produced_batch(&b, LIMIT),
            Err(BatchError::BadOffsetDelta {
                index: 1,
                offset_delta: 2
            })
        ));
    }

    #[test]
    fn a_wrong_max_timestamp_is_rewritten_with_a_new_crc() {
        let mut b = batch(&[b"x", b"y", b"z"], 5000);
        // What sarama 1.22 writes: no max timestamp.
        b[35..43].copy_from_slice(&(-1i64).to_be_bytes());
        reseal(&mut b);
        let v = validate_produced_batch(&b, LIMIT).unwrap();
        assert!(v.rewrite_max_timestamp);
        assert_eq!(v.max_timestamp, 5002);
        let mut header = [0u8; BATCH_HEADER_LEN];
        header.copy_from_slice(&b[..BATCH_HEADER_LEN]);
        rewrite_max_timestamp(&mut header, &b[BATCH_HEADER_LEN..], v.max_timestamp);
        let mut fixed = header.to_vec();
        fixed.extend_from_slice(&b[BATCH_HEADER_LEN..]);
        let again = validate_produced_batch(&fixed, LIMIT).unwrap();
        assert!(
            !again.rewrite_max_timestamp,
            "the rewritten header is right"
        );
        assert_eq!(BatchHeader::parse(&fixed).unwrap().max_timestamp(), 5002);
    }

    #[test]
    fn a_well_formed_batch_validates() {
        let b = batch(&[b"a", b"bc", b"def"], 1000);
        let v = validate_batch(&b).unwrap();
        assert_eq!(v.total_len, b.len());
        assert_eq!(v.records_count, 3);
        assert_eq!(v.max_timestamp, 1002);
    }

    #[test]
    fn a_flipped_bit_anywhere_after_the_crc_is_caught() {
        let b = batch(&[b"hello", b"world"], 1);
        for at in CRC_START..b.len() {
            let mut bad = b.clone();
            bad[at] ^= 0x01;
            assert!(validate_batch(&bad).is_err(), "flip at byte {at} accepted");
        }
    }

    #[test]
    fn offsets_and_epoch_can_be_patched_without_breaking_the_crc() {
        let b = batch(&[b"x"], 1);
        let mut header = [0u8; BATCH_HEADER_LEN];
        header.copy_from_slice(&b[..BATCH_HEADER_LEN]);
        assign_offset(&mut header, 12345, 7);
        let mut patched = header.to_vec();
        patched.extend_from_slice(&b[BATCH_HEADER_LEN..]);
        validate_batch(&patched).unwrap();
        assert_eq!(BatchHeader::parse(&patched).unwrap().base_offset(), 12345);
    }

    #[test]
    fn impossible_lengths_and_counts_are_refused() {
        let b = batch(&[b"x", b"y"], 1);
        let mut gap = b.clone();
        gap[23..27].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&gap[CRC_START..]);
        gap[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(
            validate_batch(&gap).is_ok(),
            "a stored (compacted) batch may have offset gaps"
        );
        assert!(
            matches!(
                validate_produced_batch(&gap, 1 << 20),
                Err(BatchError::BadCount { .. })
            ),
            "a produced one may not"
        );
        let mut over = b.clone();
        over[23..27].copy_from_slice(&0i32.to_be_bytes());
        let crc = crc32c::crc32c(&over[CRC_START..]);
        over[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(
            matches!(validate_batch(&over), Err(BatchError::BadCount { .. })),
            "more records than offsets"
        );
        assert!(matches!(
            validate_batch(&b[..b.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate_batch(&b[..30]),
            Err(BatchError::TruncatedHeader { .. })
        ));
        let mut neg = b.clone();
        neg[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate_batch(&neg),
            Err(BatchError::BadLength { .. })
        ));
        let mut magic = b.clone();
        magic[16] = 1;
        assert_eq!(validate_batch(&magic), Err(BatchError::BadMagic(1)));
    }

    proptest::proptest! {
        #[test]
        fn validation_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = validate_batch(&bytes);
            let _ = BatchIter::new(&bytes).count();
        }

        #[test]
        fn varint_roundtrip(v in proptest::prelude::any::<i32>()) {
            let mut out = Vec::new();
            put_varint(&mut out, i64::from(v));
            proptest::prop_assert_eq!(read_varint(&out), Some((v, out.len())));
        }
    }

    #[test]
    fn a_control_batch_is_valid_reads_back_its_marker_and_is_refused_from_clients() {
        for (commit, epoch) in [(true, 0), (false, 17)] {
            let marker = ControlMarker {
                commit,
                coordinator_epoch: epoch,
            };
            let b = control_batch(4000, 3, marker, 1_700_000_000_000);
            let h = BatchHeader::parse(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id(), h.producer_epoch()), (4000, 3));
            assert_eq!(validate_batch(&b).unwrap().records_count, 1);
            assert_eq!(control_marker(&b), Some(marker));
            assert_eq!(
                validate_produced_batch(&b, 1 << 20),
                Err(BatchError::ControlFromClient)
            );
        }
        assert_eq!(control_marker(&batch(&[b"not a marker"], 0)), None);
    }

    #[test]
    fn a_transactional_batch_must_name_its_producer() {
        let mut b = batch(&[b"v"], 0);
        b[21..23].copy_from_slice(&ATTR_TRANSACTIONAL.to_be_bytes());
        reseal(&mut b);
        let refused = validate_produced_batch(&b, 1 << 20).unwrap_err();
        assert_eq!(refused, BatchError::TransactionalWithoutProducer);
        assert!(refused.is_invalid_record());
        assert!(!BatchError::BadMagic(1).is_invalid_record());
    }
}
