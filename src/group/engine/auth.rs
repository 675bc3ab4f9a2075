//! Mutual HMAC-SHA256 challenge-response over a fresh stream, so only holders
//! of the group secret talk to each other; reusable by any TCP protocol.
//!
//! Exchange (fixed sizes, nothing allocated from peer input):
//! 1. client → server: `context(8) ‖ nc(32)`
//! 2. server → client: `context(8) ‖ ns(32) ‖ HMAC(k, "srv" ‖ context ‖ nc ‖ ns)`
//! 3. client → server: `HMAC(k, "cli" ‖ context ‖ nc ‖ ns)`
//! 4. server → client: one byte `ACCEPT`
//!
//! The role label inside each MAC means a server's proof can never be
//! replayed as a client's (or reflected back at its sender); each side also
//! refuses a peer nonce equal to its own.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type HmacSha256 = Hmac<Sha256>;

/// Bytes in a challenge nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes in an HMAC-SHA256 tag.
pub const TAG_BYTES: usize = 32;
/// Shortest secret accepted: shorter keys are guessable.
pub const SECRET_BYTES_MIN: usize = 16;
const ACCEPT: u8 = 0xA5;
const LABEL_SERVER: &[u8] = b"srv";
const LABEL_CLIENT: &[u8] = b"cli";

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The secret is shorter than [`SECRET_BYTES_MIN`].
    #[error("secret must be at least {SECRET_BYTES_MIN} bytes")]
    WeakSecret,
    /// The peer speaks another protocol (context tag differs).
    #[error("peer speaks another protocol")]
    WrongContext,
    /// The peer echoed our own nonce: a reflection attempt.
    #[error("peer reflected our challenge")]
    Reflected,
    /// The peer's proof does not match: it does not hold the secret.
    #[error("peer failed to prove the shared secret")]
    BadProof,
    /// The peer closed the connection instead of accepting our proof.
    #[error("peer refused our credentials")]
    Refused,
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
    /// The stream failed.
    #[error("handshake i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A shared secret and the protocol it protects.
