//! The storage conformance suite: the same assertions on PostgreSQL and on SQLite.

use aida_core::consumer::claim;
use aida_core::db::{Count, Database, Engine, Sql, core_migrations, is_unique_violation};
use aida_core::testing::TestPostgres;
use chrono::{DateTime, Duration, Utc};
use secrecy::SecretString;
use uuid::Uuid;

/// A migrated database of either engine, kept alive as long as the value.
struct TestDb {
    db: Database,
    _postgres: Option<TestPostgres>,
    _dir: Option<tempfile::TempDir>,
}

async fn database(engine: Engine) -> TestDb {
    let (url, postgres, dir) = match engine {
        Engine::Postgres => {
            let postgres = TestPostgres::create().await;
            (postgres.secret_url(), Some(postgres), None)
        }
        Engine::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = SecretString::from(format!(
                "sqlite://{}/test.db?mode=rwc",
                dir.path().display()
            ));
            (url, None, Some(dir))
        }
    };
    let db = Database::connect(&url).await.expect("connect");
    db.migrate(&mut core_migrations()).await.expect("migrate");
    let time_type = match engine {
        Engine::Postgres => "TIMESTAMPTZ",
        Engine::Sqlite => "TEXT",
    };
    db.execute(Sql::new(format!(
        "CREATE TABLE samples (id TEXT PRIMARY KEY, at {time_type} NOT NULL, body TEXT NOT NULL)"
    )))
    .await
    .expect("create samples");
    TestDb {
        db,
        _postgres: postgres,
        _dir: dir,
    }
}

#[derive(Debug, sqlx::FromRow, PartialEq)]
struct OutboxRow {
    event_id: Uuid,
    event_type: String,
    payload: Vec<u8>,
    created_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
}

fn micros(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).expect("in range")
}

