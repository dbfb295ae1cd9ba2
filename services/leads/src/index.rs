//! The semantic index of leads: one vector per lead in the vector store, in a collection
//! per embedding model version, so that vectors of different models never meet.
//!
//! The vector is written after the lead's transaction commits, and the `lead_index` table
//! records which lead version each model's collection holds. A background task compares
//! that marker with the leads at start and then periodically, and re-indexes what is
//! missing or stale (a crash between commit and indexing, a write by another replica or
//! by hand) and removes the vectors of deleted and merged leads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aida_ai::embed::{self, Embedder};
use aida_ai::vector::{Chroma, ChromaConfig, Embedded, Hit, Item, Namespace, VectorStore};
use aida_core::Error;
use aida_core::Settings;
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::{Lead, Status};
use crate::store::LeadStore;

/// Leads re-indexed per round of the background task.
const HEAL_BATCH: i64 = 256;

/// The text a lead is searched by: name, title, company and attribute values (notes).
pub fn document(lead: &Lead) -> String {
    let f = &lead.fields;
    let mut text = format!(
        "{} {}. {} at {}.",
        f.first_name, f.last_name, f.title, f.company
    );
    for value in f.attributes.values() {
        text.push(' ');
        text.push_str(value);
    }
    text
}

/// The collection of one model version: `leads-<slug>-<hash>`, at most 64 characters.
pub fn collection_for(model_version: &str) -> String {
    let mut slug = String::new();
    for c in model_version.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_matches('-').chars().take(40).collect();
    let hash = sha2::Sha256::digest(model_version.as_bytes());
    let hash: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("leads-{}-{hash}", slug.trim_end_matches('-'))
}

/// The embedder, the vector store and the markers, kept consistent.
pub struct SearchIndex {
    embedder: Arc<dyn Embedder>,
    vectors: Arc<dyn VectorStore>,
    store: LeadStore,
    collection: String,
    /// One indexing at a time in this process: each reads the leads as committed now, so
    /// the last one to run writes the latest version of every lead it touches.
    writing: tokio::sync::Mutex<()>,
    /// Refreshes waiting for the writer: whoever takes the writing lock writes them all at
    /// once (one embedding batch, one durable upsert) and wakes their callers.
    pending: std::sync::Mutex<Vec<PendingRefresh>>,
}

/// One caller's leads to index, and how it learns they are.
struct PendingRefresh {
    tenant: String,
    ids: Vec<Uuid>,
    done: tokio::sync::oneshot::Sender<()>,
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what}: {error}"))
}

impl SearchIndex {
    /// The model under `settings.ai.model_dir` (or the labelled lexical fallback) and Chroma
    /// when `settings.ai.chroma_url` is set, else the embedded index under `vector_dir`.
    pub fn open(settings: &Settings, store: LeadStore) -> Result<Self, Error> {
        let embedder: Arc<dyn Embedder> =
            Arc::from(embed::load(&settings.ai.model_dir(&settings.data_dir)));
        let vectors: Arc<dyn VectorStore> = match &settings.ai.chroma_url {
            Some(url) => Arc::new(
                Chroma::new(ChromaConfig::new(url.clone()))
                    .map_err(|e| unavailable("chroma", e))?,
            ),
            None => Arc::new(open_embedded(
                &settings.ai.vector_dir(&settings.data_dir).join("leads"),
            )?),
        };
        Ok(Self::new(embedder, vectors, store))
    }

    pub fn new(
        embedder: Arc<dyn Embedder>,
        vectors: Arc<dyn VectorStore>,
        store: LeadStore,
    ) -> Self {
        let collection = collection_for(embedder.model_version());
        Self {
            embedder,
            vectors,
            store,
            collection,
            writing: tokio::sync::Mutex::new(()),
            pending: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The embedder, shared with lead scoring.
    pub fn embedder(&self) -> Arc<dyn Embedder> {
        self.embedder.clone()
    }

    /// The vector store, shared with lead scoring (which keeps its own collection).
    pub fn vectors(&self) -> Arc<dyn VectorStore> {
        self.vectors.clone()
    }

    pub fn model_version(&self) -> &str {
        self.embedder.model_version()
    }

    fn namespace(&self, tenant: &str) -> Namespace {
        Namespace::new(tenant, self.collection.clone())
    }

    /// Embeds `texts` off the async threads (embedding is CPU-bound).
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, Error> {
        let embedder = self.embedder.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed(&refs)
        })
        .await
        .map_err(|e| Error::internal(format!("embedding task: {e}")))?
        .map_err(|e| unavailable("embedding", e))
    }

    /// The `k` leads nearest to `vector` in `tenant`'s collection, best first.
    pub async fn nearest(&self, tenant: &str, vector: &[f32], k: usize) -> Result<Vec<Hit>, Error> {
        if vector.iter().all(|x| *x == 0.0) {
            // Nothing to compare (a query of punctuation only): no direction, no neighbours.
            return Ok(Vec::new());
        }
        self.vectors
            .query(
                &self.namespace(tenant),
                vector,
                k,
                &aida_ai::vector::Filter::all(),
            )
            .await
            .map_err(|e| unavailable("vector store", e))
    }

