//! The AI writer behind GenerateMessage: drafts with provenance, examples of what worked
//! for similar leads from the vector store, and the link from a person's review of a draft
//! to the writer's earned autonomy.

use std::sync::Arc;

use aida_ai::autonomy::Level;
use aida_ai::embed::{self, Embedder};
use aida_ai::generate::{
    self, ContentGenerator, Example, GenerationRequest, LeadFacts, Offline, OpenRouter,
    OpenRouterConfig, PastMessage, Purpose, Sender, Tone,
};
use aida_ai::vector::{self, Chroma, ChromaConfig, Embedded, Item, Namespace, VectorStore};
use aida_core::Error;
use aida_core::db::{Database, Listing, Sql, Table};
use aida_core::query::{Field, FieldKind, ListQuery};
use aida_core::runtime::StartError;
use aida_core::settings::Settings;
use aida_proto::aida::leads::v1::{Lead as PbLead, LeadSource};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

/// The autonomy key of a draft: agent `outreach`, action `send_<purpose>`, segment the
/// lead's tier when the draft was written ([`segment_of`]).
pub const AGENT: &str = "outreach";
/// The segment of a lead not scored yet.
pub const UNSCORED: &str = "unscored";
/// Examples of replied messages given to the writer at most.
const EXAMPLES: usize = 3;
/// Past messages to the lead given to the writer at most.
const HISTORY: u32 = 5;

/// Where a draft is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftState {
    Pending,
    Sent,
    Discarded,
    /// The outreach agent sends it at `send_after` unless vetoed.
    Scheduled,
    /// The outreach agent is sending it (shown as scheduled).
    Sending,
    Vetoed,
}

impl DraftState {
    pub fn as_str(self) -> &'static str {
        match self {
            DraftState::Pending => "PENDING",
            DraftState::Sent => "SENT",
            DraftState::Discarded => "DISCARDED",
            DraftState::Scheduled => "SCHEDULED",
            DraftState::Sending => "SENDING",
            DraftState::Vetoed => "VETOED",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "PENDING" => Some(DraftState::Pending),
            "SENT" => Some(DraftState::Sent),
            "DISCARDED" => Some(DraftState::Discarded),
            "SCHEDULED" => Some(DraftState::Scheduled),
            "SENDING" => Some(DraftState::Sending),
            "VETOED" => Some(DraftState::Vetoed),
            _ => None,
        }
    }
}

/// A past message shown to the writer as an example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsedExample {
    pub message_id: String,
    pub similarity: f32,
}

/// How a draft was written, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredProvenance {
    pub writer: generate::Provenance,
    pub embedding_model: String,
    pub examples: Vec<UsedExample>,
}

/// A draft as stored.
#[derive(Debug, Clone)]
pub struct Draft {
    pub id: Uuid,
    pub tenant_id: String,
    pub lead_id: Uuid,
    pub purpose: Purpose,
    pub tone: Tone,
    pub subject: String,
    pub body: String,
    pub provenance: StoredProvenance,
    pub state: DraftState,
    /// The writer's autonomy level (0–4) for the key when the draft was written.
    pub autonomy_level: u8,
    pub message_id: Option<Uuid>,
    pub edited: bool,
    pub approver: String,
    pub request_id: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// The autonomy segment: the lead's tier when written.
    pub segment: String,
    /// Who asked for it: a person's subject or [`crate::agent::SUBJECT`].
    pub requester: String,
    /// When the outreach agent sends a scheduled draft.
    pub send_after: Option<DateTime<Utc>>,
}

impl Draft {
    /// The autonomy action of this draft's purpose.
    pub fn action(&self) -> String {
        action(self.purpose)
    }
}

pub fn action(purpose: Purpose) -> String {
    format!("send_{}", purpose.as_str())
}

/// The autonomy segment of a lead: its tier (`tier_a` … `tier_d`), or `unscored`.
pub fn segment_of(lead: &PbLead) -> String {
    use aida_proto::aida::leads::v1::Tier;
    let tier = lead
        .score
        .as_ref()
        .and_then(|score| Tier::try_from(score.tier).ok())
        .unwrap_or(Tier::Unspecified);
    match tier {
        Tier::Unspecified => UNSCORED.to_owned(),
        tier => tier.as_str_name().to_lowercase(),
    }
}

