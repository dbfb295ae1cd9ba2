//! Encryption at rest: envelope encryption with three levels of keys, and keyed blind
//! indexes for what must still be looked up.
//!
//! ```text
//! master keys   held by a KeyProvider only (a key file under data_dir for `aida up`, the
//!               `crypto.master_keys` secret when deployed, a cloud KMS behind the trait)
//!   └ tenant key    one per tenant, AES-256-GCM-wrapped by the current master key
//!                   (table tenant_keys); also keys the tenant's blind indexes
//!       └ subject key   one per data subject (a lead), wrapped by the tenant key (table
//!                       subject_keys); seals the subject's personal data. Erasure destroys
//!                       it and leaves a tombstone: every copy of what it sealed, in a
//!                       backup, an event or a dead letter, no longer opens.
//! ```
//!
//! A sealed value is text, `aes1.` + base64url(nonce ‖ ciphertext ‖ tag), with the tenant,
//! the column and the row as associated data: a ciphertext copied to another row, column or
//! tenant does not open. The empty string stays empty ("not given"). The AEAD and the HMAC
//! are ring's; nothing here is hand-rolled cryptography.
//!
//! Rotating the master key ([`rotate`], `aida keys rotate`) re-wraps the tenant keys, one
//! compare-and-swap update each; data keys never change, so no data is re-encrypted and no
//! request waits for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::Utc;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::ExposeSecret;

use crate::db::{Database, Migrations, Sql};

/// The prefix of every sealed value (the format's version).
pub const SEALED: &str = "aes1.";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// The key file of `aida up`, under `data_dir`.
pub const MASTER_KEY_FILE: &str = "master.keys";
/// How long an unwrapped subject key is kept in memory.
const SUBJECT_CACHE_TTL: Duration = Duration::from_secs(300);
const SUBJECT_CACHE_SIZE: u64 = 200_000;

/// Why a key or a sealed value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The master key a tenant key is wrapped with is not among the provider's keys.
    #[error("master key '{0}' is not known to this process (deploy it before rotating to it)")]
    UnknownMaster(String),
    /// The master keys are misconfigured.
    #[error("{field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    /// A sealed value or a wrapped key does not open: wrong key, or altered.
    #[error("a sealed value does not open under its key (altered, or moved from its row)")]
    Open,
    /// The subject was erased: its key is destroyed.
    #[error("data subject {0} was erased")]
    Erased(String),
    #[error("keys database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("keys database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("master key file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the system random source failed")]
    Random,
}

impl From<CryptoError> for crate::Error {
    fn from(error: CryptoError) -> Self {
        match error {
            CryptoError::Erased(subject) => crate::Error::FailedPrecondition {
                reason: "SUBJECT_ERASED",
                message: format!("the data subject {subject} was erased"),
            },
            CryptoError::Database(error) => error.into(),
            other => crate::Error::internal(other.to_string()),
        }
    }
}

/// The keyring's tables (their own migrations: on PostgreSQL they sit beside the service's
/// tables, in `aida up` in the shared `data_dir/keys.db`).
pub fn migrations() -> Migrations {
    Migrations {
        postgres: sqlx::migrate!("./migrations-keys/postgres"),
        sqlite: sqlx::migrate!("./migrations-keys/sqlite"),
    }
}

fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CryptoError::Random)?;
    Ok(bytes)
}

/// An AES-256-GCM key.
struct AeadKey(LessSafeKey);

impl AeadKey {
    fn new(bytes: &[u8; KEY_LEN]) -> Self {
        // A 32-byte key is always a valid AES-256 key.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!());
        Self(LessSafeKey::new(unbound))
    }

    /// nonce ‖ ciphertext ‖ tag.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = random::<NONCE_LEN>()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(NONCE_LEN);
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| CryptoError::Open)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        let mut body = body.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| CryptoError::Open)?;
        Ok(plain.to_vec())
    }
}

fn to_key(bytes: &[u8]) -> Result<[u8; KEY_LEN], CryptoError> {
    bytes.try_into().map_err(|_| CryptoError::Open)
}

/// Who holds the master keys. Keys never leave it except as the data keys they wrap and
/// unwrap, so a cloud KMS (Encrypt/Decrypt with an encryption context) fits the same trait.
#[async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// The id of the key new wraps use.
    fn current(&self) -> Result<String, CryptoError>;
    /// `key` wrapped under the current master key, bound to `context`: (master id, bytes).
    async fn wrap(&self, context: &[u8], key: &[u8]) -> Result<(String, Vec<u8>), CryptoError>;
    /// A key wrapped under master key `master_id` and bound to `context`.
    async fn unwrap(
        &self,
        master_id: &str,
        context: &[u8],
        wrapped: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;
    /// Every master key id the provider holds, oldest first.
    fn ids(&self) -> Result<Vec<String>, CryptoError>;
}

