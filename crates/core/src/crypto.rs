//! Cryptography for data at rest and for tokens.
//!
//! One 256-bit master key (generated into the data folder on first start, or given by the operator)
//! derives independent subkeys, one per purpose, so no key is ever used for two things:
//! - `pii`: XChaCha20-Poly1305 encryption of personal data (email, phone, later IMEI/serial);
//! - `blind-index`: HMAC-SHA256 of the normalised value, the only thing look-ups compare;
//! - `code`: HMAC-SHA256 of one-time codes (a 6-digit code alone is trivially brute-forced offline);
//! - `access-token`: HMAC-SHA256 signature of short-lived access tokens.
//!
//! Long random secrets (refresh tokens) are stored as plain SHA-256: their entropy makes a keyed or
//! slow hash unnecessary, and a database dump still cannot be replayed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::clock::Timestamp;
use crate::ids::{AccountId, SessionId};

type HmacSha256 = Hmac<Sha256>;

/// Version byte in front of every sealed value, so keys and algorithms can rotate later.
const SEAL_V1: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the secret key must be 32 bytes written as 64 hex characters or 43/44 base64 characters; got {0} characters that decode to neither")]
    Malformed(usize),
}

/// The master key, parsed from its text form.
pub struct MasterKey(SecretSlice<u8>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new(vec![0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut k);
        MasterKey(SecretSlice::from(k.to_vec()))
    }

    /// Accepts 64 hex characters or unpadded/padded base64 (standard or URL-safe) of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let t = text.trim();
        let bytes = if t.len() == 64 {
            hex::decode(t).ok()
        } else {
            let unpadded = t.trim_end_matches('=');
            URL_SAFE_NO_PAD
                .decode(unpadded.replace('+', "-").replace('/', "_"))
                .ok()
        };
        match bytes {
            Some(b) if b.len() == 32 => Ok(MasterKey(SecretSlice::from(b))),
            _ => Err(KeyError::Malformed(t.len())),
        }
    }

    /// Hex text, as written to the key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.expose_secret()))
    }

    fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(b"mica/v1/");
        mac.update(purpose.as_bytes());
        Zeroizing::new(mac.finalize().into_bytes().into())
    }
}

// HMAC accepts keys of any length; this is never reached.
#[allow(clippy::panic)]
fn unreachable_hmac() -> HmacSha256 {
    panic!("HMAC-SHA256 accepts keys of every length")
}

fn hmac(key: &[u8; 32]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac())
}

/// All derived keys, built once at start.
pub struct Keys {
    pii: XChaCha20Poly1305,
    blind: Zeroizing<[u8; 32]>,
    code: Zeroizing<[u8; 32]>,
    access: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stored personal data could not be decrypted (wrong key or corrupted value)")]
pub struct OpenError;

impl Keys {
    pub fn from_master(master: &MasterKey) -> Self {
        let pii_key = master.derive("pii");
        Keys {
            pii: XChaCha20Poly1305::new(pii_key.as_ref().into()),
            blind: master.derive("blind-index"),
            code: master.derive("code"),
            access: master.derive("access-token"),
        }
    }

    /// Encrypts a personal value. `field` is bound as associated data, so a ciphertext copied into
    /// another column does not decrypt.
    pub fn seal(&self, field: &str, plaintext: &str) -> Vec<u8> {
        self.seal_bytes(field, plaintext.as_bytes())
    }

