//! Vector store: nearest-neighbour search over embeddings, isolated per tenant.
//!
//! [`VectorStore`] is the contract; [`Embedded`] is the in-process exact index persisted to
//! disk for single-node use, and [`Chroma`] a thin client for a Chroma server (HTTP API v2).
//! Both pass the same conformance suite (`libs/ai/tests/vector_store.rs`).
//!
//! Semantics shared by every implementation:
//! - A [`Namespace`] is a (tenant, collection) pair. One tenant never sees another's items,
//!   even under the same collection name.
//! - Similarity is cosine similarity, 1 = same direction. Vectors must be finite and non-zero;
//!   [`VectorStore::get`] returns them unit-normalised (direction is all cosine sees).
//! - The dimension of a collection is fixed by its first upsert and stays fixed, even once
//!   every item is deleted.
//! - Hits come sorted by similarity descending, ties by id ascending.
//! - Filters compare metadata for equality; integers and floats compare numerically
//!   (`1 == 1.0`), as Chroma does.

mod chroma;
mod embedded;
mod exact;
mod wal;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use chroma::{Chroma, ChromaConfig};
pub use embedded::{Embedded, EmbeddedOptions};
pub use exact::{brute_force_top_k, recall_at_k};

/// Longest tenant name, in bytes (escaped, it must still fit a file name of 255 bytes).
pub const MAX_TENANT_LEN: usize = 80;
/// Longest collection name, in bytes.
pub const MAX_COLLECTION_LEN: usize = 64;

/// Where items live: one collection of one tenant.
///
/// `tenant` is any non-empty string of at most [`MAX_TENANT_LEN`] bytes. `collection` is
/// 1 to [`MAX_COLLECTION_LEN`] ASCII letters, digits and inner hyphens (`leads`,
/// `email-bodies`), so it maps to a file name and a Chroma collection name unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Namespace {
    pub tenant: String,
    pub collection: String,
}

impl Namespace {
    pub fn new(tenant: impl Into<String>, collection: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            collection: collection.into(),
        }
    }

    /// Checks the naming rules above.
    pub fn validate(&self) -> Result<(), VectorError> {
        let bad = |reason: &str| {
            Err(VectorError::InvalidNamespace {
                namespace: self.to_string(),
                reason: reason.to_owned(),
            })
        };
        if self.tenant.is_empty() || self.tenant.len() > MAX_TENANT_LEN {
            return bad("tenant must be 1 to 80 bytes");
        }
        let c = self.collection.as_bytes();
        if c.is_empty() || c.len() > MAX_COLLECTION_LEN {
            return bad("collection must be 1 to 64 characters");
        }
        let inner_ok = c.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        let ends_ok = c[0].is_ascii_alphanumeric() && c[c.len() - 1].is_ascii_alphanumeric();
        if !inner_ok || !ends_ok {
            return bad("collection must be ASCII letters, digits and inner hyphens");
        }
        Ok(())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.collection)
    }
}

/// A metadata value: string, integer, float or boolean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetaValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl MetaValue {
    /// Equality as filters see it: numbers compare numerically across `Int` and `Float`.
    pub fn matches(&self, other: &MetaValue) -> bool {
        match (self, other) {
            (MetaValue::Int(a), MetaValue::Float(b)) | (MetaValue::Float(b), MetaValue::Int(a)) => {
                (*a as f64) == *b
            }
            (a, b) => a == b,
        }
    }
}

impl From<&str> for MetaValue {
    fn from(v: &str) -> Self {
        MetaValue::Str(v.to_owned())
    }
}
impl From<String> for MetaValue {
    fn from(v: String) -> Self {
        MetaValue::Str(v)
    }
}
impl From<i64> for MetaValue {
    fn from(v: i64) -> Self {
        MetaValue::Int(v)
    }
}
impl From<i32> for MetaValue {
    fn from(v: i32) -> Self {
        MetaValue::Int(i64::from(v))
    }
}
impl From<f64> for MetaValue {
    fn from(v: f64) -> Self {
        MetaValue::Float(v)
    }
}
impl From<bool> for MetaValue {
    fn from(v: bool) -> Self {
        MetaValue::Bool(v)
    }
}

