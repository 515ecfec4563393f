//! Deciding who may connect (the seed's `OnIsPermitted`).

use pushwire_engine::node::Permit;
use pushwire_engine::tls::CertificateInfo;
use pushwire_protocol::RefuseCode;
use std::net::SocketAddr;

/// A client's Hello, as the authenticator sees it.
#[derive(Debug)]
pub struct AuthAttempt<'a> {
    /// The claimed user id.
    pub user_id: &'a str,
    /// The password (wiped from memory after the decision).
    pub password: &'a [u8],
    /// The requested service.
    pub service_id: u32,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's certificate, with mutual TLS.
    pub client_certificate: Option<&'a CertificateInfo>,
}

/// The authenticator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the client in.
    Permit,
    /// Let the client in with limits that the server's node checks as the session
    /// joins, under its lock (so two simultaneous logins cannot both pass a
    /// per-user connection cap). A Hello over a limit is refused with
    /// `TooManyConnections`.
    PermitWith(Permit),
    /// Keep it out; the code and reason go back to the client.
    Refuse {
        /// Why.
        code: RefuseCode,
        /// Human-readable reason.
        reason: String,
    },
}

impl AuthDecision {
    /// Refusal for a wrong user id or password.
    pub fn bad_credentials() -> Self {
        AuthDecision::Refuse {
            code: RefuseCode::BadCredentials,
            reason: "unknown user or wrong password".to_owned(),
        }
    }
}

/// Decides whether a client may connect. Called on the connection's task: keep it
/// quick, or hand slow checks to a cache.
pub trait Authenticator: Send + Sync + 'static {
    /// Permit or refuse `attempt`.
    fn authenticate(&self, attempt: &AuthAttempt<'_>) -> AuthDecision;
}

impl<F> Authenticator for F
where
    F: Fn(&AuthAttempt<'_>) -> AuthDecision + Send + Sync + 'static,
{
    fn authenticate(&self, attempt: &AuthAttempt<'_>) -> AuthDecision {
        self(attempt)
    }
}

/// The default: refuses everyone, saying that no authenticator is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAll;

impl Authenticator for DenyAll {
    fn authenticate(&self, _: &AuthAttempt<'_>) -> AuthDecision {
        AuthDecision::Refuse {
            code: RefuseCode::NotPermitted,
            reason: "the server has no authenticator configured".to_owned(),
        }
    }
}
