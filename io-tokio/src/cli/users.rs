//! Who may log in to `pushwire serve` and what they may do: PBKDF2 password hashes,
//! the `--users` file with its permissions, and the development login used when there
//! is no users file.
//!
//! A hash is written `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`: PBKDF2 with
//! HMAC-SHA256 (ring), a 16-byte random salt and a 32-byte output. The users file is
//! TOML; a user is either a bare hash (every permission, no connection limit) or a
//! table:
//!
//! ```toml
//! [users]
//! alice = "pbkdf2-sha256$100000$…$…"      # may do everything
//!
//! [users.bob]
//! password = "pbkdf2-sha256$100000$…$…"
//! publish = [1, "10-20"]                  # group ids and inclusive ranges; "*": all
//! subscribe = "*"
//! user_messages = false                   # may not send user messages
//! max_connections = 2                     # open at once
//! ```
//!
//! A key left out of a table allows everything (`publish = "*"`, `subscribe = "*"`,
//! `user_messages = true`, no connection limit), so an old file keeps working;
//! `publish = []` allows nothing. Unknown keys are errors.
//!
//! [`UserStore`] holds the users behind a swappable pointer: it is the server's
//! [`Authenticator`], its [`PermissionHooks`] enforce the permissions as push hooks
//! (a refusal is a PushRejected with `NotAuthorized`, as any hook's), and
//! [`UserStore::replace`] swaps in a reread file without a restart. Permissions
//! checked by the hooks (publish, subscribe, user messages) apply to every
//! connection from the next command on, open ones included; the connection limit is
//! checked at login. The server's own operations (`Origin::Server`, auto-subscribe,
//! disconnects, group removal) are never refused.
//!
//! User ids are compared case-insensitively (`str::to_lowercase`), as the hub compares
//! receivers of user messages.

use crate::server::{AuthAttempt, AuthDecision, Authenticator, Permit};
use bytes::Bytes;
use pushwire_engine::hub::{
    Actor, ConnectionId, ConnectionInfo, HookContext, Origin, PushHooks, Verdict,
};
use pushwire_protocol::GroupId;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
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
    /// A user's table has a wrong or unknown key.
    #[error("invalid users file{}: user {user:?}: {message}", origin(path))]
    BadEntry {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The user.
        user: String,
        /// What is wrong.
        message: String,
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
    users: BTreeMap<String, toml::Value>,
}

/// A user written as a table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserTable {
    password: String,
    publish: Option<toml::Value>,
    subscribe: Option<toml::Value>,
    user_messages: Option<bool>,
    max_connections: Option<u32>,
}

/// A set of chat group ids, as the users file writes it: `"*"` for every group, or a
/// list of ids and inclusive ranges (`[1, 2, "10-20"]`; an empty list is no group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSet {
    /// Every group.
    All,
    /// These ranges: sorted, not overlapping, not adjacent.
    Ranges(Vec<RangeInclusive<u32>>),
}

impl GroupSet {
    /// No group at all.
    pub fn none() -> Self {
        GroupSet::Ranges(Vec::new())
    }

