//! What this member runs, and the code that starts and stops it on the join
//! protocol's actions: hosted disks, the production volume with its copy
//! links and NBD export, and the receiver of a copy host.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Mode as DomainMode, NbdAddress, RecoveryDomain};
use crate::group::join::Action;
use crate::group::state::ReportedConfig;
use crate::group::takeover::{self, DiskGenerations};
use crate::group::{GroupCommand, MemberId, ResourceConfig, ResourceId, TakeoverRefusal};
use crate::nbd::{Export, ListenAddr, Server, ServerConfig};
use crate::replication::{
    CopyConfig, CopyLabel, CopyStats, MirroredVolume, Mode, Receiver, ReceiverConfig, VolumeConfig,
};
use crate::storage::{EngineKind, HostedDisk, LabelError};

use super::dirty::SharedBitmap;
use super::fence::{FenceGate, FencedDevice};

/// How long a new host waits for the previous one to let go of the disk.
const LOCK_WAIT_S: u64 = 60;
/// Period of the dirty bitmap's deferred clears.
const CLEAR_PERIOD_MS: u64 = 10_000;

/// The production disk served and mirrored by this member.
struct Production {
    resource: ResourceId,
    volume: Arc<MirroredVolume>,
    bitmap: Arc<SharedBitmap>,
    clear_task: JoinHandle<()>,
    /// Waits for the production disk to fail (see [`Roles::disk_failures`]).
    failure_task: JoinHandle<()>,
    serving: Option<Serving>,
    /// The resource each copy link (by copy host name) mirrors to.
    copies: BTreeMap<String, ResourceId>,
}

struct Serving {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    connections: Arc<std::sync::atomic::AtomicU64>,
}

struct Receiving {
    receiver: Receiver,
    streams: mpsc::Sender<TcpStream>,
}

/// Everything this member runs for the group.
pub struct Roles {
    me: MemberId,
    domain: Arc<RecoveryDomain>,
    disks: BTreeMap<ResourceId, PathBuf>,
    engine_kind: EngineKind,
    hosted: BTreeMap<ResourceId, Arc<HostedDisk>>,
    production: Option<Production>,
    receiving: BTreeMap<ResourceId, Receiving>,
    /// Where incoming replication connections go: the receiver of the
    /// copy this member hosts (a member hosts at most one copy per site).
    replication_sink: Arc<Mutex<Option<mpsc::Sender<TcpStream>>>>,
    /// Write counters for the NBD export, when the member serves metrics.
    write_metrics: Option<crate::obs::WriteMetrics>,
    /// Shut while the group has had no quorum for too long: the export
    /// then refuses writes (see `fence.rs`).
    fence: Arc<FenceGate>,
    /// A hosted disk that failed under I/O, with why.
    failed_tx: mpsc::UnboundedSender<(ResourceId, String)>,
    failed_rx: Option<mpsc::UnboundedReceiver<(ResourceId, String)>>,
}

impl Roles {
    pub fn new(
        me: MemberId,
        domain: Arc<RecoveryDomain>,
        disks: BTreeMap<ResourceId, PathBuf>,
        engine_kind: EngineKind,
    ) -> Roles {
        let (failed_tx, failed_rx) = mpsc::unbounded_channel();
        Roles {
            me,
            domain,
            disks,
            engine_kind,
            hosted: BTreeMap::new(),
            production: None,
            receiving: BTreeMap::new(),
            replication_sink: Arc::default(),
            write_metrics: None,
            fence: Arc::default(),
            failed_tx,
            failed_rx: Some(failed_rx),
        }
    }

    /// Disks that failed under I/O while hosted, as `(resource, why)`: the
    /// daemon gives each up (block 74 again) so the next member of its site
    /// can take over. Taken once.
    pub fn disk_failures(&mut self) -> Option<mpsc::UnboundedReceiver<(ResourceId, String)>> {
        self.failed_rx.take()
    }

    /// The fence the NBD export obeys (from the next serve on).
    pub fn set_fence(&mut self, gate: Arc<FenceGate>) {
        self.fence = gate;
    }

    /// Count the NBD export's writes into `writes` (from the next serve on).
    pub fn set_write_metrics(&mut self, writes: crate::obs::WriteMetrics) {
        self.write_metrics = Some(writes);
    }

