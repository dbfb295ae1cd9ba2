//! [`Embedded`]: an exact, in-process vector index persisted to disk, for single-node use.
//!
//! Each collection keeps its unit-normalised vectors in one contiguous `Vec<f32>` (slot `i` at
//! `i * dim`), with ids, documents and metadata in parallel vectors and an id → slot map;
//! deletion swap-removes. A query is a brute-force dot product over the slots with a bounded
//! heap for the top k: exact, and fast enough for CRM-sized collections.
//!
//! Durability: every upsert or delete batch is one frame appended to the collection's log
//! (see `wal.rs`) and fsync'd before it is applied in memory and acknowledged. [`Embedded::open`]
//! replays every log. When a log grows well beyond its live data it is rewritten to a
//! temporary file, fsync'd and renamed over the old one.
//!
//! Layout: `<dir>/<escaped tenant>/<escaped collection>.vlog`. One process should open a
//! directory at a time.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::exact::{TopK, dot};
use super::wal::{self, FrameWriter, Record};
use super::{
    Filter, Hit, Item, Metadata, Namespace, VectorError, VectorStore, dedup_ids, escape_name,
    normalised, unescape_name, validate_batch, validate_query,
};

const LOG_EXT: &str = "vlog";
const TMP_EXT: &str = "vlog.tmp";
/// Items per upsert frame when compacting.
const COMPACT_CHUNK: usize = 1024;

/// Tuning of [`Embedded`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// A log is compacted only once it is larger than this many bytes.
    pub compact_min_bytes: u64,
    /// … and larger than this many times the bytes its live items need.
    pub compact_ratio: f64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            compact_min_bytes: 1 << 20,
            compact_ratio: 2.0,
        }
    }
}

/// The in-process exact vector store. Cheap to clone; clones share the data.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    options: EmbeddedOptions,
    collections: RwLock<HashMap<Namespace, Arc<RwLock<Collection>>>>,
}

struct Collection {
    ns: Namespace,
    path: PathBuf,
    /// Append handle, once the log file exists.
    file: Option<File>,
    dim: Option<usize>,
    ids: Vec<String>,
    vectors: Vec<f32>,
    docs: Vec<Option<String>>,
    metas: Vec<Metadata>,
    slots: HashMap<String, usize>,
    /// Bytes in the log file.
    log_len: u64,
    /// Bytes the live items take in upsert frames.
    live_len: u64,
}

fn poisoned<T>(_: T) -> VectorError {
    VectorError::Internal("a vector store lock was poisoned by a panic".into())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), VectorError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| VectorError::io(dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), VectorError> {
    Ok(())
}

impl Collection {
    fn new(ns: Namespace, path: PathBuf) -> Self {
        Self {
            ns,
            path,
            file: None,
            dim: None,
            ids: Vec::new(),
            vectors: Vec::new(),
            docs: Vec::new(),
            metas: Vec::new(),
            slots: HashMap::new(),
            log_len: 0,
            live_len: 0,
        }
    }

    fn vector(&self, slot: usize, dim: usize) -> &[f32] {
        &self.vectors[slot * dim..(slot + 1) * dim]
    }

    fn item_len(&self, slot: usize, dim: usize) -> u64 {
        wal::encoded_len(
            &self.ids[slot],
            dim,
            self.docs[slot].as_deref(),
            &self.metas[slot],
        )
    }

    /// Applies normalised items whose dimension has been checked.
    fn apply_upsert(&mut self, dim: usize, items: Vec<Item>) {
        self.dim = Some(dim);
        for item in items {
            let new_len = wal::encoded_len(&item.id, dim, item.document.as_deref(), &item.metadata);
            match self.slots.get(&item.id) {
                Some(&slot) => {
                    self.live_len =
                        self.live_len.saturating_sub(self.item_len(slot, dim)) + new_len;
                    self.vectors[slot * dim..(slot + 1) * dim].copy_from_slice(&item.vector);
                    self.docs[slot] = item.document;
                    self.metas[slot] = item.metadata;
                }
                None => {
                    self.live_len += new_len;
                    self.slots.insert(item.id.clone(), self.ids.len());
                    self.ids.push(item.id);
                    self.vectors.extend_from_slice(&item.vector);
                    self.docs.push(item.document);
                    self.metas.push(item.metadata);
                }
            }
        }
    }

    fn apply_delete(&mut self, ids: &[impl AsRef<str>]) {
        let Some(dim) = self.dim else { return };
        for id in ids {
            let Some(slot) = self.slots.remove(id.as_ref()) else {
                continue;
            };
            self.live_len = self.live_len.saturating_sub(self.item_len(slot, dim));
            let last = self.ids.len() - 1;
            if slot != last {
                self.vectors
                    .copy_within(last * dim..(last + 1) * dim, slot * dim);
                self.slots.insert(self.ids[last].clone(), slot);
            }
            self.vectors.truncate(last * dim);
            self.ids.swap_remove(slot);
            self.docs.swap_remove(slot);
            self.metas.swap_remove(slot);
        }
    }

