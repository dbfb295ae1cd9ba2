//! Opaque, tamper-proof page tokens (AIP-158): the keyset position of the last row, signed
//! with HMAC-SHA256 so that a forged or edited token is INVALID_ARGUMENT, never a query.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

use crate::error::Error;

type HmacSha256 = Hmac<Sha256>;

/// Tokens longer than this are refused unread.
const MAX_TOKEN_LEN: usize = 4096;

/// Signs and verifies tokens for one purpose: page tokens, or the tracking links of
/// CommsService. Keys differ per purpose, so a token of one kind is never valid as another.
#[derive(Clone)]
pub struct PageTokens {
    key: [u8; 32],
    field: &'static str,
}

impl PageTokens {
    /// Page tokens, keyed from the service's secret so that every replica agrees.
    pub fn new(secret: &SecretString) -> Self {
        Self::for_purpose(secret, "page tokens", "page_token")
    }

    /// Tokens for `purpose`; a token that does not verify is INVALID_ARGUMENT on `field`.
    pub fn for_purpose(secret: &SecretString, purpose: &str, field: &'static str) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(b"aida ");
        mac.update(purpose.as_bytes());
        mac.update(b" v1");
        let key = mac.finalize().into_bytes().into();
        Self { key, field }
    }

    fn mac(&self, payload: &[u8]) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    pub fn encode<T: Serialize>(&self, position: &T) -> Result<String, Error> {
        let payload = serde_json::to_vec(position).map_err(Error::internal)?;
        let mac = self.mac(&payload);
        Ok(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(&mac[..16])
        ))
    }

    pub fn decode<T: DeserializeOwned>(&self, token: &str) -> Result<T, Error> {
        let field = self.field;
        let invalid = || Error::invalid(field, "not a valid token");
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid());
        }
        let (payload, signature) = token.split_once('.').ok_or_else(invalid)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid())?;
        if signature.len() != 16 {
            return Err(invalid());
        }
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(&payload);
        mac.verify_truncated_left(&signature)
            .map_err(|_| invalid())?;
        serde_json::from_slice(&payload).map_err(|_| invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> PageTokens {
        PageTokens::new(&SecretString::from("k".repeat(40)))
    }

    #[test]
    fn a_token_round_trips() {
        let token = tokens().encode(&(7, "x")).expect("encode");
        let back: (i32, String) = tokens().decode(&token).expect("decode");
        assert_eq!(back, (7, "x".to_owned()));
    }

    #[test]
    fn an_edited_or_foreign_token_is_invalid_and_names_the_field() {
        let token = tokens().encode(&(7, "x")).expect("encode");
        let (payload, signature) = token.split_once('.').expect("two parts");
        let forged_payload = URL_SAFE_NO_PAD.encode(b"[8,\"x\"]");
        for forged in [
            format!("{forged_payload}.{signature}"),
            format!("{payload}.AAAAAAAAAAAAAAAAAAAAAA"),
            format!("{payload}."),
            "garbage".to_owned(),
            PageTokens::new(&SecretString::from("z".repeat(40)))
                .encode(&(7, "x"))
                .expect("encode"),
        ] {
            let error = tokens()
                .decode::<(i32, String)>(&forged)
                .expect_err("forged");
            assert!(
                matches!(&error, Error::InvalidArgument(v) if v[0].field == "page_token"),
                "{forged}"
            );
        }
    }
}
