//! Loading TLS credentials from PEM files.
//!
//! This is the one corner of the engine that touches the file system, and only at
//! configuration time: a server (or a client doing mutual TLS) names a certificate
//! chain, a private key (optionally password protected) and the CA files it trusts,
//! and gets back rustls types or a [`CredentialsError`] that says which file is wrong
//! and why. Nothing here runs on the connection path.
//!
//! Supported private key formats, found by their PEM label:
//!
//! | label | format |
//! | --- | --- |
//! | `ENCRYPTED PRIVATE KEY` | PKCS#8 encrypted with PBES2 (PBKDF2 or scrypt, AES-CBC) |
//! | `PRIVATE KEY` | unencrypted PKCS#8 |
//! | `EC PRIVATE KEY` | unencrypted SEC1 |
//! | `RSA PRIVATE KEY` | unencrypted PKCS#1 |
//!
//! Key types are whatever rustls' `ring` provider signs with (ECDSA P-256/P-384,
//! Ed25519, RSA 2048–8192 bits), because that is the provider the engine uses.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pkcs8::der::zeroize::Zeroizing;
use rustls::crypto::ring as ring_provider;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{InconsistentKeys, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// PEM label of an encrypted PKCS#8 key (RFC 5958 / RFC 7468 section 11).
///
/// `rustls-pki-types` skips sections it does not know, and it does not know this
/// one, so encrypted keys are located and decoded here.
const ENCRYPTED_PKCS8_LABEL: &[u8] = b"ENCRYPTED PRIVATE KEY";

/// The conversion suggested when a key's format or encryption is not supported.
const REENCRYPT_HINT: &str = "openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256";

/// Why loading a certificate, key or CA file failed.
///
/// Every variant names the file involved, and its `Display` text is a complete,
/// self-contained sentence (file plus cause), so a single log line is enough to fix
/// the configuration. For that reason the underlying error is folded into the
/// message rather than exposed again through `Error::source`, which would make
/// error-chain printers repeat it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The file does not exist or could not be read (permissions, is a directory…).
    #[error("cannot read {}: {io}", path.display())]
    Unreadable {
        /// The file that could not be read.
        path: PathBuf,
        /// What the operating system reported; `io.kind()` tells a missing file
        /// ([`io::ErrorKind::NotFound`]) from other failures.
        io: io::Error,
    },

    /// The file is not well-formed PEM (bad base64, a section without its end line…).
    #[error("malformed PEM in {}: {reason}", path.display())]
    MalformedPem {
        /// The offending file.
        path: PathBuf,
        /// What the PEM decoder objected to.
        reason: String,
    },

    /// The file is readable PEM but holds no `CERTIFICATE` section.
    #[error("no certificate (PEM section \"CERTIFICATE\") found in {}", path.display())]
    NoCertificate {
        /// The file that was searched.
        path: PathBuf,
    },

    /// A certificate in a certificate chain file is not a parsable X.509 certificate.
    #[error("invalid certificate in {}: {reason}", path.display())]
    InvalidCertificate {
        /// The chain file.
        path: PathBuf,
        /// Why the certificate was rejected.
        reason: rustls::Error,
    },

    /// The file holds no private key section of a supported kind.
    #[error(
        "no private key found in {} (expected a PEM section \"ENCRYPTED PRIVATE KEY\", \
         \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\")",
        path.display()
    )]
    NoPrivateKey {
        /// The file that was searched.
        path: PathBuf,
    },

    /// The private key is encrypted and no password was supplied.
    #[error("the private key in {} is encrypted but no password was given", path.display())]
    PasswordRequired {
        /// The key file.
        path: PathBuf,
    },

    /// Decrypting the private key failed.
    ///
    /// With password-based encryption a wrong password and a damaged ciphertext are
    /// indistinguishable, so this variant covers both.
    #[error("cannot decrypt the private key in {}: wrong password or corrupt key", path.display())]
    WrongPassword {
        /// The key file.
        path: PathBuf,
    },

    /// The key (or its encryption scheme) is of a kind that cannot be used: for
    /// example a DSA or OpenSSH key, a legacy OpenSSL-encrypted PEM, a curve `ring`
    /// does not sign with, or PBES1 encryption.
    #[error("unsupported private key in {}: {reason}", path.display())]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// What exactly is unsupported, with a hint how to convert it where possible.
        reason: String,
    },

    /// The private key does not belong to the certificate: its public key differs
    /// from the one in the end-entity certificate.
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate chain file (its first certificate was compared).
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },

    /// [`load_root_store`] was called without any CA file.
    #[error("no CA certificate file given")]
    NoCaFiles,

    /// A certificate in a CA file cannot serve as a trust anchor.
    #[error("invalid CA certificate #{index} in {}: {reason}", path.display())]
    InvalidCaCertificate {
        /// The CA file.
        path: PathBuf,
        /// Zero-based position of the certificate within the file.
        index: usize,
        /// Why rustls rejected it.
        reason: rustls::Error,
    },

    /// The operating system's trust store yielded no usable CA certificate.
    #[error("no usable CA certificate in the operating system's trust store: {details}")]
    NoNativeRoots {
        /// What the platform loader reported.
        details: String,
    },
}