    /// Appends one frame and fsyncs it. On failure the file is cut back to its previous length
    /// so that a half-written frame never sits before later ones.
    fn append(&mut self, frame: &[u8]) -> Result<(), VectorError> {
        if self.file.is_none() {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let parent_existed = dir.exists();
            fs::create_dir_all(dir).map_err(|e| VectorError::io(dir, e))?;
            if !parent_existed && let Some(root) = dir.parent() {
                sync_dir(root)?;
            }
            // Truncate: a previous attempt may have left a partial header behind.
            File::create(&self.path)
                .and_then(|mut f| f.write_all(wal::MAGIC).and_then(|()| f.sync_all()))
                .map_err(|e| VectorError::io(&self.path, e))?;
            sync_dir(dir)?;
            let file = OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map_err(|e| VectorError::io(&self.path, e))?;
            self.log_len = wal::MAGIC.len() as u64;
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Err(VectorError::Internal("log file vanished".into()));
        };
        match file.write_all(frame).and_then(|()| file.sync_data()) {
            Ok(()) => {
                self.log_len += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = file.set_len(self.log_len).and_then(|()| file.sync_data()) {
                    tracing::error!(path = %self.path.display(), error = %cut,
                        "could not cut a failed append back; reopening will drop the torn frame");
                }
                Err(VectorError::io(&self.path, e))
            }
        }
    }

    fn needs_compaction(&self, options: &EmbeddedOptions) -> bool {
        let live = (self.live_len + wal::MAGIC.len() as u64 + 64) as f64;
        self.log_len > options.compact_min_bytes
            && self.log_len as f64 > options.compact_ratio * live
    }

    /// Rewrites the log with only the live items: temp file, fsync, rename, fsync the directory.
    fn compact(&mut self) -> Result<(), VectorError> {
        let Some(dim) = self.dim else { return Ok(()) };
        if self.file.is_none() {
            return Ok(());
        }
        let tmp = self.path.with_extension(TMP_EXT);
        let result = (|| {
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| VectorError::io(&tmp, e))?;
            let mut len = 0u64;
            let mut write = |bytes: &[u8]| -> Result<(), VectorError> {
                file.write_all(bytes)
                    .map_err(|e| VectorError::io(&tmp, e))?;
                len += bytes.len() as u64;
                Ok(())
            };
            write(wal::MAGIC)?;
            write(&FrameWriter::dim(dim)?)?;
            let slots: Vec<usize> = (0..self.ids.len()).collect();
            for chunk in slots.chunks(COMPACT_CHUNK) {
                let frame = FrameWriter::upsert(
                    dim,
                    chunk.iter().map(|&s| {
                        (
                            self.ids[s].as_str(),
                            self.vector(s, dim),
                            self.docs[s].as_deref(),
                            &self.metas[s],
                        )
                    }),
                )?;
                write(&frame)?;
            }
            file.sync_all().map_err(|e| VectorError::io(&tmp, e))?;
            // An O_APPEND handle on the new inode, opened before the rename so that it can
            // never be missing once the rename happened.
            let file = OpenOptions::new()
                .append(true)
                .open(&tmp)
                .map_err(|e| VectorError::io(&tmp, e))?;
            fs::rename(&tmp, &self.path).map_err(|e| VectorError::io(&self.path, e))?;
            Ok((file, len))
        })();
        match result {
            Ok((file, len)) => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                // The rename is done; the new log is what a reopen sees once the directory is
                // synced. Swap the handle first so appends never go to the unlinked old file.
                let old = self.log_len;
                self.file = Some(file);
                self.log_len = len;
                tracing::info!(namespace = %self.ns, before = old, after = len, "compacted vector log");
                sync_dir(dir)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Loads a collection from its log, cutting off a torn tail.
    fn load(ns: Namespace, path: PathBuf) -> Result<Self, VectorError> {
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| VectorError::io(&path, e))?;
        let (records, valid) = wal::replay(&path, &bytes)?;
        let mut c = Collection::new(ns, path);
        for record in records {
            match record {
                Record::Dim(d) => c.check_replayed_dim(d)?,
                Record::Upsert { dim, items } => {
                    c.check_replayed_dim(dim)?;
                    c.apply_upsert(dim, items);
                }
                Record::Delete(ids) => c.apply_delete(&ids),
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&c.path)
            .map_err(|e| VectorError::io(&c.path, e))?;
        if valid < bytes.len() as u64 {
            tracing::warn!(path = %c.path.display(), valid, len = bytes.len(),
                "vector log ends in a torn write (crash during an append); cutting it off");
            file.set_len(valid)
                .and_then(|()| file.sync_all())
                .map_err(|e| VectorError::io(&c.path, e))?;
        }
        if valid == 0 {
            // Crashed while creating the file: start it again.
            drop(file);
            fs::remove_file(&c.path).map_err(|e| VectorError::io(&c.path, e))?;
        } else {
            c.file = Some(file);
            c.log_len = valid;
        }
        Ok(c)
    }

    fn check_replayed_dim(&mut self, dim: usize) -> Result<(), VectorError> {
        match self.dim {
            Some(d) if d != dim => Err(VectorError::Corrupt {
                path: self.path.clone(),
                offset: 0,
                reason: format!("records of dimension {d} and {dim}"),
            }),
            _ => {
                self.dim = Some(dim);
                Ok(())
            }
        }
    }
}

impl Embedded {
    /// Opens (creating if needed) a store in `dir` with default options, replaying every log.
    /// Blocks on file I/O; call it at start-up or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<Self, VectorError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// [`Embedded::open`] with explicit options.
    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<Self, VectorError> {
        fs::create_dir_all(dir).map_err(|e| VectorError::io(dir, e))?;
        let mut collections = HashMap::new();
        for tenant_dir in fs::read_dir(dir).map_err(|e| VectorError::io(dir, e))? {
            let tenant_dir = tenant_dir.map_err(|e| VectorError::io(dir, e))?.path();
            let Some(tenant) = tenant_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(unescape_name)
                .filter(|_| tenant_dir.is_dir())
            else {
                tracing::warn!(path = %tenant_dir.display(), "ignoring a stray entry in the vector store directory");
                continue;
            };
            for entry in fs::read_dir(&tenant_dir).map_err(|e| VectorError::io(&tenant_dir, e))? {
                let path = entry.map_err(|e| VectorError::io(&tenant_dir, e))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(&format!(".{TMP_EXT}")) {
                    // An interrupted compaction; the log itself is intact.
                    fs::remove_file(&path).map_err(|e| VectorError::io(&path, e))?;
                    continue;
                }
                let ns = name
                    .strip_suffix(&format!(".{LOG_EXT}"))
                    .and_then(unescape_name)
                    .map(|collection| Namespace::new(tenant.clone(), collection))
                    .filter(|ns| ns.validate().is_ok());
                let Some(ns) = ns else {
                    tracing::warn!(path = %path.display(), "ignoring a stray file in the vector store directory");
                    continue;
                };
                let c = Collection::load(ns.clone(), path)?;
                if c.file.is_some() {
                    collections.insert(ns, Arc::new(RwLock::new(c)));
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                options,
                collections: RwLock::new(collections),
            }),
        })
    }

