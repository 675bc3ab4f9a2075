//! Error paths of the NBD server checked through libnbd (`nbdsh`, strict mode
//! off): each refused request fails with the exact errno the spec names.

mod common;

use common::serve;
use common::{debian_cmd, run_ok};

/// Run a python snippet in nbdsh connected to `uri`, strict mode off so that
/// libnbd sends what it would otherwise refuse client-side. `expect(errno,
/// fn, *args)` asserts the call fails with that errno name.
fn nbdsh(uri: &str, script: &str) -> String {
    let prelude = r#"
h.set_strict_mode(0)
def expect(name, f, *a):
    try:
        f(*a)
    except nbd.Error as e:
        assert e.errno == name, f"{f.__name__}{a[1:]}: wanted {name}, got {e.errno}: {e}"
        return
    raise AssertionError(f"{f.__name__} succeeded, wanted {name}")
"#;
    run_ok(debian_cmd("nbdsh").args(["-u", uri, "-c", &format!("{prelude}{script}")]))
}

const MIB: u64 = 1 << 20;

#[test]
fn requests_past_the_end_are_enospc_for_writes_and_einval_for_reads() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let s = serve("64M", &[]);
    let end = 64 * MIB;
    nbdsh(
        &s.uri,
        &format!(
            "end = {end}\n\
             expect('ENOSPC', h.pwrite, b'x' * 10, end - 5)\n\
             expect('ENOSPC', h.pwrite, b'x', end)\n\
             expect('ENOSPC', h.zero, 8192, end - 4096)\n\
             expect('ENOSPC', h.trim, 8192, end - 4096)\n\
             expect('EINVAL', h.pread, 10, end - 5)\n\
             expect('EINVAL', h.pread, 1, 2**64 - 1)\n\
             expect('ENOSPC', h.pwrite, b'x', 2**64 - 1)\n\
             h.pwrite(b'y' * 5, end - 5)\n\
             assert h.pread(5, end - 5) == b'y' * 5\n"
        ),
    );
}

#[test]
fn a_32mib_read_is_served_and_a_larger_one_is_einval() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let s = serve("64M", &[]);
    nbdsh(
        &s.uri,
        "assert len(h.pread(32 * 2**20, 0)) == 32 * 2**20\n\
         h.pwrite(b'z' * (32 * 2**20), 2**20)\n\
         expect('EINVAL', h.pread, 32 * 2**20 + 1, 0)\n",
    );
}

#[test]
fn unknown_commands_and_flags_are_einval() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let s = serve("8M", &[]);
    nbdsh(
        &s.uri,
        "expect('EINVAL', h.cache, 4096, 0)\n\
         expect('EINVAL', h.pwrite, b'x' * 512, 0, nbd.CMD_FLAG_REQ_ONE)\n\
         expect('EINVAL', h.flush, nbd.CMD_FLAG_NO_HOLE)\n\
         assert h.pread(512, 0) == bytes(512)\n",
    );
}

#[test]
fn fast_zero_that_cannot_punch_is_enotsup_and_zeroes_read_back_as_zero() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let s = serve("8M", &[]);
    nbdsh(
        &s.uri,
        "h.pwrite(b'\\xff' * 16384, 0)\n\
         expect('ENOTSUP', h.zero, 4096, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)\n\
         assert h.pread(4096, 0) == b'\\xff' * 4096\n\
         h.zero(4096, 0, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)\n\
         h.zero(4096, 4096, nbd.CMD_FLAG_FAST_ZERO)\n\
         h.trim(4096, 8192, nbd.CMD_FLAG_FUA)\n\
         assert h.pread(12288, 0) == bytes(12288)\n\
         assert h.pread(4096, 12288) == b'\\xff' * 4096\n",
    );
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let s = serve("8M", &["--read-only"]);
    nbdsh(
        &s.uri,
        "expect('EPERM', h.pwrite, b'x', 0)\n\
         expect('EPERM', h.zero, 4096, 0)\n\
         expect('EPERM', h.trim, 4096, 0)\n\
         h.flush()\n\
         assert h.pread(4, 0) == bytes(4)\n",
    );
}

#[test]
fn option_mode_lists_exports_and_meta_contexts_and_block_status_covers_the_range() {
    if !common::require(&["nbdsh"]) {
        return;
    }
    let s = serve("8M", &[]);
    let script = format!(
        r#"
g = nbd.NBD()
g.set_opt_mode(True)
g.connect_unix({sock:?})
names = []
g.opt_list(lambda name, desc: names.append(name))
assert names == ["geomirror"], names
g.set_export_name("nope")
try:
    g.opt_info()
    raise AssertionError("info on a missing export succeeded")
except nbd.Error:
    pass
g.set_export_name("geomirror")
ctx = []
g.opt_list_meta_context(lambda c: ctx.append(c))
assert ctx == ["base:allocation"], ctx
g.add_meta_context("base:allocation")
g.opt_go()
assert g.can_meta_context("base:allocation")
seen = []
def cb(meta, off, entries, err):
    seen.append((meta, entries))
    return 0
g.block_status(65536, 4096, cb)
meta, entries = seen[0]
assert meta == "base:allocation"
assert sum(entries[0::2]) <= 65536 and entries[0] > 0, entries
g.shutdown()
"#,
        sock = s.sock.display().to_string()
    );
    nbdsh(&s.uri, &script);
}
