//! [`Chroma`]: a thin client for a Chroma server, HTTP API v2 (verified against chromadb 1.5).
//!
//! Mapping: one Chroma tenant (e.g. `aida`) and one database (e.g. `crm`) from the
//! configuration, created on first use; one Chroma collection per [`Namespace`], named
//! `{collection}__{escaped tenant}` with cosine space. Collection names allow no `_` and the
//! escape of the tenant is injective and never contains `__`, so two namespaces never share a
//! Chroma collection: that is what isolates tenants.
//!
//! We always send vectors: the server never embeds. Chroma reports cosine *distance*;
//! similarity is `1 - distance`. Chroma's upsert merges metadata and keeps a missing document;
//! ours replaces, so an upsert first reads the stored items (one extra request per batch) and
//! clears what the new version lacks. Two concurrent upserts of the same id can therefore
//! leave a stale metadata key; one writer per id is assumed. Reads of a collection that does not exist answer empty
//! without creating it. An upsert larger than the server's `max_batch_size` is sent in several
//! requests, so it is not atomic as a whole.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{
    Clause, Filter, Hit, Item, Metadata, Namespace, VectorError, VectorStore, dedup_ids,
    escape_name, normalised, sort_hits, validate_batch, validate_query,
};

/// Error bodies longer than this are cut in [`VectorError::Http`].
const MAX_ERROR_BODY: usize = 2000;
/// Above this, `n_results` is capped by the collection's count first.
const LARGE_K: usize = 10_000;
/// Used when the server does not say its `max_batch_size`.
const DEFAULT_MAX_BATCH: usize = 1000;

/// Where and how to reach Chroma.
#[derive(Clone)]
pub struct ChromaConfig {
    /// E.g. `http://localhost:8000`.
    pub base_url: String,
    /// The Chroma tenant holding all our data (not one of our tenants).
    pub tenant: String,
    /// The Chroma database inside that tenant.
    pub database: String,
    /// Whole-request timeout.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Sent as `Authorization: Bearer …` when set.
    pub token: Option<String>,
}

impl ChromaConfig {
    /// Tenant `aida`, database `crm`, 10 s request and 3 s connect timeouts, no token.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            tenant: "aida".into(),
            database: "crm".into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            token: None,
        }
    }
}

impl fmt::Debug for ChromaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChromaConfig")
            .field("base_url", &self.base_url)
            .field("tenant", &self.tenant)
            .field("database", &self.database)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Debug)]
struct CollectionInfo {
    id: String,
    dim: Option<usize>,
}

/// Vector store backed by a Chroma server.
pub struct Chroma {
    http: reqwest::Client,
    base: String,
    tenant: String,
    database: String,
    /// Tenant and database exist; the server's max batch size.
    ready: tokio::sync::OnceCell<usize>,
    collections: Mutex<HashMap<Namespace, CollectionInfo>>,
}

impl fmt::Debug for Chroma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chroma")
            .field("base", &self.base)
            .field("tenant", &self.tenant)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct CollectionJson {
    id: String,
    #[serde(default)]
    dimension: Option<usize>,
    #[serde(default)]
    configuration_json: Option<Value>,
}

#[derive(Deserialize)]
struct QueryJson {
    ids: Vec<Vec<String>>,
    #[serde(default)]
    documents: Option<Vec<Vec<Option<String>>>>,
    #[serde(default)]
    metadatas: Option<Vec<Vec<Option<Metadata>>>>,
    #[serde(default)]
    distances: Option<Vec<Vec<Option<f32>>>>,
}