    /// [`Keys::seal`] for bytes that are not text (a report's attached log, say).
    pub fn seal_bytes(&self, field: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 24 + plaintext.len() + 16);
        out.push(SEAL_V1);
        // The 192-bit nonce comes from the thread's CSPRNG (ChaCha12, seeded and reseeded from
        // the OS): random nonces this long never repeat in practice, and a seal — twice per
        // synced item — needs no system call.
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        // Encrypted where it lies, tag appended: one buffer, no copy of the ciphertext.
        match self.pii.encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            field.as_bytes(),
            &mut out[1 + 24..],
        ) {
            Ok(tag) => out.extend_from_slice(&tag),
            // Only past 256 GiB of plaintext: leave a value that never opens.
            Err(_) => out.truncate(1 + 24),
        }
        out
    }

    pub fn open(&self, field: &str, sealed: &[u8]) -> Result<String, OpenError> {
        String::from_utf8(self.open_bytes(field, sealed)?).map_err(|_| OpenError)
    }

    /// Opens what [`Keys::seal_bytes`] sealed.
    pub fn open_bytes(&self, field: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 1 + 24 + 16 || sealed[0] != SEAL_V1 {
            return Err(OpenError);
        }
        let (nonce, ct) = sealed[1..].split_at(24);
        let pt = self
            .pii
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: field.as_bytes(),
                },
            )
            .map_err(|_| OpenError)?;
        Ok(pt)
    }

    /// Keyed hash of a normalised value, the only form in which look-ups see it.
    pub fn blind_index(&self, kind: &str, normalised: &str) -> Vec<u8> {
        let mut mac = hmac(&self.blind);
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(normalised.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Keyed hash of a one-time code, bound to the code's record id.
    pub fn code_hash(&self, record_id: &str, code: &str) -> Vec<u8> {
        let mut mac = hmac(&self.code);
        mac.update(record_id.as_bytes());
        mac.update(&[0]);
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Constant-time comparison of a code against its stored hash.
    pub fn code_matches(&self, record_id: &str, code: &str, stored: &[u8]) -> bool {
        let mut mac = hmac(&self.code);
        mac.update(record_id.as_bytes());
        mac.update(&[0]);
        mac.update(code.as_bytes());
        mac.verify_slice(stored).is_ok()
    }

    /// Issues a signed access token: `mat1.<payload>.<signature>`, base64url.
    pub fn sign_access_token(&self, claims: &AccessClaims) -> String {
        self.sign_claims("mat1.", claims)
    }

    /// Checks the signature and decodes the claims. Expiry is the caller's business (it owns the clock).
    pub fn verify_access_token(&self, token: &str) -> Option<AccessClaims> {
        self.verify_claims("mat1.", token)
    }

    /// Issues the value of a browser's session cookie: `mws1.<payload>.<signature>`. The prefix
    /// is under the signature, so a cookie is never an access token, nor the reverse.
    pub fn sign_web_session(&self, claims: &AccessClaims) -> String {
        self.sign_claims("mws1.", claims)
    }

    /// Checks a browser's session cookie and decodes its claims (expiry is the caller's).
    pub fn verify_web_session(&self, cookie: &str) -> Option<AccessClaims> {
        self.verify_claims("mws1.", cookie)
    }

    /// Issues an access token for an OpenID client (ID-16): `moa1.<payload>.<signature>`. Under
    /// another prefix than Mica's own access tokens, so an application the person let know
    /// who they are can never use it on the API (their files, their devices).
    pub fn sign_oidc_access(&self, claims: &AccessClaims) -> String {
        self.sign_claims("moa1.", claims)
    }

    /// Checks an OpenID client's access token and decodes its claims (expiry is the caller's).
    pub fn verify_oidc_access(&self, token: &str) -> Option<AccessClaims> {
        self.verify_claims("moa1.", token)
    }

    /// The anti-forgery token of a browser session: what its pages' forms carry back, which a
    /// page of another site cannot know.
    pub fn csrf_token(&self, session: &SessionId) -> String {
        let mut mac = hmac(&self.access);
        mac.update(b"csrf1.");
        mac.update(session.0.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Whether `token` is the anti-forgery token of `session` (compared in constant time).
    pub fn csrf_matches(&self, session: &SessionId, token: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        let mut mac = hmac(&self.access);
        mac.update(b"csrf1.");
        mac.update(session.0.as_bytes());
        mac.verify_slice(&given).is_ok()
    }

    fn sign_claims(&self, prefix: &str, claims: &AccessClaims) -> String {
        let payload = claims.encode();
        let mut mac = hmac(&self.access);
        mac.update(prefix.as_bytes());
        mac.update(&payload);
        let sig = mac.finalize().into_bytes();
        format!(
            "{prefix}{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    fn verify_claims(&self, prefix: &str, token: &str) -> Option<AccessClaims> {
        let rest = token.strip_prefix(prefix)?;
        let (p, s) = rest.split_once('.')?;
        if p.len() > 256 || s.len() > 64 {
            return None;
        }
        let payload = URL_SAFE_NO_PAD.decode(p).ok()?;
        let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
        let mut mac = hmac(&self.access);
        mac.update(prefix.as_bytes());
        mac.update(&payload);
        mac.verify_slice(&sig).ok()?;
        AccessClaims::decode(&payload)
    }
}

/// What an access token says: whose it is, from which session, and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub account: AccountId,
    pub session: SessionId,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

impl AccessClaims {
    fn encode(&self) -> Vec<u8> {
        let sid = self.session.0.as_bytes();
        let mut v = Vec::with_capacity(8 + 8 + 8 + 1 + sid.len());
        v.extend_from_slice(&self.account.get().to_be_bytes());
        v.extend_from_slice(&self.issued_at.0.to_be_bytes());
        v.extend_from_slice(&self.expires_at.0.to_be_bytes());
        v.push(u8::try_from(sid.len()).unwrap_or(0));
        v.extend_from_slice(sid);
        v
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let account = AccountId::new(u64::from_be_bytes(b.get(0..8)?.try_into().ok()?))?;
        let issued_at = Timestamp(i64::from_be_bytes(b.get(8..16)?.try_into().ok()?));
        let expires_at = Timestamp(i64::from_be_bytes(b.get(16..24)?.try_into().ok()?));
        let n = usize::from(*b.get(24)?);
        let sid = b.get(25..25 + n)?;
        if b.len() != 25 + n {
            return None;
        }
        let session = SessionId(String::from_utf8(sid.to_vec()).ok()?);
        Some(AccessClaims {
            account,
            session,
            issued_at,
            expires_at,
        })
    }
}

/// `n` random bytes as unpadded base64url text.
pub fn random_token_string(n: usize) -> String {
    let mut b = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(&*b)
}

/// Whether `id` could be one this server made: `<prefix>_<random_token_string>`, so ASCII
/// letters, digits, `_` and `-`, at most 64 of them. What fails this was never issued, and is
/// refused before it reaches a query (where, say, PostgreSQL cannot compare a NUL).
pub fn is_issued_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// SHA-256 of a high-entropy token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A uniformly random numeric code of `digits` digits (leading zeros allowed).
pub fn random_digits(digits: u32) -> String {
    use rand::Rng;
    let max = 10u64.pow(digits);
    let n = rand::rngs::OsRng.gen_range(0..max);
    format!("{n:0width$}", width = digits as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::from_master(&MasterKey::generate())
    }

    #[test]
    fn seal_round_trip_and_field_binding() {
        let k = keys();
        let s = k.seal("email", "ana@example.com");
        assert!(!s.windows(3).any(|w| w == b"ana"));
        assert_eq!(k.open("email", &s).as_deref(), Ok("ana@example.com"));
        assert_eq!(k.open("phone", &s), Err(OpenError));
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(k.open("email", &t), Err(OpenError));
        // Fresh nonce each time.
        assert_ne!(s, k.seal("email", "ana@example.com"));
    }

    #[test]
    fn blind_index_is_deterministic_and_keyed() {
        let a = keys();
        let b = keys();
        assert_eq!(
            a.blind_index("email", "x@y.z"),
            a.blind_index("email", "x@y.z")
        );
        assert_ne!(
            a.blind_index("email", "x@y.z"),
            a.blind_index("phone", "x@y.z")
        );
        assert_ne!(
            a.blind_index("email", "x@y.z"),
            b.blind_index("email", "x@y.z")
        );
    }

    #[test]
    fn access_tokens_verify_and_resist_tampering() {
        let k = keys();
        let claims = AccessClaims {
            account: AccountId::random(),
            session: SessionId::random(),
            issued_at: Timestamp(1),
            expires_at: Timestamp(2),
        };
        let t = k.sign_access_token(&claims);
        assert_eq!(k.verify_access_token(&t), Some(claims.clone()));
        assert_eq!(keys().verify_access_token(&t), None);
        let mut bad = t.clone().into_bytes();
        bad[8] = if bad[8] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            k.verify_access_token(&String::from_utf8(bad).unwrap_or_default()),
            None
        );
        assert_eq!(k.verify_access_token("mat1.."), None);
        assert_eq!(k.verify_access_token("garbage"), None);
    }

    #[test]
    fn web_sessions_and_access_tokens_never_pass_for_each_other() {
        let k = keys();
        let claims = AccessClaims {
            account: AccountId::random(),
            session: SessionId::random(),
            issued_at: Timestamp(1),
            expires_at: Timestamp(2),
        };
        let cookie = k.sign_web_session(&claims);
        assert_eq!(k.verify_web_session(&cookie), Some(claims.clone()));
        assert_eq!(k.verify_access_token(&cookie), None);
        let as_access = cookie.replacen("mws1.", "mat1.", 1);
        assert_eq!(k.verify_access_token(&as_access), None);
        let token = k.sign_access_token(&claims);
        assert_eq!(k.verify_web_session(&token), None);
        assert_eq!(
            k.verify_web_session(&token.replacen("mat1.", "mws1.", 1)),
            None
        );
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let k = keys();
        let (a, b) = (SessionId::random(), SessionId::random());
        let t = k.csrf_token(&a);
        assert!(k.csrf_matches(&a, &t));
        assert!(!k.csrf_matches(&b, &t));
        assert!(!keys().csrf_matches(&a, &t));
        assert!(!k.csrf_matches(&a, ""));
        assert!(!k.csrf_matches(&a, "not base64 !"));
    }

    #[test]
    fn master_key_parsing() {
        let m = MasterKey::generate();
        let hex = m.to_hex();
        assert!(MasterKey::parse(&hex).is_ok());
        assert!(MasterKey::parse("not a key").is_err());
        assert!(MasterKey::parse(&hex[..60]).is_err());
        assert!(MasterKey::parse(&URL_SAFE_NO_PAD.encode([7u8; 32])).is_ok());
    }

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..100 {
            let c = random_digits(6);
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