    /// How many vectors `tenant`'s collection holds.
    pub async fn count(&self, tenant: &str) -> Result<usize, Error> {
        self.vectors
            .count(&self.namespace(tenant))
            .await
            .map_err(|e| unavailable("vector store", e))
    }

    /// Brings these leads' vectors up to date after a commit. A failure is logged, not
    /// returned: the change is committed, and the background task will index it.
    ///
    /// Concurrent callers are written together (group commit): each queues its ids, and
    /// whichever takes the writing lock writes everything queued, so N captures cost one
    /// embedding batch and one fsync instead of N. Every caller returns once its leads are
    /// written.
    pub async fn refresh(&self, tenant: &str, ids: &[Uuid]) {
        let (done, mut written) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(PendingRefresh {
                tenant: tenant.to_owned(),
                ids: ids.to_vec(),
                done,
            });
        let _writing = self.writing.lock().await;
        // Written by the writer before us; or taken by one whose call was dropped before it
        // wrote: then we write them ourselves.
        let abandoned = match written.try_recv() {
            Ok(()) => return,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => true,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => false,
        };
        let batch = std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut by_tenant: std::collections::BTreeMap<&str, Vec<Uuid>> = Default::default();
        for refresh in &batch {
            by_tenant
                .entry(refresh.tenant.as_str())
                .or_default()
                .extend(&refresh.ids);
        }
        if abandoned {
            by_tenant.entry(tenant).or_default().extend(ids);
        }
        for (tenant, mut ids) in by_tenant {
            ids.sort_unstable();
            ids.dedup();
            if let Err(error) = self.write(tenant, &ids).await {
                tracing::warn!(%tenant, %error, "lead index update failed; the re-indexer will retry");
            }
        }
        for refresh in batch {
            let _ = refresh.done.send(());
        }
    }

    async fn try_refresh(&self, tenant: &str, ids: &[Uuid]) -> Result<(), Error> {
        let _writing = self.writing.lock().await;
        self.write(tenant, ids).await
    }

    /// Writes the vectors of `ids` as the leads are now (the writing lock held).
    async fn write(&self, tenant: &str, ids: &[Uuid]) -> Result<(), Error> {
        let leads = self.store.get_many(tenant, ids).await?;
        let live: Vec<&Lead> = leads
            .iter()
            .filter(|lead| lead.status != Status::Merged)
            .collect();
        let gone: Vec<Uuid> = ids
            .iter()
            .filter(|id| !live.iter().any(|lead| lead.id == **id))
            .copied()
            .collect();
        let namespace = self.namespace(tenant);
        let model = self.embedder.model_version().to_owned();
        if !live.is_empty() {
            let vectors = self
                .embed(live.iter().map(|lead| document(lead)).collect())
                .await?;
            let mut items = Vec::with_capacity(live.len());
            for (lead, vector) in live.iter().zip(vectors) {
                // A lead with no words at all has no direction to compare: nothing to store.
                if vector.iter().all(|x| *x == 0.0) {
                    continue;
                }
                items.push(Item::new(lead.id.to_string(), vector).meta("version", lead.version));
            }
            self.vectors
                .upsert(&namespace, items)
                .await
                .map_err(|e| unavailable("vector store", e))?;
            let indexed: Vec<(Uuid, i64)> =
                live.iter().map(|lead| (lead.id, lead.version)).collect();
            self.store.mark_indexed(tenant, &indexed, &model).await?;
        }
        if !gone.is_empty() {
            let ids: Vec<String> = gone.iter().map(Uuid::to_string).collect();
            self.vectors
                .delete(&namespace, &ids)
                .await
                .map_err(|e| unavailable("vector store", e))?;
            for id in gone {
                self.store.unmark_indexed(tenant, id, &model).await?;
            }
        }
        Ok(())
    }

    /// Indexes every stale lead and removes every orphaned vector; returns how many leads
    /// it touched.
    pub async fn heal(&self) -> Result<usize, Error> {
        let model = self.embedder.model_version().to_owned();
        let mut touched = 0;
        loop {
            let mut batch = self.store.stale_in_index(&model, HEAL_BATCH).await?;
            batch.extend(self.store.orphans_in_index(&model, HEAL_BATCH).await?);
            if batch.is_empty() {
                return Ok(touched);
            }
            let before = touched;
            batch.sort();
            for chunk in batch.chunk_by(|a, b| a.0 == b.0) {
                let tenant = chunk[0].0.clone();
                let ids: Vec<Uuid> = chunk.iter().map(|(_, id)| *id).collect();
                self.try_refresh(&tenant, &ids).await?;
                touched += ids.len();
            }
            if touched == before {
                return Ok(touched);
            }
        }
    }

    /// Heals at start, then every `interval`, until `shutdown`.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            match self.heal().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "re-indexed leads"),
                Err(error) => tracing::warn!(%error, "lead re-indexing failed; retrying later"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

fn open_embedded(dir: &Path) -> Result<Embedded, Error> {
    std::fs::create_dir_all(dir).map_err(|e| unavailable("vector directory", e))?;
    Embedded::open(dir).map_err(|e| unavailable("embedded vector store", e))
}
