//! Opaque, tamper-proof tokens (AIP-158 page tokens, CommsService's tracking links): the
//! content is sealed with AES-256-GCM under a key derived from the service's secret, so a
//! token reveals nothing of what it holds (the last row's sort keys may be an e-mail
//! address) and a forged or edited token is INVALID_ARGUMENT, never a query.
//!
//! A token is `base64url(nonce ‖ ciphertext ‖ tag)`; the nonce is random per token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

use crate::error::Error;

type HmacSha256 = Hmac<Sha256>;

/// Tokens longer than this are refused unread.
const MAX_TOKEN_LEN: usize = 4096;

/// Seals and opens tokens for one purpose: page tokens, or the tracking links of
/// CommsService. Keys differ per purpose, so a token of one kind is never valid as another.
#[derive(Clone)]
pub struct PageTokens {
    key: std::sync::Arc<LessSafeKey>,
    /// Bound into every token as associated data: the purpose, again.
    purpose: &'static str,
    field: &'static str,
}

impl PageTokens {
    /// Page tokens, keyed from the service's secret so that every replica agrees.
    pub fn new(secret: &SecretString) -> Self {
        Self::for_purpose(secret, "page tokens", "page_token")
    }

    /// Tokens for `purpose`; a token that does not open is INVALID_ARGUMENT on `field`.
    pub fn for_purpose(secret: &SecretString, purpose: &'static str, field: &'static str) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(b"aida ");
        mac.update(purpose.as_bytes());
        mac.update(b" v2");
        let key_bytes: [u8; 32] = mac.finalize().into_bytes().into();
        let key =
            UnboundKey::new(&AES_256_GCM, &key_bytes).expect("a 32-byte key is an AES-256 key");
        Self {
            key: std::sync::Arc::new(LessSafeKey::new(key)),
            purpose,
            field,
        }
    }

    /// The sealed token of `content`.
    pub fn encode<T: Serialize>(&self, content: &T) -> Result<String, Error> {
        let mut sealed = vec![0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut sealed)
            .map_err(|_| Error::internal("no randomness for a token nonce"))?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed).map_err(Error::internal)?;
        let mut payload = serde_json::to_vec(content).map_err(Error::internal)?;
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(self.purpose.as_bytes()), &mut payload)
            .map_err(|_| Error::internal("token sealing failed"))?;
        sealed.extend_from_slice(&payload);
        Ok(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The content of a token this key sealed.
    pub fn decode<T: DeserializeOwned>(&self, token: &str) -> Result<T, Error> {
        let invalid = || Error::invalid(self.field, "not a valid token");
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid());
        }
        let mut sealed = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(invalid());
        }
        let mut payload = sealed.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&sealed).map_err(|_| invalid())?;
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(self.purpose.as_bytes()), &mut payload)
            .map_err(|_| invalid())?;
        serde_json::from_slice(opened).map_err(|_| invalid())
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
    fn a_token_reveals_nothing_of_its_content() {
        let secret = "ada.lovelace@example.com";
        let token = tokens()
            .encode(&(secret, "+44 20 7946 0100"))
            .expect("encode");
        let bytes = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("ada") && !text.contains("example") && !text.contains("7946"));
        assert!(!token.contains("ada"));
        // Two tokens of the same content differ (random nonce): equal keys are not linkable.
        assert_ne!(
            token,
            tokens()
                .encode(&(secret, "+44 20 7946 0100"))
                .expect("encode")
        );
    }

    #[test]
    fn an_edited_or_foreign_token_is_invalid_and_names_the_field() {
        let token = tokens().encode(&(7, "x")).expect("encode");
        let mut flipped = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let mut body_flipped = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
        body_flipped[NONCE_LEN] ^= 1;
        let tracking = PageTokens::for_purpose(
            &SecretString::from("k".repeat(40)),
            "tracking links",
            "token",
        );
        for forged in [
            URL_SAFE_NO_PAD.encode(&flipped),
            URL_SAFE_NO_PAD.encode(&body_flipped),
            URL_SAFE_NO_PAD.encode(b"[7,\"x\"]"),
            String::new(),
            "garbage!".to_owned(),
            "A".repeat(5000),
            PageTokens::new(&SecretString::from("z".repeat(40)))
                .encode(&(7, "x"))
                .expect("encode"),
            tracking.encode(&(7, "x")).expect("encode"),
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
