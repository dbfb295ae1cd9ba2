//! The AI calls as Prometheus sees them: every embedder and writer the services use is
//! wrapped here, so each call is counted and timed under one set of names.
//!
//! - `aida_ai_calls_total{kind, model, outcome}`: `kind` is `embedding` or `generation`,
//!   `outcome` `ok` or `error`
//! - `aida_ai_call_seconds{kind, model}` (histogram)
//! - `aida_ai_embedded_texts_total{model}`

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::embed::{EmbedError, Embedder};
use crate::generate::{ContentGenerator, Draft, GenerateError, GenerationRequest};

pub const CALLS: &str = "aida_ai_calls_total";
pub const CALL_SECONDS: &str = "aida_ai_call_seconds";
pub const EMBEDDED_TEXTS: &str = "aida_ai_embedded_texts_total";

fn record(kind: &'static str, model: &str, started: Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(CALLS, "kind" => kind, "model" => model.to_owned(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(CALL_SECONDS, "kind" => kind, "model" => model.to_owned())
        .record(started.elapsed().as_secs_f64());
}

/// An [`Embedder`] whose calls are measured.
pub struct MeasuredEmbedder(pub Box<dyn Embedder>);

impl Embedder for MeasuredEmbedder {
    fn model_version(&self) -> &str {
        self.0.model_version()
    }

    fn dimensions(&self) -> usize {
        self.0.dimensions()
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let started = Instant::now();
        let embedded = self.0.embed(texts);
        let model = self.0.model_version();
        record("embedding", model, started, embedded.is_ok());
        if embedded.is_ok() {
            metrics::counter!(EMBEDDED_TEXTS, "model" => model.to_owned())
                .increment(texts.len() as u64);
        }
        embedded
    }
}

/// A [`ContentGenerator`] whose calls are measured.
pub struct MeasuredGenerator(pub Arc<dyn ContentGenerator>);

#[async_trait]
impl ContentGenerator for MeasuredGenerator {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn model(&self) -> &str {
        self.0.model()
    }

    async fn generate(&self, request: &GenerationRequest) -> Result<Draft, GenerateError> {
        let started = Instant::now();
        let generated = self.0.generate(request).await;
        record("generation", self.0.model(), started, generated.is_ok());
        generated
    }
}
