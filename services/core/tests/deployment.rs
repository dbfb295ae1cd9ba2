//! Production engines as deployments run them: a NATS server that demands credentials and
//! TLS (with client certificates), and a JetStream cluster's stream replicas setting.

use std::time::Duration;

use aida_core::bus::{ConsumerSpec, EventBus, NatsBus, OutgoingMessage};
use aida_core::settings::{BusSettings, NatsSettings};
use aida_core::testing::NatsServer;
use bytes::Bytes;
use secrecy::SecretString;

fn bus_settings() -> BusSettings {
    BusSettings {
        namespace: format!("dep{}", aida_core::random_hex(4)),
        ..aida_core::Settings::embedded().bus
    }
}

/// Publishes one event and reads it back through a durable consumer.
async fn round_trip(bus: &NatsBus) {
    bus.ensure_streams().await.expect("streams");
    for result in bus
        .publish(&[OutgoingMessage {
            event_type: "leads.captured".into(),
            message_id: "m1".into(),
            payload: Bytes::from_static(b"over tls"),
            headers: Vec::new(),
        }])
        .await
    {
        result.expect("publish");
    }
    let mut source = bus
        .subscribe(&ConsumerSpec::durable(
            "reader",
            "CRM_LEADS",
            None,
            Duration::from_secs(30),
        ))
        .await
        .expect("subscribe");
    let delivery = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .expect("a delivery within 10 s")
        .expect("delivery");
    assert_eq!(delivery.payload.as_ref(), b"over tls");
    delivery.ack().await.expect("ack");
}

#[tokio::test]
async fn a_nats_server_with_user_password_and_mutual_tls_is_used_with_those_settings() {
    let certs = tempfile::tempdir().expect("certs");
    aida_core::tls::generate(certs.path(), &["nats", "leads"], &[]).expect("certificates");
    let file = |name: &str| certs.path().join(name);
    let server = NatsServer::with_config(&format!(
        "authorization {{ user: \"svc\", password: \"s3cret-pass\" }}\n\
         tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 2 }}",
        file("nats.pem").display(),
        file("nats.key").display(),
        file("ca.pem").display(),
    ));
    let url = format!("tls://127.0.0.1:{}", server.port);
    let nats = NatsSettings {
        user: Some("svc".into()),
        password: Some(SecretString::from("s3cret-pass".to_owned())),
        ca_file: Some(file("ca.pem")),
        cert_file: Some(file("leads.pem")),
        key_file: Some(file("leads.key")),
        ..NatsSettings::default()
    };
    let bus = NatsBus::connect_with(&url, &bus_settings(), &nats)
        .await
        .expect("connect");
    round_trip(&bus).await;
    assert!(bus.is_connected());

    // A wrong password, or no client certificate, never gets a connection: the bus
    // reports itself down (health NOT_SERVING) and stream setup fails.
    for refused in [
        NatsSettings {
            password: Some(SecretString::from("wrong".to_owned())),
            ..nats.clone()
        },
        NatsSettings {
            cert_file: None,
            key_file: None,
            ..nats.clone()
        },
    ] {
        let bus = NatsBus::connect_with(&url, &bus_settings(), &refused)
            .await
            .expect("the client retries in the background");
        assert!(
            bus.ensure_streams().await.is_err(),
            "refused settings must not reach JetStream"
        );
        assert!(!bus.is_connected());
    }
}

#[tokio::test]
async fn a_nats_server_with_a_token_accepts_the_token_and_refuses_its_absence() {
    let server = NatsServer::with_config("authorization { token: \"t0ken-for-aida\" }");
    let nats = NatsSettings {
        token: Some(SecretString::from("t0ken-for-aida".to_owned())),
        ..NatsSettings::default()
    };
    let bus = NatsBus::connect_with(&server.url(), &bus_settings(), &nats)
        .await
        .expect("connect");
    round_trip(&bus).await;
    let anonymous = NatsBus::connect(&server.url(), &bus_settings())
        .await
        .expect("the client retries in the background");
    assert!(anonymous.ensure_streams().await.is_err());
}

#[tokio::test]
async fn streams_are_created_with_the_configured_replicas() {
    // A single server cannot hold three copies: asking for them is refused by JetStream
    // itself, which shows the setting reaches the stream configuration.
    let server = NatsServer::start();
    let one = NatsBus::connect(&server.url(), &bus_settings())
        .await
        .expect("connect");
    one.ensure_streams().await.expect("one replica");
    let info = one
        .jetstream()
        .get_stream(one.topology().stream("CRM_LEADS"))
        .await
        .expect("stream")
        .cached_info()
        .config
        .num_replicas;
    assert_eq!(info, 1);
    let three = NatsBus::connect(
        &server.url(),
        &BusSettings {
            stream_replicas: 3,
            ..bus_settings()
        },
    )
    .await
    .expect("connect");
    let refused = three
        .ensure_streams()
        .await
        .expect_err("3 replicas on one server");
    assert!(refused.to_string().contains("stream"), "{refused}");
}

