//! Who may log in to `pushwire serve`: PBKDF2 password hashes, the `--users` file, and
//! the development login used when there is no users file.
//!
//! A hash is written `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`: PBKDF2 with
//! HMAC-SHA256 (ring), a 16-byte random salt and a 32-byte output. The users file is
//! TOML:
//!
//! ```toml
//! [users]
//! alice = "pbkdf2-sha256$100000$…$…"
//! ```
//!
//! User ids are compared case-insensitively (`str::to_lowercase`), as the hub compares
//! receivers of user messages.

use crate::server::{AuthAttempt, AuthDecision, Authenticator};
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

/// PBKDF2 iterations for new hashes. Verifying costs this many HMAC-SHA256 rounds
/// (tens of milliseconds) once per login, on the connection's task.
pub const PBKDF2_ITERATIONS: u32 = 100_000;

const SCHEME: &str = "pbkdf2-sha256";
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
static ALGORITHM: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

/// A salted PBKDF2-HMAC-SHA256 password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

/// The system random number generator failed (no salt could be drawn).
#[derive(Debug, Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// A hash string that is not `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid password hash: {0} (expected pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>, as `pushwire hash-password` prints)")]
pub struct ParseHashError(&'static str);

impl PasswordHash {
    /// Hashes `password` with a fresh random salt and [`PBKDF2_ITERATIONS`].
    pub fn new(password: &[u8]) -> Result<Self, RandomError> {
        let mut salt = vec![0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| RandomError)?;
        let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).expect("non-zero constant");
        Ok(Self::with_salt(password, salt, iterations))
    }

    /// Hashes `password` with a given salt and iteration count.
    pub fn with_salt(password: &[u8], salt: Vec<u8>, iterations: NonZeroU32) -> Self {
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::derive(ALGORITHM, iterations, &salt, password, &mut hash);
        Self {
            iterations,
            salt,
            hash,
        }
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(ALGORITHM, self.iterations, &self.salt, password, &self.hash).is_ok()
    }
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}${}${}${}",
            self.iterations,
            to_hex(&self.salt),
            to_hex(&self.hash)
        )
    }
}

impl fmt::Debug for PasswordHash {
    // The hash is a password equivalent for offline guessing: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash({SCHEME}, {} iterations)", self.iterations)
    }
}

impl FromStr for PasswordHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('$');
        let (Some(scheme), Some(iterations), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ParseHashError("it does not have four `$`-separated parts"));
        };
        if scheme != SCHEME {
            return Err(ParseHashError("unknown scheme"));
        }
        let iterations = iterations
            .parse::<NonZeroU32>()
            .map_err(|_| ParseHashError("the iteration count is not a positive number"))?;
        let salt = from_hex(salt).ok_or(ParseHashError("the salt is not hex"))?;
        if salt.is_empty() {
            return Err(ParseHashError("the salt is empty"));
        }
        let hash = from_hex(hash)
            .and_then(|h| <[u8; HASH_LEN]>::try_from(h).ok())
            .ok_or(ParseHashError("the hash is not 32 bytes of hex"))?;
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Why a users file could not be used.
#[derive(Debug, Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error("cannot read the users file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid users file{}: {message}", origin(path))]
    Syntax {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The TOML parser's explanation, on one line.
        message: String,
    },
    /// A user's hash does not parse.
    #[error("invalid users file{}: user {user:?}: {source}", origin(path))]
    BadHash {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The user.
        user: String,
        /// What is wrong with the hash.
        source: ParseHashError,
    },
    /// Two entries name the same user once case is ignored.
    #[error(
        "invalid users file{}: user {user:?} appears twice (user ids ignore case)",
        origin(path)
    )]
    Duplicate {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The user (lowercase).
        user: String,
    },
    /// The random number generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
}

fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, String>,
}

