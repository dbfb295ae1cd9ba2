//! The AI side of AIDA-CRM: earned autonomy for its agents, and the vector store they search.
//!
//! [`autonomy`] decides how far an agent may go on its own for one action and segment, and
//! how it earns or loses that.
//!
//! [`vector`] stores embeddings per tenant and finds the nearest ones: in process
//! ([`vector::Embedded`]) or on a Chroma server ([`vector::Chroma`]).

pub mod autonomy;
pub mod vector;
