//! Delivery: e-mail through SMTP (lettre) or, embedded, as `.eml` files in a directory;
//! SMS through an HTTP provider (a JSON POST) or, embedded, as `.json` files.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

/// Why a provider did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Refused(String),
}

#[async_trait]
pub trait EmailSender: Send + Sync + 'static {
    async fn send(&self, email: lettre::Message) -> Result<(), DeliveryError>;
}

#[async_trait]
pub trait SmsSender: Send + Sync + 'static {
    async fn send(&self, message_id: &str, to: &str, body: &str) -> Result<(), DeliveryError>;
}

/// E-mail over SMTP: `smtp://host:port` (plain), `smtp://…?tls=required` (STARTTLS) or
/// `smtps://…` (implicit TLS), with credentials in the URL.
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpSender {
    pub fn new(url: &SecretString) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
            .map_err(|error| format!("comms.smtp_url: {error}"))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(Self { transport })
    }
}

#[async_trait]
impl EmailSender for SmtpSender {
    async fn send(&self, email: lettre::Message) -> Result<(), DeliveryError> {
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|error| DeliveryError::Refused(format!("smtp: {error}")))
    }
}

/// E-mail written as one `.eml` file per message: the embedded default.
pub struct FileEmailSender {
    transport: AsyncFileTransport<Tokio1Executor>,
}

impl FileEmailSender {
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            transport: AsyncFileTransport::new(dir),
        })
    }
}

#[async_trait]
impl EmailSender for FileEmailSender {
    async fn send(&self, email: lettre::Message) -> Result<(), DeliveryError> {
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|error| DeliveryError::Refused(format!("mail dir: {error}")))
    }
}

/// SMS through an HTTP provider: `POST <url>` with `{"from","to","body","reference"}` and a
/// bearer key; any 2xx is accepted.
pub struct HttpSmsSender {
    client: reqwest::Client,
    url: String,
    key: Option<SecretString>,
    from: String,
}

impl HttpSmsSender {
    pub fn new(url: String, key: Option<SecretString>, from: String) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|error| format!("sms client: {error}"))?;
        Ok(Self {
            client,
            url,
            key,
            from,
        })
    }
}

#[async_trait]
impl SmsSender for HttpSmsSender {
    async fn send(&self, message_id: &str, to: &str, body: &str) -> Result<(), DeliveryError> {
        let mut request = self.client.post(&self.url).json(&serde_json::json!({
            "from": self.from,
            "to": to,
            "body": body,
            "reference": message_id,
        }));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key.expose_secret());
        }
        let response = request
            .send()
            .await
            .map_err(|error| DeliveryError::Refused(format!("sms provider: {error}")))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Refused(format!(
                "sms provider answered {}",
                response.status()
            )))
        }
    }
}

/// SMS written as one `.json` file per message: the embedded default.
pub struct FileSmsSender {
    dir: PathBuf,
    from: String,
}

impl FileSmsSender {
    pub fn new(dir: PathBuf, from: String) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, from })
    }
}

#[async_trait]
impl SmsSender for FileSmsSender {
    async fn send(&self, message_id: &str, to: &str, body: &str) -> Result<(), DeliveryError> {
        let content = serde_json::json!({ "from": self.from, "to": to, "body": body, "reference": message_id });
        tokio::fs::write(
            self.dir.join(format!("{message_id}.json")),
            content.to_string(),
        )
        .await
        .map_err(|error| DeliveryError::Refused(format!("sms dir: {error}")))
    }
}