/// Loads every `CERTIFICATE` section of a PEM file, in file order.
///
/// For a server or client identity the file must start with the end-entity
/// certificate followed by any intermediates (the root is normally left out, the
/// peer already has it). Other sections in the file, such as a private key, are
/// skipped. The certificates are not validated here; see
/// [`ServerCredentials::from_pem_files`] and [`load_root_store`].
///
/// # Errors
///
/// [`CredentialsError::Unreadable`], [`CredentialsError::MalformedPem`], or
/// [`CredentialsError::NoCertificate`] if the file has no certificate at all.
pub fn load_certificate_chain(
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| malformed(path, err))?;
    if chain.is_empty() {
        return Err(CredentialsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// Loads the first private key of a PEM file, decrypting it if it is encrypted.
///
/// `password` is only used for an `ENCRYPTED PRIVATE KEY`; it is ignored for an
/// unencrypted key, so a configuration can keep a password while switching key files.
/// The key is also checked to be usable by rustls' `ring` provider, so an unsupported
/// key type is reported here, at configuration time, rather than at the first
/// handshake.
///
/// The file contents and the decrypted plaintext are zeroized when dropped. The
/// returned [`PrivateKeyDer`] is the caller's to protect.
///
/// # Errors
///
/// [`CredentialsError::Unreadable`], [`CredentialsError::MalformedPem`],
/// [`CredentialsError::NoPrivateKey`], [`CredentialsError::PasswordRequired`],
/// [`CredentialsError::WrongPassword`] or [`CredentialsError::UnsupportedKey`].
pub fn load_private_key(
    path: &Path,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, CredentialsError> {
    load_signing_key(path, password).map(|(key, _)| key)
}

/// A server's TLS identity: its certificate chain and the matching private key.
///
/// Build it with [`ServerCredentials::from_pem_files`], which guarantees the key
/// belongs to the chain's first certificate; hand `chain` and `key` to
/// `rustls::ServerConfig::builder().with_single_cert(..)`. Client certificates for
/// mutual TLS have the same shape and can be loaded the same way.
#[derive(Debug)]
pub struct ServerCredentials {
    /// End-entity certificate first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key of `chain[0]`.
    pub key: PrivateKeyDer<'static>,
}

impl ServerCredentials {
    /// Loads a certificate chain and its private key and checks that they match.
    ///
    /// `cert` and `key` may name the same file if it holds both. `password` decrypts
    /// an encrypted key (see [`load_private_key`]).
    ///
    /// The match check compares the public key derived from the private key with the
    /// SubjectPublicKeyInfo of the end-entity certificate. Catching a mismatch here
    /// turns a confusing handshake failure on every connection into one clear error
    /// at start-up.
    ///
    /// # Errors
    ///
    /// Everything [`load_certificate_chain`] and [`load_private_key`] return, plus
    /// [`CredentialsError::InvalidCertificate`] if the end-entity certificate cannot
    /// be parsed and [`CredentialsError::KeyMismatch`] if the key is not the
    /// certificate's.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        password: Option<&str>,
    ) -> Result<Self, CredentialsError> {
        let chain = load_certificate_chain(cert)?;
        let (key_der, signing_key) = load_signing_key(key, password)?;

        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            // A signing key that cannot report its public key cannot be checked;
            // rustls itself accepts such keys, so do not invent an error. None of
            // ring's key types are like that.
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(CredentialsError::KeyMismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                });
            }
            Err(reason) => {
                return Err(CredentialsError::InvalidCertificate {
                    path: cert.to_owned(),
                    reason,
                });
            }
        }

        Ok(Self {
            chain: certified.cert,
            key: key_der,
        })
    }
}

