//! Test support: a fresh PostgreSQL database per test, a unique bus namespace per test,
//! and private `nats-server` processes for fault tests; a Chroma server ([`chroma`]).
//!
//! The shared servers come from `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`); the test command starts them when they are not running.

pub mod chroma;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::Connection;

/// The admin URL of the shared PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The URL of the shared NATS server.
pub fn shared_nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A bus namespace no other test uses: streams `T…_CRM_LEADS`, subjects `t….leads.>`.
pub fn unique_namespace() -> String {
    format!("t{}", crate::random_hex(6))
}

/// A fresh database on the shared PostgreSQL server, dropped when the value is dropped.
pub struct TestPostgres {
    pub name: String,
    pub url: String,
}

impl TestPostgres {
    pub async fn create() -> Self {
        let admin = postgres_admin_url();
        let name = format!("aida_test_{}", crate::random_hex(8));
        let mut connection = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|error| panic!("cannot reach PostgreSQL at {admin}: {error}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .expect("create test database");
        let _ = connection.close().await;
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub fn secret_url(&self) -> SecretString {
        SecretString::from(self.url.clone())
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Drop runs outside async code; a short-lived thread with its own runtime removes
        // the database so test runs do not accumulate them.
        let name = self.name.clone();
        let admin = postgres_admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut connection)
                        .await;
                    let _ = connection.close().await;
                }
            });
        })
        .join();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind an ephemeral port")
}

/// A private JetStream server on its own port and store directory, for fault tests that
/// stop and restart it without disturbing anyone else.
pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    /// A configuration file to start with instead of the plain JetStream flags.
    config: Option<PathBuf>,
    child: Option<Child>,
}

fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    for candidate in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return path;
        }
    }
    PathBuf::from("nats-server")
}

impl NatsServer {
    pub fn start() -> Self {
        Self::launch(
            free_port(),
            tempfile::tempdir().expect("nats store dir"),
            None,
        )
    }

    fn launch(port: u16, store: tempfile::TempDir, config: Option<PathBuf>) -> Self {
        let mut server = Self {
            port,
            store,
            config,
            child: None,
        };
        server.resume();
        server
    }