/// The users who may log in, with their password hashes; an [`Authenticator`].
pub struct Users {
    by_id: BTreeMap<String, PasswordHash>,
    /// Checked for unknown users so that a login attempt takes as long whether or not
    /// the user exists (no user enumeration by timing).
    decoy: PasswordHash,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("users", &self.by_id.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Users {
    /// Reads a users file.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_from(&text, Some(path))
    }

    /// Parses the text of a users file.
    pub fn parse(text: &str) -> Result<Self, UsersError> {
        Self::parse_from(text, None)
    }

    fn parse_from(text: &str, path: Option<&Path>) -> Result<Self, UsersError> {
        let path = path.map(Path::to_owned);
        let file: UsersFile = toml::from_str(text).map_err(|e| UsersError::Syntax {
            path: path.clone(),
            message: e.message().to_owned(),
        })?;
        let mut by_id = BTreeMap::new();
        for (user, hash) in file.users {
            let hash = hash.parse().map_err(|source| UsersError::BadHash {
                path: path.clone(),
                user: user.clone(),
                source,
            })?;
            let key = user.to_lowercase();
            if by_id.insert(key.clone(), hash).is_some() {
                return Err(UsersError::Duplicate { path, user: key });
            }
        }
        let decoy_iterations = by_id
            .values()
            .map(|h: &PasswordHash| h.iterations)
            .max()
            .unwrap_or(NonZeroU32::new(PBKDF2_ITERATIONS).expect("non-zero constant"));
        let mut salt = vec![0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| RandomError)?;
        let decoy = PasswordHash::with_salt(b"", salt, decoy_iterations);
        Ok(Self { by_id, decoy })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no users (then nobody can log in).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether `user_id` (any case) exists and `password` is theirs.
    pub fn verify(&self, user_id: &str, password: &[u8]) -> bool {
        match self.by_id.get(&user_id.to_lowercase()) {
            Some(hash) => hash.verify(password),
            None => {
                let _ = self.decoy.verify(password);
                false
            }
        }
    }
}

impl Authenticator for Users {
    fn authenticate(&self, attempt: &AuthAttempt<'_>) -> AuthDecision {
        if self.verify(attempt.user_id, attempt.password) {
            AuthDecision::Permit
        } else {
            AuthDecision::bad_credentials()
        }
    }
}

/// The development login: any user id, with the password
/// [`DEVELOPMENT_PASSWORD`](super::DEVELOPMENT_PASSWORD) (the tutorial's). `serve`
/// uses it only on a loopback address.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevelopmentLogin;

impl Authenticator for DevelopmentLogin {
    fn authenticate(&self, attempt: &AuthAttempt<'_>) -> AuthDecision {
        if attempt.password == super::DEVELOPMENT_PASSWORD.as_bytes() {
            AuthDecision::Permit
        } else {
            AuthDecision::bad_credentials()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Few iterations: the tests check the format and the logic, not the cost.
    fn quick_hash(password: &str) -> PasswordHash {
        PasswordHash::with_salt(
            password.as_bytes(),
            b"0123456789abcdef".to_vec(),
            NonZeroU32::new(10).unwrap(),
        )
    }

    #[test]
    fn a_hash_verifies_its_password_and_nothing_else() {
        let hash = PasswordHash::new(b"correct horse").unwrap();
        assert!(hash.verify(b"correct horse"));
        assert!(!hash.verify(b"correct horsE"));
        assert!(!hash.verify(b""));
    }

    #[test]
    fn new_hashes_use_the_documented_format_and_a_fresh_salt() {
        let a = PasswordHash::new(b"pw").unwrap().to_string();
        let b = PasswordHash::new(b"pw").unwrap().to_string();
        let parts: Vec<&str> = a.split('$').collect();
        assert_eq!(parts.len(), 4, "{a}");
        assert_eq!(parts[0], "pbkdf2-sha256");
        assert_eq!(parts[1], "100000");
        assert_eq!(parts[2].len(), 32, "16-byte salt in hex");
        assert_eq!(parts[3].len(), 64, "32-byte hash in hex");
        assert_ne!(a, b, "two hashes of one password must differ by salt");
    }

    #[test]
    fn a_hash_survives_printing_and_parsing() {
        let hash = quick_hash("secret");
        let parsed: PasswordHash = hash.to_string().parse().unwrap();
        assert_eq!(parsed, hash);
        assert!(parsed.verify(b"secret"));
    }

    #[test]
    fn a_known_vector_matches() {
        // The widely published PBKDF2-HMAC-SHA256 vector: password "password", salt
        // "salt" (hex 73616c74), 1 iteration, 32 bytes.
        let hash: PasswordHash = "pbkdf2-sha256$1$73616c74$\
             120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
            .parse()
            .unwrap();
        assert!(hash.verify(b"password"));
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "",
            "bcrypt$10$00$00",
            "pbkdf2-sha256$0$00$00",
            "pbkdf2-sha256$10$zz$00",
            "pbkdf2-sha256$10$$00",
            "pbkdf2-sha256$10$00$0011",
            "pbkdf2-sha256$10$00$00$extra",
        ] {
            assert!(bad.parse::<PasswordHash>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_users_file_is_parsed_with_case_insensitive_ids() {
        let text = format!(
            "[users]\nAlice = \"{}\"\nbob = \"{}\"\n",
            quick_hash("a-pass"),
            quick_hash("b-pass")
        );
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", b"a-pass"));
        assert!(users.verify("ALICE", b"a-pass"));
        assert!(!users.verify("alice", b"b-pass"));
        assert!(users.verify("Bob", b"b-pass"));
        assert!(!users.verify("carol", b"a-pass"), "unknown user");
    }

    #[test]
    fn bad_users_files_are_refused_with_the_reason() {
        let good = quick_hash("x").to_string();
        let cases = [
            ("[users]\nalice = 3\n", "invalid users file"),
            ("[people]\nalice = \"x\"\n", "invalid users file"),
            ("[users]\nalice = \"not-a-hash\"\n", "user \"alice\""),
            (
                &*format!("[users]\nalice = \"{good}\"\nALICE = \"{good}\"\n"),
                "appears twice",
            ),
        ];
        for (text, expected) in cases {
            let error = Users::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn an_empty_users_file_lets_nobody_in() {
        let users = Users::parse("").unwrap();
        assert!(users.is_empty());
        assert!(!users.verify("alice", b""));
    }
}