/// Metadata of an item.
pub type Metadata = BTreeMap<String, MetaValue>;

/// One stored vector with its document and metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub vector: Vec<f32>,
    pub document: Option<String>,
    pub metadata: Metadata,
}

impl Item {
    pub fn new(id: impl Into<String>, vector: Vec<f32>) -> Self {
        Self {
            id: id.into(),
            vector,
            document: None,
            metadata: Metadata::new(),
        }
    }

    pub fn document(mut self, document: impl Into<String>) -> Self {
        self.document = Some(document.into());
        self
    }

    pub fn meta(mut self, key: impl Into<String>, value: impl Into<MetaValue>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// One clause of a [`Filter`].
#[derive(Clone, Debug, PartialEq)]
pub enum Clause {
    /// `field == value`.
    Eq(String, MetaValue),
    /// `field` equals one of the values; an empty list matches nothing.
    In(String, Vec<MetaValue>),
}

impl Clause {
    pub fn matches(&self, metadata: &Metadata) -> bool {
        match self {
            Clause::Eq(field, value) => metadata.get(field).is_some_and(|v| v.matches(value)),
            Clause::In(field, values) => metadata
                .get(field)
                .is_some_and(|v| values.iter().any(|x| v.matches(x))),
        }
    }
}

/// A conjunction of clauses on metadata; the empty filter matches every item.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub clauses: Vec<Clause>,
}

impl Filter {
    /// Matches every item.
    pub fn all() -> Self {
        Self::default()
    }

    /// Adds `field == value`.
    pub fn eq(mut self, field: impl Into<String>, value: impl Into<MetaValue>) -> Self {
        self.clauses.push(Clause::Eq(field.into(), value.into()));
        self
    }

    /// Adds `field $in values`.
    pub fn is_in<V: Into<MetaValue>>(
        mut self,
        field: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        self.clauses.push(Clause::In(
            field.into(),
            values.into_iter().map(Into::into).collect(),
        ));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// True when no item can match (an `$in` with no values).
    pub fn matches_nothing(&self) -> bool {
        self.clauses
            .iter()
            .any(|c| matches!(c, Clause::In(_, values) if values.is_empty()))
    }

    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.clauses.iter().all(|c| c.matches(metadata))
    }

    fn validate(&self) -> Result<(), VectorError> {
        for clause in &self.clauses {
            let (field, values) = match clause {
                Clause::Eq(f, v) => (f, std::slice::from_ref(v)),
                Clause::In(f, vs) => (f, vs.as_slice()),
            };
            validate_key(field)?;
            values.iter().try_for_each(|v| validate_value(field, v))?;
        }
        Ok(())
    }
}

/// A query result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub id: String,
    /// Cosine similarity in [-1, 1]; 1 = identical direction.
    pub similarity: f32,
    pub document: Option<String>,
    pub metadata: Metadata,
}