    /// Route incoming replication connections to whichever receiver runs.
    pub fn route_replication(&self, mut incoming: mpsc::Receiver<TcpStream>) -> JoinHandle<()> {
        let sink = self.replication_sink.clone();
        tokio::spawn(async move {
            while let Some(s) = incoming.recv().await {
                let tx = sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match tx {
                    Some(tx) => {
                        let _ = tx.try_send(s);
                    }
                    None => {
                        tracing::debug!("replication connection while no copy is hosted: dropped")
                    }
                }
            }
        })
    }

    fn member_name(&self, id: MemberId) -> String {
        self.domain
            .member(id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("member #{}", id.0))
    }

    /// Execute one action; a proposal it leads to is returned for the caller
    /// to send to the engine.
    pub async fn execute(&mut self, action: Action) -> anyhow::Result<Option<GroupCommand>> {
        match action {
            Action::Propose(cmd) => return Ok(Some(cmd)),
            Action::OpenDisk {
                resource,
                epoch,
                recorded,
            } => self.open_disk(&resource, epoch, recorded).await?,
            Action::CloseDisk { resource } => self.close_disk(&resource).await,
            Action::SendConfig { resource, epoch } => {
                let disk = self.hosted(&resource)?;
                let label = disk.label();
                let config = ResourceConfig {
                    size_bytes: disk.data_size(),
                    block_size_bytes: 4096,
                    label_generation: label.generations.current,
                    disk_id: label.disk_id,
                };
                tracing::info!(%resource, size = disk.data_size(), "blocks 82-84: sending the resource configuration to the subgroup");
                return Ok(Some(GroupCommand::ResourceConfig {
                    member: self.me,
                    resource,
                    epoch,
                    config,
                }));
            }
            Action::AwaitConfig { resource, from } => {
                tracing::info!(%resource, host = %self.member_name(from), "blocks 78-80: waiting for the host's configuration");
            }
            Action::ApplyConfig {
                resource,
                from,
                config,
            } => {
                tracing::info!(%resource, host = %self.member_name(from), size = config.size_bytes, "block 80: received the resource configuration");
            }
            Action::ExpectMirroring {
                resource,
                from,
                epoch,
            } => self.start_receiving(&resource, from, epoch)?,
            Action::StopExpecting { resource, .. } => self.stop_receiving(&resource).await,
            Action::StartMirroring {
                resource,
                to,
                epoch,
            } => self.start_mirroring(&resource, to, epoch)?,
            Action::StopMirroring { resource, to } => {
                let name = self.member_name(to);
                if let Some(p) = self.production.as_mut() {
                    tracing::info!(%resource, copy = %name, "stop mirroring");
                    // The link goes; the copy site's tracker stays in the
                    // volume, so every write made while the copy is away is
                    // marked for it and resent when it rejoins (block 92).
                    p.volume.remove_copy(&name);
                    p.copies.remove(&name);
                }
            }
            Action::ServeVolume { address, epoch } => self.serve(address, epoch).await?,
            Action::StopServing => self.stop_serving().await,
        }
        Ok(None)
    }

    fn hosted(&self, resource: &ResourceId) -> anyhow::Result<Arc<HostedDisk>> {
        self.hosted
            .get(resource)
            .cloned()
            .ok_or_else(|| anyhow!("resource {resource} is not open on this member"))
    }

    async fn open_disk(
        &mut self,
        resource: &ResourceId,
        epoch: u64,
        recorded: Option<ReportedConfig>,
    ) -> anyhow::Result<()> {
        if self.hosted.contains_key(resource) {
            return Ok(());
        }
        let path = self
            .disks
            .get(resource)
            .cloned()
            .ok_or_else(|| anyhow!("no disk of this member carries resource {resource}"))?;
        tracing::info!(%resource, disk = %path.display(), epoch, "block 76: hosting the resource (waiting for the disk's lock if another process still holds it)");
        let p = path.clone();
        let disk = tokio::task::spawn_blocking(move || {
            HostedDisk::open(&p, Some(Duration::from_secs(LOCK_WAIT_S)))
        })
        .await
        .context("disk open task")?
        .with_context(|| format!("open {} for hosting", path.display()))?;
        if *resource == self.domain.production().resource {
            if let Some(recorded) = recorded {
                self.check_takeover(resource, &disk, &recorded)?;
            }
            let d = Arc::new(disk);
            let opened = d.clone();
            tokio::task::spawn_blocking(move || start_production_generation(&opened))
                .await
                .context("production label task")??;
            self.hosted.insert(resource.clone(), d);
            return Ok(());
        }
        self.hosted.insert(resource.clone(), Arc::new(disk));
        Ok(())
    }

