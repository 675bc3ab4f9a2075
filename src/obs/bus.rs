//! The event bus the daemon publishes to, the server side of an `events`
//! subscription, and the client loop that prints the lines it receives.
//!
//! Framing: the client opens a control connection ([`control::MAGIC`], then a
//! [`Request::Events`] frame); from then on the member sends one JSON
//! [`EventLine`] per line (`\n`-terminated) until either side closes.

use super::events::{Event, EventLine};
use super::ObsError;
use crate::node::control::{self, Request};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::broadcast;

/// Events kept for a subscriber that has not read them yet; a slower one
/// misses the oldest and is told so with a `lagged` line.
pub const EVENTS_QUEUE_MAX: usize = 1024;
/// Most subscribers at once (each is a connection and a task on the member).
pub const SUBSCRIBERS_MAX: usize = 64;
/// Longest event line a client accepts: a join lists at most 16 resource ids
/// of 64 bytes, so real lines are well under a kilobyte.
pub const EVENT_LINE_BYTES_MAX: usize = 64 * 1024;
/// How long the client waits for the member to accept the connection.
pub const CONNECT_TIMEOUT_MS: u64 = 5000;

/// A bounded broadcast of event lines. Cheap to clone; publishing never
/// blocks and never fails for want of subscribers.
#[derive(Clone, Debug)]
pub struct EventBus {
    tx: broadcast::Sender<EventLine>,
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new(EVENTS_QUEUE_MAX)
    }
}

impl EventBus {
    /// A bus keeping up to `capacity` (1 to [`EVENTS_QUEUE_MAX`]) unread events per subscriber.
    pub fn new(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity.clamp(1, EVENTS_QUEUE_MAX));
        EventBus { tx }
    }

    /// Stamps `event` with the current time and sends it to every subscriber.
    pub fn publish(&self, event: Event) -> EventLine {
        let line = EventLine::now(event);
        // An error only means nobody listens right now.
        let _ = self.tx.send(line.clone());
        line
    }

    /// Publishes each event in order.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Event>) {
        for e in events {
            self.publish(e);
        }
    }

    /// A new subscription, receiving what is published from now on.
    pub fn subscribe(&self) -> Result<broadcast::Receiver<EventLine>, ObsError> {
        if self.tx.receiver_count() >= SUBSCRIBERS_MAX {
            return Err(ObsError::TooManySubscribers(SUBSCRIBERS_MAX));
        }
        Ok(self.tx.subscribe())
    }

    /// How many subscriptions are open.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Writes one event line and its newline, and flushes it.
pub async fn write_event_line<W: AsyncWrite + Unpin>(
    w: &mut W,
    line: &EventLine,
) -> Result<(), ObsError> {
    let mut json = line.to_json().map_err(ObsError::Encode)?;
    json.push('\n');
    w.write_all(json.as_bytes()).await?;
    w.flush().await?;
    Ok(())
}

/// Sends every event received on `rx` to `w`, one line each, until the bus
/// is gone (returns the number of lines written) or a write fails. A
/// subscriber that fell behind gets a `lagged` line and continues.
pub async fn stream_events<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: broadcast::Receiver<EventLine>,
) -> Result<u64, ObsError> {
    let mut lines = 0u64;
    loop {
        let line = match rx.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                EventLine::now(Event::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(lines),
        };
        write_event_line(&mut w, &line).await?;
        lines += 1;
    }
}

/// The member's side of a subscription on `stream`, after it has read the
/// [`Request::Events`] frame: writes `initial` (e.g. [`super::snapshot_events`],
/// taken after subscribing so nothing falls between), then streams `rx`.
/// Returns when the client hangs up, so an idle bus does not keep dead
/// subscriptions, or when the bus is gone.
pub async fn serve_events<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    initial: &[EventLine],
    rx: broadcast::Receiver<EventLine>,
) -> Result<u64, ObsError> {
    let (mut r, mut w) = tokio::io::split(stream);
    for line in initial {
        write_event_line(&mut w, line).await?;
    }
    let hangup = async {
        // The client sends nothing after its request: any byte or EOF ends it.
        let mut byte = [0u8; 1];
        let _ = r.read(&mut byte).await;
    };
    tokio::select! {
        streamed = stream_events(&mut w, rx) => Ok(streamed? + initial.len() as u64),
        () = hangup => Ok(initial.len() as u64),
    }
}

/// Opens a subscription on an established connection to a member: the
/// control magic and the `Events` request.
pub async fn request_events<S: AsyncWrite + Unpin>(stream: &mut S) -> Result<(), ObsError> {
    stream.write_all(&control::MAGIC).await?;
    control::write_frame(stream, &Request::Events).await?;
    Ok(())
}

/// Copies event lines from `r` to `out` as they arrive, checking each is a
/// JSON object of bounded length. Returns the number of lines at EOF.
pub async fn copy_event_lines<R, W>(r: R, out: &mut W) -> Result<u64, ObsError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = BufReader::new(r);
    let mut buf = Vec::with_capacity(1024);
    let mut lines = 0u64;
    loop {
        buf.clear();
        let limit = EVENT_LINE_BYTES_MAX as u64 + 1;
        let n = (&mut r).take(limit).read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return Ok(lines);
        }
        if buf.last() != Some(&b'\n') {
            if n as u64 == limit {
                return Err(ObsError::EventLineTooLong(EVENT_LINE_BYTES_MAX));
            }
            // The member closed mid-line: that half line is not an event.
            return Ok(lines);
        }
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&buf)
            .map_err(ObsError::BadEventLine)?;
        out.write_all(&buf).await?;
        out.flush().await?;
        lines += 1;
    }
}

/// The `events` command's loop: connects to a member's address, subscribes
/// and prints every line to `out` until the member closes the stream.
pub async fn follow_events<W: AsyncWrite + Unpin>(
    addr: &str,
    out: &mut W,
) -> Result<u64, ObsError> {
    let connect = tokio::net::TcpStream::connect(addr);
    let mut stream = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect)
        .await
        .map_err(|_| ObsError::ConnectTimeout(addr.to_owned()))??;
    request_events(&mut stream).await?;
    copy_event_lines(stream, out).await
}
