//! The operator's token: from `FAIRVOX_ADMIN_TOKEN`, or generated at first start and kept in `<data_dir>/admin-token`
//! (mode 0600). The token itself is never logged: only where it came from.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng;

use crate::store::OperatorToken;
use crate::store::keys::KEY_TAG;

/// The environment variable that sets the operator token.
pub const ADMIN_TOKEN_ENV: &str = "FAIRVOX_ADMIN_TOKEN";
/// The file the generated operator token is kept in, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("{ADMIN_TOKEN_ENV}: {0}")]
    Env(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Where the token came from, for the start-up log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Env,
    /// Read from the file, or generated into it (`created`).
    File {
        path: PathBuf,
        created: bool,
    },
}

/// The operator token: `env` when set (at least 32 characters, not shaped like an API key), else the token in
/// `<data_dir>/admin-token`, created with 43 random URL-safe characters (256 bits) when missing.
pub fn operator_token(env: Option<String>, data_dir: &Path) -> Result<(OperatorToken, TokenSource), TokenError> {
    if let Some(token) = env {
        let token = token.trim();
        if token.starts_with(KEY_TAG) {
            return Err(TokenError::Env(format!("must not start with {KEY_TAG:?} (that is how API keys start)")));
        }
        let token = OperatorToken::new(token).map_err(|e| TokenError::Env(e.reason))?;
        return Ok((token, TokenSource::Env));
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let fail = |reason: String| TokenError::File { path: path.clone(), reason };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = OperatorToken::new(text.trim()).map_err(|e| fail(e.reason))?;
            Ok((token, TokenSource::File { path, created: false }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::rngs::SysRng.try_fill_bytes(&mut bytes).map_err(|e| fail(format!("no randomness: {e}")))?;
            let text = URL_SAFE_NO_PAD.encode(bytes);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&path).map_err(|e| fail(format!("cannot create: {e}")))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .map_err(|e| fail(format!("cannot write: {e}")))?;
            let token = OperatorToken::new(&text).map_err(|e| fail(e.reason))?;
            Ok((token, TokenSource::File { path, created: true }))
        }
        Err(e) => Err(fail(format!("cannot read: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = operator_token(None, dir.path()).unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        assert_eq!(source, TokenSource::File { path: path.clone(), created: true });
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 43);
        assert!(first.verify(text.trim()).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let (second, source) = operator_token(None, dir.path()).unwrap();
        assert_eq!(source, TokenSource::File { path, created: false });
        assert!(second.verify(text.trim()).is_some(), "the same token after a restart");
    }

    #[test]
    fn env_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let token = "t".repeat(40);
        let (op, source) = operator_token(Some(token.clone()), dir.path()).unwrap();
        assert_eq!(source, TokenSource::Env);
        assert!(op.verify(&token).is_some());
        assert!(!dir.path().join(ADMIN_TOKEN_FILE).exists(), "no file when the env sets it");
        assert!(operator_token(Some("short".into()), dir.path()).is_err());
        assert!(operator_token(Some(format!("fvk_{}", "a".repeat(40))), dir.path()).is_err());
    }
}
