//! The AI side of AIDA-CRM: earned autonomy for its agents.
//!
//! [`autonomy`] decides how far an agent may go on its own for one action and segment, and
//! how it earns or loses that. [`models`] fetches and verifies the embedding model.

pub mod autonomy;
pub mod models;