    /// The set of these ranges (in any order, overlapping or not).
    pub fn from_ranges(ranges: impl IntoIterator<Item = RangeInclusive<u32>>) -> Self {
        let mut ranges: Vec<RangeInclusive<u32>> =
            ranges.into_iter().filter(|r| !r.is_empty()).collect();
        ranges.sort_by_key(|r| *r.start());
        let mut merged: Vec<RangeInclusive<u32>> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if u64::from(*range.start()) <= u64::from(*last.end()) + 1 => {
                    if range.end() > last.end() {
                        *last = *last.start()..=*range.end();
                    }
                }
                _ => merged.push(range),
            }
        }
        GroupSet::Ranges(merged)
    }

    /// Whether `group` is in the set (a binary search).
    pub fn contains(&self, group: u32) -> bool {
        match self {
            GroupSet::All => true,
            GroupSet::Ranges(ranges) => {
                // The first range that ends at or after `group`.
                let i = ranges.partition_point(|r| *r.end() < group);
                ranges.get(i).is_some_and(|r| *r.start() <= group)
            }
        }
    }

    /// Reads the users file's form: `"*"`, or an array of integers, `"n"` and
    /// `"a-b"` strings (`"*"` in the array also means every group).
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        let items = match value {
            toml::Value::String(s) if s.trim() == "*" => return Ok(GroupSet::All),
            toml::Value::Array(items) => items,
            other => {
                return Err(format!(
                    "expected \"*\" or a list of group ids and ranges such as [1, \"10-20\"], \
                     found {}",
                    other.type_str()
                ))
            }
        };
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            match item {
                toml::Value::Integer(n) => {
                    let id = u32::try_from(*n)
                        .map_err(|_| format!("{n} is not a group id (0 to {})", u32::MAX))?;
                    ranges.push(id..=id);
                }
                toml::Value::String(s) if s.trim() == "*" => return Ok(GroupSet::All),
                toml::Value::String(s) => ranges.push(parse_range(s)?),
                other => {
                    return Err(format!(
                        "expected a group id or a range such as \"10-20\", found {}",
                        other.type_str()
                    ))
                }
            }
        }
        Ok(GroupSet::from_ranges(ranges))
    }
}

/// `"7"` or `"10-20"` (inclusive, first ≤ last).
fn parse_range(text: &str) -> Result<RangeInclusive<u32>, String> {
    let id = |part: &str| {
        part.trim().parse::<u32>().map_err(|_| {
            format!(
                "{text:?} is not a group id or a range such as \"10-20\" (ids are 0 to {})",
                u32::MAX
            )
        })
    };
    match text.split_once('-') {
        None => id(text).map(|n| n..=n),
        Some((first, last)) => {
            let (first, last) = (id(first)?, id(last)?);
            if first > last {
                return Err(format!(
                    "{text:?} is an empty range (its first id is larger than its last)"
                ));
            }
            Ok(first..=last)
        }
    }
}

/// What one user may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Groups the user may publish to.
    pub publish: GroupSet,
    /// Groups the user may subscribe to.
    pub subscribe: GroupSet,
    /// Whether the user may send user messages.
    pub user_messages: bool,
    /// Connections the user may have open at once; `None`: no limit.
    pub max_connections: Option<u32>,
}

impl Permissions {
    /// Everything, with no connection limit: a user written as a bare hash.
    pub fn all() -> Self {
        Self {
            publish: GroupSet::All,
            subscribe: GroupSet::All,
            user_messages: true,
            max_connections: None,
        }
    }

    /// Nothing: what an open connection of a user removed from the file may do.
    pub fn nothing() -> Self {
        Self {
            publish: GroupSet::none(),
            subscribe: GroupSet::none(),
            user_messages: false,
            max_connections: Some(0),
        }
    }
}

impl Default for Permissions {
    fn default() -> Self {
        Self::all()
    }
}

struct User {
    hash: PasswordHash,
    permissions: Arc<Permissions>,
}