/// How drafts can be filtered in ListDrafts.
pub const DRAFT_FIELDS: &[Field] = &[
    Field::new("lead_id", FieldKind::Uuid, false),
    Field::new("state", FieldKind::Enum(state_filter), false),
    Field::new("purpose", FieldKind::Enum(purpose_filter), false),
    Field::new("segment", FieldKind::Text, false),
    Field::new("requester", FieldKind::Text, false),
    Field::new("create_time", FieldKind::Timestamp, true),
];

fn state_filter(value: &str) -> Option<&'static str> {
    let value = value.trim_start_matches("DRAFT_STATE_");
    DraftState::parse(value)
        .filter(|state| *state != DraftState::Sending)
        .map(DraftState::as_str)
}

fn purpose_filter(value: &str) -> Option<&'static str> {
    let value = value.trim_start_matches("PURPOSE_").to_lowercase();
    parse_purpose(&value).map(Purpose::as_str)
}

fn parse_purpose(value: &str) -> Option<Purpose> {
    [
        Purpose::FirstTouch,
        Purpose::FollowUp,
        Purpose::ReEngage,
        Purpose::MeetingRequest,
    ]
    .into_iter()
    .find(|purpose| purpose.as_str() == value)
}

fn parse_tone(value: &str) -> Option<Tone> {
    [Tone::Friendly, Tone::Formal, Tone::Brief]
        .into_iter()
        .find(|tone| tone.as_str() == value)
}

const DRAFT_COLUMNS: &str = "tenant_id, id, lead_id, purpose, tone, subject, body, provenance, state, autonomy_level, \
     message_id, edited, approver, request_id, create_time, update_time, segment, requester, send_after";
const DRAFTS: Table = Table {
    name: "drafts",
    columns: DRAFT_COLUMNS,
    resource: "draft",
};

#[derive(sqlx::FromRow)]
struct DraftRow {
    tenant_id: String,
    id: Uuid,
    lead_id: Uuid,
    purpose: String,
    tone: String,
    subject: String,
    body: String,
    provenance: Json<StoredProvenance>,
    state: String,
    autonomy_level: i64,
    message_id: Option<Uuid>,
    edited: bool,
    approver: String,
    request_id: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    segment: String,
    requester: String,
    send_after: Option<DateTime<Utc>>,
}

impl TryFrom<DraftRow> for Draft {
    type Error = Error;
    fn try_from(row: DraftRow) -> Result<Self, Error> {
        let stored = |what: &str, value: &str| Error::internal(format!("stored {what} {value}"));
        Ok(Draft {
            id: row.id,
            tenant_id: row.tenant_id,
            lead_id: row.lead_id,
            purpose: parse_purpose(&row.purpose).ok_or_else(|| stored("purpose", &row.purpose))?,
            tone: parse_tone(&row.tone).ok_or_else(|| stored("tone", &row.tone))?,
            subject: row.subject,
            body: row.body,
            provenance: row.provenance.0,
            state: DraftState::parse(&row.state).ok_or_else(|| stored("state", &row.state))?,
            autonomy_level: u8::try_from(row.autonomy_level)
                .map_err(|_| stored("autonomy level", &row.autonomy_level.to_string()))?,
            message_id: row.message_id,
            edited: row.edited,
            approver: row.approver,
            request_id: row.request_id,
            create_time: row.create_time,
            update_time: row.update_time,
            segment: row.segment,
            requester: row.requester,
            send_after: row.send_after,
        })
    }
}

/// Drafts in the comms database.
#[derive(Clone)]
pub struct DraftStore {
    db: Database,
    /// Seals the drafts' text, and opens it and the sent messages the writer reads back.
    sealer: crate::store::MessageSealer,
}

impl DraftStore {
    pub fn new(db: Database, sealer: crate::store::MessageSealer) -> Self {
        Self { db, sealer }
    }

