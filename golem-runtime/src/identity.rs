//! Node identity: an ed25519 key pair per node.
//!
//! A [`NodeId`] is the node's public key; peers know each other by it, and every signature a
//! node makes (TLS handshakes, receipts) checks against it. A [`NodeKey`] holds the secret half
//! and can be persisted, so a provider keeps its identity (and its reputation) across restarts.
//!
//! Signatures are domain-separated: [`NodeKey::sign`] signs `(domain, message)`, so a signature
//! made for one purpose cannot be replayed as another.
//!
//! A provider also says where it wants to be paid: its [`Payee`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// Identity and signature failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The operating system's randomness was unavailable for a new key.
    #[error("cannot draw randomness for a new node key: {0}")]
    Random(String),
    /// The key file could not be read or written.
    #[error("node key file {path}: {message}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The key file exists but does not hold a node key.
    #[error("node key file {path} is not a golem node key: {reason}")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A string is not a node id.
    #[error("`{0}` is not a node id: expected 64 hexadecimal digits of an ed25519 public key")]
    InvalidNodeId(String),
    /// A signature does not verify against the node id and message.
    #[error("the signature does not match node {node} and the signed data")]
    BadSignature {
        /// The node the signature claimed to come from.
        node: NodeId,
    },
}

/// A node's public identity: its ed25519 public key, shown as 64 hex digits.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "[u8; 32]", into = "[u8; 32]")]
pub struct NodeId([u8; 32]);

impl TryFrom<[u8; 32]> for NodeId {
    type Error = IdentityError;

    fn try_from(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        Self::from_bytes(bytes)
    }
}

impl From<NodeId> for [u8; 32] {
    fn from(node: NodeId) -> Self {
        node.0
    }
}

impl NodeId {
    /// The node id for these public key bytes, if they are a valid ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&bytes)
            .map(|_| Self(bytes))
            .map_err(|_| IdentityError::InvalidNodeId(hex(&bytes)))
    }

    /// The public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The node of an iroh endpoint id (the same ed25519 public key).
    pub fn from_iroh(id: iroh::EndpointId) -> Self {
        Self(*id.as_bytes())
    }

    /// The node's iroh endpoint id.
    pub fn to_iroh(&self) -> iroh::EndpointId {
        iroh::EndpointId::from_bytes(&self.0)
            .expect("a node id is a valid ed25519 point, checked when it was made")
    }

    /// Checks that `signature` was made by this node over `message` in `domain`.
    pub fn verify(
        &self,
        domain: &str,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), IdentityError> {
        let bad = || IdentityError::BadSignature { node: *self };
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| bad())?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(&signed_bytes(domain, message), &signature)
            .map_err(|_| bad())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", &hex(&self.0)[..16])
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, IdentityError> {
        let invalid = || IdentityError::InvalidNodeId(text.into());
        Self::from_bytes(unhex(text).ok_or_else(invalid)?).map_err(|_| invalid())
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "(Half, Half)", into = "(Half, Half)")]
pub struct Signature(pub [u8; 64]);

/// Half a signature: serde handles arrays of up to 32 elements.
type Half = [u8; 32];

impl From<(Half, Half)> for Signature {
    fn from((low, high): (Half, Half)) -> Self {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&low);
        bytes[32..].copy_from_slice(&high);
        Self(bytes)
    }
}

impl From<Signature> for (Half, Half) {
    fn from(signature: Signature) -> Self {
        let mut low = [0u8; 32];
        let mut high = [0u8; 32];
        low.copy_from_slice(&signature.0[..32]);
        high.copy_from_slice(&signature.0[32..]);
        (low, high)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", &hex(&self.0)[..16])
    }
}

/// A node's key pair. The secret never leaves it except through [`NodeKey::save`].
pub struct NodeKey {
    key: SigningKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

/// First line of a key file.
const KEY_FILE_HEADER: &str = "golem node key v1";

impl NodeKey {
    /// A new random key.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|error| IdentityError::Random(error.to_string()))?;
        Ok(Self::from_secret(secret))
    }

    /// The key with this 32-byte secret (for tests and tools; [`NodeKey::generate`] otherwise).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// This node's public identity.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// The secret, for copies of the key. Stays inside this crate.
    pub(crate) fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The same key as iroh's: the node's endpoint id is its node id.
    pub(crate) fn to_iroh(&self) -> iroh::SecretKey {
        iroh::SecretKey::from_bytes(&self.key.to_bytes())
    }

    /// Signs `message` for `domain` (a fixed string naming what the signature is for).
    pub fn sign(&self, domain: &str, message: &[u8]) -> Signature {
        Signature(self.key.sign(&signed_bytes(domain, message)).to_bytes())
    }