    /// A server on loopback with JetStream and `extra` appended to its configuration file
    /// (an `authorization { … }` or `tls { … }` block, say).
    pub fn with_config(extra: &str) -> Self {
        let port = free_port();
        let store = tempfile::tempdir().expect("nats store dir");
        let config = store.path().join("server.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
                store.path().join("js").display()
            ),
        )
        .expect("write nats-server config");
        Self::launch(port, store, Some(config))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store, and waits until it accepts
    /// connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let mut command = Command::new(nats_server_binary());
        match &self.config {
            Some(config) => command.arg("-c").arg(config),
            None => command
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(self.store.path()),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (install it with apt-get install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bus a test can also inspect: what is stored in a stream, in order.
#[derive(Clone)]
pub enum TestBus {
    Nats(Box<crate::bus::NatsBus>),
    Memory(crate::bus::MemoryBus),
}

/// One message as stored in a stream.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Un-namespaced subject.
    pub event_type: String,
    /// `Nats-Msg-Id`.
    pub message_id: String,
    pub payload: bytes::Bytes,
}

impl TestBus {
    /// A JetStream bus on `url` in a fresh namespace.
    pub async fn nats(url: &str) -> Self {
        let settings = crate::settings::BusSettings {
            namespace: unique_namespace(),
            ..crate::Settings::embedded().bus
        };
        let bus = crate::bus::NatsBus::connect(url, &settings)
            .await
            .expect("connect to NATS");
        Self::Nats(Box::new(bus))
    }

    /// An in-process bus.
    pub fn memory() -> Self {
        Self::Memory(crate::bus::MemoryBus::new(&crate::Settings::embedded().bus))
    }

    pub fn shared(&self) -> std::sync::Arc<dyn crate::bus::EventBus> {
        match self {
            Self::Nats(bus) => std::sync::Arc::new(bus.as_ref().clone()),
            Self::Memory(bus) => std::sync::Arc::new(bus.clone()),
        }
    }

    /// The namespace, to configure services that must use the same streams.
    pub fn namespace(&self) -> String {
        use crate::bus::EventBus;
        let topology = match self {
            Self::Nats(bus) => bus.topology().clone(),
            Self::Memory(bus) => bus.topology().clone(),
        };
        topology
            .subject("x")
            .strip_suffix(".x")
            .unwrap_or("")
            .to_owned()
    }

    /// Every message in `stream` (base name such as `CRM_LEADS`), oldest first.
    pub async fn stored(&self, stream: &str) -> Vec<StoredMessage> {
        use crate::bus::EventBus;
        match self {
            Self::Memory(bus) => bus
                .stored(stream)
                .into_iter()
                .map(|(event_type, message_id, payload)| StoredMessage {
                    event_type,
                    message_id,
                    payload,
                })
                .collect(),
            Self::Nats(bus) => {
                let name = bus.topology().stream(stream);
                let Ok(mut handle) = bus.jetstream().get_stream(&name).await else {
                    return Vec::new();
                };
                let Ok(info) = handle.info().await else {
                    return Vec::new();
                };
                let (first, last) = (info.state.first_sequence, info.state.last_sequence);
                let mut messages = Vec::new();
                for sequence in first..=last {
                    let Ok(message) = handle.get_raw_message(sequence).await else {
                        continue;
                    };
                    let message_id = message
                        .headers
                        .get(crate::bus::headers::MSG_ID)
                        .map(|value| value.as_str().to_owned())
                        .unwrap_or_default();
                    messages.push(StoredMessage {
                        event_type: bus
                            .topology()
                            .event_type(message.subject.as_str())
                            .to_owned(),
                        message_id,
                        payload: message.payload,
                    });
                }
                messages
            }
        }
    }

    /// Every event in `stream`, decoded, oldest first: (event type, envelope).
    pub async fn events_on(
        &self,
        stream: &str,
    ) -> Vec<(String, aida_proto::aida::events::v1::EventEnvelope)> {
        use prost::Message as _;
        self.stored(stream)
            .await
            .into_iter()
            .map(|message| {
                let envelope =
                    aida_proto::aida::events::v1::EventEnvelope::decode(message.payload.as_ref())
                        .expect("a stored event decodes");
                (message.event_type, envelope)
            })
            .collect()
    }

    /// Waits (up to 20 s) until `stream` holds at least `count` events, then returns them;
    /// fails the test naming how many arrived otherwise.
    pub async fn wait_for_events(
        &self,
        stream: &str,
        count: usize,
    ) -> Vec<(String, aida_proto::aida::events::v1::EventEnvelope)> {
        let reached = eventually(Duration::from_secs(20), || async {
            self.stored(stream).await.len() >= count
        })
        .await;
        let events = self.events_on(stream).await;
        assert!(
            reached,
            "expected {count} events in {stream}, found {}",
            events.len()
        );
        events
    }
}

/// Which engine pair a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL and NATS JetStream (the shared test servers).
    Production,
    /// SQLite files and the in-process bus.
    Embedded,
}

/// One test's world: settings with a fresh database (PostgreSQL) or data directory
/// (SQLite), a fresh bus namespace, and a token issuer for the settings' key. Services
/// started from it share the database and the bus, as in a one-database deployment.
pub struct TestEnv {
    pub settings: crate::Settings,
    pub bus: TestBus,
    pub issuer: crate::auth::TokenIssuer,
    postgres: Option<TestPostgres>,
    _dir: tempfile::TempDir,
}

impl TestEnv {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Production => Self::with_nats(&shared_nats_url()).await,
            Backend::Embedded => Self::build(None, TestBus::memory()),
        }
    }

    /// PostgreSQL and the NATS server at `url`.
    pub async fn with_nats(url: &str) -> Self {
        let postgres = TestPostgres::create().await;
        Self::build(Some(postgres), TestBus::nats(url).await)
    }

    fn build(postgres: Option<TestPostgres>, bus: TestBus) -> Self {
        let dir = tempfile::tempdir().expect("data dir");
        let mut settings = crate::Settings::embedded();
        settings.data_dir = dir.path().to_path_buf();
        settings.database_url = postgres.as_ref().map(TestPostgres::secret_url);
        settings.bus.namespace = bus.namespace();
        settings.auth.signing_key = Some(SecretString::from(format!(
            "test-key-{}",
            crate::random_hex(16)
        )));
        settings.outbox.poll_interval_ms = 50;
        settings.analytics.batch_max_wait_ms = 20;
        let key = settings.signing_key().expect("signing key");
        let issuer =
            crate::auth::TokenIssuer::hs256(&key, &settings.auth.issuer, &settings.auth.audience);
        Self {
            settings,
            bus,
            issuer,
            postgres,
            _dir: dir,
        }
    }

    pub fn backend(&self) -> Backend {
        if self.postgres.is_some() {
            Backend::Production
        } else {
            Backend::Embedded
        }
    }

    /// A token for `tenant` with `roles`, valid ten minutes.
    pub fn token_with(&self, tenant: &str, roles: &[&str]) -> String {
        self.issuer
            .mint(tenant, "tester", roles, Duration::from_secs(600))
            .expect("mint")
    }

    /// `message` with a bearer token of `subject` in `tenant` holding `roles`.
    pub fn request_as<T>(
        &self,
        tenant: &str,
        subject: &str,
        roles: &[&str],
        message: T,
    ) -> tonic::Request<T> {
        let token = self
            .issuer
            .mint(tenant, subject, roles, Duration::from_secs(600))
            .expect("mint");
        with_token(&token, message)
    }

    /// `message` with an admin bearer token for `tenant`.
    pub fn request<T>(&self, tenant: &str, message: T) -> tonic::Request<T> {
        with_token(&self.token_with(tenant, &["admin"]), message)
    }

    /// The started context of `service` (database migrated, relay not yet running).
    pub async fn context(
        &self,
        service: &str,
        migrations: crate::db::Migrations,
    ) -> crate::runtime::ServiceContext {
        crate::runtime::ServiceContext::start(
            &self.settings,
            service,
            self.bus.shared(),
            migrations,
        )
        .await
        .unwrap_or_else(|error| panic!("start {service}: {error}"))
    }
}

