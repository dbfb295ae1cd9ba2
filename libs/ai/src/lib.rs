//! The AI side of AIDA-CRM: earned autonomy for its agents, sentence embeddings and the
//! vector store they search.
//!
//! [`autonomy`] decides how far an agent may go on its own for one action and segment, and
//! how it earns or loses that. [`embed`] turns text into vectors (all-MiniLM-L6-v2, or an
//! honest lexical fallback when the model is absent); [`models`] fetches and verifies the model.
//! [`vector`] stores embeddings per tenant and finds the nearest ones: in process
//! ([`vector::Embedded`]) or on a Chroma server ([`vector::Chroma`]). [`scoring`] scores leads
//! with an explainable logistic regression that learns from won and lost outcomes.
//! [`generate`] drafts outreach e-mails by LLM ([`generate::OpenRouter`]) or by template.

pub mod autonomy;
pub mod embed;
pub mod generate;
pub mod measured;
pub mod models;
pub mod scoring;
pub mod synthetic;
pub mod vector;