/// Master keys held in this process: from the `crypto.master_keys` secret, or from a key
/// file (re-read when a key it does not know is asked for, so that a rotation by `aida keys
/// rotate` reaches running services).
///
/// The text form is `id:hex` entries (64 hex digits, 32 bytes), separated by commas or
/// newlines; the last one is current.
pub struct LocalKeys {
    keys: RwLock<Vec<(String, [u8; KEY_LEN])>>,
    file: Option<PathBuf>,
    field: &'static str,
}

impl LocalKeys {
    /// Keys from `text` (the setting `field`).
    pub fn parse(text: &str, field: &'static str) -> Result<Self, CryptoError> {
        Ok(Self {
            keys: RwLock::new(parse_keys(text, field)?),
            file: None,
            field,
        })
    }

    /// Keys from the file at `path`, created with one new key the first time.
    pub fn file(path: &Path) -> Result<Self, CryptoError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let entry = new_entry()?;
                // Written whole beside it, then linked into place: another process sees no
                // file or the whole file, and the first link wins.
                let temporary = path.with_extension(format!("keys.{}", crate::random_hex(6)));
                crate::settings::write_private_file(&temporary, &format!("{entry}\n"))?;
                let linked = std::fs::hard_link(&temporary, path);
                let _ = std::fs::remove_file(&temporary);
                match linked {
                    Ok(()) => entry,
                    // Another process created it first: use theirs.
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::read_to_string(path)?
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Self {
            keys: RwLock::new(parse_keys(&text, "master key file")?),
            file: Some(path.to_owned()),
            field: "master key file",
        })
    }

    /// Appends a new current key to the key file (`aida keys rotate` of `aida up`): the id
    /// of the new key.
    pub fn add_to_file(&self) -> Result<String, CryptoError> {
        let Some(path) = &self.file else {
            return Err(CryptoError::Config {
                field: self.field,
                message: "configured keys are rotated by deploying a new last key".into(),
            });
        };
        let entry = new_entry()?;
        let id = entry.split(':').next().unwrap_or_default().to_owned();
        let mut text = std::fs::read_to_string(path)?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&entry);
        text.push('\n');
        // Written beside and renamed: a reader sees the old file or the new one, whole.
        let temporary = path.with_extension("keys.new");
        let _ = std::fs::remove_file(&temporary);
        crate::settings::write_private_file(&temporary, &text)?;
        std::fs::rename(&temporary, path)?;
        self.reload()?;
        Ok(id)
    }

    fn reload(&self) -> Result<bool, CryptoError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let keys = parse_keys(&std::fs::read_to_string(path)?, self.field)?;
        let mut held = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *held = keys;
        Ok(true)
    }

    fn key(&self, id: &str) -> Option<[u8; KEY_LEN]> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.iter()
            .find(|(key_id, _)| key_id == id)
            .map(|(_, key)| *key)
    }
}

fn new_entry() -> Result<String, CryptoError> {
    let key = random::<KEY_LEN>()?;
    let hex: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
    let id = format!(
        "m{}-{}",
        Utc::now().format("%Y%m%d%H%M%S"),
        &crate::random_hex(3)
    );
    Ok(format!("{id}:{hex}"))
}

fn parse_keys(
    text: &str,
    field: &'static str,
) -> Result<Vec<(String, [u8; KEY_LEN])>, CryptoError> {
    let bad = |message: String| CryptoError::Config { field, message };
    let mut keys: Vec<(String, [u8; KEY_LEN])> = Vec::new();
    for entry in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|entry| !entry.is_empty() && !entry.starts_with('#'))
    {
        let (id, hex) = entry
            .split_once(':')
            .ok_or_else(|| bad("each key is id:hex".into()))?;
        if id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(format!(
                "key id '{id}': 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if hex.len() != KEY_LEN * 2 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(format!("key '{id}': 64 hex digits (32 bytes)")));
        }
        let mut key = [0u8; KEY_LEN];
        for (n, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * n..2 * n + 2], 16)
                .map_err(|_| bad(format!("key '{id}': 64 hex digits (32 bytes)")))?;
        }
        if keys.iter().any(|(other, _)| other == id) {
            return Err(bad(format!("key id '{id}' appears twice")));
        }
        keys.push((id.to_owned(), key));
    }
    if keys.is_empty() {
        return Err(bad("no key".into()));
    }
    Ok(keys)
}