    /// A stored draft in domain form, its text opened; `None` when its lead was erased.
    async fn open(&self, mut row: DraftRow) -> Result<Option<Draft>, Error> {
        let fields = vec![
            ("draft_subject", &mut row.subject),
            ("draft_body", &mut row.body),
        ];
        if !self
            .sealer
            .open(&row.tenant_id, row.lead_id, row.id, fields)
            .await?
        {
            return Ok(None);
        }
        Draft::try_from(row).map(Some)
    }

    async fn open_all(&self, rows: Vec<DraftRow>) -> Result<Vec<Draft>, Error> {
        let mut drafts = Vec::with_capacity(rows.len());
        for row in rows {
            drafts.extend(self.open(row).await?);
        }
        Ok(drafts)
    }

    /// Stores a new draft; a concurrent one with the same request id wins and is returned.
    pub async fn insert(&self, draft: &Draft) -> Result<Draft, Error> {
        let [subject, body] = self
            .sealer
            .seal(
                &draft.tenant_id,
                draft.lead_id,
                draft.id,
                [
                    ("draft_subject", &draft.subject),
                    ("draft_body", &draft.body),
                ],
            )
            .await?;
        let inserted = self
            .db
            .execute(
                Sql::new(format!(
                    "INSERT INTO drafts ({DRAFT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
                ))
                .bind(draft.tenant_id.as_str())
                .bind(draft.id)
                .bind(draft.lead_id)
                .bind(draft.purpose.as_str())
                .bind(draft.tone.as_str())
                .bind(subject)
                .bind(body)
                .bind(serde_json::to_value(&draft.provenance).map_err(Error::internal)?)
                .bind(draft.state.as_str())
                .bind(i64::from(draft.autonomy_level))
                .bind(draft.message_id)
                .bind(draft.edited)
                .bind(draft.approver.as_str())
                .bind(draft.request_id.as_str())
                .bind(draft.create_time)
                .bind(draft.update_time)
                .bind(draft.segment.as_str())
                .bind(draft.requester.as_str())
                .bind(draft.send_after),
            )
            .await;
        match inserted {
            Ok(_) => Ok(draft.clone()),
            Err(error)
                if aida_core::db::is_unique_violation(&error) && !draft.request_id.is_empty() =>
            {
                self.by_request(&draft.tenant_id, &draft.request_id)
                    .await?
                    .ok_or_else(|| Error::internal("the concurrent draft vanished"))
            }
            Err(error) => Err(error.into()),
        }
    }

    pub async fn get(&self, tenant: &str, id: Uuid) -> Result<Draft, Error> {
        let row: Option<DraftRow> = self
            .db
            .fetch_optional(
                Sql::new(format!(
                    "SELECT {DRAFT_COLUMNS} FROM drafts WHERE tenant_id = $1 AND id = $2"
                ))
                .bind(tenant)
                .bind(id),
            )
            .await?;
        let not_found = || Error::not_found(DRAFTS.resource, id.to_string());
        self.open(row.ok_or_else(not_found)?)
            .await?
            .ok_or_else(not_found)
    }

    pub async fn by_request(&self, tenant: &str, request_id: &str) -> Result<Option<Draft>, Error> {
        let row: Option<DraftRow> = self
            .db
            .fetch_optional(
                Sql::new(format!(
                    "SELECT {DRAFT_COLUMNS} FROM drafts WHERE tenant_id = $1 AND request_id = $2"
                ))
                .bind(tenant)
                .bind(request_id),
            )
            .await?;
        match row {
            Some(row) => self.open(row).await,
            None => Ok(None),
        }
    }

    /// The draft a message was sent from, if any.
    pub async fn by_message(&self, tenant: &str, message: Uuid) -> Result<Option<Draft>, Error> {
        let row: Option<DraftRow> = self
            .db
            .fetch_optional(
                Sql::new(format!(
                    "SELECT {DRAFT_COLUMNS} FROM drafts WHERE tenant_id = $1 AND message_id = $2"
                ))
                .bind(tenant)
                .bind(message),
            )
            .await?;
        match row {
            Some(row) => self.open(row).await,
            None => Ok(None),
        }
    }

