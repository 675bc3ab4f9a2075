//! One listener per member, at its recovery-domain `address`, carrying the
//! group engine, replication and control: each connection opens with a
//! 4-byte magic naming its protocol, and is handed to that protocol's owner.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::group::engine::ENGINE_MAGIC;
use crate::replication::receiver::REPLICATION_MAGIC;

use super::control;

/// Time a new connection has to name its protocol.
const MAGIC_TIMEOUT_MS: u64 = 5_000;
/// Connections queued per protocol before new ones are dropped.
const QUEUE_MAX: usize = 64;

/// Where the connections of each protocol go.
pub struct Routes {
    pub engine: mpsc::Receiver<TcpStream>,
    pub replication: mpsc::Receiver<TcpStream>,
    pub control: mpsc::Receiver<TcpStream>,
}

/// Accept on `listener` until the task is dropped, routing each connection
/// (its magic already read) to the matching queue.
pub fn start(listener: TcpListener) -> (Routes, tokio::task::JoinHandle<()>) {
    let (etx, engine) = mpsc::channel(QUEUE_MAX);
    let (rtx, replication) = mpsc::channel(QUEUE_MAX);
    let (ctx, control) = mpsc::channel(QUEUE_MAX);
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (etx, rtx, ctx) = (etx.clone(), rtx.clone(), ctx.clone());
            tokio::spawn(async move {
                let mut s = stream;
                let mut magic = [0u8; 4];
                let read = tokio::time::timeout(
                    Duration::from_millis(MAGIC_TIMEOUT_MS),
                    s.read_exact(&mut magic),
                )
                .await;
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
                let queue = match magic {
                    m if m == ENGINE_MAGIC => &etx,
                    m if m == REPLICATION_MAGIC => &rtx,
                    m if m == control::MAGIC => &ctx,
                    other => {
                        tracing::debug!("dropping a connection with unknown magic {other:02x?}");
                        return;
                    }
                };
                if queue.try_send(s).is_err() {
                    tracing::warn!("connection queue full: dropping a connection");
                }
            });
        }
    });
    (
        Routes {
            engine,
            replication,
            control,
        },
        task,
    )
}