    /// Rewrites a collection's log with only its live items, whatever its size.
    pub async fn compact(&self, ns: &Namespace) -> Result<(), VectorError> {
        let ns = ns.clone();
        self.blocking(move |inner| {
            ns.validate()?;
            match inner.collection(&ns, false)? {
                Some(c) => c.write().map_err(poisoned)?.compact(),
                None => Ok(()),
            }
        })
        .await
    }

    /// Size in bytes of a collection's log file (0 if it has none); for tests and metrics.
    pub fn log_size(&self, ns: &Namespace) -> Result<u64, VectorError> {
        match self.inner.collection(ns, false)? {
            Some(c) => Ok(c.read().map_err(poisoned)?.log_len),
            None => Ok(0),
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, VectorError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, VectorError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| VectorError::Internal(format!("vector store task failed: {e}")))?
    }
}

impl Inner {
    fn path_for(&self, ns: &Namespace) -> PathBuf {
        self.dir
            .join(escape_name(&ns.tenant))
            .join(format!("{}.{LOG_EXT}", escape_name(&ns.collection)))
    }

    fn collection(
        &self,
        ns: &Namespace,
        create: bool,
    ) -> Result<Option<Arc<RwLock<Collection>>>, VectorError> {
        if let Some(c) = self.collections.read().map_err(poisoned)?.get(ns) {
            return Ok(Some(Arc::clone(c)));
        }
        if !create {
            return Ok(None);
        }
        let mut map = self.collections.write().map_err(poisoned)?;
        let c = map.entry(ns.clone()).or_insert_with(|| {
            Arc::new(RwLock::new(Collection::new(ns.clone(), self.path_for(ns))))
        });
        Ok(Some(Arc::clone(c)))
    }