    /// Moves the draft from `from` to `state`, for good; false when it had moved on.
    #[allow(clippy::too_many_arguments)]
    pub async fn close(
        &self,
        draft: &Draft,
        from: DraftState,
        state: DraftState,
        message_id: Option<Uuid>,
        edited: bool,
        approver: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let updated = self
            .db
            .execute(
                Sql::new("UPDATE drafts SET state = $3, message_id = $4, edited = $5, approver = $6, update_time = $7, send_after = NULL WHERE tenant_id = $1 AND id = $2 AND state = $8")
                    .bind(draft.tenant_id.as_str())
                    .bind(draft.id)
                    .bind(state.as_str())
                    .bind(message_id)
                    .bind(edited)
                    .bind(approver)
                    .bind(now)
                    .bind(from.as_str()),
            )
            .await?;
        Ok(updated == 1)
    }

    /// Moves the draft from `from` to `to` (still open), sending at `send_after` if any;
    /// false when it had moved on.
    pub async fn shift(
        &self,
        draft: &Draft,
        from: DraftState,
        to: DraftState,
        send_after: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let updated = self
            .db
            .execute(
                Sql::new("UPDATE drafts SET state = $3, send_after = $4, update_time = $5 WHERE tenant_id = $1 AND id = $2 AND state = $6")
                    .bind(draft.tenant_id.as_str())
                    .bind(draft.id)
                    .bind(to.as_str())
                    .bind(send_after)
                    .bind(now)
                    .bind(from.as_str()),
            )
            .await?;
        Ok(updated == 1)
    }

