//! The member's side of the control channel: authenticate the client with
//! the recovery domain's secret, read its one request, answer it.
//!
//! `Status` and `Verify` get one frame; `VerifyStreamed` progress frames then
//! the answer; `Events` the current state as event lines, then every change
//! until the client hangs up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::RecoveryDomain;
use crate::group::state::GroupState;
use crate::group::MemberId;
use crate::obs::{serve_events, Event, EventBus, EventLine};
use crate::replication::CopyLink;

use super::control::{self, Request};
use super::report::{self, LocalView};
use super::verify::{
    verify_links, verify_links_with_progress, ProgressPacer, VerifyFrame, VerifyProgress,
    VerifyReply,
};

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
        let mut r = report::build(&self.domain, self.me, &st, &view);
        r.warnings.extend(takeover_warnings(&self.domain, &st));
        r
    }
}

/// One warning per member that refused to host a resource on its disk:
/// the refusals are in the group state, so every member reports them.
fn takeover_warnings(domain: &RecoveryDomain, state: &GroupState) -> Vec<String> {
    let name = |id: MemberId| {
        domain
            .member(id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("#{}", id.0))
    };
    let mut out = Vec::new();
    for (site, r) in domain.sites.iter().zip(&state.resources) {
        let resource = site.resource.as_str();
        for x in &r.refusals {
            let why = x.refusal.describe(&name(x.member), resource, name);
            out.push(match r.host {
                None => format!("{resource} is not served: takeover refused: {why}"),
                Some(_) => format!("takeover refused: {why}"),
            });
        }
    }
    out
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
            let mut initial = super::observe::snapshot_lines(&st);
            // The fence is this member's own state, not the group's: a late
            // subscriber learns of one already in force from the snapshot.
            let fenced = ctx
                .local
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .writes_fenced
                .clone();
            if let Some(reason) = fenced {
                initial.push(EventLine::now(Event::WritesFenced {
                    member: ctx.member_name(),
                    reason,
                }));
            }
            serve_events(s, &initial, rx).await?;
        }
        Request::Verify => {
            let me = ctx.member_name();
            let reply = match not_production(ctx, &me) {
                Some(refusal) => refusal,
                None => {
                    let links = ctx.links.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let _one = ctx.verifying.lock().await;
                    verify_links(&me, &links).await
                }
            };
            control::write_frame(&mut s, &reply).await?;
        }
        Request::VerifyStreamed => verify_streamed(ctx, &mut s).await?,
    }
    Ok(())
}

/// The refusal a member that does not host the production disk answers.
fn not_production(ctx: &ControlContext, me: &str) -> Option<VerifyReply> {
    let report = ctx.report();
    let host = report.resources.first().and_then(|r| r.host.as_deref());
    (host != Some(me)).then(|| VerifyReply {
        member: me.to_owned(),
        error: Some("this member is not the production host".into()),
        copies: Vec::new(),
    })
}

/// Runs the verify on this task and sends its progress between batches.
/// The latest progress waits in a `watch` (one value, however fast the
/// batches go), so the stream is bounded by the pacing, not by the disk. If
/// the client hangs up, a write fails and the verify is dropped with it.
async fn verify_streamed(ctx: &ControlContext, s: &mut TcpStream) -> anyhow::Result<()> {
    let me = ctx.member_name();
    if let Some(refusal) = not_production(ctx, &me) {
        control::write_frame(s, &VerifyFrame::Done(refusal)).await?;
        return Ok(());
    }
    let links = ctx.links.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (tx, mut rx) = watch::channel(VerifyProgress::default());
    let work = async {
        // Waiting here for another verify still sends heartbeats.
        let _one = ctx.verifying.lock().await;
        verify_links_with_progress(&me, &links, |p| {
            tx.send_replace(p.clone());
        })
        .await
    };
    tokio::pin!(work);
    let heartbeat = Duration::from_millis(control::PROGRESS_HEARTBEAT_MS);
    let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut pacer = ProgressPacer::new(Duration::from_millis(control::PROGRESS_INTERVAL_MS));
    let mut sent = VerifyProgress::default();
    loop {
        tokio::select! {
            biased;
            reply = &mut work => {
                // The last progress (100% when every copy was up) is not
                // left unsaid, whatever the pacing held back.
                let last = rx.borrow().clone();
                if last != sent {
                    control::write_frame(s, &VerifyFrame::Progress(last)).await?;
                }
                control::write_frame(s, &VerifyFrame::Done(reply)).await?;
                return Ok(());
            }
            Ok(()) = rx.changed() => {
                let p = rx.borrow_and_update().clone();
                if pacer.due(&p, Instant::now()) {
                    control::write_frame(s, &VerifyFrame::Progress(p.clone())).await?;
                    sent = p;
                    beats.reset();
                }
            }
            _ = beats.tick() => {
                let p = rx.borrow().clone();
                control::write_frame(s, &VerifyFrame::Progress(p.clone())).await?;
                sent = p;
            }
        }
    }
}