    /// Refuses a production disk that is not the one the group recorded, or
    /// older than the record: the error is a [`TakeoverRefused`], which the
    /// caller reports to the group, and the disk is left untouched.
    fn check_takeover(
        &self,
        resource: &ResourceId,
        disk: &HostedDisk,
        recorded: &ReportedConfig,
    ) -> anyhow::Result<()> {
        let label = disk.label();
        let g = label.generations;
        let mut earlier = vec![g.bitmap];
        earlier.extend_from_slice(&g.history);
        let found = DiskGenerations {
            disk_id: label.disk_id,
            current: g.current,
            earlier,
        };
        if let Err(refusal) = takeover::check(recorded, &found) {
            let text = refusal.describe(&self.member_name(self.me), resource.as_str(), |m| {
                self.member_name(m)
            });
            return Err(TakeoverRefused { refusal, text }.into());
        }
        tracing::info!(%resource, disk_id = %format!("{:016x}", label.disk_id), generations = %g, recorded_generation = %format!("{:016x}", recorded.config.label_generation), "the production disk is the one the group recorded, at its generation or later");
        Ok(())
    }

    pub async fn close_disk(&mut self, resource: &ResourceId) {
        if self
            .production
            .as_ref()
            .is_some_and(|p| &p.resource == resource)
        {
            self.stop_production().await;
        }
        self.stop_receiving(resource).await;
        if self.hosted.remove(resource).is_some() {
            tracing::info!(%resource, "closed the disk: no longer its host");
        }
    }

    /// The production volume, created on first need from the hosted disk.
    fn production(&mut self) -> anyhow::Result<&Production> {
        if self.production.is_none() {
            let resource = self.domain.production().resource.clone();
            let disk = self.hosted(&resource)?;
            // This run's data generation was started when the disk was
            // opened (`start_production_generation`).
            let label = disk.label();
            let device = disk
                .device(self.engine_kind)
                .context("open the production disk's engine")?;
            let mode = match self.domain.mode {
                DomainMode::Sync => Mode::Sync,
                DomainMode::Async => Mode::Async,
            };
            let volume = MirroredVolume::new(
                device,
                VolumeConfig {
                    mode,
                    epoch: 0,
                    generations: label.generations,
                },
            );
            let bitmap = SharedBitmap::new(disk.bitmap().clone(), disk.data_size());
            // Every copy site is tracked from the first write this host
            // serves, whether its copy host is there or not: it gets
            // exactly what it missed whenever it comes.
            for site in self.domain.sites.iter().filter(|s| s.resource != resource) {
                volume.track(bitmap.site(site.resource.as_str()));
            }
            let clear_task = tokio::spawn(
                bitmap
                    .clone()
                    .clear_loop(Duration::from_millis(CLEAR_PERIOD_MS)),
            );
            // A production disk that fails a write or a flush is given up:
            // its dirty bits are frozen as they are (they cover every write
            // that may differ from a copy), the volume refuses writes, and
            // the daemon reports the disk lost.
            let mut failure = volume.disk_failure();
            let (frozen, tx, failed) = (bitmap.clone(), self.failed_tx.clone(), resource.clone());
            let failure_task = tokio::spawn(async move {
                if let Ok(why) = failure.wait_for(|f| f.is_some()).await {
                    let why = why.clone().unwrap_or_default();
                    frozen.freeze();
                    let _ = tx.send((failed, why));
                }
            });
            self.production = Some(Production {
                resource,
                volume,
                bitmap,
                clear_task,
                failure_task,
                serving: None,
                copies: BTreeMap::new(),
            });
        }
        self.production
            .as_ref()
            .ok_or_else(|| anyhow!("production volume missing"))
    }

