//! TLS identity: certificates self-signed by node keys and verifiers that pin them.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{NodeId, NodeKey};

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER prefix of an ed25519 PKCS#8 v1 private key (RFC 8410); the 32 secret bytes follow.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A node's TLS certificate and private key, both derived from its node key.
#[derive(Debug)]
pub struct NodeCertificate {
    /// The self-signed certificate.
    pub certificate: CertificateDer<'static>,
    /// The node key as PKCS#8.
    pub private_key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for NodeCertificate {
    fn clone(&self) -> Self {
        Self {
            certificate: self.certificate.clone(),
            private_key: self.private_key.clone_key(),
        }
    }
}

impl NodeCertificate {
    /// Makes the certificate of `key`, self-signed by it.
    pub fn new(key: &NodeKey) -> Result<Self, rcgen::Error> {
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&key.secret_bytes());
        let private_key = PrivatePkcs8KeyDer::from(pkcs8);
        let key_pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&private_key, &rcgen::PKCS_ED25519)?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        let certificate = params.self_signed(&key_pair)?;
        Ok(Self {
            certificate: certificate.der().clone(),
            private_key,
        })
    }

    pub(crate) fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.private_key.clone_key())
    }
}

/// The name every node presents; identity comes from the key, not the name.
pub const SERVER_NAME: &str = "golem.node";

/// The node id whose key the certificate carries, or `None` if it is not an ed25519
/// certificate.
pub fn node_id_of(certificate: &CertificateDer<'_>) -> Option<NodeId> {
    let certificate = webpki::EndEntityCert::try_from(certificate).ok()?;
    let spki = certificate.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    NodeId::from_bytes(key.try_into().ok()?).ok()
}

/// Checks a peer's certificate: it must carry an ed25519 key (and, when dialing, the expected
/// node's key), and the handshake must be signed by that key. Certificate chains, names and
/// dates play no part: the key is the identity.
#[derive(Debug)]
pub struct PeerVerifier {
    expected: Option<NodeId>,
    algorithms: WebPkiSupportedAlgorithms,
    /// The node whose certificate was last presented, for error reports.
    presented: Mutex<Option<NodeId>>,
}

impl PeerVerifier {
    /// A verifier that accepts only `expected` (for dialing), or any node (for accepting).
    pub fn new(expected: Option<NodeId>, provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(Self {
            expected,
            algorithms: provider.signature_verification_algorithms,
            presented: Mutex::new(None),
        })
    }

    /// The node whose certificate the peer presented, once it has.
    pub fn presented(&self) -> Option<NodeId> {
        *self
            .presented
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self, certificate: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
        let found = node_id_of(certificate).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        *self
            .presented
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(found);
        match self.expected {
            Some(expected) if expected != found => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(WrongPeer {
                    expected,
                    found,
                }))),
            )),
            _ => Ok(found),
        }
    }

    fn schemes() -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The peer presented another node's key than the one dialed.
#[derive(Debug, thiserror::Error)]
#[error("expected node {expected}, the peer is node {found}")]
pub struct WrongPeer {
    /// The node dialed.
    pub expected: NodeId,
    /// The node that answered.
    pub found: NodeId,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_node_key() {
        let key = NodeKey::from_secret([3; 32]);
        let certificate = NodeCertificate::new(&key).expect("certificate");
        assert_eq!(node_id_of(&certificate.certificate), Some(key.node_id()));
        assert_eq!(node_id_of(&CertificateDer::from(vec![0x30, 0x00])), None);
    }
}
