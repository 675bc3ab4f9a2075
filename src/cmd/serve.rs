//! `geomirror serve`: serve one disk (regular file or block device) over NBD.
//! With no arguments, serves a 1 GiB demo disk on a unix socket and says how to use it.
//! A disk carrying a geomirror label is served standalone: see `standalone.rs`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::standalone::{open_labeled, Opened};
use crate::nbd::{Export, ListenAddr, Server, ServerConfig};
use crate::storage::{
    self, check_range, BlockDevice, Completion, EngineKind, Extent, IoBuf, Reply, Request,
    StorageError,
};
use crate::units::{format_size, parse_size};

/// Size of the demo disk created when `serve` runs without `--disk`.
const DEMO_SIZE_BYTES: u64 = 1 << 30;

/// Arguments of `geomirror serve`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "With no arguments, serves a 1 GiB demo disk `demo.img` created in the \
state directory ($XDG_STATE_HOME/geomirror, else /var/tmp/geomirror-demo) on the unix socket \
`nbd.sock` in the same directory, and prints the NBD URI and how to mount it."
)]
pub struct Args {
    /// Disk to serve: a regular file or a block device [default: STATE_DIR/demo.img].
    /// A disk formatted for geomirror is served on its own: only its data
    /// area, refused while a group member holds it; its first write starts
    /// a new data generation, so the group later sees it was written apart.
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// Where to listen: `unix:PATH` or `HOST:PORT`; repeat for several
    /// [default: unix:STATE_DIR/nbd.sock].
    #[arg(long)]
    pub listen: Vec<String>,
    /// Create the disk file with this size (e.g. 256M, 10G) when it is missing.
    #[arg(long, value_parser = parse_size)]
    pub create: Option<u64>,
    /// Export name clients ask for (the empty name also selects it).
    #[arg(long, default_value = "geomirror")]
    pub name: String,
    /// Refuse writes.
    #[arg(long)]
    pub read_only: bool,
    /// Connections served at once.
    #[arg(long, default_value_t = 64)]
    pub connections_max: usize,
    /// Threads running the protocol (parsing, replies). Disk I/O runs on the
    /// storage engine's own threads, so one is usually fastest: requests and
    /// replies then never bounce between cores.
    #[arg(long, default_value_t = 1)]
    pub async_threads: usize,
    /// Serve no disk at all: writes are dropped and reads return zeroes, at
    /// this size. Measures the protocol's own cost (like nbdkit's null plugin).
    #[arg(long, value_parser = parse_size, conflicts_with_all = ["disk", "create"])]
    pub null: Option<u64>,
    /// Time a client has to finish the NBD handshake.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Disk engine: `uring` (io_uring on its own thread; O_DIRECT for large
    /// aligned requests), `uring-buffered`, `uring-direct` or `plain`.
    #[arg(long, default_value = "uring")]
    pub engine: EngineKind,
}

/// The state directory of the no-argument demo.
fn state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("geomirror"),
        _ => PathBuf::from("/var/tmp/geomirror-demo"),
    }
}

/// Open (or create) the disk and wrap it in the storage engine. The engine is
/// chosen here and nowhere else.
pub fn open_disk(
    path: &Path,
    create: Option<u64>,
    read_only: bool,
    engine: EngineKind,
) -> anyhow::Result<Arc<dyn BlockDevice>> {
    let file = match OpenOptions::new().read(true).write(!read_only).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create.is_some() => {
            let size = create.expect("checked just above");
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("create {}", path.display()))?;
            f.set_len(size)
                .with_context(|| format!("size {} to {size} bytes", path.display()))?;
            tracing::info!(path = %path.display(), size = %format_size(size), "created disk");
            f
        }
        Err(e) => return Err(e).with_context(|| format!("open disk {}", path.display())),
    };
    let size = disk_size(&file).with_context(|| format!("size of {}", path.display()))?;
    anyhow::ensure!(
        size > 0,
        "disk {} is empty (use --create SIZE for a new file)",
        path.display()
    );
    Ok(storage::open_engine(file, size, engine)?)
}