#[async_trait]
impl KeyProvider for LocalKeys {
    fn current(&self) -> Result<String, CryptoError> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.last()
            .map(|(id, _)| id.clone())
            .ok_or(CryptoError::Config {
                field: self.field,
                message: "no key".into(),
            })
    }

    async fn wrap(&self, context: &[u8], key: &[u8]) -> Result<(String, Vec<u8>), CryptoError> {
        let current = self.current()?;
        let master = self
            .key(&current)
            .ok_or_else(|| CryptoError::UnknownMaster(current.clone()))?;
        Ok((current, AeadKey::new(&master).seal(context, key)?))
    }

    async fn unwrap(
        &self,
        master_id: &str,
        context: &[u8],
        wrapped: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let master = match self.key(master_id) {
            Some(master) => master,
            None if self.reload()? => self
                .key(master_id)
                .ok_or_else(|| CryptoError::UnknownMaster(master_id.to_owned()))?,
            None => return Err(CryptoError::UnknownMaster(master_id.to_owned())),
        };
        AeadKey::new(&master).open(context, wrapped)
    }

    fn ids(&self) -> Result<Vec<String>, CryptoError> {
        let _ = self.reload();
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(keys.iter().map(|(id, _)| id.clone()).collect())
    }
}

/// The master keys `settings` name: the `crypto.master_keys` secret, else the key file of
/// `data_dir` (created the first time).
pub fn provider(settings: &crate::settings::Settings) -> Result<Arc<LocalKeys>, CryptoError> {
    match &settings.crypto.master_keys {
        Some(keys) => Ok(Arc::new(LocalKeys::parse(
            keys.expose_secret(),
            "crypto.master_keys",
        )?)),
        None => Ok(Arc::new(LocalKeys::file(
            &settings.data_dir.join(MASTER_KEY_FILE),
        )?)),
    }
}