#[derive(Deserialize)]
struct GetJson {
    ids: Vec<String>,
    #[serde(default)]
    embeddings: Option<Vec<Vec<f32>>>,
    #[serde(default)]
    documents: Option<Vec<Option<String>>>,
    #[serde(default)]
    metadatas: Option<Vec<Option<Metadata>>>,
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `{"field": value}`, `{"field": {"$in": [...]}}`, or `{"$and": [...]}` for several.
fn where_clause(filter: &Filter) -> Option<Value> {
    let mut clauses: Vec<Value> = filter
        .clauses
        .iter()
        .map(|c| match c {
            Clause::Eq(field, value) => json!({ field: value }),
            Clause::In(field, values) => json!({ field: { "$in": values } }),
        })
        .collect();
    match clauses.len() {
        0 => None,
        1 => clauses.pop(),
        _ => Some(json!({ "$and": clauses })),
    }
}

/// Reads `expecting embedding with dimension of 3, got 4` out of a Chroma error body.
fn parse_dimension_error(body: &str) -> Option<(usize, usize)> {
    let number_after = |marker: &str| -> Option<usize> {
        let rest = &body[body.find(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    Some((number_after("dimension of ")?, number_after(", got ")?))
}

impl Chroma {
    /// Builds the client; no request is made until first use.
    pub fn new(config: ChromaConfig) -> Result<Self, VectorError> {
        for (what, value) in [("tenant", &config.tenant), ("database", &config.database)] {
            if !valid_segment(value) {
                return Err(VectorError::InvalidInput(format!(
                    "chroma {what} {value:?} must be 1 to 64 ASCII letters, digits, '_' or '-'"
                )));
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &config.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    VectorError::InvalidInput("chroma token is not a valid header".into())
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .default_headers(headers)
            .build()
            .map_err(|e| VectorError::Transport {
                method: "BUILD".into(),
                url: config.base_url.clone(),
                source: e,
            })?;
        Ok(Self {
            http,
            base: config.base_url.trim_end_matches('/').to_owned(),
            tenant: config.tenant,
            database: config.database,
            ready: tokio::sync::OnceCell::new(),
            collections: Mutex::new(HashMap::new()),
        })
    }

    /// The Chroma collection name of a namespace.
    pub fn collection_name(ns: &Namespace) -> String {
        format!("{}__{}", ns.collection, escape_name(&ns.tenant))
    }

    /// `GET /api/v2/heartbeat`: is the server up?
    pub async fn heartbeat(&self) -> Result<(), VectorError> {
        self.call::<Value>(Method::GET, "/api/v2/heartbeat", None)
            .await
            .map(drop)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, VectorError> {
        let url = format!("{}{path}", self.base);
        tracing::debug!(%method, %url, "chroma request");
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |source| VectorError::Transport {
            method: method.to_string(),
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        if !status.is_success() {
            let mut body = text;
            if body.len() > MAX_ERROR_BODY {
                let mut cut = MAX_ERROR_BODY;
                while !body.is_char_boundary(cut) {
                    cut -= 1;
                }
                body.truncate(cut);
                body.push('…');
            }
            return Err(VectorError::Http {
                method: method.to_string(),
                url,
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_str(&text).map_err(|e| VectorError::Protocol {
            url,
            reason: format!("{e} in {text:.200}"),
        })
    }

    fn database_path(&self) -> String {
        format!(
            "/api/v2/tenants/{}/databases/{}",
            self.tenant, self.database
        )
    }

    /// Creates the tenant and database if missing (once), and learns the max batch size.
    async fn ready(&self) -> Result<usize, VectorError> {
        self.ready
            .get_or_try_init(|| async {
                self.ensure(
                    &format!("/api/v2/tenants/{}", self.tenant),
                    "/api/v2/tenants",
                    &self.tenant,
                )
                .await?;
                self.ensure(
                    &self.database_path(),
                    &format!("/api/v2/tenants/{}/databases", self.tenant),
                    &self.database,
                )
                .await?;
                let max = match self
                    .call::<Value>(Method::GET, "/api/v2/pre-flight-checks", None)
                    .await
                {
                    Ok(v) => v["max_batch_size"]
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| *n > 0)
                        .unwrap_or(DEFAULT_MAX_BATCH),
                    Err(e) => {
                        tracing::warn!(error = %e, "chroma pre-flight checks failed; assuming a batch limit of {DEFAULT_MAX_BATCH}");
                        DEFAULT_MAX_BATCH
                    }
                };
                Ok(max)
            })
            .await
            .copied()
    }

    /// GET `get_path`; on 404 POST `{"name": name}` to `create_path` (409 = created meanwhile).
    async fn ensure(
        &self,
        get_path: &str,
        create_path: &str,
        name: &str,
    ) -> Result<(), VectorError> {
        match self.call::<Value>(Method::GET, get_path, None).await {
            Ok(_) => Ok(()),
            Err(VectorError::Http { status: 404, .. }) => {
                match self
                    .call::<Value>(Method::POST, create_path, Some(&json!({ "name": name })))
                    .await
                {
                    Ok(_) | Err(VectorError::Http { status: 409, .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn cached(&self, ns: &Namespace) -> Result<Option<CollectionInfo>, VectorError> {
        Ok(self
            .collections
            .lock()
            .map_err(|_| VectorError::Internal("chroma cache lock poisoned".into()))?
            .get(ns)
            .cloned())
    }

    fn remember(&self, ns: &Namespace, info: Option<CollectionInfo>) -> Result<(), VectorError> {
        let mut map = self
            .collections
            .lock()
            .map_err(|_| VectorError::Internal("chroma cache lock poisoned".into()))?;
        match info {
            Some(info) => map.insert(ns.clone(), info),
            None => map.remove(ns),
        };
        Ok(())
    }

    fn parse_collection(
        &self,
        ns: &Namespace,
        c: CollectionJson,
    ) -> Result<CollectionInfo, VectorError> {
        let space = c
            .configuration_json
            .as_ref()
            .and_then(|cfg| cfg.pointer("/hnsw/space"))
            .and_then(Value::as_str);
        if let Some(space) = space
            && space != "cosine"
        {
            return Err(VectorError::Protocol {
                url: self.base.clone(),
                reason: format!(
                    "collection {} uses space {space:?}, not cosine",
                    Self::collection_name(ns)
                ),
            });
        }
        Ok(CollectionInfo {
            id: c.id,
            dim: c.dimension,
        })
    }

    /// The collection of a namespace: from the cache, else fetched (`refresh` skips the
    /// cache). Without `create`, a missing collection is `None`.
    async fn collection(
        &self,
        ns: &Namespace,
        create: bool,
        refresh: bool,
    ) -> Result<Option<CollectionInfo>, VectorError> {
        if !refresh && let Some(info) = self.cached(ns)? {
            return Ok(Some(info));
        }
        self.ready().await?;
        let name = Self::collection_name(ns);
        let collections = format!("{}/collections", self.database_path());
        let json: CollectionJson = if create {
            let body = json!({
                "name": name,
                "metadata": { "hnsw:space": "cosine" },
                "get_or_create": true,
            });
            self.call(Method::POST, &collections, Some(&body)).await?
        } else {
            match self
                .call(Method::GET, &format!("{collections}/{name}"), None)
                .await
            {
                Ok(json) => json,
                Err(VectorError::Http { status: 404, .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        let info = self.parse_collection(ns, json)?;
        self.remember(ns, Some(info.clone()))?;
        Ok(Some(info))
    }

    /// A call on a collection; a 404 (collection dropped behind our back) evicts the cache.
    async fn collection_call<T: DeserializeOwned>(
        &self,
        ns: &Namespace,
        info: &CollectionInfo,
        method: Method,
        op: &str,
        body: Option<&Value>,
    ) -> Result<T, VectorError> {
        let path = format!("{}/collections/{}/{op}", self.database_path(), info.id);
        let result = self.call(method, &path, body).await;
        if let Err(VectorError::Http { status: 404, .. }) = &result {
            self.remember(ns, None)?;
        }
        result
    }
}

/// What an item already stored looks like, as far as replacing it is concerned.
struct Previous {
    has_document: bool,
    keys: Vec<String>,
}

impl Chroma {
    /// Chroma's upsert merges: metadata keys absent from the new item survive and a `null`
    /// document keeps the old one. Our upsert replaces, so this looks at the stored items
    /// first: keys to drop are sent as `null` (which deletes them), and items whose document
    /// must go are deleted before they are written again.
    async fn replacing_upsert_body(
        &self,
        ns: &Namespace,
        info: &CollectionInfo,
        chunk: &[Item],
    ) -> Result<Value, VectorError> {
        let body = json!({
            "ids": chunk.iter().map(|i| &i.id).collect::<Vec<_>>(),
            "include": ["documents", "metadatas"],
        });
        let stored: GetJson = self
            .collection_call(ns, info, Method::POST, "get", Some(&body))
            .await?;
        let mut documents = stored.documents.unwrap_or_default();
        let mut metadatas = stored.metadatas.unwrap_or_default();
        let previous: HashMap<String, Previous> = stored
            .ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let has_document = documents.get_mut(i).and_then(Option::take).is_some();
                let keys = metadatas
                    .get_mut(i)
                    .and_then(Option::take)
                    .map(|m| m.into_keys().collect())
                    .unwrap_or_default();
                (id, Previous { has_document, keys })
            })
            .collect();

        let recreate: Vec<&str> = chunk
            .iter()
            .filter(|i| i.document.is_none())
            .filter(|i| previous.get(&i.id).is_some_and(|p| p.has_document))
            .map(|i| i.id.as_str())
            .collect();
        if !recreate.is_empty() {
            self.collection_call::<Value>(
                ns,
                info,
                Method::POST,
                "delete",
                Some(&json!({ "ids": recreate })),
            )
            .await?;
        }

        let metadatas: Vec<Value> = chunk
            .iter()
            .map(|item| {
                let mut map = serde_json::Map::new();
                if let Some(p) = previous.get(&item.id)
                    && !recreate.contains(&item.id.as_str())
                {
                    for key in &p.keys {
                        map.insert(key.clone(), Value::Null);
                    }
                }
                for (k, v) in &item.metadata {
                    map.insert(k.clone(), json!(v));
                }
                if map.is_empty() {
                    Value::Null
                } else {
                    Value::Object(map)
                }
            })
            .collect();
        Ok(json!({
            "ids": chunk.iter().map(|i| &i.id).collect::<Vec<_>>(),
            "embeddings": chunk.iter().map(|i| &i.vector).collect::<Vec<_>>(),
            "documents": chunk.iter().map(|i| &i.document).collect::<Vec<_>>(),
            "metadatas": metadatas,
        }))
    }
}

#[async_trait]
impl VectorStore for Chroma {
    async fn upsert(&self, ns: &Namespace, items: Vec<Item>) -> Result<(), VectorError> {
        let Some(dim) = validate_batch(ns, &items, None)? else {
            return Ok(());
        };
        let max_batch = self.ready().await?;
        let Some(mut info) = self.collection(ns, true, false).await? else {
            return Err(VectorError::Internal("collection not created".into()));
        };
        if info.dim.is_none()
            && let Some(fresh) = self.collection(ns, true, true).await?
        {
            info = fresh;
        }
        validate_batch(ns, &items, info.dim)?;
        for chunk in items.chunks(max_batch) {
            let body = self.replacing_upsert_body(ns, &info, chunk).await?;
            let result = self
                .collection_call::<Value>(ns, &info, Method::POST, "upsert", Some(&body))
                .await;
            match result {
                Ok(_) => {}
                Err(VectorError::Http {
                    status: 400,
                    ref body,
                    ..
                }) if parse_dimension_error(body).is_some() => {
                    // Another writer fixed the dimension since we looked.
                    let (expected, got) = parse_dimension_error(body).unwrap_or((0, dim));
                    self.remember(
                        ns,
                        Some(CollectionInfo {
                            id: info.id.clone(),
                            dim: Some(expected),
                        }),
                    )?;
                    return Err(VectorError::DimensionMismatch {
                        namespace: ns.to_string(),
                        expected,
                        got,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        if info.dim.is_none() {
            self.remember(
                ns,
                Some(CollectionInfo {
                    id: info.id,
                    dim: Some(dim),
                }),
            )?;
        }
        Ok(())
    }

    async fn query(
        &self,
        ns: &Namespace,
        vector: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, VectorError> {
        validate_query(ns, vector, None, filter)?;
        let mut info = self.collection(ns, false, false).await?;
        if info.as_ref().is_some_and(|i| i.dim.is_none()) {
            info = self.collection(ns, false, true).await?;
        }
        let Some(info) = info else {
            return Ok(Vec::new());
        };
        validate_query(ns, vector, info.dim, filter)?;
        if info.dim.is_none() || k == 0 || filter.matches_nothing() {
            return Ok(Vec::new());
        }
        // A huge k would make the server size its result heap by it: cap it by the count.
        let k = if k > LARGE_K {
            k.min(self.count(ns).await?)
        } else {
            k
        };
        if k == 0 {
            return Ok(Vec::new());
        }
        let mut body = json!({
            "query_embeddings": [vector],
            "n_results": k,
            "include": ["documents", "metadatas", "distances"],
        });
        if let Some(w) = where_clause(filter) {
            body["where"] = w;
        }
        let json: QueryJson = self
            .collection_call(ns, &info, Method::POST, "query", Some(&body))
            .await?;
        let protocol = |reason: &str| VectorError::Protocol {
            url: self.base.clone(),
            reason: reason.to_owned(),
        };
        let ids = json.ids.into_iter().next().unwrap_or_default();
        let distances = json
            .distances
            .and_then(|d| d.into_iter().next())
            .ok_or_else(|| protocol("query answer without distances"))?;
        let mut documents = json.documents.and_then(|d| d.into_iter().next());
        let mut metadatas = json.metadatas.and_then(|m| m.into_iter().next());
        if distances.len() != ids.len() {
            return Err(protocol(
                "query answer with ids and distances of different lengths",
            ));
        }
        let mut hits = Vec::with_capacity(ids.len());
        for (i, (id, distance)) in ids.into_iter().zip(distances).enumerate() {
            let distance = distance.ok_or_else(|| protocol("query answer with a null distance"))?;
            hits.push(Hit {
                id,
                similarity: (1.0 - distance).clamp(-1.0, 1.0),
                document: documents
                    .as_mut()
                    .and_then(|d| d.get_mut(i))
                    .and_then(Option::take),
                metadata: metadatas
                    .as_mut()
                    .and_then(|m| m.get_mut(i))
                    .and_then(Option::take)
                    .unwrap_or_default(),
            });
        }
        sort_hits(&mut hits);
        Ok(hits)
    }

    async fn get(&self, ns: &Namespace, ids: &[String]) -> Result<Vec<Item>, VectorError> {
        ns.validate()?;
        let ids = dedup_ids(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let Some(info) = self.collection(ns, false, false).await? else {
            return Ok(Vec::new());
        };
        let body = json!({
            "ids": ids,
            "include": ["documents", "metadatas", "embeddings"],
        });
        let json: GetJson = self
            .collection_call(ns, &info, Method::POST, "get", Some(&body))
            .await?;
        let embeddings = json.embeddings.ok_or_else(|| VectorError::Protocol {
            url: self.base.clone(),
            reason: "get answer without embeddings".into(),
        })?;
        let mut documents = json.documents.unwrap_or_default();
        let mut metadatas = json.metadatas.unwrap_or_default();
        let mut found = HashMap::with_capacity(json.ids.len());
        for (i, (id, vector)) in json.ids.into_iter().zip(embeddings).enumerate() {
            let vector = normalised(&id, &vector)?;
            let item = Item {
                document: documents.get_mut(i).and_then(Option::take),
                metadata: metadatas
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_default(),
                id: id.clone(),
                vector,
            };
            found.insert(id, item);
        }
        Ok(ids.into_iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<(), VectorError> {
        ns.validate()?;
        let ids = dedup_ids(ids);
        // Never send an empty id list: Chroma could read it as "no id restriction".
        if ids.is_empty() {
            return Ok(());
        }
        let Some(info) = self.collection(ns, false, false).await? else {
            return Ok(());
        };
        self.collection_call::<Value>(
            ns,
            &info,
            Method::POST,
            "delete",
            Some(&json!({ "ids": ids })),
        )
        .await
        .map(drop)
    }

    async fn count(&self, ns: &Namespace) -> Result<usize, VectorError> {
        ns.validate()?;
        let Some(info) = self.collection(ns, false, false).await? else {
            return Ok(0);
        };
        self.collection_call(ns, &info, Method::GET, "count", None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_clauses() {
        assert_eq!(where_clause(&Filter::all()), None);
        assert_eq!(
            where_clause(&Filter::all().eq("stage", "new")),
            Some(json!({"stage": "new"}))
        );
        assert_eq!(
            where_clause(&Filter::all().is_in("n", [1, 2])),
            Some(json!({"n": {"$in": [1, 2]}}))
        );
        assert_eq!(
            where_clause(&Filter::all().eq("a", true).is_in("b", ["x"])),
            Some(json!({"$and": [{"a": true}, {"b": {"$in": ["x"]}}]}))
        );
    }

    #[test]
    fn collection_names_isolate_tenants() {
        let a = Chroma::collection_name(&Namespace::new("a.b", "leads"));
        let b = Chroma::collection_name(&Namespace::new("a_b", "leads"));
        assert_ne!(a, b);
        assert_eq!(a, "leads__a_2eb");
        assert_eq!(
            Chroma::collection_name(&Namespace::new("Acme", "email-bodies")),
            "email-bodies___41cme"
        );
    }

    #[test]
    fn dimension_errors_are_read() {
        assert_eq!(
            parse_dimension_error(
                r#"{"error":"InvalidArgumentError","message":"Collection expecting embedding with dimension of 3, got 4"}"#
            ),
            Some((3, 4))
        );
        assert_eq!(parse_dimension_error("nope"), None);
    }

    #[test]
    fn config_debug_hides_the_token() {
        let mut c = ChromaConfig::new("http://x");
        c.token = Some("secret".into());
        assert!(!format!("{c:?}").contains("secret"));
    }
}