    fn upsert(&self, ns: &Namespace, items: Vec<Item>) -> Result<(), VectorError> {
        if items.is_empty() {
            return ns.validate();
        }
        validate_batch(ns, &items, None)?;
        let Some(c) = self.collection(ns, true)? else {
            return Err(VectorError::Internal("collection not created".into()));
        };
        let mut c = c.write().map_err(poisoned)?;
        let Some(dim) = validate_batch(ns, &items, c.dim)? else {
            return Ok(());
        };
        let items = items
            .into_iter()
            .map(|item| {
                Ok(Item {
                    vector: normalised(&item.id, &item.vector)?,
                    ..item
                })
            })
            .collect::<Result<Vec<_>, VectorError>>()?;
        let frame = FrameWriter::upsert(
            dim,
            items.iter().map(|i| {
                (
                    i.id.as_str(),
                    i.vector.as_slice(),
                    i.document.as_deref(),
                    &i.metadata,
                )
            }),
        )?;
        c.append(&frame)?;
        c.apply_upsert(dim, items);
        self.maybe_compact(&mut c);
        Ok(())
    }

    fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<(), VectorError> {
        ns.validate()?;
        let Some(c) = self.collection(ns, false)? else {
            return Ok(());
        };
        let mut c = c.write().map_err(poisoned)?;
        let present: Vec<&str> = dedup_ids(ids)
            .into_iter()
            .filter(|id| c.slots.contains_key(*id))
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        c.append(&FrameWriter::delete(present.iter().copied())?)?;
        c.apply_delete(&present);
        self.maybe_compact(&mut c);
        Ok(())
    }

    fn maybe_compact(&self, c: &mut Collection) {
        if c.needs_compaction(&self.options)
            && let Err(e) = c.compact()
        {
            // The batch is durable in the old log; compaction will be retried on a later write.
            tracing::warn!(namespace = %c.ns, error = %e, "vector log compaction failed");
        }
    }

    fn query(
        &self,
        ns: &Namespace,
        vector: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, VectorError> {
        let Some(c) = self.collection(ns, false)? else {
            validate_query(ns, vector, None, filter)?;
            return Ok(Vec::new());
        };
        let c = c.read().map_err(poisoned)?;
        validate_query(ns, vector, c.dim, filter)?;
        let Some(dim) = c.dim else {
            return Ok(Vec::new());
        };
        if k == 0 || filter.matches_nothing() {
            return Ok(Vec::new());
        }
        let q = normalised("query", vector)?;
        let mut top = TopK::new(k);
        let everything = filter.is_empty();
        for (slot, v) in c.vectors.chunks_exact(dim).enumerate() {
            if everything || filter.matches(&c.metas[slot]) {
                top.push(dot(v, &q), &c.ids[slot], slot);
            }
        }
        Ok(top
            .into_sorted()
            .into_iter()
            .map(|(slot, similarity)| Hit {
                id: c.ids[slot].clone(),
                similarity,
                document: c.docs[slot].clone(),
                metadata: c.metas[slot].clone(),
            })
            .collect())
    }

    fn get(&self, ns: &Namespace, ids: &[String]) -> Result<Vec<Item>, VectorError> {
        ns.validate()?;
        let Some(c) = self.collection(ns, false)? else {
            return Ok(Vec::new());
        };
        let c = c.read().map_err(poisoned)?;
        let Some(dim) = c.dim else {
            return Ok(Vec::new());
        };
        Ok(dedup_ids(ids)
            .into_iter()
            .filter_map(|id| c.slots.get(id).map(|&slot| (id, slot)))
            .map(|(id, slot)| Item {
                id: id.to_owned(),
                vector: c.vector(slot, dim).to_vec(),
                document: c.docs[slot].clone(),
                metadata: c.metas[slot].clone(),
            })
            .collect())
    }

    fn count(&self, ns: &Namespace) -> Result<usize, VectorError> {
        ns.validate()?;
        match self.collection(ns, false)? {
            Some(c) => Ok(c.read().map_err(poisoned)?.ids.len()),
            None => Ok(0),
        }
    }
}

#[async_trait]
impl VectorStore for Embedded {
    async fn upsert(&self, ns: &Namespace, items: Vec<Item>) -> Result<(), VectorError> {
        let ns = ns.clone();
        self.blocking(move |inner| inner.upsert(&ns, items)).await
    }

    async fn query(
        &self,
        ns: &Namespace,
        vector: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, VectorError> {
        let (ns, vector, filter) = (ns.clone(), vector.to_vec(), filter.clone());
        self.blocking(move |inner| inner.query(&ns, &vector, k, &filter))
            .await
    }

    async fn get(&self, ns: &Namespace, ids: &[String]) -> Result<Vec<Item>, VectorError> {
        let (ns, ids) = (ns.clone(), ids.to_vec());
        self.blocking(move |inner| inner.get(&ns, &ids)).await
    }

    async fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<(), VectorError> {
        let (ns, ids) = (ns.clone(), ids.to_vec());
        self.blocking(move |inner| inner.delete(&ns, &ids)).await
    }

    async fn count(&self, ns: &Namespace) -> Result<usize, VectorError> {
        let ns = ns.clone();
        self.blocking(move |inner| inner.count(&ns)).await
    }
}
