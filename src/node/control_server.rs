//! The member's side of the control channel: authenticate the client with
//! the recovery domain's secret, read its one request, answer it.
//!
//! `Status` and `Verify` get one frame; `Events` gets the current state as
//! event lines, then every change until the client hangs up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::RecoveryDomain;
use crate::group::state::GroupState;
use crate::group::MemberId;
use crate::obs::{serve_events, EventBus};
use crate::replication::CopyLink;

use super::control::{self, Request};
use super::report::{self, LocalView};
use super::verify::{verify_links, VerifyReply};

/// Most control connections served at once (events subscriptions included;
/// the bus itself allows fewer subscribers). Past it a connection is closed.
pub const CONTROL_CONNECTIONS_MAX: usize = 96;
/// Time a client has to send its request after the handshake.
const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// What the control channel answers from.
#[derive(Clone)]
pub struct ControlContext {
    pub domain: Arc<RecoveryDomain>,
    pub me: MemberId,
    pub state: watch::Receiver<Arc<GroupState>>,
    pub local: Arc<Mutex<LocalView>>,
    pub bus: EventBus,
    /// The production volume's copy links (empty elsewhere).
    pub links: Arc<Mutex<Vec<Arc<CopyLink>>>>,
    /// One verify at a time: each reads the whole disk on both sides.
    pub verifying: Arc<tokio::sync::Mutex<()>>,
}

impl ControlContext {
    fn member_name(&self) -> String {
        self.domain
            .member(self.me)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("#{}", self.me.0))
    }

    /// The status report as this member sees it now.
    pub fn report(&self) -> super::status::StatusReport {
        let view = self.local.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let st = self.state.borrow().clone();
        report::build(&self.domain, self.me, &st, &view)
    }
}

/// Serve control connections until `incoming` closes.
pub async fn control_loop(mut incoming: mpsc::Receiver<TcpStream>, ctx: ControlContext) {
    let auth = control::authenticator(&ctx.domain.secret);
    let slots = Arc::new(Semaphore::new(CONTROL_CONNECTIONS_MAX));
    while let Some(mut s) = incoming.recv().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("too many control connections: closing one");
            continue;
        };
        let ctx = ctx.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = auth.server(&mut s).await {
                let peer = s.peer_addr().ok();
                tracing::warn!(?peer, "control connection refused: {e}");
                return;
            }
            let req = tokio::time::timeout(
                Duration::from_millis(REQUEST_TIMEOUT_MS),
                control::read_frame::<_, Request>(&mut s),
            )
            .await;
            let req = match req {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::debug!("control request: {e}");
                    return;
                }
                Err(_) => return,
            };
            if let Err(e) = answer(&ctx, req, s).await {
                tracing::debug!("control answer: {e}");
            }
        });
    }
}

async fn answer(ctx: &ControlContext, req: Request, mut s: TcpStream) -> anyhow::Result<()> {
    match req {
        Request::Status => control::write_frame(&mut s, &ctx.report()).await?,
        Request::Events => {
            let rx = ctx.bus.subscribe()?;
            let st = ctx.state.borrow().clone();
            let initial = super::observe::snapshot_lines(&st);
            serve_events(s, &initial, rx).await?;
        }
        Request::Verify => {
            let links = ctx.links.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let me = ctx.member_name();
            let reply = if ctx
                .report()
                .resources
                .first()
                .and_then(|r| r.host.as_deref())
                != Some(me.as_str())
            {
                VerifyReply {
                    member: me,
                    error: Some("this member is not the production host".into()),
                    copies: Vec::new(),
                }
            } else {
                let _one = ctx.verifying.lock().await;
                verify_links(&me, &links).await
            };
            control::write_frame(&mut s, &reply).await?;
        }
    }
    Ok(())
}