/// Errors of every [`VectorStore`].
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error(
        "dimension mismatch in {namespace}: the collection has {expected} dimensions, got {got}"
    )]
    DimensionMismatch {
        namespace: String,
        expected: usize,
        got: usize,
    },
    #[error("invalid namespace {namespace}: {reason}")]
    InvalidNamespace { namespace: String, reason: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt vector log {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("chroma {method} {url} returned HTTP {status}: {body}")]
    Http {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("chroma {method} {url} failed: {source}")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected chroma response from {url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl VectorError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        VectorError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A store of vectors, isolated per [`Namespace`].
#[async_trait]
pub trait VectorStore: Send + Sync {
    /// Inserts or replaces items (by id). All vectors must have the collection's dimension;
    /// ids must be unique within the batch. An empty batch does nothing.
    async fn upsert(&self, ns: &Namespace, items: Vec<Item>) -> Result<(), VectorError>;

    /// The `k` items most similar to `vector` among those matching `filter`, best first.
    /// A missing or empty collection gives no hits.
    async fn query(
        &self,
        ns: &Namespace,
        vector: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, VectorError>;

    /// The items with these ids, in the order asked (first occurrence), missing ones left out.
    /// Vectors come back unit-normalised.
    async fn get(&self, ns: &Namespace, ids: &[String]) -> Result<Vec<Item>, VectorError>;

    /// Deletes the items with these ids; unknown ids are ignored.
    async fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<(), VectorError>;

    /// How many items the collection holds (0 when it does not exist).
    async fn count(&self, ns: &Namespace) -> Result<usize, VectorError>;
}

fn validate_key(key: &str) -> Result<(), VectorError> {
    if key.is_empty() || key.starts_with('#') || key.starts_with('$') {
        return Err(VectorError::InvalidInput(format!(
            "metadata key {key:?} must be non-empty and not start with '#' or '$'"
        )));
    }
    Ok(())
}

fn validate_value(key: &str, value: &MetaValue) -> Result<(), VectorError> {
    if let MetaValue::Float(f) = value
        && !f.is_finite()
    {
        return Err(VectorError::InvalidInput(format!(
            "metadata {key:?} is not a finite number"
        )));
    }
    Ok(())
}

/// Checks a vector is non-empty, finite and non-zero, and returns its norm.
fn vector_norm(id: &str, vector: &[f32]) -> Result<f32, VectorError> {
    if vector.is_empty() {
        return Err(VectorError::InvalidInput(format!(
            "vector of {id:?} is empty"
        )));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(VectorError::InvalidInput(format!(
            "vector of {id:?} has a non-finite component"
        )));
    }
    let norm = exact::dot(vector, vector).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(VectorError::InvalidInput(format!(
            "vector of {id:?} has zero (or overflowing) length; cosine similarity needs a direction"
        )));
    }
    Ok(norm)
}

/// Unit-normalised copy of a vector, after the checks of [`vector_norm`].
pub(crate) fn normalised(id: &str, vector: &[f32]) -> Result<Vec<f32>, VectorError> {
    let norm = vector_norm(id, vector)?;
    Ok(vector.iter().map(|x| x / norm).collect())
}

/// Validates an upsert batch against the collection's dimension (if already fixed) and
/// returns the batch's dimension (`None` for an empty batch).
pub(crate) fn validate_batch(
    ns: &Namespace,
    items: &[Item],
    expected: Option<usize>,
) -> Result<Option<usize>, VectorError> {
    ns.validate()?;
    let Some(first) = items.first() else {
        return Ok(None);
    };
    let dim = expected.unwrap_or(first.vector.len());
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for item in items {
        if item.id.is_empty() {
            return Err(VectorError::InvalidInput("empty item id".into()));
        }
        if !seen.insert(item.id.as_str()) {
            return Err(VectorError::InvalidInput(format!(
                "id {:?} appears twice in one upsert batch",
                item.id
            )));
        }
        if item.vector.len() != dim {
            return Err(VectorError::DimensionMismatch {
                namespace: ns.to_string(),
                expected: dim,
                got: item.vector.len(),
            });
        }
        vector_norm(&item.id, &item.vector)?;
        for (k, v) in &item.metadata {
            validate_key(k)?;
            validate_value(k, v)?;
        }
    }
    Ok(Some(dim))
}

/// Validates a query against the collection's dimension.
pub(crate) fn validate_query(
    ns: &Namespace,
    vector: &[f32],
    expected: Option<usize>,
    filter: &Filter,
) -> Result<(), VectorError> {
    ns.validate()?;
    filter.validate()?;
    if let Some(expected) = expected
        && vector.len() != expected
    {
        return Err(VectorError::DimensionMismatch {
            namespace: ns.to_string(),
            expected,
            got: vector.len(),
        });
    }
    vector_norm("query", vector)?;
    Ok(())
}

/// Injective, case-preserving escape to `[a-z0-9_]`: lowercase ASCII letters and digits stay,
/// every other byte becomes `_xx` (lowercase hex). The result never contains `__` and, when
/// non-empty, ends with a letter or digit, so it is safe in file names (even on
/// case-insensitive file systems) and in Chroma collection names.
pub(crate) fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// Inverse of [`escape_name`]; `None` for text it cannot have produced.
pub(crate) fn unescape_name(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'_' {
            let hex = escaped.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_lowercase()
                || v.is_ascii_digit()
                || hex.bytes().any(|h| h.is_ascii_uppercase())
            {
                return None;
            }
            out.push(v);
            i += 3;
        } else if b.is_ascii_lowercase() || b.is_ascii_digit() {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Ids in first-occurrence order without repeats.
pub(crate) fn dedup_ids(ids: &[String]) -> Vec<&str> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter()
        .map(String::as_str)
        .filter(|id| seen.insert(*id))
        .collect()
}

/// Sorts hits by similarity descending, ties by id ascending.
pub(crate) fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| {
        b.similarity
            .total_cmp(&a.similarity)
            .then_with(|| a.id.cmp(&b.id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules() {
        assert!(Namespace::new("t", "leads").validate().is_ok());
        assert!(
            Namespace::new("ünïcode tenant/../", "email-bodies")
                .validate()
                .is_ok()
        );
        assert!(Namespace::new("", "leads").validate().is_err());
        assert!(Namespace::new("t", "").validate().is_err());
        assert!(Namespace::new("t", "-leads").validate().is_err());
        assert!(Namespace::new("t", "le_ads").validate().is_err());
        assert!(Namespace::new("t", "../x").validate().is_err());
        assert!(Namespace::new("t".repeat(81), "x").validate().is_err());
        assert!(Namespace::new("t".repeat(80), "x").validate().is_ok());
    }

    #[test]
    fn escaping_is_injective_and_safe() {
        for name in [
            "acme",
            "Acme",
            "a_b",
            "a.b",
            "a__b",
            "ünï/../x",
            "550e8400-e29b",
            "_5f",
        ] {
            let e = escape_name(name);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
            assert!(!e.contains("__"), "{e}");
            assert_eq!(unescape_name(&e).as_deref(), Some(name));
        }
        assert_ne!(escape_name("a.b"), escape_name("a_b"));
        assert_ne!(escape_name("A"), escape_name("a"));
        assert_eq!(unescape_name("A"), None);
        assert_eq!(unescape_name("_61"), None);
        assert_eq!(unescape_name("_4"), None);
    }

    #[test]
    fn numeric_equality_crosses_int_and_float() {
        assert!(MetaValue::Int(1).matches(&MetaValue::Float(1.0)));
        assert!(!MetaValue::Int(1).matches(&MetaValue::Float(1.5)));
        assert!(!MetaValue::Int(1).matches(&MetaValue::Bool(true)));
        assert!(!MetaValue::Str("1".into()).matches(&MetaValue::Int(1)));
    }

    #[test]
    fn meta_value_json_round_trip() {
        let m: Metadata = [
            ("b".to_owned(), MetaValue::Bool(true)),
            ("i".to_owned(), MetaValue::Int(-3)),
            ("f".to_owned(), MetaValue::Float(2.0)),
            ("s".to_owned(), MetaValue::Str("x".into())),
        ]
        .into();
        let json = serde_json::to_string(&m).expect("serialise");
        assert_eq!(json, r#"{"b":true,"f":2.0,"i":-3,"s":"x"}"#);
        let back: Metadata = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, m);
    }

    #[test]
    fn filters() {
        let m: Metadata = [
            ("stage".to_owned(), MetaValue::from("new")),
            ("score".to_owned(), MetaValue::from(3)),
        ]
        .into();
        assert!(Filter::all().matches(&m));
        assert!(Filter::all().eq("stage", "new").matches(&m));
        assert!(!Filter::all().eq("stage", "won").matches(&m));
        assert!(Filter::all().is_in("score", [1, 3]).matches(&m));
        assert!(
            !Filter::all()
                .eq("stage", "new")
                .is_in("score", [1, 2])
                .matches(&m)
        );
        assert!(!Filter::all().eq("missing", "x").matches(&m));
        assert!(
            Filter::all()
                .is_in("stage", Vec::<MetaValue>::new())
                .matches_nothing()
        );
    }
}
