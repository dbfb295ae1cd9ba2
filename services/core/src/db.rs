//! Storage: one SQL dialect subset written once, run on PostgreSQL (production) or SQLite
//! (the embedded default).
//!
//! Repositories build [`Sql`] values (text with `$1`-style placeholders and typed [`Arg`]s)
//! and run them through [`Database`] or a [`Tx`]; rows decode into `#[derive(sqlx::FromRow)]`
//! structs that work on both engines. Where the engines differ (row locking, JSON access),
//! the caller asks [`Database::engine`] and writes both forms.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{FromRow, PgPool, Postgres, Sqlite, SqlitePool};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// Which engine a [`Database`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

impl Engine {
    /// What a `SELECT` in a write transaction appends to lock the rows it reads:
    /// ` FOR UPDATE` on PostgreSQL; nothing on SQLite, whose write transactions are
    /// IMMEDIATE, so the database's write lock is already held.
    pub fn lock_clause(self) -> &'static str {
        match self {
            Engine::Postgres => " FOR UPDATE",
            Engine::Sqlite => "",
        }
    }
}

/// A connection pool on one of the two engines.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A bound argument. Both engines accept each variant; SQLite stores UUIDs as 16-byte blobs,
/// timestamps as RFC 3339 text (which sorts correctly) and JSON as text.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Uuid(Uuid),
    OptUuid(Option<Uuid>),
    Time(DateTime<Utc>),
    OptTime(Option<DateTime<Utc>>),
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}
impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}
impl From<&String> for Arg {
    fn from(value: &String) -> Self {
        Self::Text(value.clone())
    }
}
impl From<Option<String>> for Arg {
    fn from(value: Option<String>) -> Self {
        Self::OptText(value)
    }
}
impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}
impl From<f64> for Arg {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}
impl From<bool> for Arg {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}
impl From<Uuid> for Arg {
    fn from(value: Uuid) -> Self {
        Self::Uuid(value)
    }
}
impl From<Option<Uuid>> for Arg {
    fn from(value: Option<Uuid>) -> Self {
        Self::OptUuid(value)
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(value: DateTime<Utc>) -> Self {
        Self::Time(value)
    }
}
impl From<Option<DateTime<Utc>>> for Arg {
    fn from(value: Option<DateTime<Utc>>) -> Self {
        Self::OptTime(value)
    }
}
impl From<serde_json::Value> for Arg {
    fn from(value: serde_json::Value) -> Self {
        Self::Json(value)
    }
}
impl From<Vec<u8>> for Arg {
    fn from(value: Vec<u8>) -> Self {
        Self::Bytes(value)
    }
}

/// SQL text with `$n` placeholders and the arguments they stand for.
#[derive(Debug, Clone, Default)]
pub struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            args: Vec::new(),
        }
    }

    /// Adds the argument for the next placeholder already written in the text.
    pub fn bind(mut self, arg: impl Into<Arg>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `arg` and returns nothing: for dynamic queries.
    pub fn push_arg(&mut self, arg: impl Into<Arg>) -> &mut Self {
        self.args.push(arg.into());
        let placeholder = format!("${}", self.args.len());
        self.text.push_str(&placeholder);
        self
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn args(&self) -> &[Arg] {
        &self.args
    }
}

/// A row type that decodes on both engines.
pub trait Row: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}
impl<T> Row for T where T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{}

/// Binds every argument of `sql` onto a sqlx query of either engine.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(value) => query.bind(value),
                Arg::OptText(value) => query.bind(value),
                Arg::Int(value) => query.bind(value),
                Arg::Float(value) => query.bind(value),
                Arg::Bool(value) => query.bind(value),
                Arg::Uuid(value) => query.bind(value),
                Arg::OptUuid(value) => query.bind(value),
                Arg::Time(value) => query.bind(value),
                Arg::OptTime(value) => query.bind(value),
                Arg::Json(value) => query.bind(sqlx::types::Json(value)),
                Arg::Bytes(value) => query.bind(value),
            };
        }
        query
    }};
}

/// Runs `$body` with `$conn` bound to the engine-specific executor.
macro_rules! on_engine {
    ($target:expr, $conn:ident => $body:expr) => {
        match $target {
            Target::Postgres($conn) => $body,
            Target::Sqlite($conn) => $body,
        }
    };
}