/// The users who may log in, with their password hashes and permissions; an
/// [`Authenticator`] whose permit carries the user's connection limit.
pub struct Users {
    by_id: BTreeMap<String, User>,
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
        for (user, value) in file.users {
            let bad_entry = |message: String| UsersError::BadEntry {
                path: path.clone(),
                user: user.clone(),
                message,
            };
            let (hash, permissions) = match value {
                toml::Value::String(hash) => (hash, Permissions::all()),
                table @ toml::Value::Table(_) => {
                    let table: UserTable = table
                        .try_into()
                        .map_err(|e: toml::de::Error| bad_entry(e.message().to_owned()))?;
                    let set = |value: Option<toml::Value>, key: &str| match value {
                        None => Ok(GroupSet::All),
                        Some(value) => GroupSet::from_toml(&value)
                            .map_err(|e| bad_entry(format!("{key}: {e}"))),
                    };
                    let permissions = Permissions {
                        publish: set(table.publish, "publish")?,
                        subscribe: set(table.subscribe, "subscribe")?,
                        user_messages: table.user_messages.unwrap_or(true),
                        max_connections: table.max_connections,
                    };
                    (table.password, permissions)
                }
                other => {
                    return Err(bad_entry(format!(
                        "expected a password hash or a table with `password`, found {}",
                        other.type_str()
                    )))
                }
            };
            let hash = hash.parse().map_err(|source| UsersError::BadHash {
                path: path.clone(),
                user: user.clone(),
                source,
            })?;
            let key = user.to_lowercase();
            let entry = User {
                hash,
                permissions: Arc::new(permissions),
            };
            if by_id.insert(key.clone(), entry).is_some() {
                return Err(UsersError::Duplicate { path, user: key });
            }
        }
        let decoy_iterations = by_id
            .values()
            .map(|u: &User| u.hash.iterations)
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
        self.login(user_id, password).is_some()
    }

    /// The permissions of `user_id` (any case), if the file lists the user.
    pub fn permissions(&self, user_id: &str) -> Option<&Arc<Permissions>> {
        self.by_key(&user_id.to_lowercase())
    }

    fn by_key(&self, key: &str) -> Option<&Arc<Permissions>> {
        self.by_id.get(key).map(|u| &u.permissions)
    }

    /// How many users have a limit below everything (some permission withheld or a
    /// connection limit), for the log.
    pub fn restricted(&self) -> usize {
        self.by_id
            .values()
            .filter(|u| *u.permissions != Permissions::all())
            .count()
    }

    /// The user's permissions when `password` is theirs.
    fn login(&self, user_id: &str, password: &[u8]) -> Option<&Arc<Permissions>> {
        match self.by_id.get(&user_id.to_lowercase()) {
            Some(user) => user.hash.verify(password).then_some(&user.permissions),
            None => {
                let _ = self.decoy.verify(password);
                None
            }
        }
    }
}

impl Authenticator for Users {
    fn authenticate(&self, attempt: &AuthAttempt<'_>) -> AuthDecision {
        match self.login(attempt.user_id, attempt.password) {
            Some(permissions) => match permissions.max_connections {
                None => AuthDecision::Permit,
                Some(max) => AuthDecision::PermitWith(Permit {
                    max_user_connections: Some(max),
                }),
            },
            None => AuthDecision::bad_credentials(),
        }
    }
}

/// The users file in force, replaceable while the server runs: the server's
/// [`Authenticator`] and, through [`hooks`](Self::hooks), its permission checks.
/// Clones share the one store.
#[derive(Clone)]
pub struct UserStore {
    shared: Arc<StoreShared>,
}

struct StoreShared {
    users: RwLock<Arc<Users>>,
    /// Bumped by every replacement, so the hooks notice without taking the lock.
    generation: AtomicU64,
}

impl fmt::Debug for UserStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UserStore").field(&self.current()).finish()
    }
}