/// The keys database of `settings`, connected and migrated: the shared PostgreSQL database
/// when `database_url` is set, else `data_dir/keys.db`.
pub async fn keys_database(settings: &crate::settings::Settings) -> Result<Database, CryptoError> {
    // The services of one `aida up` open the same file at the same moment; SQLite
    // migrations take no lock of their own, so they take turns here.
    static MIGRATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if settings.database_url.is_none() {
        std::fs::create_dir_all(&settings.data_dir)?;
    }
    // Opening a new SQLite file (its journal mode set) and migrating it both race with
    // another opener: in this process they take turns; another process's (`aida keys`
    // beside `aida up`) transaction wins, ours then fails, and the next try finds it done.
    let _turn = MIGRATING.lock().await;
    let mut tries = 0;
    loop {
        let opened =
            match Database::connect_with(&settings.database_url_for("keys"), &settings.database)
                .await
            {
                Ok(db) => db
                    .migrate(&mut migrations())
                    .await
                    .map(|()| db)
                    .map_err(CryptoError::from),
                Err(error) => Err(CryptoError::from(error)),
            };
        match opened {
            Ok(db) => return Ok(db),
            Err(_) if tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100 * tries)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A tenant's data key: wraps its subjects' keys, seals tenant-wide values (suppression
/// entries that outlive an erasure) and keys its blind indexes.
pub struct TenantKey {
    tenant: String,
    aead: AeadKey,
    blind: hmac::Key,
}

impl TenantKey {
    fn new(tenant: &str, bytes: &[u8; KEY_LEN]) -> Self {
        let blind = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"aida blind index v1",
        );
        Self {
            tenant: tenant.to_owned(),
            aead: AeadKey::new(bytes),
            blind: hmac::Key::new(hmac::HMAC_SHA256, blind.as_ref()),
        }
    }

    /// The keyed blind index of `value` for `purpose` (`email`, `phone`, …): equal inputs
    /// give equal indexes within the tenant; nothing about the value can be read from it.
    /// Normalize the value first (the caller knows what "equal" means for it). The empty
    /// value indexes as empty.
    pub fn blind_index(&self, purpose: &str, value: &str) -> String {
        if value.is_empty() {
            return String::new();
        }
        let mut context = hmac::Context::with_key(&self.blind);
        context.update(purpose.as_bytes());
        context.update(&[0]);
        context.update(value.as_bytes());
        let tag = context.sign();
        tag.as_ref()[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// `plaintext` sealed under the tenant key for `column` of `row`.
    pub fn seal(&self, column: &str, row: &str, plaintext: &str) -> Result<String, CryptoError> {
        seal_text(&self.aead, &self.tenant, column, row, plaintext)
    }

    /// A value [`TenantKey::seal`] sealed; plaintext (not sealed) passes through.
    pub fn open(&self, column: &str, row: &str, stored: &str) -> Result<String, CryptoError> {
        open_text(&self.aead, &self.tenant, column, row, stored)
    }
}

/// A data subject's key: seals their personal data.
#[derive(Clone)]
pub struct SubjectKey {
    inner: Arc<(String, AeadKey)>,
}

impl SubjectKey {
    /// `plaintext` sealed for `column` of `row`.
    pub fn seal(&self, column: &str, row: &str, plaintext: &str) -> Result<String, CryptoError> {
        seal_text(&self.inner.1, &self.inner.0, column, row, plaintext)
    }

    /// A value [`SubjectKey::seal`] sealed; plaintext (not sealed) passes through.
    pub fn open(&self, column: &str, row: &str, stored: &str) -> Result<String, CryptoError> {
        open_text(&self.inner.1, &self.inner.0, column, row, stored)
    }
}

fn aad(tenant: &str, column: &str, row: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tenant.len() + column.len() + row.len() + 2);
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(column.as_bytes());
    aad.push(0);
    aad.extend_from_slice(row.as_bytes());
    aad
}

fn seal_text(
    key: &AeadKey,
    tenant: &str,
    column: &str,
    row: &str,
    plaintext: &str,
) -> Result<String, CryptoError> {
    if plaintext.is_empty() {
        return Ok(String::new());
    }
    let sealed = key.seal(&aad(tenant, column, row), plaintext.as_bytes())?;
    let mut text = String::with_capacity(SEALED.len() + sealed.len() * 4 / 3 + 4);
    text.push_str(SEALED);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&sealed, &mut text);
    Ok(text)
}

fn open_text(
    key: &AeadKey,
    tenant: &str,
    column: &str,
    row: &str,
    stored: &str,
) -> Result<String, CryptoError> {
    let Some(body) = stored.strip_prefix(SEALED) else {
        return Ok(stored.to_owned());
    };
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| CryptoError::Open)?;
    let plain = key.open(&aad(tenant, column, row), &sealed)?;
    String::from_utf8(plain).map_err(|_| CryptoError::Open)
}

/// The contact fields of a lead as events carry them, sealed with the same associated data
/// as the leads table's columns (tenant, column, lead id).
fn lead_fields(lead: &mut aida_proto::aida::leads::v1::Lead) -> [(&'static str, &mut String); 4] {
    [
        ("email", &mut lead.email),
        ("first_name", &mut lead.first_name),
        ("last_name", &mut lead.last_name),
        ("phone", &mut lead.phone),
    ]
}

/// The leads an event payload carries.
fn leads_in(
    payload: &mut aida_proto::aida::events::v1::event_envelope::Payload,
) -> Vec<&mut aida_proto::aida::leads::v1::Lead> {
    use aida_proto::aida::events::v1::event_envelope::Payload;
    match payload {
        Payload::LeadCaptured(event) => event.lead.iter_mut().collect(),
        Payload::LeadUpdated(event) => event.lead.iter_mut().collect(),
        Payload::LeadQualified(event) => event.lead.iter_mut().collect(),
        Payload::LeadRejected(event) => event.lead.iter_mut().collect(),
        Payload::LeadConverted(event) => event.lead.iter_mut().collect(),
        Payload::LeadMerged(event) => event
            .survivor
            .iter_mut()
            .chain(event.merged.iter_mut())
            .collect(),
        _ => Vec::new(),
    }
}

/// Seals the contact details of every lead in `payload` under that lead's key (`key_of`
/// its id; a lead without one stays as it is), so that a copy of the event in JetStream, a
/// dead letter or a backup is unreadable once the key is destroyed.
pub fn seal_leads_in<'k>(
    payload: &mut aida_proto::aida::events::v1::event_envelope::Payload,
    key_of: impl Fn(&str) -> Option<&'k SubjectKey>,
) -> Result<(), CryptoError> {
    for lead in leads_in(payload) {
        let Some(key) = key_of(&lead.id) else {
            continue;
        };
        let id = lead.id.clone();
        for (column, value) in lead_fields(lead) {
            if !is_sealed(value) {
                *value = key.seal(column, &id, value)?;
            }
        }
    }
    Ok(())
}

/// Whether `stored` is a sealed value.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED)
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    master_id: String,
    wrapped: Vec<u8>,
}

