//! The embedded bus's journal: every message the bus accepts and every ack of a durable
//! consumer, appended to one file under the data directory, so that `aida up` killed and
//! started again holds the same streams and resumes each durable consumer where it was.
//!
//! A frame is `[length u32 LE][crc32 u32 LE][protobuf Entry]`. A message is written and
//! flushed to the disk (`fdatasync`) before `publish` returns, as JetStream stores it before
//! it acknowledges; acks are written but not flushed (a lost ack only means a redelivery,
//! which every consumer tolerates). A torn or corrupt tail, left by a crash in the middle of
//! a write, is cut off when the journal is opened. Opening also compacts the journal to what
//! the bus still holds, and so does a journal that has grown well past that.
//!
//! One process owns a journal: it holds an exclusive lock on `LOCK` beside it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;

/// A journal grown past this (and past twice its size after the last compaction) is
/// compacted.
const COMPACT_AFTER_BYTES: u64 = 64 * 1024 * 1024;

/// Largest frame read back: a bigger length is a corrupt header.
const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// One journal entry: a message or an ack.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(message, optional, tag = "1")]
    pub message: Option<Published>,
    #[prost(message, optional, tag = "2")]
    pub ack: Option<Acked>,
}

/// A message stored in `stream` (its full name) at `sequence`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Published {
    #[prost(string, tag = "1")]
    pub stream: String,
    #[prost(uint64, tag = "2")]
    pub sequence: u64,
    #[prost(string, tag = "3")]
    pub subject: String,
    #[prost(string, tag = "4")]
    pub message_id: String,
    #[prost(bytes = "bytes", tag = "5")]
    pub payload: Bytes,
    #[prost(string, repeated, tag = "6")]
    pub header_names: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub header_values: Vec<String>,
    /// When the bus accepted it (Unix milliseconds), for the duplicate window.
    #[prost(int64, tag = "8")]
    pub unix_ms: i64,
}

/// The durable `consumer` of `stream` settled `sequence` for good (acked or terminated),
/// or, with `up_to`, every sequence up to it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Acked {
    #[prost(string, tag = "1")]
    pub stream: String,
    #[prost(string, tag = "2")]
    pub consumer: String,
    #[prost(uint64, tag = "3")]
    pub sequence: u64,
    #[prost(bool, tag = "4")]
    pub up_to: bool,
}

/// The open journal file of one bus.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Held for the life of the journal: the lock that keeps a second process out.
    _lock: File,
    /// The file's size, and its size after the last compaction.
    size: u64,
    compacted: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` for this process alone, and reads back its
    /// entries, oldest first. A torn tail is cut off.
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<Entry>)> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the event journal in {} is in use by another process",
                    dir.display()
                ),
            ));
        }
        let path = dir.join("journal");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)?;
        let (entries, good) = read_entries(&file)?;
        if good < file.metadata()?.len() {
            tracing::warn!(
                journal = %path.display(),
                kept_bytes = good,
                "cutting off a torn journal tail (the last run stopped in the middle of a write)"
            );
            file.set_len(good)?;
            file.sync_data()?;
        }
        let journal = Self {
            path,
            file,
            _lock: lock,
            size: good,
            compacted: good,
        };
        Ok((journal, entries))
    }

    /// Appends `entries`; with `flush`, they are on the disk when this returns.
    pub fn append(&mut self, entries: &[Entry], flush: bool) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut frames = Vec::new();
        for entry in entries {
            frame(entry, &mut frames);
        }
        self.file.write_all(&frames)?;
        self.size += frames.len() as u64;
        if flush {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Whether the journal has grown well past what the bus holds.
    pub fn wants_compaction(&self) -> bool {
        self.size > COMPACT_AFTER_BYTES && self.size > 2 * self.compacted
    }

    /// Replaces the journal by `entries` (what the bus holds now): written to a new file,
    /// flushed, then renamed over the old one, so a crash leaves one or the other whole.
    pub fn rewrite(&mut self, entries: impl IntoIterator<Item = Entry>) -> io::Result<()> {
        let fresh = self.path.with_extension("compacting");
        let mut writer = BufWriter::new(File::create(&fresh)?);
        let mut frames = Vec::new();
        let mut size = 0;
        for entry in entries {
            frames.clear();
            frame(&entry, &mut frames);
            writer.write_all(&frames)?;
            size += frames.len() as u64;
        }
        let written = writer
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        written.sync_all()?;
        drop(written);
        std::fs::rename(&fresh, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.size = size;
        self.compacted = size;
        Ok(())
    }
}

fn frame(entry: &Entry, into: &mut Vec<u8>) {
    let body = entry.encode_to_vec();
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    into.extend_from_slice(&length.to_le_bytes());
    into.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    into.extend_from_slice(&body);
}

/// Every whole entry of `file` from its start, and the length of the part that holds them.
fn read_entries(file: &File) -> io::Result<(Vec<Entry>, u64)> {
    let mut reader = BufReader::new(file);
    let mut entries = Vec::new();
    let mut good: u64 = 0;
    loop {
        let mut header = [0u8; 8];
        if !read_whole(&mut reader, &mut header)? {
            break;
        }
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if length > MAX_FRAME_BYTES {
            break;
        }
        let mut body = vec![0u8; length];
        if !read_whole(&mut reader, &mut body)? || crc32fast::hash(&body) != crc {
            break;
        }
        let Ok(entry) = Entry::decode(body.as_slice()) else {
            break;
        };
        entries.push(entry);
        good += 8 + length as u64;
    }
    Ok((entries, good))
}

/// Fills `buffer`; false when the file ends first.
fn read_whole(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => return Ok(false),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}
