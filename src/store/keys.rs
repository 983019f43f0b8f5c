//! Secrets the store handles: tenant API keys (format, generation, keyed hashing, constant-time comparison), the
//! server's key pepper, the operator token, and random resource ids. Owns no rows: the back ends store what
//! [`KeyHasher::hash`] returns and nothing else of a key.
//!
//! # API key format
//!
//! `fvk_` + 8 id characters + `_` + 40 secret characters, each character from the lowercase base32 alphabet
//! `a-z2-7` (5 random bits). The visible **prefix** (`fvk_` + the 8 id characters) names the key in listings and
//! `DELETE /keys/{prefix}`; the whole key carries 240 random bits, of which the 200 after the prefix are never
//! shown again. The store keeps `HMAC-SHA256(pepper, key)`: without the pepper, which lives in its own file and
//! never in the database, a stolen database does not let anyone test guesses offline.

use std::fmt;
use std::io::Write;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use rand::TryRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Actor, BackendError, InvalidInput, Operator, StoreError};

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
pub const KEY_TAG: &str = "fvk_";
const KEY_ID_CHARS: usize = 8;
const KEY_SECRET_CHARS: usize = 40;
/// `fvk_` + id: what a listing shows.
const PREFIX_LEN: usize = KEY_TAG.len() + KEY_ID_CHARS;
/// The whole key: prefix, `_`, secret.
const KEY_LEN: usize = PREFIX_LEN + 1 + KEY_SECRET_CHARS;
// At least 160 secret bits beyond the visible prefix (there are 200; 240 with the prefix).
const _: () = assert!(KEY_SECRET_CHARS * 5 >= 160);

/// `n` characters of lowercase base32 from the operating system's random source (5 bits each: a byte's low 5 bits,
/// unbiased since 32 divides 256).
pub(crate) fn random_base32(n: usize) -> Result<String, StoreError> {
    let mut bytes = vec![0u8; n];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| StoreError::Backend(BackendError::new(format!("the OS random source failed: {e}"))))?;
    Ok(bytes.iter().map(|b| BASE32[(b & 31) as usize] as char).collect())
}

fn is_base32(s: &str) -> bool {
    s.bytes().all(|b| BASE32.contains(&b))
}

/// A key's visible prefix, `fvk_` + 8 characters: unique across the server, safe to show and log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn parse(text: &str) -> Result<KeyPrefix, InvalidInput> {
        match text.strip_prefix(KEY_TAG) {
            Some(id) if id.len() == KEY_ID_CHARS && is_base32(id) => Ok(KeyPrefix(text.to_owned())),
            _ => Err(InvalidInput::new("prefix", "not an API key prefix (fvk_ and 8 characters)")),
        }
    }

    pub(crate) fn generate() -> Result<KeyPrefix, StoreError> {
        Ok(KeyPrefix(format!("{KEY_TAG}{}", random_base32(KEY_ID_CHARS)?)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A whole API key, as shown once at creation. Its `Debug` shows only the prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    pub(crate) fn generate(prefix: &KeyPrefix) -> Result<ApiKeySecret, StoreError> {
        Ok(ApiKeySecret(format!("{prefix}_{}", random_base32(KEY_SECRET_CHARS)?)))
    }

    /// The key itself: give it to the tenant once, never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret({}_...)", &self.0[..PREFIX_LEN.min(self.0.len())])
    }
}

/// Splits a presented key into its prefix, checking the whole format; `None` for anything that is not a key.
pub(crate) fn parse_presented(presented: &str) -> Option<KeyPrefix> {
    if presented.len() != KEY_LEN || !presented.is_ascii() {
        return None;
    }
    let (prefix, rest) = presented.split_at(PREFIX_LEN);
    let secret = rest.strip_prefix('_')?;
    if secret.len() != KEY_SECRET_CHARS || !is_base32(secret) {
        return None;
    }
    KeyPrefix::parse(prefix).ok()
}

/// The server secret API keys are hashed with. 32 bytes, kept in a file of its own (0600) beside the database.
#[derive(Clone)]
pub struct KeyPepper([u8; 32]);

impl KeyPepper {
    pub fn from_bytes(bytes: [u8; 32]) -> KeyPepper {
        KeyPepper(bytes)
    }

    /// A fresh random pepper.
    pub fn generate() -> Result<KeyPepper, StoreError> {
        let mut bytes = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| StoreError::Backend(BackendError::new(format!("the OS random source failed: {e}"))))?;
        Ok(KeyPepper(bytes))
    }

    /// Reads the pepper from `path` (64 hex digits), or creates the file (mode 0600) with a fresh one. Losing the
    /// file invalidates every API key: back it up with the database.
    pub fn load_or_create(path: &Path) -> Result<KeyPepper, StoreError> {
        let backend = |what: &str, e: std::io::Error| {
            StoreError::Backend(BackendError::new(format!("{what} {}: {e}", path.display())))
        };
        match std::fs::read_to_string(path) {
            Ok(text) => KeyPepper::from_hex(text.trim()).ok_or_else(|| {
                StoreError::Backend(BackendError::new(format!("{}: not 64 hex digits", path.display())))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pepper = KeyPepper::generate()?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path).map_err(|e| backend("cannot create", e))?;
                let hex: String = pepper.0.iter().map(|b| format!("{b:02x}")).collect();
                file.write_all(hex.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| backend("cannot write", e))?;
                Ok(pepper)
            }
            Err(e) => Err(backend("cannot read", e)),
        }
    }

    fn from_hex(text: &str) -> Option<KeyPepper> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(KeyPepper(bytes))
    }
}