#[derive(sqlx::FromRow)]
struct SubjectRow {
    wrapped: Option<Vec<u8>>,
}

fn tenant_context(tenant: &str) -> Vec<u8> {
    aad("tenant-key", tenant, "")
}

fn subject_context(tenant: &str, subject: &str) -> Vec<u8> {
    aad("subject-key", tenant, subject)
}

/// The tenant and subject keys of one keys database, unwrapped on first use and kept in
/// memory (tenant keys for the life of the process: rotation re-wraps them without changing
/// them; subject keys for a few minutes, and dropped at once on erasure).
pub struct Keyring {
    db: Database,
    provider: Arc<dyn KeyProvider>,
    tenants: moka::sync::Cache<String, Arc<TenantKey>>,
    subjects: moka::sync::Cache<(String, String), SubjectKey>,
}

impl Keyring {
    /// A keyring over `db` (migrated already) with master keys from `provider`.
    pub fn new(db: Database, provider: Arc<dyn KeyProvider>) -> Self {
        Self {
            db,
            provider,
            tenants: moka::sync::Cache::builder().max_capacity(100_000).build(),
            subjects: moka::sync::Cache::builder()
                .max_capacity(SUBJECT_CACHE_SIZE)
                .time_to_live(SUBJECT_CACHE_TTL)
                .build(),
        }
    }

    /// The keyring `settings` name. A deployed service (`database_url` set) keeps its keys
    /// in `service_db`, the database every service shares; embedded services share the
    /// SQLite file `data_dir/keys.db`.
    pub async fn open(
        settings: &crate::settings::Settings,
        service_db: &Database,
    ) -> Result<Self, CryptoError> {
        let db = if settings.database_url.is_some() {
            // Services sharing one PostgreSQL database: sqlx's migrator locks it (advisory
            // lock), so they take turns by themselves.
            service_db.migrate(&mut migrations()).await?;
            service_db.clone()
        } else {
            keys_database(settings).await?
        };
        Ok(Self::new(db, provider(settings)?))
    }

    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// The tenant's key, made the first time it is asked for.
    pub async fn tenant(&self, tenant: &str) -> Result<Arc<TenantKey>, CryptoError> {
        if let Some(key) = self.tenants.get(tenant) {
            return Ok(key);
        }
        let context = tenant_context(tenant);
        let bytes = match self.tenant_row(tenant).await? {
            Some(row) => to_key(
                &self
                    .provider
                    .unwrap(&row.master_id, &context, &row.wrapped)
                    .await?,
            )?,
            None => {
                let bytes = random::<KEY_LEN>()?;
                let (master_id, wrapped) = self.provider.wrap(&context, &bytes).await?;
                let now = crate::events::now_micros();
                self.db
                    .execute(
                        Sql::new(
                            "INSERT INTO tenant_keys (tenant_id, master_id, wrapped, create_time, wrap_time) \
                             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (tenant_id) DO NOTHING",
                        )
                        .bind(tenant)
                        .bind(master_id)
                        .bind(wrapped)
                        .bind(now),
                    )
                    .await?;
                // Whoever inserted first made the key: read it back.
                let row = self.tenant_row(tenant).await?.ok_or(CryptoError::Open)?;
                to_key(
                    &self
                        .provider
                        .unwrap(&row.master_id, &context, &row.wrapped)
                        .await?,
                )?
            }
        };
        let key = Arc::new(TenantKey::new(tenant, &bytes));
        self.tenants.insert(tenant.to_owned(), key.clone());
        Ok(key)
    }

    async fn tenant_row(&self, tenant: &str) -> Result<Option<TenantRow>, CryptoError> {
        Ok(self
            .db
            .fetch_optional(
                Sql::new("SELECT master_id, wrapped FROM tenant_keys WHERE tenant_id = $1")
                    .bind(tenant),
            )
            .await?)
    }

    /// The key of `subject`, made now when it has none; ERASED when it was destroyed.
    pub async fn subject(&self, tenant: &str, subject: &str) -> Result<SubjectKey, CryptoError> {
        if let Some(key) = self.cached(tenant, subject) {
            return Ok(key);
        }
        let tenant_key = self.tenant(tenant).await?;
        if let Some(key) = self.stored_subject(&tenant_key, subject).await? {
            return Ok(key);
        }
        if let Some(key) = self.insert_subject(&tenant_key, subject).await? {
            return Ok(key);
        }
        self.stored_subject(&tenant_key, subject)
            .await?
            .ok_or_else(|| CryptoError::Erased(subject.to_owned()))
    }

