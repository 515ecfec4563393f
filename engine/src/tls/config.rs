//! TLS configuration for both ends, built on the ring crypto provider.

use crate::credentials::ServerCredentials;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use thiserror::Error;

/// A TLS configuration that could not be built.
#[derive(Debug, Error)]
pub enum TlsConfigError {
    /// The trust store is empty or unusable.
    #[error("cannot build a certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The server name is neither a DNS name nor an IP address.
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which client certificates the server asks for (mutual TLS).
#[derive(Debug, Clone, Default)]
pub enum ClientAuth {
    /// Do not ask for a client certificate.
    #[default]
    None,
    /// Ask; accept clients without one, verify those that present one.
    Optional(Arc<RootCertStore>),
    /// Require a certificate signed by one of these CAs.
    Required(Arc<RootCertStore>),
}

/// Builds the server's rustls configuration from its credentials.
pub fn server_tls_config(
    credentials: &ServerCredentials,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()?,
        ),
        ClientAuth::Required(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?,
        ),
    };
    let config =
        builder.with_single_cert(credentials.chain.clone(), credentials.key.clone_key())?;
    Ok(Arc::new(config))
}

/// The client's TLS settings: whom to trust, the name to expect, and an optional
/// client certificate.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub(crate) rustls: Arc<rustls::ClientConfig>,
    pub(crate) verifier: Arc<WebPkiServerVerifier>,
    pub(crate) server_name: ServerName<'static>,
}

impl ClientTls {
    /// Trusts the CAs in `roots` (SocketPro's `SetVerifyLocation`) and expects the
    /// server to be `server_name` (a DNS name or an IP address).
    pub fn new(roots: RootCertStore, server_name: &str) -> Result<Self, TlsConfigError> {
        Self::build(roots, server_name, None)
    }

    /// As [`ClientTls::new`], presenting a client certificate for mutual TLS.
    pub fn with_client_certificate(
        roots: RootCertStore,
        server_name: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsConfigError> {
        Self::build(roots, server_name, Some((chain, key)))
    }

    fn build(
        roots: RootCertStore,
        server_name: &str,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Self, TlsConfigError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsConfigError::InvalidServerName(server_name.to_owned()))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DeferredVerifier {
                inner: verifier.clone(),
            }));
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            rustls: Arc::new(config),
            verifier,
            server_name,
        })
    }

    /// The name the server's certificate must carry.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }
}

/// Lets the handshake finish whatever the certificate chain's verdict, so the
/// application can see the certificate and decide (the seed's Figure 2).
///
/// The chain is verified by the client engine right after the handshake, with the
/// wrapped verifier and the engine's injected wall-clock time; until the application
/// accepts, the engine sends nothing but TLS records. The handshake-signature checks
/// are delegated unchanged, so the server still proves it holds the certificate's key.
#[derive(Debug)]
struct DeferredVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for DeferredVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
