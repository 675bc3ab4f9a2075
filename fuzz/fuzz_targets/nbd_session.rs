//! Fuzz target: an arbitrary client byte stream through the whole NBD server
//! session (handshake, then transmission) against a 1 MiB in-memory disk.
#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::{Arc, OnceLock};

use geomirror::nbd::{replay::replay, Export};
use geomirror::storage::plain::PlainEngine;
use libfuzzer_sys::fuzz_target;

const DISK_BYTES: u64 = 1 << 20;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a runtime")
    })
}

/// A fresh disk per input, so that every run is reproducible from its input.
fn export() -> Arc<Export> {
    // SAFETY: memfd_create with a NUL-terminated name and no flags.
    let fd = unsafe { libc::memfd_create(c"geomirror-fuzz".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(DISK_BYTES).expect("size the memfd");
    Arc::new(Export::new(
        "fuzz",
        Arc::new(PlainEngine::new(file, DISK_BYTES)),
    ))
}

fuzz_target!(|data: &[u8]| {
    let export = export();
    // Any outcome is fine except a panic or a hang; the harness bounds both.
    let _ = runtime().block_on(replay(data, &[export]));
});
