//! The keyring on both engines: tenant keys made once however many processes ask, subject
//! keys destroyed for good, and master-key rotation while keys are in use.

use std::sync::Arc;

use aida_core::crypto::{self, CryptoError, KeyProvider, Keyring, LocalKeys};
use aida_core::db::{Database, Engine, Sql};
use aida_core::testing::TestPostgres;
use secrecy::SecretString;

struct KeysDb {
    db: Database,
    _postgres: Option<TestPostgres>,
    dir: tempfile::TempDir,
}

async fn keys_db(engine: Engine) -> KeysDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, postgres) = match engine {
        Engine::Postgres => {
            let postgres = TestPostgres::create().await;
            (postgres.secret_url(), Some(postgres))
        }
        Engine::Sqlite => (
            SecretString::from(format!(
                "sqlite://{}/keys.db?mode=rwc",
                dir.path().display()
            )),
            None,
        ),
    };
    let db = Database::connect(&url).await.expect("connect");
    db.migrate(&mut crypto::migrations())
        .await
        .expect("migrate");
    KeysDb {
        db,
        _postgres: postgres,
        dir,
    }
}

fn file_keys(keys: &KeysDb) -> Arc<LocalKeys> {
    Arc::new(LocalKeys::file(&keys.dir.path().join(crypto::MASTER_KEY_FILE)).expect("key file"))
}

async fn wrapped_tenant_keys(db: &Database) -> Vec<(String, Vec<u8>)> {
    #[derive(sqlx::FromRow)]
    struct Row {
        master_id: String,
        wrapped: Vec<u8>,
    }
    let rows: Vec<Row> = db
        .fetch_all(Sql::new(
            "SELECT master_id, wrapped FROM tenant_keys ORDER BY tenant_id",
        ))
        .await
        .expect("rows");
    rows.into_iter()
        .map(|row| (row.master_id, row.wrapped))
        .collect()
}

async fn a_tenant_key_is_made_once_however_many_keyrings_ask_at_the_same_time(engine: Engine) {
    let keys = keys_db(engine).await;
    let provider = file_keys(&keys);
    let rings: Vec<Arc<Keyring>> = (0..4)
        .map(|_| Arc::new(Keyring::new(keys.db.clone(), provider.clone())))
        .collect();
    let mut tasks = Vec::new();
    for ring in &rings {
        let ring = ring.clone();
        tasks.push(tokio::spawn(async move {
            let key = ring.tenant("acme").await.expect("tenant key");
            key.blind_index("email", "ada@example.com")
        }));
    }
    let mut indexes = Vec::new();
    for task in tasks {
        indexes.push(task.await.expect("task"));
    }
    indexes.dedup();
    assert_eq!(indexes.len(), 1, "one key: {indexes:?}");
    assert_eq!(wrapped_tenant_keys(&keys.db).await.len(), 1);

    // What one keyring sealed, a keyring made later (another process) opens.
    let sealed = rings[0]
        .subject("acme", "lead-1")
        .await
        .expect("subject key")
        .seal("email", "lead-1", "ada@example.com")
        .expect("seal");
    let later = Keyring::new(keys.db.clone(), provider.clone());
    let key = later
        .existing_subject("acme", "lead-1")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        key.open("email", "lead-1", &sealed).expect("open"),
        "ada@example.com"
    );
    assert!(
        later
            .existing_subject("acme", "nobody")
            .await
            .expect("read")
            .is_none(),
        "opening never makes a key"
    );
}