impl UserStore {
    /// A store holding `users`.
    pub fn new(users: Users) -> Self {
        Self {
            shared: Arc::new(StoreShared {
                users: RwLock::new(Arc::new(users)),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// The users in force.
    pub fn current(&self) -> Arc<Users> {
        self.shared
            .users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `users` in force: logins from now on are checked against them, and
    /// every connection's next push command against the permissions they give its
    /// user (a user no longer listed may do nothing). Open connections stay open.
    pub fn replace(&self, users: Users) {
        let mut current = self.shared.users.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(users);
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// Push hooks enforcing the store's permissions; give them to
    /// [`ServerBuilder::hooks`](crate::server::ServerBuilder::hooks).
    pub fn hooks(&self) -> PermissionHooks {
        PermissionHooks {
            store: self.clone(),
            generation: self.shared.generation.load(Ordering::Acquire),
            users: self.current(),
            by_connection: BTreeMap::new(),
            limited: 0,
        }
    }
}

impl Authenticator for UserStore {
    fn authenticate(&self, attempt: &AuthAttempt<'_>) -> AuthDecision {
        // The slow password check runs without the lock.
        self.current().authenticate(attempt)
    }
}

/// Push hooks that allow what the users file permits: publish and subscribe to the
/// user's groups (others are refused per group, `NotAuthorized`), user messages if
/// allowed. Only the client's own commands ([`Origin::Client`]) are checked.
///
/// A connection's permissions are looked up by its user id once, when it joins, and
/// again for every open connection after the store was replaced; each command then
/// costs one atomic load and a lookup by connection id, or only the atomic load
/// while no open connection is limited (a users file of bare hashes). The hooks must
/// see every connection join: install them when building the server.
pub struct PermissionHooks {
    store: UserStore,
    /// The store's generation `users` and `by_connection` belong to.
    generation: u64,
    users: Arc<Users>,
    by_connection: BTreeMap<ConnectionId, Bound>,
    /// How many of `by_connection` have a push permission withheld.
    limited: usize,
}

/// A connection's user and the permissions it had when last looked up.
struct Bound {
    user_key: String,
    permissions: Arc<Permissions>,
}

impl fmt::Debug for PermissionHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermissionHooks")
            .field("connections", &self.by_connection.len())
            .finish()
    }
}

/// Whether the hooks may refuse anything of a connection with `permissions` (the
/// connection limit is the node's business, not the hooks').
fn limits_push(permissions: &Permissions) -> bool {
    permissions.publish != GroupSet::All
        || permissions.subscribe != GroupSet::All
        || !permissions.user_messages
}

impl PermissionHooks {
    fn lookup(&self, user_key: &str) -> Arc<Permissions> {
        self.users
            .by_key(user_key)
            .cloned()
            .unwrap_or_else(|| Arc::new(Permissions::nothing()))
    }

    /// After the store was replaced: every open connection's permissions from the
    /// new users.
    fn refresh(&mut self) {
        let generation = self.store.shared.generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        self.users = self.store.current();
        self.generation = generation;
        let users = &self.users;
        let mut limited = 0;
        for bound in self.by_connection.values_mut() {
            bound.permissions = users
                .by_key(&bound.user_key)
                .cloned()
                .unwrap_or_else(|| Arc::new(Permissions::nothing()));
            limited += usize::from(limits_push(&bound.permissions));
        }
        self.limited = limited;
    }

    /// The permissions of the connection `context` acts as, or `None` when the
    /// operation is not the client's own (the server's are never refused).
    fn permissions(&mut self, context: &HookContext<'_>) -> Option<&Permissions> {
        let (Origin::Client, Actor::Connection(connection)) = (context.origin, context.actor)
        else {
            return None;
        };
        self.refresh();
        if self.limited == 0 {
            return None;
        }
        let (users, limited) = (&self.users, &mut self.limited);
        let bound = self.by_connection.entry(connection).or_insert_with(|| {
            // Joined before these hooks were installed: looked up by name once.
            let user_key = context
                .info
                .map(|info| info.user_id.as_str().to_lowercase())
                .unwrap_or_default();
            let permissions = users
                .by_key(&user_key)
                .cloned()
                .unwrap_or_else(|| Arc::new(Permissions::nothing()));
            *limited += usize::from(limits_push(&permissions));
            Bound {
                user_key,
                permissions,
            }
        });
        Some(&bound.permissions)
    }

    fn check_groups(
        groups: &[GroupId],
        allowed: &GroupSet,
        what: &str,
        context: &HookContext<'_>,
    ) -> Verdict {
        if matches!(allowed, GroupSet::All) {
            return Verdict::Allow;
        }
        let refused: Vec<GroupId> = groups
            .iter()
            .copied()
            .filter(|g| !allowed.contains(g.0))
            .collect();
        if refused.is_empty() {
            return Verdict::Allow;
        }
        let user = context.info.map_or("this user", |i| i.user_id.as_str());
        Verdict::refuse_groups(refused, format!("{user} may not {what} these groups"))
    }
}

impl PushHooks for PermissionHooks {
    fn on_join(&mut self, connection: ConnectionId, info: &ConnectionInfo) {
        let user_key = info.user_id.as_str().to_lowercase();
        // The lookup below must use the users in force.
        self.refresh();
        let permissions = self.lookup(&user_key);
        self.limited += usize::from(limits_push(&permissions));
        let bound = Bound {
            user_key,
            permissions,
        };
        if let Some(old) = self.by_connection.insert(connection, bound) {
            self.limited -= usize::from(limits_push(&old.permissions));
        }
    }

    fn on_leave(&mut self, connection: ConnectionId, _: &ConnectionInfo) {
        if let Some(old) = self.by_connection.remove(&connection) {
            self.limited -= usize::from(limits_push(&old.permissions));
        }
    }

    fn on_subscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        match self.permissions(context) {
            Some(p) => Self::check_groups(groups, &p.subscribe, "subscribe to", context),
            None => Verdict::Allow,
        }
    }

    fn on_publish(&mut self, context: &HookContext<'_>, groups: &[GroupId], _: &Bytes) -> Verdict {
        match self.permissions(context) {
            Some(p) => Self::check_groups(groups, &p.publish, "publish to", context),
            None => Verdict::Allow,
        }
    }

    fn on_user_message(&mut self, context: &HookContext<'_>, _: &str, _: &Bytes) -> Verdict {
        match self.permissions(context) {
            Some(p) if !p.user_messages => {
                let user = context.info.map_or("this user", |i| i.user_id.as_str());
                Verdict::refuse(format!("{user} may not send user messages"))
            }
            _ => Verdict::Allow,
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

    fn attempt<'a>(user: &'a str, password: &'a str) -> AuthAttempt<'a> {
        AuthAttempt {
            user_id: user,
            password: password.as_bytes(),
            service_id: 1,
            peer: "127.0.0.1:1".parse().unwrap(),
            client_certificate: None,
        }
    }

    fn ranges(set: &[std::ops::RangeInclusive<u32>]) -> GroupSet {
        GroupSet::Ranges(set.to_vec())
    }

    #[test]
    fn group_sets_take_ids_ranges_and_a_star() {
        let parse = |text: &str| {
            let value: toml::Value = toml::from_str(&format!("x = {text}")).unwrap();
            GroupSet::from_toml(&value["x"])
        };
        assert_eq!(parse("\"*\""), Ok(GroupSet::All));
        assert_eq!(parse("[1, \"*\"]"), Ok(GroupSet::All));
        assert_eq!(parse("[]"), Ok(GroupSet::none()));
        assert_eq!(
            parse("[20, \"10-19\", 3, \" 4 - 5 \", \"7\", 4294967295]"),
            Ok(ranges(&[3..=5, 7..=7, 10..=20, u32::MAX..=u32::MAX]))
        );
        assert_eq!(parse("[\"1-10\", \"5-6\", 2]"), Ok(ranges(&[1..=10])));
        for (bad, expected) in [
            ("\"all\"", "expected \"*\" or a list"),
            ("3", "expected \"*\" or a list"),
            ("[-1]", "-1 is not a group id"),
            ("[4294967296]", "is not a group id"),
            ("[\"20-10\"]", "empty range"),
            ("[\"1-\"]", "is not a group id or a range"),
            ("[\"-3\"]", "is not a group id or a range"),
            ("[\"1-2-3\"]", "is not a group id or a range"),
            ("[\"one\"]", "is not a group id or a range"),
            ("[1.5]", "found float"),
            ("[[1]]", "found array"),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn group_set_membership_is_exact_at_the_edges() {
        let set = GroupSet::from_ranges([10..=20, 1..=1, 30..=30]);
        let members: Vec<u32> = (0..=32).filter(|&g| set.contains(g)).collect();
        let expected: Vec<u32> = std::iter::once(1).chain(10..=20).chain([30]).collect();
        assert_eq!(members, expected);
        assert!(!GroupSet::none().contains(0));
        assert!(GroupSet::All.contains(u32::MAX));
        assert!(GroupSet::from_ranges([u32::MAX - 1..=u32::MAX]).contains(u32::MAX));
    }

    #[test]
    fn the_table_form_gives_permissions_with_documented_defaults() {
        let hash = quick_hash("pw");
        let text = format!(
            "[users]\nold = \"{hash}\"\n\
             [users.Bob]\npassword = \"{hash}\"\npublish = [1, \"10-20\"]\nsubscribe = \"*\"\n\
             user_messages = false\nmax_connections = 2\n\
             [users.carol]\npassword = \"{hash}\"\n"
        );
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(users.restricted(), 1);
        assert_eq!(**users.permissions("old").unwrap(), Permissions::all());
        assert_eq!(**users.permissions("carol").unwrap(), Permissions::all());
        let bob = users.permissions("BOB").unwrap();
        assert_eq!(bob.publish, ranges(&[1..=1, 10..=20]));
        assert_eq!(bob.subscribe, GroupSet::All);
        assert!(!bob.user_messages);
        assert_eq!(bob.max_connections, Some(2));
        assert!(users.verify("bob", b"pw"));

        // The connection limit travels in the permit; no limit is a plain Permit.
        assert_eq!(
            users.authenticate(&attempt("bob", "pw")),
            AuthDecision::PermitWith(Permit {
                max_user_connections: Some(2)
            })
        );
        assert_eq!(
            users.authenticate(&attempt("old", "pw")),
            AuthDecision::Permit
        );
        assert_eq!(
            users.authenticate(&attempt("bob", "wrong")),
            AuthDecision::bad_credentials()
        );
    }

    #[test]
    fn bad_user_tables_are_refused_with_the_user_and_the_key() {
        let hash = quick_hash("pw");
        let cases = [
            (
                format!("[users.a]\npassword = \"{hash}\"\npublsh = [1]\n"),
                "unknown field `publsh`",
            ),
            (
                "[users.a]\npublish = [1]\n".to_owned(),
                "missing field `password`",
            ),
            (
                format!("[users.a]\npassword = \"{hash}\"\npublish = [\"9-1\"]\n"),
                "publish: \"9-1\" is an empty range",
            ),
            (
                format!("[users.a]\npassword = \"{hash}\"\nsubscribe = \"some\"\n"),
                "subscribe: expected",
            ),
            (
                format!("[users.a]\npassword = \"{hash}\"\nmax_connections = -1\n"),
                "user \"a\"",
            ),
            (
                format!("[users.a]\npassword = \"{hash}\"\nuser_messages = \"no\"\n"),
                "user \"a\"",
            ),
            (
                "[users.a]\npassword = \"nope\"\n".to_owned(),
                "invalid password hash",
            ),
            (
                "[users]\na = [1]\n".to_owned(),
                "expected a password hash or a table",
            ),
        ];
        for (text, expected) in cases {
            let error = Users::parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.contains("user \"a\""), "{text:?}: {error}");
        }
    }

    /// A connection of `user` joined to `hooks`, and a context for its own commands.
    fn joined(hooks: &mut PermissionHooks, id: u64, user: &str) -> (ConnectionId, ConnectionInfo) {
        let info = ConnectionInfo::new(user, "127.0.0.1".parse().unwrap(), 1, 1);
        hooks.on_join(ConnectionId(id), &info);
        (ConnectionId(id), info)
    }

    fn context(origin: Origin, connection: ConnectionId, info: &ConnectionInfo) -> HookContext<'_> {
        HookContext {
            origin,
            actor: Actor::Connection(connection),
            info: Some(info),
        }
    }

    fn groups(ids: &[u32]) -> Vec<GroupId> {
        ids.iter().copied().map(GroupId).collect()
    }

    fn restricted_users(publish: &str) -> Users {
        let hash = quick_hash("pw");
        Users::parse(&format!(
            "[users]\nfree = \"{hash}\"\n\
             [users.bob]\npassword = \"{hash}\"\npublish = {publish}\nsubscribe = [2]\n\
             user_messages = false\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_hooks_refuse_what_the_file_withholds_and_only_from_the_client() {
        let store = UserStore::new(restricted_users("[1, \"10-20\"]"));
        let mut hooks = store.hooks();
        let (bob, bob_info) = joined(&mut hooks, 1, "Bob");
        let (free, free_info) = joined(&mut hooks, 2, "free");
        let payload = Bytes::from_static(b"x");
        let own = context(Origin::Client, bob, &bob_info);

        assert_eq!(
            hooks.on_publish(&own, &groups(&[1, 15]), &payload),
            Verdict::Allow
        );
        assert_eq!(
            hooks.on_publish(&own, &groups(&[1, 2, 21]), &payload),
            Verdict::refuse_groups(groups(&[2, 21]), "Bob may not publish to these groups")
        );
        assert_eq!(hooks.on_subscribe(&own, &groups(&[2])), Verdict::Allow);
        assert!(matches!(
            hooks.on_subscribe(&own, &groups(&[1, 2])),
            Verdict::RefuseGroups { groups: g, .. } if g == groups(&[1])
        ));
        assert_eq!(hooks.on_unsubscribe(&own, &groups(&[1])), Verdict::Allow);
        assert_eq!(
            hooks.on_user_message(&own, "free", &payload),
            Verdict::refuse("Bob may not send user messages")
        );

        // The server's own operations and on its behalf are not the user's.
        for origin in [Origin::Server, Origin::Disconnect, Origin::GroupRemoved] {
            let by_server = context(origin, bob, &bob_info);
            assert_eq!(
                hooks.on_publish(&by_server, &groups(&[2]), &payload),
                Verdict::Allow
            );
            assert_eq!(
                hooks.on_subscribe(&by_server, &groups(&[1])),
                Verdict::Allow
            );
            assert_eq!(
                hooks.on_user_message(&by_server, "x", &payload),
                Verdict::Allow
            );
        }
        let server = HookContext {
            origin: Origin::Server,
            actor: Actor::Server,
            info: None,
        };
        assert_eq!(
            hooks.on_publish(&server, &groups(&[2]), &payload),
            Verdict::Allow
        );

        // A user written as a bare hash may do everything.
        let own = context(Origin::Client, free, &free_info);
        assert_eq!(
            hooks.on_publish(&own, &groups(&[2, 99]), &payload),
            Verdict::Allow
        );
        assert_eq!(hooks.on_subscribe(&own, &groups(&[7])), Verdict::Allow);
        assert_eq!(hooks.on_user_message(&own, "bob", &payload), Verdict::Allow);
    }

    #[test]
    fn the_hooks_count_limited_connections_and_skip_the_lookup_without_any() {
        let hash = quick_hash("pw");
        let file = |a_publish: &str| {
            Users::parse(&format!(
                "[users.a]\npassword = \"{hash}\"\npublish = {a_publish}\n\
                 [users.b]\npassword = \"{hash}\"\npublish = [1]\n"
            ))
            .unwrap()
        };
        let store = UserStore::new(file("\"*\""));
        let mut hooks = store.hooks();
        let payload = Bytes::from_static(b"x");
        let (a, a_info) = joined(&mut hooks, 1, "a");
        assert_eq!(hooks.limited, 0);
        let a_own = context(Origin::Client, a, &a_info);
        assert_eq!(
            hooks.on_publish(&a_own, &groups(&[2]), &payload),
            Verdict::Allow
        );
        let (b, b_info) = joined(&mut hooks, 2, "b");
        assert_eq!(hooks.limited, 1);
        let b_own = context(Origin::Client, b, &b_info);
        assert!(matches!(
            hooks.on_publish(&b_own, &groups(&[2]), &payload),
            Verdict::RefuseGroups { .. }
        ));
        hooks.on_leave(b, &b_info);
        assert_eq!(hooks.limited, 0);
        // A replacement that limits a is seen although nobody was limited.
        store.replace(file("[1]"));
        assert!(matches!(
            hooks.on_publish(&a_own, &groups(&[2]), &payload),
            Verdict::RefuseGroups { .. }
        ));
        assert_eq!(hooks.limited, 1);
    }

    #[test]
    fn a_replaced_users_file_applies_to_open_connections_at_their_next_command() {
        let store = UserStore::new(restricted_users("[1]"));
        let mut hooks = store.hooks();
        let (bob, bob_info) = joined(&mut hooks, 1, "bob");
        let (free, free_info) = joined(&mut hooks, 2, "free");
        let payload = Bytes::from_static(b"x");
        let bob_own = context(Origin::Client, bob, &bob_info);
        assert!(matches!(
            hooks.on_publish(&bob_own, &groups(&[5]), &payload),
            Verdict::RefuseGroups { .. }
        ));

        // bob may publish to 5 now, and free is gone from the file.
        let hash = quick_hash("pw");
        store.replace(
            Users::parse(&format!(
                "[users.bob]\npassword = \"{hash}\"\npublish = [1, 5]\n"
            ))
            .unwrap(),
        );
        assert_eq!(
            hooks.on_publish(&bob_own, &groups(&[5]), &payload),
            Verdict::Allow
        );
        let free_own = context(Origin::Client, free, &free_info);
        assert!(matches!(
            hooks.on_publish(&free_own, &groups(&[1]), &payload),
            Verdict::RefuseGroups { .. }
        ));
        assert!(matches!(
            hooks.on_user_message(&free_own, "bob", &payload),
            Verdict::Refuse { .. }
        ));
        // Logins follow the new file.
        assert_eq!(
            store.authenticate(&attempt("free", "pw")),
            AuthDecision::bad_credentials()
        );
        assert_eq!(
            store.authenticate(&attempt("bob", "pw")),
            AuthDecision::Permit
        );

        // A connection joining after the replacement gets the new permissions, and
        // one that left is forgotten.
        let (late, late_info) = joined(&mut hooks, 3, "BOB");
        let late_own = context(Origin::Client, late, &late_info);
        assert_eq!(
            hooks.on_publish(&late_own, &groups(&[5]), &payload),
            Verdict::Allow
        );
        hooks.on_leave(late, &late_info);
        assert_eq!(hooks.by_connection.len(), 2);
    }

    #[test]
    fn the_example_users_file_parses_as_documented() {
        let users = Users::parse(include_str!("../../examples/users.toml")).unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(**users.permissions("alice").unwrap(), Permissions::all());
        let bob = users.permissions("bob").unwrap();
        assert_eq!(bob.publish, ranges(&[1..=1, 10..=20]));
        assert_eq!(bob.subscribe, GroupSet::All);
        assert!(!bob.user_messages);
        assert_eq!(bob.max_connections, Some(3));
        let carol = users.permissions("carol").unwrap();
        assert_eq!(carol.publish, GroupSet::none());
        assert_eq!(carol.subscribe, ranges(&[1..=3]));
        assert_eq!(carol.max_connections, Some(1));
        // The passwords the file's comment publishes.
        assert!(users.verify("bob", b"bob-example"));
        assert!(users.verify("Carol", b"carol-example"));
    }

    #[test]
    fn an_empty_users_file_lets_nobody_in() {
        let users = Users::parse("").unwrap();
        assert!(users.is_empty());
        assert!(!users.verify("alice", b""));
    }
}