/// A device with no storage, for measuring the protocol alone: completes
/// every request at once, reads as zeroes.
struct NullDevice {
    size: u64,
}

impl BlockDevice for NullDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn submit(&self, req: Request, done: Completion) {
        let r = match req {
            Request::Read { offset, len } => check_range(offset, len.into(), self.size)
                .map(|()| Reply::Read(IoBuf::zeroed(len as usize))),
            _ => Ok(Reply::Done),
        };
        let _ = done.send(r);
    }

    fn extents(&self, _offset: u64, len: u64) -> Result<Vec<Extent>, StorageError> {
        Ok(vec![Extent { len, hole: true }])
    }
}

/// Size of a regular file or a block device (seeking to the end works for both).
fn disk_size(file: &File) -> std::io::Result<u64> {
    let mut f = file;
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(size)
}

/// The NBD URI of `export` at `addr` (libnbd's URI syntax).
pub fn uri(addr: &ListenAddr, export: &str) -> String {
    match addr {
        ListenAddr::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
        ListenAddr::Tcp(a) => format!("nbd://{a}/{export}"),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let demo = args.disk.is_none();
    let dir = state_dir();
    if demo || args.listen.is_empty() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create state directory {}", dir.display()))?;
    }
    let disk = args.disk.clone().unwrap_or_else(|| dir.join("demo.img"));
    let create = args.create.or(demo.then_some(DEMO_SIZE_BYTES));
    let listen: Vec<ListenAddr> = if args.listen.is_empty() {
        vec![ListenAddr::Unix(dir.join("nbd.sock"))]
    } else {
        args.listen
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    };
    // main() has done so already; a library caller gets it here (once).
    storage::heap::keep_buffers_in_heap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.async_threads.max(1))
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let mut description = format!("geomirror disk {}", disk.display());
    let device: Arc<dyn BlockDevice> = match args.null {
        Some(size) => {
            description = "geomirror null device (no storage)".to_owned();
            Arc::new(NullDevice { size })
        }
        None => match open_labeled(&disk, args.read_only, args.engine, rt.handle())? {
            // A geomirror disk: its metadata (bitmap, label) at the end
            // must never be reachable by a client.
            Opened::Labeled { device, label } => {
                tracing::info!(
                    group = %label.group,
                    resource = %label.resource,
                    generations = %label.generations,
                    "geomirror disk served on its own: data area only; its first write starts a new data generation"
                );
                description = format!(
                    "geomirror disk {} (group {}, resource {}, standalone)",
                    disk.display(),
                    label.group,
                    label.resource
                );
                device
            }
            Opened::Plain => open_disk(&disk, create, args.read_only, args.engine)?,
        },
    };
    let export = Export {
        name: args.name.clone(),
        description,
        device,
        read_only: args.read_only,
        connections: Default::default(),
    };
    let size = export.device.size();
    rt.block_on(async move {
        let config = ServerConfig {
            connections_max: args.connections_max,
            handshake_timeout_ms: args.handshake_timeout_ms,
            ..ServerConfig::default()
        };
        let server = Server::bind(&listen, config).await?;
        for a in server.local_addrs() {
            tracing::info!(listen = %a, "serving {} ({})", disk.display(), format_size(size));
            println!("{}", uri(&a, &args.name));
        }
        if let Some(a) = server.local_addrs().first() {
            print_usage(&uri(a, &args.name), &args.name);
        }
        server
            .run(vec![Arc::new(export)], super::shutdown_signal()?)
            .await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

fn print_usage(uri: &str, name: &str) {
    println!(
        "export name: {name:?}\n\
         try:   nbdinfo '{uri}'\n\
         mount: mkdir -p /tmp/gm && nbdfuse /tmp/gm '{uri}' &\n\
         \x20      dev=$(losetup -f --show /tmp/gm/nbd) && mkfs.ext4 $dev && mkdir -p /mnt/gm && mount $dev /mnt/gm"
    );
}