    fn start_mirroring(
        &mut self,
        resource: &ResourceId,
        to: MemberId,
        epoch: u64,
    ) -> anyhow::Result<()> {
        let name = self.member_name(to);
        let addr = self
            .domain
            .member(to)
            .map(|m| m.address.clone())
            .ok_or_else(|| anyhow!("copy host {name} is not in the recovery domain"))?;
        let secret = self.domain.secret.as_bytes().to_vec();
        let window = u32::try_from(self.domain.async_window_bytes).unwrap_or(u32::MAX);
        self.production()?;
        let p = self
            .production
            .as_mut()
            .ok_or_else(|| anyhow!("production volume missing"))?;
        p.volume.set_epoch(epoch);
        // A link to another host of the same copy disk (its previous host,
        // failed or gone) is stale now. The new link takes over the site's
        // tracker, which holds everything the old one had not delivered.
        let stale: Vec<String> = p
            .copies
            .iter()
            .filter(|(n, r)| *r == resource && **n != name)
            .map(|(n, _)| n.clone())
            .collect();
        for n in stale {
            p.volume.remove_copy(&n);
            p.copies.remove(&n);
        }
        p.copies.insert(name.clone(), resource.clone());
        let mut cfg = CopyConfig::new(&name, &addr, &secret);
        cfg.window_bytes_max = window;
        p.volume.remove_copy(&name);
        let log = p.bitmap.site(resource.as_str());
        p.volume
            .add_copy(cfg, log)
            .with_context(|| format!("start mirroring to {name}"))?;
        tracing::info!(%resource, copy = %name, %addr, epoch, "blocks 92-96: mirroring starts from this production host");
        Ok(())
    }

    async fn serve(&mut self, address: NbdAddress, epoch: u64) -> anyhow::Result<()> {
        let group = self.domain.group.clone();
        let writes = self.write_metrics.clone();
        let fence = self.fence.clone();
        let p = self.production()?;
        p.volume.set_epoch(epoch);
        if p.serving.is_some() {
            return Ok(());
        }
        let listen = match &address {
            NbdAddress::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("create {}", dir.display()))?;
                }
                ListenAddr::Unix(path.clone())
            }
            NbdAddress::Tcp(a) => ListenAddr::Tcp(a.clone()),
        };
        let server = Server::bind(std::slice::from_ref(&listen), ServerConfig::default())
            .await
            .with_context(|| format!("serve the volume at {address}"))?;
        let device: Arc<dyn crate::storage::BlockDevice> = match writes {
            Some(w) => Arc::new(super::metered::MeteredVolume::new(p.volume.clone(), w)),
            None => p.volume.clone(),
        };
        // Outermost, so a fenced write is neither applied nor counted.
        let device = Arc::new(FencedDevice::new(device, fence));
        let mut export = Export::new(group.clone(), device);
        export.description = format!("geomirror volume {group}");
        let connections = export.connections.clone();
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) = server.run(vec![Arc::new(export)], shutdown).await {
                tracing::error!("NBD server: {e}");
            }
        });
        self.fence.set_serving(true);
        tracing::info!(%address, epoch, "serving the volume over NBD (production host)");
        if let Some(p) = self.production.as_mut() {
            p.serving = Some(Serving {
                stop,
                task,
                connections,
            });
        }
        Ok(())
    }

    async fn stop_serving(&mut self) {
        if let Some(s) = self.production.as_mut().and_then(|p| p.serving.take()) {
            self.fence.set_serving(false);
            tracing::info!("stop serving the volume: draining NBD requests");
            let _ = s.stop.send(true);
            let _ = s.task.await;
        }
    }

    async fn stop_production(&mut self) {
        self.stop_serving().await;
        if let Some(p) = self.production.take() {
            for l in p.volume.links() {
                p.volume.remove_copy(l.name());
            }
            p.clear_task.abort();
            p.failure_task.abort();
            let bitmap = p.bitmap.clone();
            let _ = tokio::task::spawn_blocking(move || bitmap.final_pass()).await;
        }
    }

    fn start_receiving(
        &mut self,
        resource: &ResourceId,
        from: MemberId,
        epoch: u64,
    ) -> anyhow::Result<()> {
        if let Some(r) = self.receiving.get(resource) {
            r.receiver
                .epoch()
                .fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
            return Ok(());
        }
        let disk = self.hosted(resource)?;
        let label = disk.label();
        let device = disk
            .device(self.engine_kind)
            .context("open the copy disk's engine")?;
        // The label as it is: an inconsistent one (a resync under way when
        // the copy stopped) keeps its generations, and the receiver tells
        // from production's generations whether that resync resumes or a
        // full sync is due (`CopyLabel::reported_to`).
        let mut cfg = ReceiverConfig::new(self.domain.secret.as_bytes(), epoch, label.generations);
        cfg.consistent = label.flags.consistent;
        let label_disk = disk.clone();
        cfg.write_label = Some(Arc::new(move |l: CopyLabel| {
            label_disk
                .update_label(|label| {
                    label.generations = l.generations;
                    label.flags.consistent = l.consistent;
                })
                .map(|_| ())
                .map_err(|e| match e {
                    LabelError::Io { source, .. } => source,
                    e => std::io::Error::other(e.to_string()),
                })
        }));
        if !label.flags.consistent {
            tracing::warn!(%resource, generations = %label.generations, "the copy disk is not consistent: a resync onto it is due (or was interrupted)");
        }
        let (tx, rx) = mpsc::channel(8);
        let receiver = Receiver::start_streams(rx, device, cfg);
        *self
            .replication_sink
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        tracing::info!(%resource, from = %self.member_name(from), epoch, "blocks 88/114: receiving mirrored writes (copy host)");
        self.receiving.insert(
            resource.clone(),
            Receiving {
                receiver,
                streams: tx,
            },
        );
        Ok(())
    }

    async fn stop_receiving(&mut self, resource: &ResourceId) {
        if let Some(r) = self.receiving.remove(resource) {
            {
                let mut sink = self
                    .replication_sink
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if sink.as_ref().is_some_and(|s| s.same_channel(&r.streams)) {
                    *sink = None;
                }
            }
            r.receiver.shutdown().await;
            tracing::info!(%resource, "stopped receiving mirrored writes");
        }
    }

    /// Stop everything, serving first (its in-flight requests are answered).
    pub async fn stop_all(&mut self) {
        self.stop_production().await;
        let receiving: Vec<ResourceId> = self.receiving.keys().cloned().collect();
        for r in receiving {
            self.stop_receiving(&r).await;
        }
        self.hosted.clear();
    }

    /// The copy links' figures, when this member is the production host.
    pub fn copy_stats(&self) -> Vec<CopyStats> {
        self.production
            .as_ref()
            .map(|p| p.volume.links().iter().map(|l| l.stats()).collect())
            .unwrap_or_default()
    }

    /// The copy links, when this member is the production host (for verify).
    pub fn copy_links(&self) -> Vec<Arc<crate::replication::CopyLink>> {
        self.production
            .as_ref()
            .map(|p| p.volume.links())
            .unwrap_or_default()
    }

    /// NBD clients connected to the volume now (0 when not serving).
    pub fn nbd_connections(&self) -> u64 {
        self.production
            .as_ref()
            .and_then(|p| p.serving.as_ref())
            .map_or(0, |s| {
                s.connections.load(std::sync::atomic::Ordering::Relaxed)
            })
    }

    /// Whether this member currently serves the volume.
    pub fn serving(&self) -> bool {
        self.production
            .as_ref()
            .is_some_and(|p| p.serving.is_some())
    }
}

