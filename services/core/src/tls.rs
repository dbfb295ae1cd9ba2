//! Mutual TLS between every hop of the mesh.
//!
//! A development CA signs one certificate per service, each carrying the SPIFFE-style URI
//! SAN `spiffe://aida/<service>` (plus `localhost`, `127.0.0.1` and the service's host
//! name). Servers require a client certificate from that CA and accept only peers with a
//! `spiffe://aida/…` identity; clients check that the server is the service they meant to
//! call. Certificates are re-read from disk when their files change, without a restart.
//!
//! Files in the certificate directory: `ca.pem` (and `ca.key`, kept for issuing), and
//! `<service>.pem` / `<service>.key` per service.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The SPIFFE trust domain of the mesh.
pub const TRUST_DOMAIN: &str = "spiffe://aida/";

/// Why certificates could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls: {0}")]
    Generate(#[from] rcgen::Error),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The crypto provider of the mesh (ring, as everywhere else).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Creates a development CA (unless one exists) and a certificate for every name in
/// `services`, signed by it, in `dir`. Private keys are written readable by the owner only.
pub fn generate(dir: &Path, services: &[&str], extra_hosts: &[String]) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    std::fs::create_dir_all(dir)?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let issuer = if ca_cert_path.exists() && ca_key_path.exists() {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path)?)?;
        Issuer::from_ca_cert_pem(&std::fs::read_to_string(&ca_cert_path)?, key)?
    } else {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "AIDA-CRM development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let certificate = params.self_signed(&key)?;
        std::fs::write(&ca_cert_path, certificate.pem())?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        Issuer::new(params, key)
    };
    for service in services {
        let key = KeyPair::generate()?;
        let mut names = vec![(*service).to_owned(), "localhost".to_owned()];
        names.extend(extra_hosts.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("aida {service}"));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::V4(
                std::net::Ipv4Addr::LOCALHOST,
            )));
        params
            .subject_alt_names
            .push(SanType::URI(format!("{TRUST_DOMAIN}{service}").try_into()?));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let certificate = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{service}.pem")), certificate.pem())?;
        write_private(&dir.join(format!("{service}.key")), &key.serialize_pem())?;
    }
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}

/// The `spiffe://aida/…` identity of a certificate, if it has one.
pub fn spiffe_id(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let names = parsed.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(TRUST_DOMAIN) => {
                Some((*uri).to_owned())
            }
            _ => None,
        })
}

struct Loaded {
    key: Arc<CertifiedKey>,
    modified: Option<SystemTime>,
}

/// One service's certificate and the mesh CA, re-read when the files change.
pub struct MeshTls {
    name: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    roots: Arc<RootCertStore>,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MeshTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .ok()
}

