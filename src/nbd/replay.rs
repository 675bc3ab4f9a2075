//! Runs a whole server session (handshake, then transmission) over an in-memory
//! pipe from a fixed client byte stream: the harness of the property tests and the fuzzer.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handshake::negotiate;
use super::transmission::serve_connection;
use super::{Export, NbdError};

/// Bytes of server output kept; the rest is read and dropped, so a hostile
/// input cannot make the harness itself grow without bound.
const OUTPUT_BYTES_MAX: usize = 1 << 20;

/// Feed `input` to a server session as the client, then close the client's
/// sending side. Returns how the session ended and the server's output (the
/// first MiB). Must never panic or hang, whatever `input` holds.
pub async fn replay(input: &[u8], exports: &[Arc<Export>]) -> (Result<(), NbdError>, Vec<u8>) {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let input = input.to_vec();
    let exports = exports.to_vec();
    let session = tokio::spawn(async move {
        let n = negotiate(&mut server, &exports).await?;
        serve_connection(server, n.export, n.options).await
    });
    let (mut rd, mut wr) = tokio::io::split(&mut client);
    let feed = async {
        // The server may stop reading early (protocol error): that is fine.
        let _ = wr.write_all(&input).await;
        let _ = wr.shutdown().await;
    };
    let drain = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let keep = n.min(OUTPUT_BYTES_MAX.saturating_sub(out.len()));
            out.extend_from_slice(&buf[..keep]);
        }
        out
    };
    let ((), out) = tokio::join!(feed, drain);
    let result = match tokio::time::timeout(Duration::from_secs(30), session).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Err(_) => Err(NbdError::HandshakeTimeout(30_000)),
    };
    (result, out)
}