impl fmt::Debug for KeyPepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPepper(..)")
    }
}

/// Hashes keys with the pepper and compares hashes in constant time.
#[derive(Clone, Debug)]
pub(crate) struct KeyHasher {
    pepper: KeyPepper,
}

impl KeyHasher {
    pub(crate) fn new(pepper: KeyPepper) -> KeyHasher {
        KeyHasher { pepper }
    }

    /// `HMAC-SHA256(pepper, key)`.
    pub(crate) fn hash(&self, key: &str) -> [u8; 32] {
        // HMAC takes a key of any length, so this cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.pepper.0) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `presented` hashes to `stored`, in time independent of where they differ. With no stored hash (an
    /// unknown prefix) the same work is done against a dummy, so timing does not tell known prefixes apart.
    pub(crate) fn verify(&self, presented: &str, stored: Option<&[u8]>) -> bool {
        let computed = self.hash(presented);
        match stored {
            Some(stored) => bool::from(computed.as_slice().ct_eq(stored)),
            None => {
                let dummy = [0u8; 32];
                let _ = computed.as_slice().ct_eq(&dummy);
                false
            }
        }
    }
}

/// The operator's bearer token, held as its SHA-256 so that a comparison takes the same time whatever is presented.
/// Verifying it is the only way from outside the crate to an [`Operator`].
pub struct OperatorToken {
    digest: [u8; 32],
}

impl OperatorToken {
    /// At least 32 characters: the API generates 43 (256 bits) when `FAIRVOX_ADMIN_TOKEN` is not set.
    pub fn new(token: &str) -> Result<OperatorToken, InvalidInput> {
        if token.len() < 32 {
            return Err(InvalidInput::new("admin_token", "must be at least 32 characters"));
        }
        Ok(OperatorToken { digest: Sha256::digest(token.as_bytes()).into() })
    }

    /// The operator context, when `presented` is the token.
    pub fn verify(&self, presented: &str) -> Option<Operator> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&self.digest)).then_some(Operator { actor: Actor::Operator })
    }
}

impl fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OperatorToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_prefix() {
        let prefix = KeyPrefix::generate().unwrap();
        let key = ApiKeySecret::generate(&prefix).unwrap();
        assert_eq!(key.expose().len(), KEY_LEN);
        assert_eq!(parse_presented(key.expose()), Some(prefix.clone()));
        assert!(!format!("{key:?}").contains(&key.expose()[PREFIX_LEN..]));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let good = format!("fvk_abcdefgh_{}", "a".repeat(40));
        assert!(parse_presented(&good).is_some());
        for bad in [
            String::new(),
            "fvk_".into(),
            good.replace("fvk_", "fvx_"),
            good.replace("h_", "h-"),
            format!("{good}a"),
            good[..good.len() - 1].to_string(),
            good.replace("abcdefgh", "ABCDEFGH"),
            format!("fvk_abcdefgh_{}1", "a".repeat(39)),
            format!("fvk_abcdéfh_{}", "a".repeat(40)),
        ] {
            assert!(parse_presented(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn hashes_depend_on_the_pepper_and_verify_in_constant_time_api() {
        let a = KeyHasher::new(KeyPepper::from_bytes([1; 32]));
        let b = KeyHasher::new(KeyPepper::from_bytes([2; 32]));
        let key = "fvk_abcdefgh_aaaa";
        assert_ne!(a.hash(key), b.hash(key));
        assert!(a.verify(key, Some(&a.hash(key))));
        assert!(!a.verify(key, Some(&b.hash(key))));
        assert!(!a.verify(key, None));
        assert!(!a.verify(key, Some(&a.hash(key)[..31])));
    }

    #[test]
    fn pepper_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key-pepper");
        let first = KeyPepper::load_or_create(&path).unwrap();
        let second = KeyPepper::load_or_create(&path).unwrap();
        assert_eq!(first.0, second.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "nothex").unwrap();
        assert!(KeyPepper::load_or_create(&path).is_err());
    }

    #[test]
    fn operator_token() {
        assert!(OperatorToken::new("short").is_err());
        let token = OperatorToken::new(&"t".repeat(40)).unwrap();
        assert!(token.verify(&"t".repeat(40)).is_some());
        assert!(token.verify(&"t".repeat(39)).is_none());
        assert!(token.verify("").is_none());
    }
}