impl Clone for ServerCredentials {
    /// Copies the credentials, key included.
    ///
    /// `PrivateKeyDer` deliberately does not implement `Clone` (copies of secrets
    /// should be visible in the code), hence this explicit `clone_key`.
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Display for ServerCredentials {
    /// Summarises without revealing anything secret, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "PKCS#1",
            PrivateKeyDer::Sec1(_) => "SEC1",
            PrivateKeyDer::Pkcs8(_) => "PKCS#8",
            _ => "other",
        };
        write!(
            f,
            "{} certificate(s) with a {kind} private key",
            self.chain.len()
        )
    }
}

/// Builds the set of trusted CA certificates from one or more PEM files.
///
/// This is the counterpart of SocketPro's `SetVerifyLocation`: a client verifying
/// servers (or a server verifying client certificates) trusts exactly the
/// certificates in these files. Every `CERTIFICATE` section of every file becomes a
/// trust anchor; unlike rustls' `add_parsable_certificates`, nothing is skipped
/// silently, because a CA file that quietly trusts less than it says causes
/// baffling "unknown issuer" failures later.
///
/// # Errors
///
/// [`CredentialsError::NoCaFiles`] for an empty `paths`, anything
/// [`load_certificate_chain`] returns for a file, and
/// [`CredentialsError::InvalidCaCertificate`] for a certificate that cannot be a
/// trust anchor.
pub fn load_root_store(paths: &[impl AsRef<Path>]) -> Result<RootCertStore, CredentialsError> {
    if paths.is_empty() {
        return Err(CredentialsError::NoCaFiles);
    }
    let mut store = RootCertStore::empty();
    for path in paths {
        let path = path.as_ref();
        for (index, cert) in load_certificate_chain(path)?.into_iter().enumerate() {
            store
                .add(cert)
                .map_err(|reason| CredentialsError::InvalidCaCertificate {
                    path: path.to_owned(),
                    index,
                    reason,
                })?;
        }
    }
    Ok(store)
}

/// Trusts the operating system's CA store (SocketPro's system-store verify location),
/// through rustls-native-certs.
///
/// Certificates the platform store holds but rustls cannot use are skipped, as
/// platform stores routinely contain some; the call fails only when none is usable.
pub fn load_native_roots() -> Result<RootCertStore, CredentialsError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let details = if loaded.errors.is_empty() {
            "the store is empty".to_owned()
        } else {
            loaded
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(CredentialsError::NoNativeRoots { details });
    }
    Ok(store)
}

/// Loads a private key and turns it into a `ring` signing key.
///
/// Returns both: the DER form for rustls' config builders, the signing key for the
/// certificate match check (parsing twice would be harmless but pointless).
fn load_signing_key(
    path: &Path,
    password: Option<&str>,
) -> Result<(PrivateKeyDer<'static>, Arc<dyn SigningKey>), CredentialsError> {
    let key = parse_private_key(path, password)?;
    let signing_key = ring_provider::default_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|err| CredentialsError::UnsupportedKey {
            path: path.to_owned(),
            reason: format!(
                "not a key rustls' ring provider can sign with (ECDSA P-256/P-384, Ed25519, \
                 RSA 2048-8192 bits): {err}"
            ),
        })?;
    Ok((key, signing_key))
}

