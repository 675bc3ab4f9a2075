//! The member daemon (`geomirror up`): runs the group engine and turns the
//! join protocol's actions into running hosts, receivers, senders and NBD
//! exports.
//!
//! The loop: the engine applies ordered commands to the replicated
//! [`GroupState`]; after every change, [`join::step`] says what this member
//! must do differently; [`roles::Roles`] does it; proposals go back to the
//! engine. Page writes never pass through here.

pub mod control;
mod control_server;
mod copy_state;
mod dirty;
pub mod fence;
mod founding;
pub mod lease;
mod metered;
mod mux;
pub mod observe;
mod probe;
mod proposals;
pub mod report;
mod resync_log;
mod roles;
pub mod status;
pub mod verify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::net::TcpListener;

use crate::config::{check_lease_timing, RecoveryDomain};
use crate::group::engine::{Engine, EngineConfig};
use crate::group::join::{self, Action, Event};
use crate::group::state::GroupState;
use crate::group::{Desired, DomainSpec, GroupCommand, MemberId, ResourceId};
use crate::storage::EngineKind;

use control_server::{control_loop, ControlContext};
use fence::{FenceWatch, LeaseFence};
use observe::Observer;
pub use probe::ProbeError;
use proposals::{engine_key, propose, propose_until_decided, report_sync};
use report::LocalView;
use roles::Roles;

/// How `geomirror up` runs a member.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub config: PathBuf,
    pub member: String,
    pub state_dir: PathBuf,
    pub engine: EngineKind,
    /// In place of the recovery domain's `fail_timeout_ms`: a member silent
    /// for longer is declared failed by the leader. Checked against the
    /// domain's lease like the domain's own.
    pub fail_timeout_ms: Option<u64>,
    /// `--bootstrap`: found the group with the members that answer (the
    /// founding rule); without it, only with every member's answer.
    pub bootstrap: bool,
}

/// Time a stopping member waits for its Leave to be decided.
const LEAVE_TIMEOUT_S: u64 = 5;