async fn insert_outbox(
    db: &Database,
    id: Uuid,
    created_at: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    db.execute(
        Sql::new(
            "INSERT INTO outbox (event_id, event_type, tenant_id, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind("leads.captured")
        .bind("acme")
        .bind(vec![0u8, 1, 2, 255])
        .bind(created_at),
    )
    .await
}

async fn uuids_times_and_bytes_round_trip_exactly(engine: Engine) {
    let test = database(engine).await;
    let id = Uuid::now_v7();
    let created_at = micros(Utc::now());
    insert_outbox(&test.db, id, created_at)
        .await
        .expect("insert");
    let row: OutboxRow = test
        .db
        .fetch_one(
            Sql::new("SELECT event_id, event_type, payload, created_at, published_at FROM outbox WHERE event_id = $1")
                .bind(id),
        )
        .await
        .expect("select");
    assert_eq!(
        row,
        OutboxRow {
            event_id: id,
            event_type: "leads.captured".into(),
            payload: vec![0, 1, 2, 255],
            created_at,
            published_at: None,
        }
    );
}

async fn a_unique_violation_is_recognised(engine: Engine) {
    let test = database(engine).await;
    let id = Uuid::now_v7();
    insert_outbox(&test.db, id, Utc::now())
        .await
        .expect("first");
    let error = insert_outbox(&test.db, id, Utc::now())
        .await
        .expect_err("duplicate");
    assert!(is_unique_violation(&error), "{error}");
}

async fn a_transaction_dropped_without_commit_changes_nothing(engine: Engine) {
    let test = database(engine).await;
    {
        let mut tx = test.db.begin().await.expect("begin");
        tx.execute(
            Sql::new("INSERT INTO samples (id, at, body) VALUES ($1, $2, $3)")
                .bind("a")
                .bind(Utc::now())
                .bind("x"),
        )
        .await
        .expect("insert");
    }
    let mut tx = test.db.begin().await.expect("begin");
    tx.execute(
        Sql::new("INSERT INTO samples (id, at, body) VALUES ($1, $2, $3)")
            .bind("b")
            .bind(Utc::now())
            .bind("y"),
    )
    .await
    .expect("insert");
    tx.commit().await.expect("commit");
    let count: Count = test
        .db
        .fetch_one(Sql::new("SELECT COUNT(*) AS count FROM samples"))
        .await
        .expect("count");
    assert_eq!(count.count, 1);
}

#[derive(Debug, sqlx::FromRow)]
struct SampleId {
    id: String,
}

async fn timestamps_compare_and_sort_chronologically(engine: Engine) {
    let test = database(engine).await;
    let base = micros(Utc::now());
    // Whole seconds, milliseconds and microseconds: SQLite stores them as text of
    // different lengths, and they must still sort by time.
    let times = [
        ("t3", base + Duration::microseconds(1_500_001)),
        ("t1", base),
        ("t2", base + Duration::milliseconds(1)),
        ("t4", base + Duration::seconds(2)),
        ("t0", base - Duration::days(400)),
    ];
    for (id, at) in times {
        test.db
            .execute(
                Sql::new("INSERT INTO samples (id, at, body) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(at)
                    .bind(""),
            )
            .await
            .expect("insert");
    }
    let ordered: Vec<SampleId> = test
        .db
        .fetch_all(Sql::new("SELECT id FROM samples ORDER BY at"))
        .await
        .expect("ordered");
    let ids: Vec<&str> = ordered.iter().map(|row| row.id.as_str()).collect();
    assert_eq!(ids, ["t0", "t1", "t2", "t3", "t4"]);
    let later: Vec<SampleId> = test
        .db
        .fetch_all(Sql::new("SELECT id FROM samples WHERE at > $1 ORDER BY at").bind(base))
        .await
        .expect("later");
    assert_eq!(later.len(), 3);
}

async fn the_inbox_claims_an_event_once_per_consumer(engine: Engine) {
    let test = database(engine).await;
    let mut tx = test.db.begin().await.expect("begin");
    assert!(claim(&mut tx, "deals", "event-1").await.expect("claim"));
    assert!(
        !claim(&mut tx, "deals", "event-1")
            .await
            .expect("claim again")
    );
    assert!(
        claim(&mut tx, "analytics", "event-1")
            .await
            .expect("other consumer")
    );
    tx.commit().await.expect("commit");
    let mut tx = test.db.begin().await.expect("begin");
    assert!(
        !claim(&mut tx, "deals", "event-1")
            .await
            .expect("after commit")
    );
}

async fn migrations_can_run_again_without_change(engine: Engine) {
    let test = database(engine).await;
    test.db
        .migrate(&mut core_migrations())
        .await
        .expect("second run");
}

async fn placeholders_bind_in_order_in_dynamic_queries(engine: Engine) {
    let test = database(engine).await;
    for id in ["a", "b", "c", "d"] {
        test.db
            .execute(
                Sql::new("INSERT INTO samples (id, at, body) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(Utc::now())
                    .bind(id),
            )
            .await
            .expect("insert");
    }
    let mut sql = Sql::new("SELECT id FROM samples WHERE id IN (");
    sql.push_arg("b")
        .push(", ")
        .push_arg("d")
        .push(") AND body <> ")
        .push_arg("zzz")
        .push(" ORDER BY id");
    let rows: Vec<SampleId> = test.db.fetch_all(sql).await.expect("query");
    let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
    assert_eq!(ids, ["b", "d"]);
}

/// A PostgreSQL restart kills every pooled connection; a connection that sat idle is pinged
/// before use and replaced, so the first query afterwards still succeeds.
#[tokio::test]
async fn connections_killed_by_the_server_are_replaced_before_the_next_query() {
    use sqlx::Connection as _;

    let test = database(Engine::Postgres).await;
    let name = test._postgres.as_ref().expect("postgres").name.clone();
    test.db
        .execute(Sql::new(
            "INSERT INTO samples (id, at, body) VALUES ('a', now(), 'before')",
        ))
        .await
        .expect("insert before");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    let mut admin = sqlx::PgConnection::connect(&aida_core::testing::postgres_admin_url())
        .await
        .expect("admin");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(&name)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(!killed.is_empty(), "the pool held no connection to kill");
    let _ = admin.close().await;

    test.db
        .execute(Sql::new(
            "INSERT INTO samples (id, at, body) VALUES ('b', now(), 'after')",
        ))
        .await
        .expect("insert after the server killed the pool's connections");
    let rows: i64 = test
        .db
        .fetch_one::<Count>(Sql::new("SELECT COUNT(*) AS count FROM samples"))
        .await
        .expect("count")
        .count;
    assert_eq!(rows, 2);
}

macro_rules! conformance {
    ($engine:ident, $module:ident) => {
        mod $module {
            use super::*;
            conformance!(@tests $engine,
                uuids_times_and_bytes_round_trip_exactly,
                a_unique_violation_is_recognised,
                a_transaction_dropped_without_commit_changes_nothing,
                timestamps_compare_and_sort_chronologically,
                the_inbox_claims_an_event_once_per_consumer,
                migrations_can_run_again_without_change,
                placeholders_bind_in_order_in_dynamic_queries
            );
        }
    };
    (@tests $engine:ident, $($name:ident),+) => {
        $(
            #[tokio::test]
            async fn $name() {
                super::$name(Engine::$engine).await;
            }
        )+
    };
}

conformance!(Postgres, on_postgres);
conformance!(Sqlite, on_sqlite);