    /// A fresh key for `subject`, stored and cached; `None` when it already had one (or a
    /// tombstone): someone else's insert won.
    async fn insert_subject(
        &self,
        tenant_key: &TenantKey,
        subject: &str,
    ) -> Result<Option<SubjectKey>, CryptoError> {
        let tenant = tenant_key.tenant.as_str();
        let bytes = random::<KEY_LEN>()?;
        let wrapped = tenant_key
            .aead
            .seal(&subject_context(tenant, subject), &bytes)?;
        let inserted = self
            .db
            .execute(
                Sql::new(
                    "INSERT INTO subject_keys (tenant_id, subject_id, wrapped, create_time) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, subject_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(subject)
                .bind(wrapped)
                .bind(crate::events::now_micros()),
            )
            .await?;
        if inserted == 0 {
            return Ok(None);
        }
        let key = SubjectKey {
            inner: Arc::new((tenant.to_owned(), AeadKey::new(&bytes))),
        };
        self.subjects
            .insert((tenant.to_owned(), subject.to_owned()), key.clone());
        Ok(Some(key))
    }

    /// A key for a subject that is new (a lead being captured): one statement, no read
    /// first. A subject that already has a key (or had one) gets [`Keyring::subject`]'s answer.
    pub async fn new_subject(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<SubjectKey, CryptoError> {
        let tenant_key = self.tenant(tenant).await?;
        match self.insert_subject(&tenant_key, subject).await? {
            Some(key) => Ok(key),
            None => self.subject(tenant, subject).await,
        }
    }

    /// The key of `subject` when it has one: `None` when it never had one, ERASED when it
    /// was destroyed. Opening never makes a key.
    pub async fn existing_subject(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<SubjectKey>, CryptoError> {
        if let Some(key) = self.cached(tenant, subject) {
            return Ok(Some(key));
        }
        let tenant_key = self.tenant(tenant).await?;
        self.stored_subject(&tenant_key, subject).await
    }

    fn cached(&self, tenant: &str, subject: &str) -> Option<SubjectKey> {
        self.subjects.get(&(tenant.to_owned(), subject.to_owned()))
    }

    async fn stored_subject(
        &self,
        tenant_key: &TenantKey,
        subject: &str,
    ) -> Result<Option<SubjectKey>, CryptoError> {
        let tenant = tenant_key.tenant.as_str();
        let row: Option<SubjectRow> = self
            .db
            .fetch_optional(
                Sql::new(
                    "SELECT wrapped FROM subject_keys WHERE tenant_id = $1 AND subject_id = $2",
                )
                .bind(tenant)
                .bind(subject),
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let wrapped = row
            .wrapped
            .ok_or_else(|| CryptoError::Erased(subject.to_owned()))?;
        let bytes = to_key(
            &tenant_key
                .aead
                .open(&subject_context(tenant, subject), &wrapped)?,
        )?;
        let key = SubjectKey {
            inner: Arc::new((tenant.to_owned(), AeadKey::new(&bytes))),
        };
        self.subjects
            .insert((tenant.to_owned(), subject.to_owned()), key.clone());
        Ok(Some(key))
    }

    /// Destroys the key of `subject` (crypto-shredding), leaving a tombstone so that it is
    /// never made again. Idempotent.
    pub async fn destroy_subject(&self, tenant: &str, subject: &str) -> Result<(), CryptoError> {
        let now = crate::events::now_micros();
        self.db
            .execute(
                Sql::new(
                    "INSERT INTO subject_keys (tenant_id, subject_id, wrapped, create_time, destroy_time) \
                     VALUES ($1, $2, NULL, $3, $3) ON CONFLICT (tenant_id, subject_id) \
                     DO UPDATE SET wrapped = NULL, destroy_time = COALESCE(subject_keys.destroy_time, excluded.destroy_time)",
                )
                .bind(tenant)
                .bind(subject)
                .bind(now),
            )
            .await?;
        self.forget_subject(tenant, subject);
        Ok(())
    }

    /// Opens the contact details of a lead an event carried (sealed by [`seal_leads_in`]);
    /// ERASED when the lead's key was destroyed. Plaintext passes through.
    pub async fn open_lead(
        &self,
        tenant: &str,
        lead: &mut aida_proto::aida::leads::v1::Lead,
    ) -> Result<(), CryptoError> {
        let id = lead.id.clone();
        if !lead_fields(lead).iter().any(|(_, value)| is_sealed(value)) {
            return Ok(());
        }
        let key = self
            .existing_subject(tenant, &id)
            .await?
            .ok_or_else(|| CryptoError::Erased(id.clone()))?;
        for (column, value) in lead_fields(lead) {
            *value = key.open(column, &id, value)?;
        }
        Ok(())
    }

    /// Drops `subject`'s key from this process's memory (another process destroyed it).
    pub fn forget_subject(&self, tenant: &str, subject: &str) {
        self.subjects
            .invalidate(&(tenant.to_owned(), subject.to_owned()));
    }
}

/// What [`rotate`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// The master key every tenant key is now wrapped by.
    pub current: String,
    /// Tenant keys re-wrapped now.
    pub rewrapped: u64,
    /// Tenant keys already under the current key.
    pub unchanged: u64,
}

/// Re-wraps every tenant key not under the provider's current master key. Each row is
/// replaced by a compare-and-swap on its old wrap, so services making or reading keys at
/// the same time never see a half-written key; run it again until `rewrapped` is 0 to catch
/// tenants made meanwhile under an older key.
pub async fn rotate(db: &Database, provider: &dyn KeyProvider) -> Result<Rotation, CryptoError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        tenant_id: String,
        master_id: String,
        wrapped: Vec<u8>,
    }
    let current = provider.current()?;
    let rows: Vec<Row> = db
        .fetch_all(Sql::new(
            "SELECT tenant_id, master_id, wrapped FROM tenant_keys ORDER BY tenant_id",
        ))
        .await?;
    let mut rotation = Rotation {
        current: current.clone(),
        ..Rotation::default()
    };
    for row in rows {
        if row.master_id == current {
            rotation.unchanged += 1;
            continue;
        }
        let context = tenant_context(&row.tenant_id);
        let key = provider
            .unwrap(&row.master_id, &context, &row.wrapped)
            .await?;
        let (master_id, wrapped) = provider.wrap(&context, &key).await?;
        let changed = db
            .execute(
                Sql::new(
                    "UPDATE tenant_keys SET master_id = $1, wrapped = $2, wrap_time = $3 \
                     WHERE tenant_id = $4 AND master_id = $5 AND wrapped = $6",
                )
                .bind(master_id)
                .bind(wrapped)
                .bind(crate::events::now_micros())
                .bind(row.tenant_id.as_str())
                .bind(row.master_id.as_str())
                .bind(row.wrapped),
            )
            .await?;
        rotation.rewrapped += changed;
    }
    Ok(rotation)
}

/// What the keys database holds (`aida keys status`).
#[derive(Debug, Default)]
pub struct KeyStatus {
    /// Tenant keys by the master key that wraps them.
    pub tenants_by_master: BTreeMap<String, i64>,
    pub live_subjects: i64,
    pub destroyed_subjects: i64,
}

/// Counts of the keys database.
pub async fn status(db: &Database) -> Result<KeyStatus, CryptoError> {
    #[derive(sqlx::FromRow)]
    struct ByMaster {
        master_id: String,
        count: i64,
    }
    #[derive(sqlx::FromRow)]
    struct Subjects {
        live: i64,
        destroyed: i64,
    }
    let by_master: Vec<ByMaster> = db
        .fetch_all(Sql::new(
            "SELECT master_id, COUNT(*) AS count FROM tenant_keys GROUP BY master_id ORDER BY master_id",
        ))
        .await?;
    let subjects: Subjects = db
        .fetch_one(Sql::new(
            "SELECT COALESCE(SUM(CASE WHEN wrapped IS NULL THEN 0 ELSE 1 END), 0) AS live, \
             COALESCE(SUM(CASE WHEN wrapped IS NULL THEN 1 ELSE 0 END), 0) AS destroyed FROM subject_keys",
        ))
        .await?;
    Ok(KeyStatus {
        tenants_by_master: by_master
            .into_iter()
            .map(|row| (row.master_id, row.count))
            .collect(),
        live_subjects: subjects.live,
        destroyed_subjects: subjects.destroyed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> LocalKeys {
        LocalKeys::parse(text, "crypto.master_keys").expect("keys")
    }

    const ONE: &str = "a:0000000000000000000000000000000000000000000000000000000000000001";
    const TWO: &str = "b:0000000000000000000000000000000000000000000000000000000000000002";

    #[test]
    fn a_sealed_value_opens_only_in_its_own_tenant_column_and_row() {
        let key = TenantKey::new("acme", &[7; KEY_LEN]);
        let sealed = key.seal("email", "row-1", "ada@example.com").expect("seal");
        assert!(sealed.starts_with(SEALED), "{sealed}");
        assert!(!sealed.contains("ada"), "{sealed}");
        assert_eq!(
            key.open("email", "row-1", &sealed).expect("open"),
            "ada@example.com"
        );
        assert!(key.open("phone", "row-1", &sealed).is_err(), "moved column");
        assert!(key.open("email", "row-2", &sealed).is_err(), "moved row");
        let other = TenantKey::new("globex", &[7; KEY_LEN]);
        assert!(
            other.open("email", "row-1", &sealed).is_err(),
            "moved tenant"
        );
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("utf8");
        assert!(key.open("email", "row-1", &altered).is_err(), "altered");
        assert_ne!(
            sealed,
            key.seal("email", "row-1", "ada@example.com").expect("seal"),
            "a fresh nonce each time"
        );
        assert_eq!(key.seal("email", "row-1", "").expect("seal"), "");
        assert_eq!(
            key.open("email", "row-1", "plain@example.com")
                .expect("legacy"),
            "plain@example.com"
        );
    }

    #[test]
    fn blind_indexes_match_equal_values_of_one_tenant_and_purpose_only() {
        let acme = TenantKey::new("acme", &[1; KEY_LEN]);
        let globex = TenantKey::new("globex", &[2; KEY_LEN]);
        let index = acme.blind_index("email", "ada@example.com");
        assert_eq!(index.len(), 32);
        assert_eq!(index, acme.blind_index("email", "ada@example.com"));
        assert_ne!(index, acme.blind_index("email", "bob@example.com"));
        assert_ne!(index, acme.blind_index("phone", "ada@example.com"));
        assert_ne!(index, globex.blind_index("email", "ada@example.com"));
        assert_eq!(acme.blind_index("email", ""), "");
    }

    #[tokio::test]
    async fn a_wrapped_key_opens_under_its_master_key_and_context_only() {
        let provider = keys(&format!("{ONE},{TWO}"));
        assert_eq!(provider.current().expect("current"), "b");
        let (id, wrapped) = provider.wrap(b"ctx", &[9; KEY_LEN]).await.expect("wrap");
        assert_eq!(id, "b");
        assert_eq!(
            provider
                .unwrap("b", b"ctx", &wrapped)
                .await
                .expect("unwrap"),
            vec![9; KEY_LEN]
        );
        assert!(provider.unwrap("a", b"ctx", &wrapped).await.is_err());
        assert!(provider.unwrap("b", b"other", &wrapped).await.is_err());
        assert!(matches!(
            provider.unwrap("c", b"ctx", &wrapped).await,
            Err(CryptoError::UnknownMaster(id)) if id == "c"
        ));
    }

    #[test]
    fn bad_master_keys_are_refused_naming_the_setting() {
        for bad in [
            "",
            "nocolon",
            "a:00",
            "a:zz00000000000000000000000000000000000000000000000000000000000000",
            &format!("{ONE},{ONE}"),
            "bad id:0000000000000000000000000000000000000000000000000000000000000001",
        ] {
            let error = LocalKeys::parse(bad, "crypto.master_keys")
                .err()
                .unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert!(
                error.to_string().starts_with("crypto.master_keys: "),
                "{bad:?}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn the_key_file_is_made_once_and_a_rotation_adds_a_current_key_others_see() {
        let dir = tempfile_dir();
        let path = dir.join(MASTER_KEY_FILE);
        let first = LocalKeys::file(&path).expect("made");
        let again = LocalKeys::file(&path).expect("read");
        let old = first.current().expect("current");
        assert_eq!(old, again.current().expect("current"));
        let (id, wrapped) = first.wrap(b"ctx", &[3; KEY_LEN]).await.expect("wrap");
        let new = first.add_to_file().expect("rotate");
        assert_ne!(new, old);
        assert_eq!(first.current().expect("current"), new);
        // `again` has not read the new key yet: it finds it when a wrap under it appears.
        let (new_id, rewrapped) = first.wrap(b"ctx", &[3; KEY_LEN]).await.expect("wrap");
        assert_eq!(new_id, new);
        assert_eq!(
            again
                .unwrap(&new_id, b"ctx", &rewrapped)
                .await
                .expect("reloaded"),
            vec![3; KEY_LEN]
        );
        assert_eq!(
            again
                .unwrap(&id, b"ctx", &wrapped)
                .await
                .expect("old key kept"),
            vec![3; KEY_LEN]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "owner only");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("aida-keys-{}", crate::random_hex(8)));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }
}