    /// Scheduled drafts of every tenant due at `now`, and drafts left sending by a process
    /// that stopped (claimed before `stale`), oldest first.
    pub async fn due(
        &self,
        now: DateTime<Utc>,
        stale: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Draft>, Error> {
        let rows: Vec<DraftRow> = self
            .db
            .fetch_all(
                Sql::new(format!(
                    "SELECT {DRAFT_COLUMNS} FROM drafts WHERE (state = $1 AND send_after <= $2) OR (state = $3 AND update_time <= $4) ORDER BY send_after LIMIT $5"
                ))
                .bind(DraftState::Scheduled.as_str())
                .bind(now)
                .bind(DraftState::Sending.as_str())
                .bind(stale)
                .bind(i64::from(limit)),
            )
            .await?;
        self.open_all(rows).await
    }

    /// Drafts of `action` the agent `requester` sent on its own since `since`, every segment.
    pub async fn sent_by_since(
        &self,
        tenant: &str,
        requester: &str,
        purpose: Purpose,
        since: DateTime<Utc>,
    ) -> Result<u32, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            sent: i64,
        }
        let row: Row = self
            .db
            .fetch_one(
                Sql::new("SELECT COUNT(*) AS sent FROM drafts WHERE tenant_id = $1 AND requester = $2 AND purpose = $3 AND state = $4 AND approver = $5 AND update_time >= $6")
                    .bind(tenant)
                    .bind(requester)
                    .bind(purpose.as_str())
                    .bind(DraftState::Sent.as_str())
                    .bind(requester)
                    .bind(since),
            )
            .await?;
        Ok(u32::try_from(row.sent).unwrap_or(u32::MAX))
    }

    /// Whether `lead` has a draft for `purpose` from `requester` in any state.
    pub async fn exists_for(
        &self,
        tenant: &str,
        lead: Uuid,
        purpose: Purpose,
        requester: &str,
    ) -> Result<bool, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            drafts: i64,
        }
        let row: Row = self
            .db
            .fetch_one(
                Sql::new("SELECT COUNT(*) AS drafts FROM drafts WHERE tenant_id = $1 AND lead_id = $2 AND purpose = $3 AND requester = $4")
                    .bind(tenant)
                    .bind(lead)
                    .bind(purpose.as_str())
                    .bind(requester),
            )
            .await?;
        Ok(row.drafts > 0)
    }

    /// The page of drafts `query` asks for (ListDrafts).
    pub async fn list(
        &self,
        tenant: &str,
        query: &ListQuery<'_, '_>,
    ) -> Result<(Vec<Draft>, bool), Error> {
        let (table, fields, owner) = (&DRAFTS, DRAFT_FIELDS, None);
        let listing = Listing {
            table,
            fields,
            tenant,
            owner,
            query,
            blind: None,
        };
        let sql = listing.select(self.db.engine(), DRAFT_COLUMNS)?;
        let (rows, more) = self
            .db
            .fetch_page::<DraftRow>(sql, &query.order, query.paging.size, query.after.as_ref())
            .await?;
        Ok((self.open_all(rows).await?, more))
    }

    /// The lead's latest e-mails, oldest first: what the writer should not repeat.
    pub async fn history(&self, tenant: &str, lead: Uuid) -> Result<Vec<PastMessage>, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: Uuid,
            to_address: String,
            subject: String,
            body: String,
            replied: bool,
        }
        let mut rows: Vec<Row> = self
            .db
            .fetch_all(
                Sql::new("SELECT id, to_address, subject, body, replied FROM messages WHERE tenant_id = $1 AND lead_id = $2 AND channel = $3 AND status = $4 ORDER BY create_time DESC LIMIT $5")
                    .bind(tenant)
                    .bind(lead)
                    .bind(crate::domain::Channel::Email.as_str())
                    .bind(crate::domain::MessageStatus::Sent.as_str())
                    .bind(i64::from(HISTORY)),
            )
            .await?;
        rows.reverse();
        let mut past = Vec::with_capacity(rows.len());
        for mut row in rows {
            let fields = vec![
                ("to_address", &mut row.to_address),
                ("subject", &mut row.subject),
                ("body", &mut row.body),
            ];
            if self.sealer.open(tenant, lead, row.id, fields).await? {
                past.push(PastMessage {
                    subject: row.subject,
                    body: row.body,
                    replied: row.replied,
                });
            }
        }
        Ok(past)
    }

    /// Subjects and bodies of messages by id.
    async fn messages(
        &self,
        tenant: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, String, String)>, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: Uuid,
            lead_id: Uuid,
            to_address: String,
            subject: String,
            body: String,
        }
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            let row: Option<Row> = self
                .db
                .fetch_optional(
                    Sql::new(
                        "SELECT id, lead_id, to_address, subject, body FROM messages WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(tenant)
                    .bind(*id),
                )
                .await?;
            if let Some(mut row) = row {
                let fields = vec![
                    ("to_address", &mut row.to_address),
                    ("subject", &mut row.subject),
                    ("body", &mut row.body),
                ];
                if self
                    .sealer
                    .open(tenant, row.lead_id, row.id, fields)
                    .await?
                {
                    found.push((row.id, row.subject, row.body));
                }
            }
        }
        Ok(found)
    }
}

/// What the writer knows of a lead, as one text: what similarity is judged on.
pub fn lead_profile(lead: &PbLead) -> String {
    let mut parts = Vec::new();
    if !lead.title.trim().is_empty() {
        parts.push(lead.title.trim().to_owned());
    }
    if !lead.company.trim().is_empty() {
        parts.push(format!("at {}", lead.company.trim()));
    }
    for key in ["industry", "notes", "interest"] {
        if let Some(value) = lead.attributes.get(key)
            && !value.trim().is_empty()
        {
            parts.push(value.trim().to_owned());
        }
    }
    let source = source_name(lead.source);
    if !source.is_empty() {
        parts.push(format!("source {source}"));
    }
    parts.join(". ")
}