/// Finds the first private key section in the file and decodes it.
///
/// The first section whose label ends in `PRIVATE KEY` decides: that way an
/// unsupported key (DSA, OpenSSH) is reported as such instead of as "no key".
fn parse_private_key(
    path: &Path,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, CredentialsError> {
    let pem = read_file(path)?;
    for (offset, label) in pem_begin_lines(&pem) {
        let section = &pem[offset..];
        match label {
            ENCRYPTED_PKCS8_LABEL => return decrypt_pkcs8(path, section, password),
            b"PRIVATE KEY" | b"EC PRIVATE KEY" | b"RSA PRIVATE KEY" => {
                if is_legacy_encrypted(section) {
                    return Err(CredentialsError::UnsupportedKey {
                        path: path.to_owned(),
                        reason: format!(
                            "legacy OpenSSL-encrypted PEM (\"Proc-Type: 4,ENCRYPTED\"); \
                             convert it with `{REENCRYPT_HINT}`"
                        ),
                    });
                }
                // Parsing from this section's BEGIN line makes rustls-pki-types
                // return exactly this section.
                return PrivateKeyDer::from_pem_slice(section).map_err(|err| malformed(path, err));
            }
            other if other.ends_with(b"PRIVATE KEY") => {
                return Err(CredentialsError::UnsupportedKey {
                    path: path.to_owned(),
                    reason: format!(
                        "PEM section \"{}\" is not supported; convert the key to PKCS#8, \
                         e.g. `{REENCRYPT_HINT}`",
                        String::from_utf8_lossy(other)
                    ),
                });
            }
            _ => {}
        }
    }
    Err(CredentialsError::NoPrivateKey {
        path: path.to_owned(),
    })
}

/// Decodes and decrypts an `ENCRYPTED PRIVATE KEY` section starting at `section`.
fn decrypt_pkcs8(
    path: &Path,
    section: &[u8],
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, CredentialsError> {
    let end = find_end_line(section, ENCRYPTED_PKCS8_LABEL).ok_or_else(|| {
        CredentialsError::MalformedPem {
            path: path.to_owned(),
            reason: "section \"ENCRYPTED PRIVATE KEY\" has no END line".to_owned(),
        }
    })?;
    // The ciphertext is not secret, so a plain Vec is fine here.
    let (_, der) = pkcs8::der::pem::decode_vec(&section[..end]).map_err(|err| {
        CredentialsError::MalformedPem {
            path: path.to_owned(),
            reason: err.to_string(),
        }
    })?;
    // The PEM itself was fine. A parse failure here is usually an encryption scheme
    // the pkcs8 crate does not know (e.g. OpenSSL's `-v1 PBE-SHA1-3DES`, a PKCS#12
    // OID) rather than damage, so point at the fix.
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|err| {
        CredentialsError::UnsupportedKey {
            path: path.to_owned(),
            reason: format!(
                "unsupported or damaged encrypted PKCS#8 structure ({err}); re-encrypt it \
                 with `{REENCRYPT_HINT}`"
            ),
        }
    })?;

    let Some(password) = password else {
        return Err(CredentialsError::PasswordRequired {
            path: path.to_owned(),
        });
    };

    // `SecretDocument` zeroizes the plaintext when it goes out of scope.
    let plaintext = info
        .decrypt(password)
        .map_err(|err| decrypt_error(path, err))?;

    // CBC padding catches almost every wrong password, but about 1 in 256 slips
    // through as garbage. Garbage is not a PKCS#8 PrivateKeyInfo, so check the
    // structure and report that case as a wrong password too.
    if pkcs8::PrivateKeyInfo::try_from(plaintext.as_bytes()).is_err() {
        return Err(CredentialsError::WrongPassword {
            path: path.to_owned(),
        });
    }
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        plaintext.as_bytes().to_vec(),
    )))
}

/// Classifies a PKCS#8 decryption failure.
fn decrypt_error(path: &Path, err: pkcs8::Error) -> CredentialsError {
    use pkcs8::pkcs5::Error as Pbes;
    match err {
        // The scheme itself is one this build cannot run: say so, since retrying
        // with another password would be pointless.
        pkcs8::Error::EncryptedPrivateKey(
            err @ (Pbes::UnsupportedAlgorithm { .. }
            | Pbes::NoPbes1CryptSupport
            | Pbes::AlgorithmParametersInvalid { .. }),
        ) => CredentialsError::UnsupportedKey {
            path: path.to_owned(),
            reason: format!(
                "key encryption scheme not supported ({err}); re-encrypt it with \
                 `{REENCRYPT_HINT}`"
            ),
        },
        // Bad padding, or plaintext that is not DER: the password is wrong (or the
        // ciphertext damaged; the two cannot be told apart).
        _ => CredentialsError::WrongPassword {
            path: path.to_owned(),
        },
    }
}