/// A private PostgreSQL server that accepts TLS connections only, with a certificate of
/// the test's own CA (run as the `postgres` user when the test runs as root).
struct TlsPostgres {
    port: u16,
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl TlsPostgres {
    fn command(bin: &std::path::Path, program: &str) -> std::process::Command {
        let program = bin.join(program);
        // initdb refuses to run as root.
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
        if root {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    }

    fn run(mut command: std::process::Command) {
        let output = command.output().expect("run a PostgreSQL program");
        assert!(
            output.status.success(),
            "{command:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start(certs: &std::path::Path, server: &str) -> Self {
        let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries under /usr/lib/postgresql")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        versions.sort();
        let bin = versions.pop().expect("a PostgreSQL version").join("bin");
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        for (from, to) in [
            (format!("{server}.pem"), "server.crt"),
            (format!("{server}.key"), "server.key"),
        ] {
            std::fs::copy(certs.join(from), dir.path().join(to)).expect("copy certificate");
        }
        // As root, the server's user must own its files; otherwise they are ours already.
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let port = aida_core::testing::free_port();
        let mut initdb = Self::command(&bin, "initdb");
        initdb
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&data);
        Self::run(initdb);
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{dir}/server.crt'\nssl_key_file = '{dir}/server.key'\n\
             fsync = off\n",
            dir = dir.path().display()
        );
        let append = |name: &str, text: &str, replace: bool| {
            let path = data.join(name);
            let mut contents = if replace {
                String::new()
            } else {
                std::fs::read_to_string(&path).expect("read config")
            };
            contents.push_str(text);
            std::fs::write(&path, contents).expect("write config");
        };
        append("postgresql.conf", &conf, false);
        // TLS or nothing over TCP.
        append(
            "pg_hba.conf",
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n",
            true,
        );
        let mut start = Self::command(&bin, "pg_ctl");
        start
            .args(["-w", "-t", "30", "-l"])
            .arg(dir.path().join("server.log"))
            .arg("-D")
            .arg(&data)
            .arg("start");
        Self::run(start);
        Self { port, bin, dir }
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let mut stop = Self::command(&self.bin, "pg_ctl");
        stop.args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop");
        let _ = stop.output();
    }
}

#[tokio::test]
async fn postgres_with_verify_full_connects_to_the_right_server_only_and_limits_statements() {
    use aida_core::db::{Database, Sql};
    use aida_core::settings::DatabaseSettings;

    let certs = tempfile::tempdir().expect("certs");
    aida_core::tls::generate(certs.path(), &["postgres"], &[]).expect("certificates");
    let other = tempfile::tempdir().expect("another CA");
    aida_core::tls::generate(other.path(), &["postgres"], &[]).expect("certificates");
    let server = TlsPostgres::start(certs.path(), "postgres");
    let url = |host: &str, query: &str| {
        SecretString::from(format!(
            "postgres://postgres@{host}:{}/postgres?{query}",
            server.port
        ))
    };
    let ca = certs.path().join("ca.pem");
    let limits = DatabaseSettings {
        statement_timeout_ms: 200,
        acquire_timeout_ms: 3000,
        ..DatabaseSettings::default()
    };
    for host in ["localhost", "127.0.0.1"] {
        let db = Database::connect_with(
            &url(
                host,
                &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            ),
            &limits,
        )
        .await
        .unwrap_or_else(|error| panic!("verify-full to {host}: {error}"));
        db.execute(Sql::new("SELECT 1"))
            .await
            .expect("a query over TLS");
        // statement_timeout reaches every connection.
        let slow = db
            .execute(Sql::new("SELECT pg_sleep(2)"))
            .await
            .expect_err("cancelled by statement_timeout");
        assert!(slow.to_string().contains("statement timeout"), "{slow}");
        db.close().await;
    }
    // A server whose certificate another CA signed is not trusted; without TLS the server
    // refuses the connection.
    let foreign = other.path().join("ca.pem");
    let refused = Database::connect_with(
        &url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", foreign.display()),
        ),
        &limits,
    )
    .await;
    assert!(refused.is_err(), "a certificate of another CA was accepted");
    let plain = Database::connect_with(&url("localhost", "sslmode=disable"), &limits).await;
    assert!(plain.is_err(), "a connection without TLS was accepted");
}

#[tokio::test]
async fn a_cluster_url_list_reaches_a_server_when_another_is_down() {
    let server = NatsServer::start();
    let dead = aida_core::testing::free_port();
    let url = format!("nats://127.0.0.1:{dead}, {}", server.url());
    let settings = aida_core::Settings {
        nats_url: Some(url.clone()),
        ..aida_core::Settings::embedded()
    };
    settings.validate().expect("a list of servers is valid");
    let bus = NatsBus::connect(&url, &bus_settings())
        .await
        .expect("connect");
    round_trip(&bus).await;
}