fn source_name(source: i32) -> String {
    LeadSource::try_from(source)
        .ok()
        .filter(|source| *source != LeadSource::Unspecified)
        .map(|source| {
            source
                .as_str_name()
                .trim_start_matches("LEAD_SOURCE_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

/// The facts of a lead the writer may use.
pub fn lead_facts(lead: &PbLead) -> LeadFacts {
    let attribute = |key: &str| lead.attributes.get(key).cloned().unwrap_or_default();
    LeadFacts {
        first_name: lead.first_name.clone(),
        last_name: lead.last_name.clone(),
        title: lead.title.clone(),
        company: lead.company.clone(),
        industry: attribute("industry"),
        source: source_name(lead.source),
        notes: attribute("notes"),
    }
}

/// What a new draft is for, and where it starts.
pub struct Request {
    pub purpose: Purpose,
    pub tone: Tone,
    /// The autonomy segment ([`segment_of`] the lead).
    pub segment: String,
    /// The writer's effective level for the key when asked.
    pub level: Level,
    pub requester: String,
    /// Idempotency key: a draft with the same one is returned instead.
    pub request_id: String,
    pub state: DraftState,
    /// For a scheduled draft: how long after it is written the agent sends it.
    pub send_delay: Option<chrono::Duration>,
}

/// The writer and what it reads.
pub struct Writer {
    pub generator: Arc<dyn ContentGenerator>,
    pub embedder: Arc<dyn Embedder>,
    pub vectors: Arc<dyn VectorStore>,
    pub sender: Sender,
    pub drafts: DraftStore,
}

impl Writer {
    /// The writer the settings ask for: OpenRouter with a key, the offline writer without;
    /// the embedding model when fetched, the lexical fallback otherwise; Chroma when
    /// configured, the embedded index otherwise.
    pub fn from_settings(
        settings: &Settings,
        db: Database,
        sealer: crate::store::MessageSealer,
    ) -> Result<Self, StartError> {
        let ai = &settings.ai;
        let generator: Arc<dyn ContentGenerator> = match &ai.openrouter_api_key {
            Some(key) => {
                let mut config = OpenRouterConfig::new(key.clone());
                config.base_url = ai.openrouter_base_url.clone();
                config.model = ai.model.clone();
                config.timeout = std::time::Duration::from_secs(ai.timeout_secs.max(1));
                config.app_title = Some("AIDA-CRM".into());
                Arc::new(
                    OpenRouter::new(config)
                        .map_err(|error| StartError::Server(format!("ai: {error}")))?,
                )
            }
            None => Arc::new(Offline),
        };
        let generator: Arc<dyn ContentGenerator> =
            Arc::new(aida_ai::measured::MeasuredGenerator(generator));
        let model_dir = ai.model_dir(&settings.data_dir);
        let embedder: Arc<dyn Embedder> = Arc::from(embed::load(&model_dir));
        let vectors: Arc<dyn VectorStore> = match &ai.chroma_url {
            Some(url) => Arc::new(
                Chroma::new(ChromaConfig::new(url.clone()))
                    .map_err(|error| StartError::Server(format!("ai.chroma_url: {error}")))?,
            ),
            None => {
                // Lead search keeps its index in `leads/`.
                let dir = ai.vector_dir(&settings.data_dir).join("comms");
                Arc::new(
                    Embedded::open(&dir)
                        .map_err(|error| StartError::Server(format!("ai.vector_dir: {error}")))?,
                )
            }
        };
        Ok(Self {
            generator,
            embedder,
            vectors,
            sender: Sender {
                name: ai.sender_name.clone(),
                company: ai.sender_company.clone(),
                signature: String::new(),
            },
            drafts: DraftStore::new(db, sealer),
        })
    }

    /// The collection of replied messages for this embedding model: vectors of different
    /// models never mix.
    fn replied(&self, tenant: &str) -> Namespace {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(self.embedder.model_version().as_bytes());
        let tag: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Namespace::new(tenant, format!("replied-messages-{tag}"))
    }

    async fn embed(&self, text: String) -> Result<Vec<f32>, Error> {
        let embedder = self.embedder.clone();
        let mut vectors = tokio::task::spawn_blocking(move || embedder.embed(&[text.as_str()]))
            .await
            .map_err(Error::internal)?
            .map_err(Error::internal)?;
        vectors
            .pop()
            .ok_or_else(|| Error::internal("the embedder returned no vector"))
    }

    /// Remembers a message that got a reply as an example for leads like its own.
    pub async fn remember_replied(
        &self,
        tenant: &str,
        message: Uuid,
        lead: &PbLead,
    ) -> Result<(), Error> {
        let vector = self.embed(lead_profile(lead)).await?;
        self.vectors
            .upsert(
                &self.replied(tenant),
                vec![Item::new(message.to_string(), vector).meta("lead_id", lead.id.clone())],
            )
            .await
            .map_err(vector_error)
    }

    /// Writes a draft for `lead` and stores it with its provenance (see [`Writer::write`]).
    pub async fn draft(
        &self,
        tenant: &str,
        lead: &PbLead,
        request: Request,
    ) -> Result<Draft, Error> {
        let lead_id = Uuid::parse_str(&lead.id).map_err(Error::internal)?;
        let (written, provenance) = self
            .write(tenant, lead, request.purpose, request.tone)
            .await?;
        let now = aida_core::events::now_micros();
        let draft = Draft {
            id: Uuid::now_v7(),
            tenant_id: tenant.to_owned(),
            lead_id,
            purpose: request.purpose,
            tone: request.tone,
            subject: written.subject,
            body: written.body,
            provenance,
            state: request.state,
            autonomy_level: request.level.number(),
            message_id: None,
            edited: false,
            approver: String::new(),
            request_id: request.request_id,
            create_time: now,
            update_time: now,
            segment: request.segment,
            requester: request.requester,
            send_after: request.send_delay.map(|delay| now + delay),
        };
        self.drafts.insert(&draft).await
    }

    /// Writes a draft for `lead`: its history, and the replied messages of the most
    /// similar other leads as examples.
    pub async fn write(
        &self,
        tenant: &str,
        lead: &PbLead,
        purpose: Purpose,
        tone: Tone,
    ) -> Result<(generate::Draft, StoredProvenance), Error> {
        let lead_id = Uuid::parse_str(&lead.id).map_err(Error::internal)?;
        let history = self.drafts.history(tenant, lead_id).await?;
        let vector = self.embed(lead_profile(lead)).await?;
        let hits = self
            .vectors
            .query(
                &self.replied(tenant),
                &vector,
                EXAMPLES + 2,
                &vector::Filter::all(),
            )
            .await
            .map_err(vector_error)?;
        let hits: Vec<(Uuid, f32)> = hits
            .into_iter()
            .filter(|hit| {
                hit.metadata
                    .get("lead_id")
                    .is_none_or(|id| !id.matches(&lead.id.clone().into()))
            })
            .filter_map(|hit| Uuid::parse_str(&hit.id).ok().map(|id| (id, hit.similarity)))
            .take(EXAMPLES)
            .collect();
        let ids: Vec<Uuid> = hits.iter().map(|(id, _)| *id).collect();
        let messages = self.drafts.messages(tenant, &ids).await?;
        let mut examples = Vec::new();
        let mut used = Vec::new();
        for (id, similarity) in &hits {
            if let Some((_, subject, body)) = messages.iter().find(|(found, _, _)| found == id) {
                examples.push(Example {
                    subject: subject.clone(),
                    body: body.clone(),
                    similarity: *similarity,
                });
                used.push(UsedExample {
                    message_id: id.to_string(),
                    similarity: *similarity,
                });
            }
        }
        let request = GenerationRequest {
            purpose,
            tone,
            lead: lead_facts(lead),
            sender: self.sender.clone(),
            history,
            examples,
        };
        let draft = self
            .generator
            .generate(&request)
            .await
            .map_err(generate_error)?;
        let provenance = StoredProvenance {
            writer: draft.provenance.clone(),
            embedding_model: self.embedder.model_version().to_owned(),
            examples: used,
        };
        Ok((draft, provenance))
    }
}

fn vector_error(error: vector::VectorError) -> Error {
    Error::Unavailable(format!("vector store: {error}"))
}

/// The writer's failures as the caller sees them.
fn generate_error(error: generate::GenerateError) -> Error {
    use generate::GenerateError as E;
    match error {
        E::Invalid { field, message } => Error::FailedPrecondition {
            reason: "LEAD_NOT_WRITABLE",
            message: format!("{field}: {message}"),
        },
        E::RateLimited { .. } => Error::ResourceExhausted(format!("the writer's model: {error}")),
        E::Upstream { .. } | E::Timeout | E::Malformed(_) | E::Transport(_) => {
            Error::Unavailable(format!("the writer's model: {error}"))
        }
    }
}