/// Reads a whole file into memory that is wiped when dropped (it may hold a key).
fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, CredentialsError> {
    fs::read(path)
        .map(Zeroizing::new)
        .map_err(|io| CredentialsError::Unreadable {
            path: path.to_owned(),
            io,
        })
}

fn malformed(path: &Path, err: rustls_pki_types::pem::Error) -> CredentialsError {
    CredentialsError::MalformedPem {
        path: path.to_owned(),
        reason: err.to_string(),
    }
}

/// Yields `(offset, label)` for every `-----BEGIN <label>-----` line.
///
/// Only labels are needed here, to decide which decoder gets a section; the
/// decoders themselves validate the rest.
fn pem_begin_lines(pem: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    lines(pem).filter_map(|(offset, line)| {
        let label = line.strip_prefix(b"-----BEGIN ")?.strip_suffix(b"-----")?;
        Some((offset, label))
    })
}

/// Returns the length of `section` up to and including the first END line for `label`.
fn find_end_line(section: &[u8], label: &[u8]) -> Option<usize> {
    lines(section).find_map(|(offset, line)| {
        let rest = line.strip_prefix(b"-----END ")?.strip_suffix(b"-----")?;
        (rest == label).then_some(offset + line.len())
    })
}

/// True if the section right after a BEGIN line carries RFC 1421 style headers,
/// which is how OpenSSL's legacy "traditional" format marks encrypted keys.
fn is_legacy_encrypted(section: &[u8]) -> bool {
    lines(section)
        .nth(1)
        .is_some_and(|(_, line)| line.starts_with(b"Proc-Type:"))
}