    /// Reads a key written by [`NodeKey::save`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|error| io_error(path, &error))?;
        let format = |reason: &str| IdentityError::Format {
            path: path.into(),
            reason: reason.into(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(format("the first line is not the golem key header"));
        }
        let secret = lines
            .next()
            .and_then(|line| unhex(line.trim()))
            .ok_or_else(|| format("the second line is not 64 hexadecimal digits"))?;
        Ok(Self::from_secret(secret))
    }

    /// Writes the key to `path`, readable by its owner only, replacing any file atomically.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let text = format!("{KEY_FILE_HEADER}\n{}\n", hex(self.key.as_bytes()));
        let temporary = path.with_extension("tmp");
        write_private(&temporary, text.as_bytes()).map_err(|error| io_error(path, &error))?;
        std::fs::rename(&temporary, path).map_err(|error| io_error(path, &error))
    }

    /// Loads the key at `path`, or generates and saves one when there is no file. A file that
    /// exists but cannot be read as a key is an error, never silently replaced.
    pub fn load_or_generate(path: &Path) -> Result<Self, IdentityError> {
        match std::fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(parent).map_err(|error| io_error(path, &error))?;
                }
                let key = Self::generate()?;
                key.save(path)?;
                Ok(key)
            }
            Err(error) => Err(io_error(path, &error)),
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

fn io_error(path: &Path, error: &std::io::Error) -> IdentityError {
    IdentityError::Io {
        path: path.into(),
        message: error.to_string(),
    }
}

/// Where a provider wants to be paid; it says so in its
/// [`Hello`](crate::proto::message::Hello).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Payee {
    /// An Ethereum account.
    Ethereum([u8; 20]),
}

impl std::str::FromStr for Payee {
    type Err = String;

    /// An Ethereum address: `0x` and 40 hex digits.
    fn from_str(text: &str) -> Result<Self, String> {
        text.strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .and_then(unhex::<20>)
            .map(Self::Ethereum)
            .ok_or_else(|| format!("`{text}` is not an Ethereum address (0x and 40 hex digits)"))
    }
}

impl fmt::Display for Payee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ethereum(address) => write!(f, "0x{}", hex(address)),
        }
    }
}

/// What is actually signed: the domain's length and bytes, then the message.
fn signed_bytes(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + domain.len() + message.len());
    bytes.extend_from_slice(&(domain.len() as u64).to_le_bytes());
    bytes.extend_from_slice(domain.as_bytes());
    bytes.extend_from_slice(message);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("golem-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn signatures_verify_only_for_their_node_domain_and_message() {
        let key = NodeKey::generate().expect("key");
        let other = NodeKey::generate().expect("key");
        let signature = key.sign("receipt", b"job 1");
        let id = key.node_id();
        assert_eq!(id.verify("receipt", b"job 1", &signature), Ok(()));
        assert!(id.verify("receipt", b"job 2", &signature).is_err());
        assert!(id.verify("hello", b"job 1", &signature).is_err());
        assert_eq!(
            other.node_id().verify("receipt", b"job 1", &signature),
            Err(IdentityError::BadSignature {
                node: other.node_id()
            })
        );
        let mut tampered = signature;
        tampered.0[5] ^= 1;
        assert!(id.verify("receipt", b"job 1", &tampered).is_err());
    }

    #[test]
    fn node_ids_print_and_parse() {
        let id = NodeKey::from_secret([7; 32]).node_id();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<NodeId>(), Ok(id));
        assert!(matches!(
            "xyz".parse::<NodeId>(),
            Err(IdentityError::InvalidNodeId(_))
        ));
        assert!(matches!(
            "zz".repeat(32).parse::<NodeId>(),
            Err(IdentityError::InvalidNodeId(_))
        ));
    }

    #[test]
    fn keys_persist_privately_and_load_back() {
        let dir = temp_dir("persist");
        let path = dir.join("keys/node.key");
        let first = NodeKey::load_or_generate(&path).expect("generated");
        let second = NodeKey::load_or_generate(&path).expect("loaded");
        assert_eq!(first.node_id(), second.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_and_left_alone() {
        let dir = temp_dir("corrupt");
        let path = dir.join("node.key");
        std::fs::write(&path, "not a key\n").expect("write");
        assert!(matches!(
            NodeKey::load_or_generate(&path),
            Err(IdentityError::Format { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "not a key\n");
        std::fs::write(&path, format!("{KEY_FILE_HEADER}\n1234\n")).expect("write");
        assert!(matches!(
            NodeKey::load(&path),
            Err(IdentityError::Format { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
