//! Decompressing the records of a produced batch so they can be checked before the batch is
//! stored (it is stored as it came, still compressed). Kafka's codecs: gzip, snappy (raw, or in
//! the xerial framing Kafka's Java client writes), lz4 (frames) and zstd. Output is bounded:
//! a batch that inflates past the limit is refused as soon as it does, so a small zip bomb
//! cannot take memory.

use std::cell::RefCell;
use std::io::Read;

use crate::batch::BatchError;

/// Codec ids of the batch attributes.
pub const GZIP: i16 = 1;
pub const SNAPPY: i16 = 2;
pub const LZ4: i16 = 3;
pub const ZSTD: i16 = 4;

/// The snappy-java (xerial) stream header: magic, then version and compatible version.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

/// Decompresses `compressed`, a batch body compressed with `codec`, into `buf`: returns how
/// many bytes of records it holds (at most `limit`; more is an error). `buf` is a work buffer
/// reused from batch to batch: all of it is initialised, it grows (zero-filling only what is
/// new) when a batch needs more, and it is never cleared, so a warm buffer costs nothing before
/// the decompressor writes into it.
pub fn decompress(
    codec: i16,
    compressed: &[u8],
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<usize, BatchError> {
    match codec {
        GZIP => read_bounded(flate2::read::MultiGzDecoder::new(compressed), limit, buf),
        SNAPPY => snappy(compressed, limit, buf),
        LZ4 => {
            let mut decoder = lz4::Decoder::new(compressed).map_err(|e| corrupt("lz4", e))?;
            let n = read_bounded(&mut decoder, limit, buf)?;
            // The decoder stops quietly where its input ends: a cut frame shows only here.
            match decoder.finish() {
                ([], Ok(())) => Ok(n),
                (_, Ok(())) => Err(corrupt("lz4", "bytes after the end of the frame")),
                (_, Err(_)) => Err(corrupt("lz4", "the frame is cut off")),
            }
        }
        ZSTD => zstd(compressed, limit, buf),
        other => Err(BatchError::UnknownCodec(other)),
    }
}

fn corrupt(codec: &'static str, e: impl std::fmt::Display) -> BatchError {
    BatchError::BadCompression(format!("{codec}: {e}"))
}

fn too_large(limit: usize) -> BatchError {
    BatchError::InflatesTooMuch { limit }
}

/// Makes `buf` at least `len` bytes long (never shorter), zero-filling what is new.
fn ensure_len(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Reads a decoder to its end into `buf`, failing once it has given more than `limit` bytes.
fn read_bounded(
    mut decoder: impl Read,
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<usize, BatchError> {
    let cap = limit.saturating_add(1);
    let mut filled = 0;
    loop {
        let end = buf.len().min(cap);
        if filled == end {
            if end == cap {
                return Err(too_large(limit));
            }
            ensure_len(buf, buf.len().saturating_mul(2).max(64 << 10).min(cap));
            continue;
        }
        match decoder.read(&mut buf[filled..end]) {
            Ok(0) => return Ok(filled),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(corrupt("decompression", e)),
        }
    }
}

fn snappy(compressed: &[u8], limit: usize, buf: &mut Vec<u8>) -> Result<usize, BatchError> {
    let mut decoder = snap::raw::Decoder::new();
    let mut filled = 0;
    let mut block = |raw: &[u8], buf: &mut Vec<u8>| -> Result<(), BatchError> {
        // Snappy says how long a block inflates to before anything is decompressed.
        let len = snap::raw::decompress_len(raw).map_err(|e| corrupt("snappy", e))?;
        if filled + len > limit {
            return Err(too_large(limit));
        }
        ensure_len(buf, filled + len);
        filled += decoder
            .decompress(raw, &mut buf[filled..filled + len])
            .map_err(|e| corrupt("snappy", e))?;
        Ok(())
    };
    if !compressed.starts_with(XERIAL_MAGIC) {
        // Raw snappy, as librdkafka writes it (snappy-java reads both).
        block(compressed, buf)?;
        return Ok(filled);
    }
    let mut rest = compressed
        .get(XERIAL_HEADER_LEN..)
        .ok_or_else(|| corrupt("snappy", "xerial header cut off"))?;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("snappy", "xerial block length cut off"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let raw = tail
            .get(..len)
            .ok_or_else(|| corrupt("snappy", "xerial block cut off"))?;
        block(raw, buf)?;
        rest = &tail[len..];
    }
    Ok(filled)
}

thread_local! {
    /// One zstd decompression context per thread, reused: creating one per batch costs more
    /// than decompressing a small batch.
    static ZSTD_CONTEXT: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { RefCell::new(None) };
}

/// zstd, decompressed in one shot straight into `buf`: faster than streaming, which goes
/// through the context's window buffer and copies out of it. Kafka clients write no content
/// size in the frame header, so the room is a guess, grown fourfold (up to the limit) when the
/// frame does not fit; `buf` keeps its room from batch to batch, so after the first batch the
/// guess is right.
fn zstd(compressed: &[u8], limit: usize, buf: &mut Vec<u8>) -> Result<usize, BatchError> {
    use zstd::zstd_safe::{get_error_name, DCtx};
    ZSTD_CONTEXT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let context = match &mut *slot {
            Some(c) => c,
            None => slot.insert(
                DCtx::try_create().ok_or_else(|| corrupt("zstd", "no decompression context"))?,
            ),
        };
        let cap = limit.saturating_add(1);
        let mut room = compressed.len().saturating_mul(16).max(256 << 10);
        loop {
            ensure_len(buf, room.min(cap));
            let end = buf.len().min(cap);
            match context.decompress(&mut buf[..end], compressed) {
                Ok(n) if n > limit => return Err(too_large(limit)),
                Ok(n) => return Ok(n),
                Err(code) if get_error_name(code) == "Destination buffer is too small" => {
                    if end == cap {
                        return Err(too_large(limit));
                    }
                    room = end.saturating_mul(4);
                }
                Err(code) => return Err(corrupt("zstd", get_error_name(code))),
            }
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    fn records(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("record {i};").into_bytes())
            .collect()
    }

    pub(crate) fn compress(codec: i16, plain: &[u8]) -> Vec<u8> {
        match codec {
            GZIP => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
            SNAPPY => snap::raw::Encoder::new().compress_vec(plain).unwrap(),
            LZ4 => {
                let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
                e.write_all(plain).unwrap();
                let (out, r) = e.finish();
                r.unwrap();
                out
            }
            ZSTD => zstd::bulk::compress(plain, 3).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_codec_round_trips_and_is_bounded() {
        let plain = records(5000);
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            let compressed = compress(codec, &plain);
            let mut out = Vec::new();
            let n = decompress(codec, &compressed, plain.len(), &mut out).unwrap();
            assert_eq!(&out[..n], &plain[..], "codec {codec}");
            // A warm buffer, longer than needed, is reused as it is.
            let n = decompress(codec, &compressed, plain.len(), &mut out).unwrap();
            assert_eq!(&out[..n], &plain[..], "codec {codec}, warm");
            assert!(
                matches!(
                    decompress(codec, &compressed, plain.len() - 1, &mut out),
                    Err(BatchError::InflatesTooMuch { .. })
                ),
                "codec {codec}: one byte over the limit is refused"
            );
        }
    }

    #[test]
    fn garbage_and_cut_streams_are_refused_for_every_codec() {
        let plain = records(1000);
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            let compressed = compress(codec, &plain);
            let mut out = Vec::new();
            let cut = &compressed[..compressed.len() / 2];
            assert!(
                decompress(codec, cut, 1 << 20, &mut out).is_err(),
                "codec {codec}: half a stream accepted"
            );
            assert!(
                decompress(codec, b"this is not compressed at all", 1 << 20, &mut out).is_err(),
                "codec {codec}: garbage accepted"
            );
        }
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 64 << 20];
        for codec in [GZIP, LZ4, ZSTD] {
            let bomb = compress(codec, &zeros);
            assert!(bomb.len() < 1 << 20, "codec {codec}: {} bytes", bomb.len());
            let mut out = Vec::new();
            assert!(matches!(
                decompress(codec, &bomb, 1 << 20, &mut out),
                Err(BatchError::InflatesTooMuch { .. })
            ));
            assert!(
                out.capacity() <= 2 << 20,
                "codec {codec}: {} bytes held",
                out.capacity()
            );
        }
    }

    #[test]
    fn xerial_framed_snappy_is_read() {
        let plain = records(20_000);
        let mut framed = Vec::from(&XERIAL_MAGIC[..]);
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for chunk in plain.chunks(32 * 1024) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        let mut out = Vec::new();
        let n = decompress(SNAPPY, &framed, 1 << 20, &mut out).unwrap();
        assert_eq!(&out[..n], &plain[..]);
    }
}