fn certified_key(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|error| file_error(cert_path, error))?
        .collect::<Result<_, _>>()
        .map_err(|error| file_error(cert_path, error))?;
    if chain.is_empty() {
        return Err(file_error(cert_path, "no certificate"));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|error| file_error(key_path, error))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl MeshTls {
    /// Loads `<dir>/<name>.pem`, `<dir>/<name>.key` and `<dir>/ca.pem`.
    pub fn load(dir: &Path, name: &str) -> Result<Arc<Self>, TlsError> {
        let ca_path = dir.join("ca.pem");
        let mut roots = RootCertStore::empty();
        for certificate in
            CertificateDer::pem_file_iter(&ca_path).map_err(|error| file_error(&ca_path, error))?
        {
            roots
                .add(certificate.map_err(|error| file_error(&ca_path, error))?)
                .map_err(|error| file_error(&ca_path, error))?;
        }
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let key = certified_key(&cert_path, &key_path)?;
        Ok(Arc::new(Self {
            name: name.to_owned(),
            loaded: RwLock::new(Loaded {
                key,
                modified: modified(&cert_path),
            }),
            cert_path,
            key_path,
            roots: Arc::new(roots),
        }))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .key
            .clone()
    }

    /// Re-reads the certificate and key if the certificate file changed; true if it did.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = modified(&self.cert_path);
        if now
            == self
                .loaded
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .modified
        {
            return Ok(false);
        }
        let key = certified_key(&self.cert_path, &self.key_path)?;
        *self
            .loaded
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Loaded { key, modified: now };
        tracing::info!(service = %self.name, "certificate reloaded");
        Ok(true)
    }

    /// Checks the files every `every` until `shutdown`.
    pub fn watch(self: &Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(error) = tls.reload_if_changed() {
                    tracing::warn!(%error, "certificate reload failed; keeping the previous one");
                }
            }
        });
    }

    /// Server side: our certificate (always the current one), client certificates required
    /// and verified against the mesh CA, HTTP/2 and HTTP/1.1 offered.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|error| TlsError::Rustls(rustls::Error::General(error.to_string())))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Client side: our certificate for client auth, the server verified against the mesh
    /// CA and, when `expected` is given, required to be `spiffe://aida/<expected>`.
    pub fn client_config(
        self: &Arc<Self>,
        expected: Option<&str>,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let webpki = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|error| TlsError::Rustls(rustls::Error::General(error.to_string())))?;
        let verifier = Arc::new(SpiffeServerVerifier {
            inner: webpki,
            expected: expected.map(|service| format!("{TRUST_DOMAIN}{service}")),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for MeshTls {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for MeshTls {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The standard WebPKI checks against the mesh CA, then the SPIFFE identity of the server.
#[derive(Debug)]
struct SpiffeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: Option<String>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if let Some(expected) = &self.expected
            && spiffe_id(end_entity).as_deref() != Some(expected.as_str())
        {
            return Err(rustls::Error::General(format!(
                "the server is not {expected}"
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepted, handshaken TLS connections whose client presented a mesh identity. Handshakes
/// run concurrently, so a slow or hostile client cannot hold up the others.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>,
> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "tls handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certificates| certificates.first())
                    .and_then(spiffe_id);
                if identity.is_none() {
                    tracing::warn!(%peer, "client certificate without a mesh identity refused");
                    return;
                }
                let _ = sender.send(Ok(stream)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// A channel to a mesh service over mutual TLS: our certificate, the server checked to be
/// `spiffe://aida/<service>`.
pub fn channel(
    tls: &Arc<MeshTls>,
    endpoint: tonic::transport::Endpoint,
    service: &str,
) -> Result<tonic::transport::Channel, TlsError> {
    let connector = tokio_rustls::TlsConnector::from(tls.client_config(Some(service))?);
    let connect = tower::service_fn(move |uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or("localhost")
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_carry_the_service_identity_and_verify_against_the_ca() {
        let dir = tempfile::tempdir().expect("dir");
        generate(dir.path(), &["leads", "edge"], &[]).expect("generate");
        let tls = MeshTls::load(dir.path(), "leads").expect("load");
        let certificate = tls.current().cert[0].clone();
        assert_eq!(
            spiffe_id(&certificate).as_deref(),
            Some("spiffe://aida/leads")
        );
        assert!(tls.server_config().is_ok());
        assert!(tls.client_config(Some("edge")).is_ok());
        let mode = std::fs::metadata(dir.path().join("leads.key"))
            .expect("key")
            .permissions();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(mode.mode() & 0o077, 0, "private keys are owner-only");
        }
        let _ = mode;
    }

    #[test]
    fn a_rewritten_certificate_is_picked_up_without_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        generate(dir.path(), &["deals"], &[]).expect("generate");
        let tls = MeshTls::load(dir.path(), "deals").expect("load");
        let before = tls.current().cert[0].clone();
        std::thread::sleep(Duration::from_millis(20));
        generate(dir.path(), &["deals"], &[]).expect("reissue");
        let file = std::fs::File::options()
            .append(true)
            .open(dir.path().join("deals.pem"))
            .expect("open");
        file.set_modified(SystemTime::now() + Duration::from_secs(5))
            .expect("touch");
        assert!(tls.reload_if_changed().expect("reload"));
        assert_ne!(tls.current().cert[0], before);
        assert!(!tls.reload_if_changed().expect("unchanged"));
    }
}