/// Splits into lines with their byte offsets, tolerating `\n` and `\r\n` endings
/// and trailing blanks (the returned line has them trimmed).
fn lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut offset = 0;
    text.split(|&b| b == b'\n').map(move |raw| {
        let start = offset;
        offset += raw.len() + 1;
        (start, raw.trim_ascii_end())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{CertificateError, Error as TlsError};
    use rustls_pki_types::{ServerName, UnixTime};

    macro_rules! cert_file {
        ($name:literal) => {
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../certs/", $name))
        };
    }

    const PASSWORD: &str = "mypassword";

    fn dev_roots() -> Arc<RootCertStore> {
        Arc::new(load_root_store(&[cert_file!("ca.cert.pem")]).expect("dev CA loads"))
    }

    fn verify_server(chain: &[CertificateDer<'static>], name: &str) -> Result<(), TlsError> {
        let verifier = WebPkiServerVerifier::builder_with_provider(
            dev_roots(),
            Arc::new(ring_provider::default_provider()),
        )
        .build()
        .expect("verifier builds");
        let name = ServerName::try_from(name.to_owned()).expect("valid server name");
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn server_credentials() -> ServerCredentials {
        ServerCredentials::from_pem_files(
            cert_file!("server.cert.pem"),
            cert_file!("server.key.pem"),
            Some(PASSWORD),
        )
        .expect("dev server credentials load")
    }

    /// A scratch file in the OS temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> Self {
            // The pid keeps concurrent test runs apart; the name keeps tests apart.
            let path = std::env::temp_dir().join(format!(
                "pushwire-credentials-test-{}-{name}",
                std::process::id()
            ));
            fs::write(&path, contents).expect("write temp file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    #[test]
    fn server_chain_and_encrypted_key_load() {
        let creds = server_credentials();
        assert_eq!(creds.chain.len(), 1);
        assert!(matches!(creds.key, PrivateKeyDer::Pkcs8(_)));
        // The result must be usable by rustls as-is.
        let copy = creds.clone();
        rustls::ServerConfig::builder_with_provider(Arc::new(ring_provider::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(copy.chain, copy.key)
            .expect("rustls accepts the dev credentials");
        assert_eq!(
            creds.to_string(),
            "1 certificate(s) with a PKCS#8 private key"
        );
    }

    #[test]
    fn server_cert_verifies_for_localhost_and_loopback() {
        let creds = server_credentials();
        verify_server(&creds.chain, "localhost").expect("valid for localhost");
        verify_server(&creds.chain, "127.0.0.1").expect("valid for 127.0.0.1");
        verify_server(&creds.chain, "::1").expect("valid for ::1");
    }

    #[test]
    fn server_cert_rejected_for_other_names() {
        let creds = server_credentials();
        let err = verify_server(&creds.chain, "example.com").unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn cert_from_unrelated_ca_is_unknown_issuer() {
        let chain = load_certificate_chain(cert_file!("other-server.cert.pem")).unwrap();
        let err = verify_server(&chain, "localhost").unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{err:?}"
        );
        // Its own key matches it, so only trust is at fault.
        ServerCredentials::from_pem_files(
            cert_file!("other-server.cert.pem"),
            cert_file!("other-server.key.pem"),
            None,
        )
        .expect("other-server credentials are consistent");
    }

    #[test]
    fn expired_cert_is_rejected_as_expired() {
        let creds = ServerCredentials::from_pem_files(
            cert_file!("expired-server.cert.pem"),
            cert_file!("expired-server.key.pem"),
            None,
        )
        .expect("expired credentials still load: expiry is the verifier's business");
        let err = verify_server(&creds.chain, "localhost").unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_password_is_reported_with_the_path() {
        let path = cert_file!("server.key.pem");
        let err = load_private_key(path, Some("not-the-password")).unwrap_err();
        assert!(
            matches!(err, CredentialsError::WrongPassword { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("wrong password"), "{message}");
    }

    #[test]
    fn every_wrong_password_is_reported_as_such() {
        // About 1 in 256 wrong passwords yields valid CBC padding and therefore
        // garbage plaintext instead of a decryption error; that must be reported as
        // a wrong password too, never as a malformed or unsupported key.
        for i in 0..64 {
            let err = load_private_key(cert_file!("server.key.pem"), Some(&format!("guess{i}")))
                .unwrap_err();
            assert!(
                matches!(err, CredentialsError::WrongPassword { .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn encrypted_key_without_password() {
        let err = load_private_key(cert_file!("server.key.pem"), None).unwrap_err();
        assert!(
            matches!(err, CredentialsError::PasswordRequired { .. }),
            "{err:?}"
        );
        let err = ServerCredentials::from_pem_files(
            cert_file!("server.cert.pem"),
            cert_file!("server.key.pem"),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, CredentialsError::PasswordRequired { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn missing_files() {
        let missing = cert_file!("does-not-exist.pem");
        let is_missing = |err: &CredentialsError| {
            matches!(err, CredentialsError::Unreadable { path, io }
                if path == missing && io.kind() == io::ErrorKind::NotFound)
        };
        let err = load_private_key(missing, Some(PASSWORD)).unwrap_err();
        assert!(is_missing(&err), "{err:?}");
        assert!(err.to_string().contains("does-not-exist.pem"));
        let err = load_certificate_chain(missing).unwrap_err();
        assert!(is_missing(&err), "{err:?}");
        let err = load_root_store(&[missing]).unwrap_err();
        assert!(is_missing(&err), "{err:?}");
        let err = ServerCredentials::from_pem_files(cert_file!("server.cert.pem"), missing, None)
            .unwrap_err();
        assert!(is_missing(&err), "{err:?}");
    }

    #[test]
    fn server_cert_with_client_key_is_a_mismatch() {
        let err = ServerCredentials::from_pem_files(
            cert_file!("server.cert.pem"),
            cert_file!("client.key.pem"),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(&err, CredentialsError::KeyMismatch { cert, key }
                if cert == cert_file!("server.cert.pem") && key == cert_file!("client.key.pem")),
            "{err:?}"
        );
    }

    #[test]
    fn client_cert_and_key_load_match_and_verify() {
        let creds = ServerCredentials::from_pem_files(
            cert_file!("client.cert.pem"),
            cert_file!("client.key.pem"),
            None,
        )
        .expect("client credentials load and match");
        let verifier = WebPkiClientVerifier::builder_with_provider(
            dev_roots(),
            Arc::new(ring_provider::default_provider()),
        )
        .build()
        .expect("client verifier builds");
        verifier
            .verify_client_cert(&creds.chain[0], &creds.chain[1..], UnixTime::now())
            .expect("client cert chains to the dev CA");
    }

    #[test]
    fn root_store_from_several_files() {
        let store = load_root_store(&[cert_file!("ca.cert.pem"), cert_file!("other-ca.cert.pem")])
            .expect("both CAs load");
        assert_eq!(store.len(), 2);
        let no_files: [&Path; 0] = [];
        let err = load_root_store(&no_files).unwrap_err();
        assert!(matches!(err, CredentialsError::NoCaFiles), "{err:?}");
    }

    #[test]
    fn key_file_is_not_a_certificate_file() {
        let err = load_certificate_chain(cert_file!("client.key.pem")).unwrap_err();
        assert!(
            matches!(err, CredentialsError::NoCertificate { .. }),
            "{err:?}"
        );
        let err = load_private_key(cert_file!("ca.cert.pem"), None).unwrap_err();
        assert!(
            matches!(err, CredentialsError::NoPrivateKey { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_ca_certificate() {
        // Well-formed PEM whose content is not a certificate.
        let file = TempFile::new(
            "bogus-ca.pem",
            b"-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
        );
        let err = load_root_store(&[&file.0]).unwrap_err();
        assert!(
            matches!(err, CredentialsError::InvalidCaCertificate { index: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_pem() {
        let file = TempFile::new("truncated.pem", b"-----BEGIN CERTIFICATE-----\nMIIB\n");
        let err = load_certificate_chain(&file.0).unwrap_err();
        assert!(
            matches!(err, CredentialsError::MalformedPem { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn unsupported_key_labels() {
        let file = TempFile::new(
            "openssh.key",
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        );
        let err = load_private_key(&file.0, None).unwrap_err();
        assert!(
            matches!(err, CredentialsError::UnsupportedKey { .. }),
            "{err:?}"
        );
        let file = TempFile::new(
            "legacy.key",
            b"-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
              DEK-Info: AES-256-CBC,00000000000000000000000000000000\n\nAAAA\n\
              -----END EC PRIVATE KEY-----\n",
        );
        let err = load_private_key(&file.0, Some(PASSWORD)).unwrap_err();
        assert!(
            matches!(err, CredentialsError::UnsupportedKey { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn combined_file_with_crlf_line_endings() {
        // Certificate and encrypted key in one file, Windows line endings.
        let mut combined = fs::read(cert_file!("server.cert.pem")).unwrap();
        combined.extend(fs::read(cert_file!("server.key.pem")).unwrap());
        let crlf: Vec<u8> = combined
            .iter()
            .flat_map(|&b| {
                if b == b'\n' {
                    vec![b'\r', b'\n']
                } else {
                    vec![b]
                }
            })
            .collect();
        let file = TempFile::new("combined-crlf.pem", &crlf);
        let creds = ServerCredentials::from_pem_files(&file.0, &file.0, Some(PASSWORD))
            .expect("combined CRLF file loads");
        assert_eq!(creds.chain.len(), 1);
    }

    #[test]
    fn native_roots_follow_ssl_cert_file() {
        // rustls-native-certs honours SSL_CERT_FILE; pointing it at the development CA
        // makes the "OS store" exactly that one certificate. No other test reads these.
        let saved_dir = std::env::var_os("SSL_CERT_DIR");
        let saved_file = std::env::var_os("SSL_CERT_FILE");
        std::env::remove_var("SSL_CERT_DIR");
        std::env::set_var(
            "SSL_CERT_FILE",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../certs/ca.cert.pem"),
        );
        let store = load_native_roots().unwrap();
        assert_eq!(store.len(), 1);
        std::env::set_var("SSL_CERT_FILE", "/nonexistent/pushwire-test-bundle.pem");
        assert!(matches!(
            load_native_roots(),
            Err(CredentialsError::NoNativeRoots { .. })
        ));
        std::env::remove_var("SSL_CERT_FILE");
        if let Some(dir) = saved_dir {
            std::env::set_var("SSL_CERT_DIR", dir);
        }
        if let Some(file) = saved_file {
            std::env::set_var("SSL_CERT_FILE", file);
        }
    }
}