async fn a_destroyed_subject_key_never_opens_nor_comes_back(engine: Engine) {
    let keys = keys_db(engine).await;
    let provider = file_keys(&keys);
    let ring = Keyring::new(keys.db.clone(), provider.clone());
    let sealed = ring
        .subject("acme", "lead-1")
        .await
        .expect("key")
        .seal("email", "lead-1", "ada@example.com")
        .expect("seal");
    let elsewhere = Keyring::new(keys.db.clone(), provider.clone());
    elsewhere
        .existing_subject("acme", "lead-1")
        .await
        .expect("read")
        .expect("cached there too");

    ring.destroy_subject("acme", "lead-1")
        .await
        .expect("destroy");
    ring.destroy_subject("acme", "lead-1")
        .await
        .expect("again: idempotent");
    elsewhere.forget_subject("acme", "lead-1");
    for ring in [&ring, &elsewhere] {
        assert!(matches!(
            ring.existing_subject("acme", "lead-1").await,
            Err(CryptoError::Erased(subject)) if subject == "lead-1"
        ));
        assert!(
            matches!(
                ring.subject("acme", "lead-1").await,
                Err(CryptoError::Erased(_))
            ),
            "a destroyed key is never made again"
        );
    }
    // Nothing stored opens what it sealed: the key's row holds no key any more.
    #[derive(sqlx::FromRow)]
    struct Row {
        wrapped: Option<Vec<u8>>,
    }
    let row: Row = keys
        .db
        .fetch_one(Sql::new(
            "SELECT wrapped FROM subject_keys WHERE tenant_id = 'acme' AND subject_id = 'lead-1'",
        ))
        .await
        .expect("tombstone");
    assert!(row.wrapped.is_none());
    assert!(sealed.starts_with(crypto::SEALED));
    // A subject erased before it ever had a key gets a tombstone too.
    ring.destroy_subject("acme", "lead-2")
        .await
        .expect("destroy");
    assert!(matches!(
        ring.subject("acme", "lead-2").await,
        Err(CryptoError::Erased(_))
    ));
    let status = crypto::status(&keys.db).await.expect("status");
    assert_eq!((status.live_subjects, status.destroyed_subjects), (0, 2));
}

async fn rotating_the_master_key_rewraps_every_tenant_key_while_they_are_in_use(engine: Engine) {
    let keys = keys_db(engine).await;
    let provider = file_keys(&keys);
    let old = provider.current().expect("current");
    let ring = Arc::new(Keyring::new(keys.db.clone(), provider.clone()));
    let mut sealed = Vec::new();
    for tenant in ["acme", "globex", "initech"] {
        let key = ring.subject(tenant, "s").await.expect("key");
        sealed.push((tenant, key.seal("note", "s", tenant).expect("seal")));
    }
    let before = wrapped_tenant_keys(&keys.db).await;
    assert!(before.iter().all(|(master, _)| *master == old));

    // Readers in other "processes" (fresh keyrings: nothing cached) keep opening while the
    // rotation runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (db, provider, sealed, stop) = (
            keys.db.clone(),
            provider.clone(),
            sealed.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                let fresh = Keyring::new(db.clone(), provider.clone());
                for (tenant, value) in &sealed {
                    let key = fresh
                        .existing_subject(tenant, "s")
                        .await
                        .expect("read during rotation")
                        .expect("key");
                    assert_eq!(key.open("note", "s", value).expect("open"), *tenant);
                    reads += 1;
                }
            }
            reads
        }));
    }
    let new = provider.add_to_file().expect("new master key");
    let rotation = crypto::rotate(&keys.db, provider.as_ref())
        .await
        .expect("rotate");
    assert_eq!(
        (
            rotation.current.as_str(),
            rotation.rewrapped,
            rotation.unchanged
        ),
        (new.as_str(), 3, 0)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.expect("reader") > 0);
    }
    let after = wrapped_tenant_keys(&keys.db).await;
    assert!(after.iter().all(|(master, _)| *master == new), "{after:?}");
    assert_ne!(before, after);
    let again = crypto::rotate(&keys.db, provider.as_ref())
        .await
        .expect("rotate again");
    assert_eq!((again.rewrapped, again.unchanged), (0, 3));

    // Without the old master key, everything still opens: nothing depends on it now.
    let only_new = std::fs::read_to_string(keys.dir.path().join(crypto::MASTER_KEY_FILE))
        .expect("file")
        .lines()
        .filter(|line| line.starts_with(&new))
        .collect::<Vec<_>>()
        .join("\n");
    let provider = Arc::new(LocalKeys::parse(&only_new, "crypto.master_keys").expect("keys"));
    let fresh = Keyring::new(keys.db.clone(), provider);
    for (tenant, value) in &sealed {
        let key = fresh.subject(tenant, "s").await.expect("key");
        assert_eq!(key.open("note", "s", value).expect("open"), *tenant);
    }
    let status = crypto::status(&keys.db).await.expect("status");
    assert_eq!(status.tenants_by_master.get(&new), Some(&3));
    assert_eq!(status.tenants_by_master.len(), 1);
}

macro_rules! engine_pair {
    ($($name:ident),+ $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(aida_core::db::Engine::Postgres).await;
                }
            )+
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(aida_core::db::Engine::Sqlite).await;
                }
            )+
        }
    };
}

engine_pair!(
    a_tenant_key_is_made_once_however_many_keyrings_ask_at_the_same_time,
    a_destroyed_subject_key_never_opens_nor_comes_back,
    rotating_the_master_key_rewraps_every_tenant_key_while_they_are_in_use,
);