/// Run member `opts.member` until `shutdown` completes, then leave the group.
pub async fn run(
    opts: NodeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let domain = Arc::new(
        RecoveryDomain::load(&opts.config)
            .with_context(|| format!("recovery domain {}", opts.config.display()))?,
    );
    let me = domain.member_id(&opts.member).ok_or_else(|| {
        let names: Vec<&str> = domain.members.iter().map(|m| m.name.as_str()).collect();
        anyhow!(
            "member {:?} is not in the recovery domain {} (its members: {})",
            opts.member,
            opts.config.display(),
            names.join(", ")
        )
    })?;
    let member = domain
        .member(me)
        .ok_or_else(|| anyhow!("member lookup"))?
        .clone();
    let fail_timeout_ms = opts.fail_timeout_ms.unwrap_or(domain.fail_timeout_ms);
    check_lease_timing(domain.lease_ms, fail_timeout_ms).map_err(|why| {
        anyhow!(
            "--fail-timeout-ms {fail_timeout_ms} with lease_ms = {} in {}: {why}",
            domain.lease_ms,
            opts.config.display()
        )
    })?;
    // Block 74: which resources can this member access? A foreign or
    // corrupt disk refuses the start before anything is joined.
    let disks = probe::accessible(&domain, me)?;
    tracing::info!(member = %member.name, resources = ?disks.keys().map(|r| r.as_str()).collect::<Vec<_>>(), "block 74: subgroups found from disk labels");

    let listen: SocketAddr = member
        .address
        .parse()
        .with_context(|| format!("member {} address {:?}", member.name, member.address))?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen} (member {})", member.name))?;
    let (routes, mux_task) = mux::start(listener);

    let mut peers = BTreeMap::new();
    for (i, m) in domain.members.iter().enumerate() {
        if i as u32 != me.0 {
            let a: SocketAddr = m
                .address
                .parse()
                .with_context(|| format!("member {} address", m.name))?;
            peers.insert(MemberId(i as u32).node_id(), a);
        }
    }
    let mut cfg = EngineConfig::new(
        me.node_id(),
        listen,
        opts.state_dir.join("engine"),
        engine_key(&domain.secret),
    );
    cfg.peers = peers.clone();
    cfg.lease_ms = domain.lease_ms;
    let engine = Arc::new(
        Engine::<GroupState>::start_with_incoming(cfg, routes.engine)
            .await
            .context("start the group engine")?,
    );
    let initial = engine.state().borrow().clone();
    let mut observer = Observer::start(me, &member, initial)?;
    let was_voter = engine.is_member();
    // Status answers from here on, while this member joins or waits for a
    // majority too (its report then says there is no quorum).
    let local = Arc::new(Mutex::new(LocalView::default()));
    let links = Arc::new(Mutex::new(Vec::new()));
    let control = ControlContext {
        domain: domain.clone(),
        me,
        state: engine.state(),
        local: local.clone(),
        bus: observer.bus(),
        links: links.clone(),
        verifying: Arc::default(),
    };
    let control_task = tokio::spawn(control_loop(routes.control, control.clone()));
    let set_joining = |why: Option<&str>| {
        local.lock().unwrap_or_else(|p| p.into_inner()).joining = why.map(str::to_owned);
    };
    if !was_voter {
        set_joining(Some("looking for the group's members"));
    }
    let founding_rule = if opts.bootstrap {
        founding::Founding::Bootstrap
    } else {
        founding::Founding::Unanimous
    };
    tokio::pin!(shutdown);
    // Every phase before serving reacts to SIGTERM/SIGINT: a member whose
    // peers are all down must still stop when asked.
    let bootstrapped = tokio::select! {
        r = founding::enter_group(&engine, &domain, me, founding_rule, |why| set_joining(Some(why))) => r?,
        _ = &mut shutdown => {
            tracing::info!("stopping before this member entered the group");
            let _ = engine.shutdown().await;
            control_task.abort();
            mux_task.abort();
            return Ok(());
        }
    };
    // Nothing can be decided without a leader (a majority of the voters).
    let mut waited = Instant::now();
    // After a restart the engine names the leader of its last term until an
    // election says otherwise: wait for one that is actually in contact.
    while engine.leader().is_none() || !engine.metrics().has_quorum {
        if waited.elapsed() > Duration::from_secs(5) {
            tracing::warn!("waiting for a majority of the group's voters to elect a leader");
            waited = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut shutdown => {
                let _ = engine.shutdown().await;
                control_task.abort();
                mux_task.abort();
                return Ok(());
            }
        }
    }
    let mut state_rx = engine.state();
    let settle = async {
        // Event::Started wants the replica caught up with the committed log.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let m = engine.metrics();
                if m.last_applied_index >= Some(m.last_log_index.unwrap_or(0))
                    || m.last_log_index.is_none()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if !bootstrapped {
            // Block 72: a later member receives the group state from the others.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                state_rx.wait_for(|s| s.is_configured()),
            )
            .await;
        }
    };
    if !was_voter {
        set_joining(Some("waiting for the group's leader and state"));
    }
    tokio::select! {
        _ = settle => {}
        _ = &mut shutdown => {
            let _ = engine.shutdown().await;
            control_task.abort();
            mux_task.abort();
            return Ok(());
        }
    }

    set_joining(None);

    let mut roles = Roles::new(me, domain.clone(), disks.clone(), opts.engine);
    let fence = LeaseFence::new(engine.lease());
    roles.set_fence(fence.gate());
    if let Some(m) = observer.metrics() {
        roles.set_write_metrics(m.writes());
    }
    let repl_task = roles.route_replication(routes.replication);
    let mut disk_failures = roles
        .disk_failures()
        .ok_or_else(|| anyhow!("disk failures taken twice"))?;
    let fence = FenceWatch {
        fence: Arc::new(Mutex::new(fence)),
        engine: engine.clone(),
        state: state_rx.clone(),
        production: domain.production().resource.clone(),
        me,
        member: member.name.clone(),
        bus: observer.bus(),
        local: local.clone(),
    };
    let fence_task = tokio::spawn(fence.clone().run());

    let started = Event::Started {
        accessible: disks.keys().cloned().collect(),
        domain: DomainSpec::from(&*domain),
    };
    let state = state_rx.borrow_and_update().clone();
    let mut stop_early = false;
    for action in join::step(&state, me, started) {
        if let Action::Propose(cmd) = action {
            // Only a refused Join keeps this member out (wrong recovery
            // domain, unknown resource): say why and stop.
            let fatal = matches!(cmd, GroupCommand::Join { .. });
            let proposed = tokio::select! {
                r = propose_until_decided(&engine, cmd, fatal) => r,
                _ = &mut shutdown => {
                    stop_early = true;
                    break;
                }
            };
            if let Err(e) = proposed {
                // A member refused right after it became a voter takes its
                // vote back: left behind, a dead voter would cost the group
                // its tolerance of one more failure.
                if fatal && !was_voter {
                    if let Err(le) = engine.leave().await {
                        tracing::warn!("giving back the vote after the refusal: {le}");
                    }
                }
                return Err(e);
            }
        }
    }

    let mut running = Desired::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_report = Instant::now();
    let mut reported: BTreeMap<String, crate::group::SyncReport> = BTreeMap::new();
    let mut state_changed = true;
    let mut resend_config = false;
    loop {
        // SIGTERM while the Started proposals were pending: straight to the leave.
        if stop_early {
            break;
        }
        if state_changed {
            state_changed = false;
            let state = state_rx.borrow_and_update().clone();
            observer.on_state(&state);
            // A state just committed that names this member the production
            // host: a lease first, so that the export (re)starts serving
            // with its writes acknowledged.
            let is_host = state.host(&fence.production) == Some(me);
            if is_host {
                fence.acquire().await;
            }
            fence.check(is_host);
            let actions = join::step(
                &state,
                me,
                Event::Committed {
                    running: running.clone(),
                },
            );
            let mut lost: Vec<(ResourceId, Event)> = Vec::new();
            let mut unsent = Vec::new();
            for action in actions {
                // Nothing more to do for a disk that failed to open.
                if let Action::SendConfig { resource, .. } = &action {
                    if lost.iter().any(|(r, _)| r == resource) {
                        continue;
                    }
                }
                let what = format!("{action:?}");
                match roles.execute(action.clone()).await {
                    Ok(Some(cmd)) => {
                        if let Err(e) = propose(&engine, cmd, false).await {
                            tracing::warn!("{what}: {e:#}");
                            // A production host serves only once its
                            // configuration is committed: send it again.
                            if let Action::SendConfig { resource, .. } = action {
                                unsent.push(resource);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!("{what}: {e:#}");
                        if let Action::OpenDisk {
                            resource, epoch, ..
                        } = action
                        {
                            // A refused takeover is reported with its reason.
                            let event = match e.downcast_ref::<roles::TakeoverRefused>() {
                                Some(t) => Event::TakeoverRefused {
                                    resource: resource.clone(),
                                    epoch,
                                    refusal: t.refusal,
                                },
                                None => Event::DiskLost {
                                    resource: resource.clone(),
                                },
                            };
                            lost.push((resource, event));
                        }
                    }
                }
            }
            *links.lock().unwrap_or_else(|p| p.into_inner()) = roles.copy_links();
            running = Desired::of(&state, me);
            for resource in unsent {
                if let Some(h) = running.hosted.get_mut(&resource) {
                    h.config_pending = false;
                    resend_config = true;
                }
            }
            for (resource, event) in lost {
                running.hosted.remove(&resource);
                for a in join::step(&state, me, event) {
                    if let Action::Propose(cmd) = a {
                        let _ = propose(&engine, cmd, false).await;
                    }
                }
            }
        }
        tokio::select! {
            r = state_rx.changed() => {
                if r.is_err() { bail!("group engine stopped"); }
                state_changed = true;
            }
            _ = tick.tick() => {
                // A configuration that failed to reach the group is sent
                // again from the next step, without waiting for a commit.
                if std::mem::take(&mut resend_config) {
                    state_changed = true;
                }
                let m = engine.metrics();
                let writes_fenced = {
                    let mut l = local.lock().unwrap_or_else(|p| p.into_inner());
                    l.leader = m.leader.and_then(MemberId::from_node_id);
                    l.quorum = m.has_quorum;
                    l.voters = m.voters.len();
                    l.copies = roles.copy_stats();
                    l.writes_fenced.is_some()
                };
                *links.lock().unwrap_or_else(|p| p.into_inner()) = roles.copy_links();
                let copies = roles.copy_stats();
                observer.on_tick(&control.report(), &copies, roles.nbd_connections(), writes_fenced);
                // Without quorum nothing can be committed: a proposal would
                // only hold this loop (status, state changes) for its timeout.
                if !m.has_quorum {
                    continue;
                }
                // The leader's failure detector (a dead member is marked failed).
                let state = state_rx.borrow().clone();
                for id in engine.unreachable_peers(Duration::from_millis(fail_timeout_ms)) {
                    if let Some(member) = MemberId::from_node_id(id) {
                        for a in join::step(&state, me, Event::MemberLost { member }) {
                            if let Action::Propose(cmd) = a {
                                tracing::warn!(member = ?domain.member(member).map(|m| &m.name), "no contact: declaring the member failed");
                                let _ = propose(&engine, cmd, false).await;
                            }
                        }
                    }
                }
                // The production host replicates its copies' sync state.
                if roles.serving() || !roles.copy_stats().is_empty() {
                    report_sync(&engine, &state, me, &domain, &roles, &mut reported, &mut last_report).await;
                }
            }
            Some((resource, why)) = disk_failures.recv() => {
                // Block 74 again: this member can no longer use the disk.
                // It stops serving at once (writes were already refused),
                // then re-declares its subgroups without it, and election
                // hands the disk to the next member of the site.
                tracing::error!(%resource, "disk failed under I/O ({why}): giving it up so the next member of its site can host it");
                roles.close_disk(&resource).await;
                running.hosted.remove(&resource);
                let state = state_rx.borrow().clone();
                for a in join::step(&state, me, Event::DiskLost { resource }) {
                    if let Action::Propose(cmd) = a {
                        if let Err(e) = propose(&engine, cmd, false).await {
                            tracing::warn!("reporting the failed disk: {e:#}");
                        }
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }

    tracing::info!("leaving the group");
    let state = state_rx.borrow().clone();
    // Without a majority the Leave can never be decided: do not wait for it
    // (the others mark this member failed, or it leaves on its next start).
    if engine.metrics().has_quorum {
        for a in join::step(&state, me, Event::Stopping) {
            if let Action::Propose(cmd) = a {
                let leave = tokio::time::timeout(
                    Duration::from_secs(LEAVE_TIMEOUT_S),
                    propose(&engine, cmd, false),
                );
                match leave.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("leave: {e:#}"),
                    Err(_) => tracing::warn!("leave: no decision within {LEAVE_TIMEOUT_S} s"),
                }
            }
        }
    } else {
        tracing::warn!("no quorum: stopping without a decided Leave");
    }
    roles.stop_all().await;
    // The member stays a voter of the engine: a group whose members all
    // stopped cleanly comes back as soon as a majority of them starts again.
    let _ = engine.shutdown().await;
    control_task.abort();
    fence_task.abort();
    repl_task.abort();
    mux_task.abort();
    Ok(())
}
