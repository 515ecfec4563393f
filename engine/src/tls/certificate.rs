//! What the client application sees of the server before it decides to send its
//! credentials (SocketPro's `IUcert` and `SessionInfo`).

use rustls::pki_types::CertificateDer;
use std::fmt;
use std::net::IpAddr;
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// The readable content of one X.509 certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject distinguished name (RFC 4514 form).
    pub subject: String,
    /// Issuer distinguished name (RFC 4514 form).
    pub issuer: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: u64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: u64,
    /// DNS names and IP addresses from the subjectAltName extension.
    pub subject_alt_names: Vec<String>,
    /// Serial number, upper-case hex.
    pub serial: String,
    /// Signature algorithm: a common name where known, else the dotted OID.
    pub signature_algorithm: String,
    /// The certificate as PEM.
    pub pem: String,
}

/// A certificate the peer sent that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the peer's certificate cannot be parsed: {0}")]
pub struct CertificateParseError(String);

impl CertificateInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, CertificateParseError> {
        let cert = Certificate::from_der(der.as_ref())
            .map_err(|e| CertificateParseError(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        let mut subject_alt_names = Vec::new();
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id != SubjectAltName::OID {
                continue;
            }
            let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                .map_err(|e| CertificateParseError(e.to_string()))?;
            for name in san.0 {
                match name {
                    GeneralName::DnsName(dns) => subject_alt_names.push(dns.to_string()),
                    GeneralName::IpAddress(ip) => {
                        let b = ip.as_bytes();
                        let addr = match b.len() {
                            4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
                            _ => None,
                        };
                        if let Some(addr) = addr {
                            subject_alt_names.push(addr.to_string());
                        }
                    }
                    GeneralName::Rfc822Name(mail) => subject_alt_names.push(mail.to_string()),
                    _ => {}
                }
            }
        }
        let serial = tbs
            .serial_number
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        let pem = x509_cert::der::pem::encode_string("CERTIFICATE", LineEnding::LF, der.as_ref())
            .map_err(|e| CertificateParseError(e.to_string()))?;
        Ok(Self {
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
            not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
            subject_alt_names,
            serial,
            signature_algorithm: algorithm_name(&cert.signature_algorithm.oid),
            pem,
        })
    }
}

fn algorithm_name(oid: &ObjectIdentifier) -> String {
    const NAMES: &[(&str, &str)] = &[
        ("1.2.840.10045.4.3.2", "ecdsa-with-SHA256"),
        ("1.2.840.10045.4.3.3", "ecdsa-with-SHA384"),
        ("1.2.840.10045.4.3.4", "ecdsa-with-SHA512"),
        ("1.2.840.113549.1.1.11", "sha256WithRSAEncryption"),
        ("1.2.840.113549.1.1.12", "sha384WithRSAEncryption"),
        ("1.2.840.113549.1.1.13", "sha512WithRSAEncryption"),
        ("1.2.840.113549.1.1.10", "rsassa-pss"),
        ("1.3.101.112", "ed25519"),
    ];
    let dotted = oid.to_string();
    NAMES
        .iter()
        .find(|(o, _)| *o == dotted)
        .map_or(dotted.clone(), |(_, name)| (*name).to_owned())
}

/// The verifier's verdict on the server's certificate chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The chain leads to a trusted CA, is valid now and names the expected server.
    Verified,
    /// Verification failed, with rustls' reason (unknown issuer, expired, wrong name …).
    Failed(rustls::Error),
}

impl Verdict {
    /// Whether the chain verified.
    pub fn is_verified(&self) -> bool {
        matches!(self, Verdict::Verified)
    }
}

/// Everything the client application learns about the server after the TLS
/// handshake and before any credential is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerAuthentication {
    /// The server's chain, end-entity certificate first.
    pub chain: Vec<CertificateInfo>,
    /// The verifier's verdict.
    pub verdict: Verdict,
    /// Negotiated TLS version, e.g. `TLSv1_3`.
    pub protocol_version: String,
    /// Negotiated cipher suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
    /// The name the client expected.
    pub server_name: String,
}

impl ServerAuthentication {
    /// The end-entity certificate, if the server sent one.
    pub fn certificate(&self) -> Option<&CertificateInfo> {
        self.chain.first()
    }
}

impl fmt::Display for ServerAuthentication {
    /// A summary like SocketPro's `SessionInfo`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "server name:  {}", self.server_name)?;
        writeln!(f, "protocol:     {}", self.protocol_version)?;
        writeln!(f, "cipher suite: {}", self.cipher_suite)?;
        if let Some(cert) = self.certificate() {
            writeln!(f, "subject:      {}", cert.subject)?;
            writeln!(f, "issuer:       {}", cert.issuer)?;
            writeln!(
                f,
                "valid:        {} .. {} (Unix seconds)",
                cert.not_before, cert.not_after
            )?;
            writeln!(f, "names:        {}", cert.subject_alt_names.join(", "))?;
            writeln!(f, "serial:       {}", cert.serial)?;
            writeln!(f, "signature:    {}", cert.signature_algorithm)?;
        }
        match &self.verdict {
            Verdict::Verified => write!(f, "verdict:      verified"),
            Verdict::Failed(e) => write!(f, "verdict:      NOT verified: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::load_certificate_chain;
    use std::path::Path;

    #[test]
    fn parses_the_development_server_certificate() {
        let chain = load_certificate_chain(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../certs/server.cert.pem"
        )))
        .unwrap();
        let info = CertificateInfo::parse(&chain[0]).unwrap();
        assert!(info.subject.contains("CN=localhost"), "{}", info.subject);
        assert!(
            info.issuer.contains("pushwire Development Root CA"),
            "{}",
            info.issuer
        );
        assert_eq!(info.subject_alt_names, ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(info.signature_algorithm, "ecdsa-with-SHA256");
        assert!(info.not_after > info.not_before);
        assert!(!info.serial.is_empty());
        assert!(info.pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(CertificateInfo::parse(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }
}
