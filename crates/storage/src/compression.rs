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

/// Appends the records of `compressed` (a batch body compressed with `codec`) to `out`, at most
/// `limit` bytes of them.
pub fn decompress(
    codec: i16,
    compressed: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    match codec {
        GZIP => read_bounded(flate2::read::MultiGzDecoder::new(compressed), limit, out),
        SNAPPY => snappy(compressed, limit, out),
        LZ4 => {
            let mut decoder = lz4::Decoder::new(compressed).map_err(|e| corrupt("lz4", e))?;
            read_bounded(&mut decoder, limit, out)?;
            // The decoder stops quietly where its input ends: a cut frame shows only here.
            match decoder.finish() {
                ([], Ok(())) => Ok(()),
                (_, Ok(())) => Err(corrupt("lz4", "bytes after the end of the frame")),
                (_, Err(_)) => Err(corrupt("lz4", "the frame is cut off")),
            }
        }
        ZSTD => zstd(compressed, limit, out),
        other => Err(BatchError::UnknownCodec(other)),
    }
}

fn corrupt(codec: &'static str, e: impl std::fmt::Display) -> BatchError {
    BatchError::BadCompression(format!("{codec}: {e}"))
}

fn too_large(limit: usize) -> BatchError {
    BatchError::InflatesTooMuch { limit }
}

/// Reads a decoder to its end, failing once it has given more than `limit` bytes.
fn read_bounded(decoder: impl Read, limit: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let start = out.len();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(out)
        .map_err(|e| corrupt("decompression", e))?;
    if out.len() - start > limit {
        return Err(too_large(limit));
    }
    Ok(())
}

fn snappy(compressed: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let mut decoder = snap::raw::Decoder::new();
    let mut block = |raw: &[u8], out: &mut Vec<u8>| -> Result<(), BatchError> {
        let len = snap::raw::decompress_len(raw).map_err(|e| corrupt("snappy", e))?;
        let start = out.len();
        if start + len > limit {
            return Err(too_large(limit));
        }
        out.resize(start + len, 0);
        let written = decoder
            .decompress(raw, &mut out[start..])
            .map_err(|e| corrupt("snappy", e))?;
        out.truncate(start + written);
        Ok(())
    };
    if !compressed.starts_with(XERIAL_MAGIC) {
        // Raw snappy, as librdkafka writes it (snappy-java reads both).
        return block(compressed, out);
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
        block(raw, out)?;
        rest = &tail[len..];
    }
    Ok(())
}

thread_local! {
    /// One zstd decompression context per thread, reused: creating one per batch costs more
    /// than decompressing a small batch.
    static ZSTD_DECODER: RefCell<Option<zstd::stream::raw::Decoder<'static>>> =
        const { RefCell::new(None) };
}

fn zstd(compressed: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    ZSTD_DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decoder = match &mut *slot {
            Some(d) => d,
            None => slot.insert(zstd::stream::raw::Decoder::new().map_err(|e| corrupt("zstd", e))?),
        };
        decoder.reinit().map_err(|e| corrupt("zstd", e))?;
        let start = out.len();
        let mut input = InBuffer::around(compressed);
        let mut frame_done;
        loop {
            let produced = out.len() - start;
            if produced > limit {
                return Err(too_large(limit));
            }
            if out.len() == out.capacity() {
                let grow = (compressed.len() * 4).clamp(64 * 1024, 4 << 20);
                out.reserve(grow.min(limit + 1 - produced));
            }
            let (read_before, len_before) = (input.pos(), out.len());
            let hint = {
                let pos = out.len();
                let mut output = OutBuffer::around_pos(out, pos);
                decoder
                    .run(&mut input, &mut output)
                    .map_err(|e| corrupt("zstd", e))?
            };
            frame_done = hint == 0;
            let consumed_all = input.pos() == compressed.len();
            if frame_done && consumed_all {
                break;
            }
            let stuck = input.pos() == read_before && out.len() == len_before;
            if stuck && out.len() < out.capacity() {
                break;
            }
        }
        if !frame_done {
            return Err(corrupt("zstd", "the frame is cut off"));
        }
        if out.len() - start > limit {
            return Err(too_large(limit));
        }
        Ok(())
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
            decompress(codec, &compressed, plain.len(), &mut out).unwrap();
            assert_eq!(out, plain, "codec {codec}");
            out.clear();
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
            out.clear();
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
                out.capacity() <= 8 << 20,
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
        decompress(SNAPPY, &framed, 1 << 20, &mut out).unwrap();
        assert_eq!(out, plain);
    }
}
