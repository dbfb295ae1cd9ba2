//! The AI side of AIDA-CRM: earned autonomy for its agents, and sentence embeddings.
//!
//! [`autonomy`] decides how far an agent may go on its own for one action and segment, and
//! how it earns or loses that. [`embed`] turns text into vectors (all-MiniLM-L6-v2, or an
//! honest lexical fallback when the model is absent); [`models`] fetches and verifies the model.

pub mod autonomy;
pub mod embed;
pub mod models;