/// A production disk refused on takeover, as the error of `OpenDisk`.
#[derive(Debug, thiserror::Error)]
#[error("refusing to become the production host: {text}")]
pub struct TakeoverRefused {
    /// Why, as the group records it.
    pub refusal: TakeoverRefusal,
    /// The same, said for people, with what to do.
    pub text: String,
}

/// Starts this run's data generation on the production disk when it is
/// opened, before its configuration is sent (blocks 82–84): the group then
/// records the generation before any write in it is answered.
fn start_production_generation(disk: &HostedDisk) -> anyhow::Result<()> {
    // Dirty chunks left from the last run are writes some copy
    // lacks: this run starts a new data generation, tracked from
    // the one those copies hold. A copy that wrote on its own in
    // the meantime then shows as split brain instead of being
    // overwritten or taken for newer (DRBD's new current UUID).
    // A clean bitmap means every copy had everything: the tracked
    // generation is history.
    let dirty = disk.bitmap().dirty_bytes() > 0;
    let label = disk
        .update_label(|l| {
            if dirty {
                l.generations.new_current();
            } else {
                l.generations.finish_tracking();
            }
            l.flags.consistent = true;
            l.flags.primary_seen = true;
        })
        .context("update the production disk's label")?;
    tracing::info!(generations = %label.generations, dirty, "production data generation");
    Ok(())
}
