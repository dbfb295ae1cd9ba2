//! The append-only log of one [`super::Embedded`] collection.
//!
//! A file is the magic `AIDAVEC1` followed by frames `[len: u32 LE][crc32(payload): u32 LE]
//! [payload]`. One frame holds one whole batch, so a batch is applied entirely or not at all.
//! Payloads (integers little-endian, strings as `u32` length + UTF-8):
//!
//! - `1` dimension: `dim: u32`
//! - `2` upsert: `dim: u32, n: u32`, then `n` times `id, dim × f32, doc (u8 0/1 + string),
//!   meta count: u32, (key, tag u8, value)*` with tags 0 bool (u8), 1 i64, 2 f64, 3 string
//! - `3` delete: `n: u32`, then `n` ids
//!
//! A frame cut short or failing its CRC at the end of the file is a torn write from a crash:
//! replay stops there and the file is truncated to the last whole frame. A bad frame followed
//! by more data is corruption and an error.

use std::path::Path;

use super::{Item, MetaValue, Metadata, VectorError};

pub(crate) const MAGIC: &[u8; 8] = b"AIDAVEC1";
const FRAME_HEADER: usize = 8;

const TAG_DIM: u8 = 1;
const TAG_UPSERT: u8 = 2;
const TAG_DELETE: u8 = 3;

/// A decoded frame.
#[derive(Debug, PartialEq)]
pub(crate) enum Record {
    Dim(usize),
    Upsert { dim: usize, items: Vec<Item> },
    Delete(Vec<String>),
}

/// Builds frames.
pub(crate) struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    fn start(tag: u8) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0u8; FRAME_HEADER]);
        buf.push(tag);
        Self { buf }
    }

    fn u32(&mut self, v: usize) -> Result<(), VectorError> {
        let v = u32::try_from(v)
            .map_err(|_| VectorError::InvalidInput(format!("{v} does not fit the log format")))?;
        self.buf.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn str(&mut self, s: &str) -> Result<(), VectorError> {
        self.u32(s.len())?;
        self.buf.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<u8>, VectorError> {
        let len = self.buf.len() - FRAME_HEADER;
        let len = u32::try_from(len)
            .map_err(|_| VectorError::InvalidInput("batch too large for one log frame".into()))?;
        let crc = crc32fast::hash(&self.buf[FRAME_HEADER..]);
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        Ok(self.buf)
    }

    pub(crate) fn dim(dim: usize) -> Result<Vec<u8>, VectorError> {
        let mut w = Self::start(TAG_DIM);
        w.u32(dim)?;
        w.finish()
    }

    pub(crate) fn delete<'a>(
        ids: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<Vec<u8>, VectorError> {
        let mut w = Self::start(TAG_DELETE);
        w.u32(ids.len())?;
        for id in ids {
            w.str(id)?;
        }
        w.finish()
    }

    /// One upsert frame; every vector must have `dim` components.
    pub(crate) fn upsert<'a>(
        dim: usize,
        items: impl ExactSizeIterator<Item = (&'a str, &'a [f32], Option<&'a str>, &'a Metadata)>,
    ) -> Result<Vec<u8>, VectorError> {
        let mut w = Self::start(TAG_UPSERT);
        w.u32(dim)?;
        w.u32(items.len())?;
        for (id, vector, doc, meta) in items {
            debug_assert_eq!(vector.len(), dim);
            w.str(id)?;
            for x in vector {
                w.buf.extend_from_slice(&x.to_le_bytes());
            }
            match doc {
                Some(d) => {
                    w.buf.push(1);
                    w.str(d)?;
                }
                None => w.buf.push(0),
            }
            w.u32(meta.len())?;
            for (k, v) in meta {
                w.str(k)?;
                match v {
                    MetaValue::Bool(b) => {
                        w.buf.push(0);
                        w.buf.push(u8::from(*b));
                    }
                    MetaValue::Int(i) => {
                        w.buf.push(1);
                        w.buf.extend_from_slice(&i.to_le_bytes());
                    }
                    MetaValue::Float(f) => {
                        w.buf.push(2);
                        w.buf.extend_from_slice(&f.to_le_bytes());
                    }
                    MetaValue::Str(s) => {
                        w.buf.push(3);
                        w.str(s)?;
                    }
                }
            }
        }
        w.finish()
    }
}

/// Bytes a live item takes in an upsert frame, to judge when compaction pays.
pub(crate) fn encoded_len(id: &str, dim: usize, doc: Option<&str>, meta: &Metadata) -> u64 {
    let meta_len: usize = meta
        .iter()
        .map(|(k, v)| {
            4 + k.len()
                + 1
                + match v {
                    MetaValue::Bool(_) => 1,
                    MetaValue::Int(_) | MetaValue::Float(_) => 8,
                    MetaValue::Str(s) => 4 + s.len(),
                }
        })
        .sum();
    (4 + id.len() + 4 * dim + 1 + doc.map_or(0, |d| 4 + d.len()) + 4 + meta_len) as u64
}

/// A cursor over a payload; every read fails cleanly on truncation.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("payload ends early at {}", self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| e.to_string())
    }
}