/// Runs each `async fn name(backend: Backend)` of the calling module as a test on both
/// engine pairs: in module `$production` on PostgreSQL + JetStream, in `$embedded` on SQLite
/// + the in-process bus (the test names stay `<module>::<name>`).
///
/// ```text
/// aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
///     capture_publishes_one_event, list_pages_through_every_lead_once);
/// ```
#[macro_export]
macro_rules! backend_pair_suite {
    ($production:ident, $embedded:ident: $($name:ident),+ $(,)?) => {
        mod $production {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::Backend::Production).await;
                }
            )+
        }
        mod $embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::Backend::Embedded).await;
                }
            )+
        }
    };
}

/// Asserts that `status` is INVALID_ARGUMENT with a field violation naming `field`; `case`
/// names the input in the failure message.
#[track_caller]
pub fn assert_violates(status: &tonic::Status, field: &str, case: &str) {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{case}: {status:?}"
    );
    let fields = violated_fields(status);
    assert!(
        fields.iter().any(|named| named == field),
        "{case}: {fields:?}"
    );
}

/// The fields named by the `BadRequest` violations of `status` (empty when none).
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}

/// `message` with the bearer `token`.
pub fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// A server task on a loopback port, stopped when dropped.
pub struct RunningServer {
    pub address: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Binds a free loopback port and runs `serve(listener, shutdown)` on it.
    pub async fn start<F, Fut, E>(serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, tokio_util::sync::CancellationToken) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = serve(listener, shutdown.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = running.await {
                panic!("server failed: {error}");
            }
        });
        Self {
            address,
            shutdown,
            task: Some(task),
        }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.address))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// Stops gracefully and waits (in-flight calls finish, the outbox is flushed).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Python that runs the test SMTP server (`TEST_PYTHON`, default the venv that the
/// test command prepares with aiosmtpd).
fn test_python() -> PathBuf {
    if let Ok(path) = std::env::var("TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/aida/venv/bin/python")
}

/// A real SMTP server (aiosmtpd) on a free loopback port, writing each message it accepts
/// to a directory as `.eml`.
pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl SmtpSink {
    pub fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("smtp dir");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/smtp_sink.py");
        let python = test_python();
        let child = Command::new(&python)
            .arg(&script)
            .arg(port.to_string())
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("start the SMTP sink with {} (run scripts/test once, or set TEST_PYTHON to a Python with aiosmtpd): {error}", python.display())
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the SMTP sink did not start (is aiosmtpd installed for {}?)",
                python.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, dir, child }
    }

    /// `smtp://127.0.0.1:<port>`: plain SMTP, as lettre reads it.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `.eml` files in `dir`, oldest name first, as text.
pub fn eml_files(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect()
}