enum Target<'a> {
    Postgres(&'a mut sqlx::PgConnection),
    Sqlite(&'a mut sqlx::SqliteConnection),
}

async fn execute_on(target: Target<'_>, sql: Sql) -> Result<u64, sqlx::Error> {
    let Sql { text, args } = sql;
    on_engine!(target, conn => {
        let query = bind_all!(sqlx::query(&text), args);
        Ok(query.execute(&mut *conn).await?.rows_affected())
    })
}

async fn fetch_all_on<T: Row>(target: Target<'_>, sql: Sql) -> Result<Vec<T>, sqlx::Error> {
    let Sql { text, args } = sql;
    match target {
        Target::Postgres(conn) => {
            let query = bind_all!(sqlx::query_as::<Postgres, T>(&text), args);
            query.fetch_all(&mut *conn).await
        }
        Target::Sqlite(conn) => {
            let query = bind_all!(sqlx::query_as::<Sqlite, T>(&text), args);
            query.fetch_all(&mut *conn).await
        }
    }
}

async fn fetch_optional_on<T: Row>(target: Target<'_>, sql: Sql) -> Result<Option<T>, sqlx::Error> {
    let Sql { text, args } = sql;
    match target {
        Target::Postgres(conn) => {
            let query = bind_all!(sqlx::query_as::<Postgres, T>(&text), args);
            query.fetch_optional(&mut *conn).await
        }
        Target::Sqlite(conn) => {
            let query = bind_all!(sqlx::query_as::<Sqlite, T>(&text), args);
            query.fetch_optional(&mut *conn).await
        }
    }
}

/// The migrations of one crate, one directory per engine.
pub struct Migrations {
    pub postgres: Migrator,
    pub sqlite: Migrator,
}

impl Database {
    /// Connects to `url` (`postgres://…` or `sqlite:…`) with the default pool.
    pub async fn connect(url: &SecretString) -> Result<Self, sqlx::Error> {
        Self::connect_with(url, &crate::settings::DatabaseSettings::default()).await
    }

    /// Connects to `url` with the pool size, acquire timeout and statement timeout of
    /// `pool` (PostgreSQL; SQLite keeps its own small pool). TLS comes from the URL
    /// (`sslmode=verify-full&sslrootcert=…`).
    pub async fn connect_with(
        url: &SecretString,
        pool: &crate::settings::DatabaseSettings,
    ) -> Result<Self, sqlx::Error> {
        let url = url.expose_secret();
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                // WAL lets readers run beside the single writer; NORMAL sync is durable
                // across application crashes, which is what the embedded mode promises.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await?;
            Ok(Self::Sqlite(pool))
        } else {
            let mut options = PgConnectOptions::from_str(url)?;
            if pool.statement_timeout_ms > 0 {
                options =
                    options.options([("statement_timeout", pool.statement_timeout_ms.to_string())]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(pool.max_connections.max(1))
                .acquire_timeout(Duration::from_millis(pool.acquire_timeout_ms.max(1)))
                // A ping on every acquire doubled the round trips of a read. Connections
                // in steady use are live; one idle for a second or more (say, across a
                // PostgreSQL restart) is pinged first and replaced when dead.
                .test_before_acquire(false)
                .before_acquire(|connection, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= Duration::from_secs(1) {
                            sqlx::Connection::ping(connection).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(options)
                .await?;
            Ok(Self::Postgres(pool))
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Self::Postgres(_) => Engine::Postgres,
            Self::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// Applies `migrations` for this engine. Several crates share one database (each
    /// service's tables beside core's outbox), so each migrator ignores the others' entries.
    pub async fn migrate(
        &self,
        migrations: &mut Migrations,
    ) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Self::Postgres(pool) => {
                migrations.postgres.set_ignore_missing(true);
                migrations.postgres.run(pool).await
            }
            Self::Sqlite(pool) => {
                migrations.sqlite.set_ignore_missing(true);
                migrations.sqlite.run(pool).await
            }
        }
    }

    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Self::Postgres(pool) => Tx::new(TxInner::Postgres(pool.begin().await?)),
            // IMMEDIATE takes the write lock up front: a deferred transaction that reads and
            // then writes fails with SQLITE_BUSY when another writer got in between, which
            // the busy timeout cannot resolve.
            Self::Sqlite(pool) => {
                Tx::new(TxInner::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?))
            }
        })
    }

    pub async fn execute(&self, sql: Sql) -> Result<u64, sqlx::Error> {
        match self {
            Self::Postgres(pool) => {
                execute_on(Target::Postgres(&mut *pool.acquire().await?), sql).await
            }
            Self::Sqlite(pool) => {
                execute_on(Target::Sqlite(&mut *pool.acquire().await?), sql).await
            }
        }
    }

    pub async fn fetch_all<T: Row>(&self, sql: Sql) -> Result<Vec<T>, sqlx::Error> {
        match self {
            Self::Postgres(pool) => {
                fetch_all_on(Target::Postgres(&mut *pool.acquire().await?), sql).await
            }
            Self::Sqlite(pool) => {
                fetch_all_on(Target::Sqlite(&mut *pool.acquire().await?), sql).await
            }
        }
    }

    /// One keyset page of `sql` (a SELECT whose WHERE clause is begun): the rows after
    /// `after` in `order` (ties broken by `id`), at most `limit`, and whether more follow.
    pub async fn fetch_page<T: Row>(
        &self,
        mut sql: Sql,
        order: &[crate::query::OrderTerm],
        limit: u32,
        after: Option<&crate::query::After>,
    ) -> Result<(Vec<T>, bool), crate::Error> {
        if let Some(after) = after {
            crate::query::push_keyset(&mut sql, order, &after.values, "id", after.id)?;
        }
        crate::query::push_order_by(&mut sql, order, "id");
        self.fetch_limited(sql, limit).await
    }

    /// One keyset page of `sql` (a SELECT whose WHERE clause is begun) in sort `keys` that
    /// are unique together: the rows after `after`, at most `limit`, and whether more follow.
    pub async fn fetch_keyset<T: Row>(
        &self,
        mut sql: Sql,
        keys: &[crate::query::OrderTerm],
        limit: u32,
        after: Option<&[crate::query::KeyValue]>,
    ) -> Result<(Vec<T>, bool), crate::Error> {
        if let Some(after) = after {
            crate::query::push_after(&mut sql, keys, after)?;
        }
        crate::query::push_order_by_keys(&mut sql, keys);
        self.fetch_limited(sql, limit).await
    }

    /// [`Database::fetch_keyset`], each row turned into its domain value.
    pub async fn fetch_keyset_as<R: Row, T: TryFrom<R, Error = crate::Error>>(
        &self,
        sql: Sql,
        keys: &[crate::query::OrderTerm],
        limit: u32,
        after: Option<&[crate::query::KeyValue]>,
    ) -> Result<(Vec<T>, bool), crate::Error> {
        let (rows, more) = self.fetch_keyset::<R>(sql, keys, limit, after).await?;
        Ok((rows_into(rows)?, more))
    }

    /// [`Database::fetch_page`], each row turned into its domain value.
    pub async fn fetch_page_as<R: Row, T: TryFrom<R, Error = crate::Error>>(
        &self,
        sql: Sql,
        order: &[crate::query::OrderTerm],
        limit: u32,
        after: Option<&crate::query::After>,
    ) -> Result<(Vec<T>, bool), crate::Error> {
        let (rows, more) = self.fetch_page::<R>(sql, order, limit, after).await?;
        Ok((rows_into(rows)?, more))
    }

    /// `sql` with ` LIMIT limit + 1`: at most `limit` rows and whether more follow.
    async fn fetch_limited<T: Row>(
        &self,
        mut sql: Sql,
        limit: u32,
    ) -> Result<(Vec<T>, bool), crate::Error> {
        sql.push(" LIMIT ");
        sql.push_arg(i64::from(limit) + 1);
        let mut rows: Vec<T> = self.fetch_all(sql).await?;
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok((rows, has_more))
    }

    pub async fn fetch_optional<T: Row>(&self, sql: Sql) -> Result<Option<T>, sqlx::Error> {
        match self {
            Self::Postgres(pool) => {
                fetch_optional_on(Target::Postgres(&mut *pool.acquire().await?), sql).await
            }
            Self::Sqlite(pool) => {
                fetch_optional_on(Target::Sqlite(&mut *pool.acquire().await?), sql).await
            }
        }
    }

    pub async fn fetch_one<T: Row>(&self, sql: Sql) -> Result<T, sqlx::Error> {
        self.fetch_optional(sql)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Whether the database answers a trivial query within `limit` (health).
    pub async fn ping(&self, limit: std::time::Duration) -> bool {
        let query = self.fetch_optional::<Count>(Sql::new("SELECT CAST(1 AS BIGINT) AS count"));
        matches!(tokio::time::timeout(limit, query).await, Ok(Ok(Some(_))))
    }

    /// Connections of the pool: (in use, idle).
    pub fn pool_state(&self) -> (u32, u32) {
        let (size, idle) = match self {
            Self::Postgres(pool) => (pool.size(), pool.num_idle()),
            Self::Sqlite(pool) => (pool.size(), pool.num_idle()),
        };
        let idle = u32::try_from(idle).unwrap_or(u32::MAX);
        (size.saturating_sub(idle), idle)
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

/// A transaction on either engine. Dropping it without [`Tx::commit`] rolls back.
pub struct Tx {
    inner: TxInner,
    /// The audited call whose record this transaction carries (see [`crate::audit`]).
    audit: Option<std::sync::Arc<crate::audit::Scope>>,
}

enum TxInner {
    Postgres(sqlx::Transaction<'static, Postgres>),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl Tx {
    fn new(inner: TxInner) -> Self {
        Self { inner, audit: None }
    }

    fn target(&mut self) -> Target<'_> {
        match &mut self.inner {
            TxInner::Postgres(tx) => Target::Postgres(&mut *tx),
            TxInner::Sqlite(tx) => Target::Sqlite(&mut *tx),
        }
    }

    pub fn engine(&self) -> Engine {
        match self.inner {
            TxInner::Postgres(_) => Engine::Postgres,
            TxInner::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// The audited call whose record this transaction already carries.
    pub(crate) fn audit_scope(&self) -> Option<&crate::audit::Scope> {
        self.audit.as_deref()
    }

    /// This transaction carries `scope`'s record: committing it records the call.
    pub(crate) fn carry_audit(&mut self, scope: std::sync::Arc<crate::audit::Scope>) {
        self.audit = Some(scope);
    }

    pub async fn execute(&mut self, sql: Sql) -> Result<u64, sqlx::Error> {
        execute_on(self.target(), sql).await
    }

    pub async fn fetch_all<T: Row>(&mut self, sql: Sql) -> Result<Vec<T>, sqlx::Error> {
        fetch_all_on(self.target(), sql).await
    }

    pub async fn fetch_optional<T: Row>(&mut self, sql: Sql) -> Result<Option<T>, sqlx::Error> {
        fetch_optional_on(self.target(), sql).await
    }

    pub async fn fetch_one<T: Row>(&mut self, sql: Sql) -> Result<T, sqlx::Error> {
        self.fetch_optional(sql)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Postgres(tx) => tx.commit().await?,
            TxInner::Sqlite(tx) => tx.commit().await?,
        }
        if let Some(scope) = self.audit {
            scope.mark_committed();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Postgres(tx) => tx.rollback().await,
            TxInner::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// True when `error` is a unique-constraint violation (on either engine).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Placeholders `$from, $from+1, …` for an `IN (…)` list of `count` values.
pub fn placeholders(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The migrations of `aida-core` itself: the outbox and the consumer inbox.
pub fn core_migrations() -> Migrations {
    Migrations {
        postgres: sqlx::migrate!("./migrations/postgres"),
        sqlite: sqlx::migrate!("./migrations/sqlite"),
    }
}

/// A tenant's table of one resource: its name, the columns a row is read with, and the
/// resource name NOT_FOUND gives.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static str,
    pub resource: &'static str,
}

impl Table {
    /// `SELECT columns FROM name WHERE tenant_id = $1 AND id = $2`, then `lock`.
    fn by_id(&self, tenant: &str, id: Uuid, lock: &str) -> Sql {
        Sql::new(format!(
            "SELECT {} FROM {} WHERE tenant_id = $1 AND id = $2{lock}",
            self.columns, self.name
        ))
        .bind(tenant)
        .bind(id)
    }

    /// A row read by id, in its domain form; NOT_FOUND naming the resource when absent.
    fn found<R, T>(&self, row: Option<R>, id: Uuid) -> Result<T, crate::Error>
    where
        T: TryFrom<R>,
        crate::Error: From<T::Error>,
    {
        let row = row.ok_or_else(|| crate::Error::not_found(self.resource, id.to_string()))?;
        Ok(T::try_from(row)?)
    }
}

impl Database {
    /// A tenant's row of `table` by id, in its domain form.
    pub async fn get_as<R: Row, T>(
        &self,
        table: &Table,
        tenant: &str,
        id: Uuid,
    ) -> Result<T, crate::Error>
    where
        T: TryFrom<R>,
        crate::Error: From<T::Error>,
    {
        let row = self
            .fetch_optional::<R>(table.by_id(tenant, id, ""))
            .await?;
        table.found(row, id)
    }
}

/// Whether a transaction's read locks the row it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Locked until the transaction ends ([`Engine::lock_clause`]).
    ForUpdate,
    /// Read as it is.
    None,
}

impl Tx {
    /// [`Database::get_as`] inside this transaction, the row locked or not.
    pub async fn get_as<R: Row, T>(
        &mut self,
        table: &Table,
        tenant: &str,
        id: Uuid,
        lock: Lock,
    ) -> Result<T, crate::Error>
    where
        T: TryFrom<R>,
        crate::Error: From<T::Error>,
    {
        let clause = match lock {
            Lock::ForUpdate => self.engine().lock_clause(),
            Lock::None => "",
        };
        let row = self
            .fetch_optional::<R>(table.by_id(tenant, id, clause))
            .await?;
        table.found(row, id)
    }
}

/// One page of a counted list: its rows, whether more follow, and how many there are in all.
#[derive(Debug)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub more: bool,
    pub total: i64,
}

/// A List RPC's rows of one tenant's table: those of `owner` alone when set (a sales
/// rep's view), the page `query` asks for (its AIP-160 filter over `fields`).
pub struct Listing<'a> {
    pub table: &'a Table,
    pub fields: &'a [crate::query::Field],
    pub tenant: &'a str,
    pub owner: Option<&'a str>,
    pub query: &'a crate::query::ListQuery<'a, 'a>,
    /// The blind indexes of sealed fields' filter values (see [`crate::query::Blind`]).
    pub blind: Option<crate::query::Blind<'a>>,
}

impl Listing<'_> {
    /// `SELECT what FROM table WHERE` the listing's conditions.
    pub fn select(&self, engine: Engine, what: &str) -> Result<Sql, crate::Error> {
        let mut sql = Sql::new(format!(
            "SELECT {what} FROM {} WHERE tenant_id = $1",
            self.table.name
        ))
        .bind(self.tenant);
        if let Some(owner) = self.owner {
            sql.push(" AND owner_id = ");
            sql.push_arg(owner);
        }
        crate::query::push_filter_blind(
            &mut sql,
            engine,
            self.query.filter,
            self.fields,
            self.blind,
        )?;
        Ok(sql)
    }
}

impl Database {
    /// The page of `listing`, in domain form, and whether more rows follow.
    pub async fn fetch_listed_page_as<R: Row, T: TryFrom<R, Error = crate::Error>>(
        &self,
        listing: &Listing<'_>,
    ) -> Result<(Vec<T>, bool), crate::Error> {
        let sql = listing.select(self.engine(), listing.table.columns)?;
        let query = listing.query;
        self.fetch_page_as::<R, T>(sql, &query.order, query.paging.size, query.after.as_ref())
            .await
    }

    /// [`Database::fetch_listed_page_as`] and how many rows the listing holds in all
    /// (AIP-132 `total_size`).
    pub async fn fetch_counted_page_as<R: Row, T: TryFrom<R, Error = crate::Error>>(
        &self,
        listing: &Listing<'_>,
    ) -> Result<Page<T>, crate::Error> {
        let count = listing.select(self.engine(), "COUNT(*) AS count")?;
        let (rows, more) = self.fetch_listed_page_as::<R, T>(listing).await?;
        let total: Count = self.fetch_one(count).await?;
        Ok(Page {
            rows,
            more,
            total: total.count,
        })
    }
}

/// A single-column count.
#[derive(Debug, sqlx::FromRow)]
pub struct Count {
    pub count: i64,
}

/// Rows turned into their domain values; the first that does not convert fails them all.
pub fn rows_into<R, T: TryFrom<R, Error = crate::Error>>(
    rows: Vec<R>,
) -> Result<Vec<T>, crate::Error> {
    rows.into_iter().map(T::try_from).collect()
}