fn decode(payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader {
        bytes: payload,
        pos: 0,
    };
    let record = match r.u8()? {
        TAG_DIM => Record::Dim(r.u32()?),
        TAG_DELETE => {
            let n = r.u32()?;
            let mut ids = Vec::with_capacity(n.min(payload.len() / 4));
            for _ in 0..n {
                ids.push(r.string()?);
            }
            Record::Delete(ids)
        }
        TAG_UPSERT => {
            let dim = r.u32()?;
            let n = r.u32()?;
            let mut items = Vec::with_capacity(n.min(payload.len() / 4));
            for _ in 0..n {
                let id = r.string()?;
                let raw = r.take(dim.checked_mul(4).ok_or("dimension overflows")?)?;
                let vector = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let document = match r.u8()? {
                    0 => None,
                    1 => Some(r.string()?),
                    t => return Err(format!("bad document flag {t}")),
                };
                let mut metadata = Metadata::new();
                for _ in 0..r.u32()? {
                    let key = r.string()?;
                    let value = match r.u8()? {
                        0 => MetaValue::Bool(r.u8()? != 0),
                        1 => MetaValue::Int(i64::from_le_bytes(r.array()?)),
                        2 => MetaValue::Float(f64::from_le_bytes(r.array()?)),
                        3 => MetaValue::Str(r.string()?),
                        t => return Err(format!("bad metadata tag {t}")),
                    };
                    metadata.insert(key, value);
                }
                items.push(Item {
                    id,
                    vector,
                    document,
                    metadata,
                });
            }
            Record::Upsert { dim, items }
        }
        t => return Err(format!("unknown record tag {t}")),
    };
    if r.pos != payload.len() {
        return Err(format!("{} trailing bytes", payload.len() - r.pos));
    }
    Ok(record)
}

/// Decodes a whole log. Returns the records and the length of the valid prefix, shorter than
/// `bytes` when the tail is torn.
pub(crate) fn replay(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, u64), VectorError> {
    let corrupt = |offset: usize, reason: String| VectorError::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() < MAGIC.len() {
        // A crash while creating the file: nothing was ever committed.
        return Ok((Vec::new(), 0));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "not a vector log (bad magic)".into()));
    }
    let mut records = Vec::new();
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < FRAME_HEADER {
            break; // torn header
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
            break; // torn payload
        };
        let end = pos + FRAME_HEADER + len;
        if crc32fast::hash(payload) != crc {
            if end == bytes.len() {
                break; // torn last frame
            }
            return Err(corrupt(
                pos,
                "checksum mismatch before the end of the log".into(),
            ));
        }
        records.push(decode(payload).map_err(|reason| corrupt(pos, reason))?);
        pos = end;
    }
    Ok((records, pos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let meta: Metadata = [
            ("b".to_owned(), MetaValue::Bool(true)),
            ("i".to_owned(), MetaValue::Int(-7)),
            ("f".to_owned(), MetaValue::Float(0.25)),
            ("s".to_owned(), MetaValue::Str("ü".into())),
        ]
        .into();
        let empty = Metadata::new();
        let v1 = [1.0f32, -2.5];
        let v2 = [0.0f32, 3.0];
        let mut log = MAGIC.to_vec();
        log.extend(FrameWriter::dim(2).expect("dim"));
        log.extend(
            FrameWriter::upsert(
                2,
                [
                    ("a", &v1[..], Some("doc"), &meta),
                    ("b", &v2[..], None, &empty),
                ]
                .into_iter(),
            )
            .expect("upsert"),
        );
        log.extend(FrameWriter::delete(["a"].into_iter()).expect("delete"));
        log
    }

    #[test]
    fn round_trip() {
        let log = sample();
        let (records, valid) = replay(Path::new("x"), &log).expect("replay");
        assert_eq!(valid, log.len() as u64);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0], Record::Dim(2));
        let Record::Upsert { dim, items } = &records[1] else {
            panic!("not an upsert: {:?}", records[1]);
        };
        assert_eq!(*dim, 2);
        assert_eq!(items[0].vector, vec![1.0, -2.5]);
        assert_eq!(items[0].document.as_deref(), Some("doc"));
        assert_eq!(items[0].metadata["s"], MetaValue::Str("ü".into()));
        assert_eq!(items[0].metadata["f"], MetaValue::Float(0.25));
        let expected_len = encoded_len("a", 2, Some("doc"), &items[0].metadata)
            + encoded_len("b", 2, None, &items[1].metadata);
        let frame_payload = 1 + 4 + 4;
        assert_eq!(
            expected_len + frame_payload,
            (FrameWriter::upsert(
                2,
                items
                    .iter()
                    .map(|i| (
                        i.id.as_str(),
                        i.vector.as_slice(),
                        i.document.as_deref(),
                        &i.metadata
                    ))
                    .collect::<Vec<_>>()
                    .into_iter()
            )
            .expect("upsert")
            .len()
                - FRAME_HEADER) as u64
        );
        assert_eq!(records[2], Record::Delete(vec!["a".into()]));
    }

    #[test]
    fn torn_tail_is_cut_at_every_length() {
        let log = sample();
        let (full, _) = replay(Path::new("x"), &log).expect("replay");
        let last_frame_start = log.len() - (FRAME_HEADER + 1 + 4 + 4 + 1);
        for cut in last_frame_start..log.len() {
            let (records, valid) = replay(Path::new("x"), &log[..cut]).expect("torn tail");
            assert_eq!(records.len(), full.len() - 1, "cut at {cut}");
            assert_eq!(valid, last_frame_start as u64);
        }
    }

    #[test]
    fn corruption_in_the_middle_is_an_error() {
        let mut log = sample();
        log[MAGIC.len() + FRAME_HEADER + 2] ^= 0xff; // inside the dim frame
        let err = replay(Path::new("x"), &log).expect_err("corrupt");
        assert!(
            matches!(err, VectorError::Corrupt { offset: 8, .. }),
            "{err}"
        );
        let mut log = sample();
        log[0] = b'X';
        assert!(replay(Path::new("x"), &log).is_err());
    }
}