#[derive(Clone)]
pub struct Authenticator {
    secret: Vec<u8>,
    context: [u8; 8],
    timeout: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Authenticator")
            .field("context", &String::from_utf8_lossy(&self.context))
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `context` names the protocol (e.g. `b"GMRAFT01"`), so a secret shared
    /// by two protocols cannot be used to cross from one to the other.
    pub fn new(secret: &[u8], context: [u8; 8], timeout: Duration) -> Result<Self, AuthError> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(AuthError::WeakSecret);
        }
        Ok(Authenticator {
            secret: secret.to_vec(),
            context,
            timeout,
        })
    }

    fn tag(&self, label: &[u8], nc: &[u8], ns: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        mac.update(label);
        mac.update(&self.context);
        mac.update(nc);
        mac.update(ns);
        mac
    }

    /// Runs the client side on a fresh stream; `Ok` means both sides proved the secret.
    pub async fn client<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut T,
    ) -> Result<(), AuthError> {
        tokio::time::timeout(self.timeout, self.client_steps(io))
            .await
            .map_err(|_| AuthError::Timeout)?
    }

    /// Runs the server side on a freshly accepted stream.
    pub async fn server<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut T,
    ) -> Result<(), AuthError> {
        tokio::time::timeout(self.timeout, self.server_steps(io))
            .await
            .map_err(|_| AuthError::Timeout)?
    }

    async fn client_steps<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut T,
    ) -> Result<(), AuthError> {
        let mut nc = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nc);
        let mut hello = [0u8; 8 + NONCE_BYTES];
        hello[..8].copy_from_slice(&self.context);
        hello[8..].copy_from_slice(&nc);
        io.write_all(&hello).await?;
        io.flush().await?;

        let mut reply = [0u8; 8 + NONCE_BYTES + TAG_BYTES];
        io.read_exact(&mut reply).await?;
        if reply[..8] != self.context {
            return Err(AuthError::WrongContext);
        }
        let ns = &reply[8..8 + NONCE_BYTES];
        if ns == nc {
            return Err(AuthError::Reflected);
        }
        self.tag(LABEL_SERVER, &nc, ns)
            .verify_slice(&reply[8 + NONCE_BYTES..])
            .map_err(|_| AuthError::BadProof)?;

        let proof = self.tag(LABEL_CLIENT, &nc, ns).finalize().into_bytes();
        io.write_all(&proof).await?;
        io.flush().await?;
        let mut ack = [0u8; 1];
        match io.read_exact(&mut ack).await {
            Ok(_) if ack[0] == ACCEPT => Ok(()),
            Ok(_) => Err(AuthError::Refused),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(AuthError::Refused),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Err(AuthError::Refused),
            Err(e) => Err(e.into()),
        }
    }

    async fn server_steps<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut T,
    ) -> Result<(), AuthError> {
        let mut hello = [0u8; 8 + NONCE_BYTES];
        io.read_exact(&mut hello).await?;
        if hello[..8] != self.context {
            return Err(AuthError::WrongContext);
        }
        let nc = &hello[8..];
        let mut ns = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut ns);
        if nc == ns {
            return Err(AuthError::Reflected);
        }
        let mut reply = [0u8; 8 + NONCE_BYTES + TAG_BYTES];
        reply[..8].copy_from_slice(&self.context);
        reply[8..8 + NONCE_BYTES].copy_from_slice(&ns);
        reply[8 + NONCE_BYTES..]
            .copy_from_slice(&self.tag(LABEL_SERVER, nc, &ns).finalize().into_bytes());
        io.write_all(&reply).await?;
        io.flush().await?;

        let mut proof = [0u8; TAG_BYTES];
        io.read_exact(&mut proof).await?;
        self.tag(LABEL_CLIENT, nc, &ns)
            .verify_slice(&proof)
            .map_err(|_| AuthError::BadProof)?;
        io.write_all(&[ACCEPT]).await?;
        io.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: [u8; 8] = *b"GMTEST01";

    fn auth(secret: &[u8]) -> Authenticator {
        Authenticator::new(secret, CTX, Duration::from_secs(5)).expect("long enough secret")
    }

    #[tokio::test]
    async fn same_secret_authenticates_both_ways() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let (c, s) = (auth(b"0123456789abcdef"), auth(b"0123456789abcdef"));
        let (rc, rs) = tokio::join!(c.client(&mut a), s.server(&mut b));
        assert!(rc.is_ok() && rs.is_ok(), "{rc:?} {rs:?}");
    }

    #[tokio::test]
    async fn wrong_secret_is_refused_on_both_sides() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let (c, s) = (auth(b"0123456789abcdef"), auth(b"fedcba9876543210"));
        let (rc, rs) = tokio::join!(c.client(&mut a), s.server(&mut b));
        assert!(matches!(rc, Err(AuthError::BadProof)), "{rc:?}");
        // The client hung up after the bad server proof.
        assert!(rs.is_err());
    }

    #[tokio::test]
    async fn reflected_nonce_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let c = auth(b"0123456789abcdef");
        let fake_server = async move {
            let mut hello = [0u8; 8 + NONCE_BYTES];
            b.read_exact(&mut hello).await.expect("hello");
            // Echo the client's own nonce back with a garbage tag.
            let mut reply = [0u8; 8 + NONCE_BYTES + TAG_BYTES];
            reply[..8 + NONCE_BYTES].copy_from_slice(&hello);
            b.write_all(&reply).await.expect("reply");
            b
        };
        let (rc, _b) = tokio::join!(c.client(&mut a), fake_server);
        assert!(matches!(rc, Err(AuthError::Reflected)), "{rc:?}");
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(matches!(
            Authenticator::new(b"short", CTX, Duration::from_secs(1)),
            Err(AuthError::WeakSecret)
        ));
    }
}
