//! The client side of the NBD handshake (fixed newstyle, NBD_OPT_GO with a
//! fallback to NBD_OPT_EXPORT_NAME), leaving a socket in transmission phase.
//!
//! The socket is then either handed to the kernel (netlink or ioctl) or
//! driven by [`super::pipeline::NbdClient`] for FUSE. Follows NBD
//! `doc/proto.md` § "Fixed newstyle negotiation" and § "Option types".

use super::address::NbdAddress;
use super::error::AttachError;
pub use super::stream::Stream;
use super::sys::*;
use std::io::{self, Read, Write};
use std::time::Duration;

/// How long the server may take over any step of the handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 30_000;
/// Most option replies we accept for one NBD_OPT_GO before giving up.
const OPTION_REPLIES_MAX: usize = 64;
/// Largest option reply payload we read (info and error strings are small;
/// `doc/proto.md` bounds strings at 4096 bytes).
const OPTION_REPLY_BYTES_MAX: u32 = 64 * 1024;

/// What the handshake says about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`, doc/proto.md § "Transmission flags").
    pub flags: u16,
    /// Minimum block size: offsets and lengths must be multiples of it.
    pub block_min: u32,
    /// Preferred block size (used as the kernel device's block size).
    pub block_preferred: u32,
    /// Largest payload the server accepts in one request.
    pub block_max: u32,
}

impl ExportInfo {
    pub fn read_only(&self) -> bool {
        self.flags & NBD_FLAG_READ_ONLY != 0
    }
    pub fn can_flush(&self) -> bool {
        self.flags & NBD_FLAG_SEND_FLUSH != 0
    }
    pub fn can_fua(&self) -> bool {
        self.flags & NBD_FLAG_SEND_FUA != 0
    }
    pub fn can_write_zeroes(&self) -> bool {
        self.flags & NBD_FLAG_SEND_WRITE_ZEROES != 0
    }
    pub fn can_multi_conn(&self) -> bool {
        self.flags & NBD_FLAG_CAN_MULTI_CONN != 0
    }
}

/// A socket in transmission phase and what the server said about the export.
#[derive(Debug)]
pub struct Handshaken {
    pub stream: Stream,
    pub info: ExportInfo,
}

/// Connects to `addr` and negotiates its export.
pub fn connect(addr: &NbdAddress) -> Result<Handshaken, AttachError> {
    let mut stream = Stream::connect(&addr.endpoint)?;
    stream.set_timeout(Some(Duration::from_millis(HANDSHAKE_TIMEOUT_MS)))?;
    let info = handshake(&mut stream, &addr.export)?;
    stream.set_timeout(None)?;
    Ok(Handshaken { stream, info })
}

/// Runs the fixed-newstyle handshake on `s` for `export`.
pub fn handshake<S: Read + Write>(s: &mut S, export: &str) -> Result<ExportInfo, AttachError> {
    let magic = read_u64(s)?;
    if magic != NBD_INIT_MAGIC {
        return Err(AttachError::Protocol(format!(
            "bad initial magic {magic:#x}"
        )));
    }
    let magic = read_u64(s)?;
    if magic != NBD_OPTS_MAGIC {
        // 0x00420281861253 is the oldstyle handshake, gone from the spec.
        return Err(AttachError::Protocol(format!(
            "server does not speak newstyle negotiation (magic {magic:#x})"
        )));
    }
    let server_flags = read_u16(s)?;
    if server_flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(AttachError::Protocol(
            "server does not speak fixed newstyle".into(),
        ));
    }
    let no_zeroes = server_flags & NBD_FLAG_NO_ZEROES != 0;
    let mut client_flags = NBD_FLAG_C_FIXED_NEWSTYLE;
    if no_zeroes {
        client_flags |= NBD_FLAG_C_NO_ZEROES;
    }
    s.write_all(&client_flags.to_be_bytes())?;

    // NBD_OPT_GO: name length, name, and the info we ask for (block size;
    // NBD_INFO_EXPORT always comes). Asking for NBD_INFO_BLOCK_SIZE promises
    // to honour the constraints, which NbdClient does.
    let mut data = Vec::with_capacity(4 + export.len() + 4);
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, NBD_OPT_GO, &data)?;

    let mut size_flags = None;
    let mut blocks = (1u32, 4096u32, u32::MAX);
    for _ in 0..OPTION_REPLIES_MAX {
        let (option, kind, payload) = read_option_reply(s)?;
        if option != NBD_OPT_GO {
            return Err(AttachError::Protocol(format!(
                "reply to option {option}, expected GO"
            )));
        }
        match kind {
            NBD_REP_INFO if payload.len() >= 2 => {
                let info_type = u16::from_be_bytes([payload[0], payload[1]]);
                match (info_type, payload.len()) {
                    (NBD_INFO_EXPORT, 12) => {
                        let size = u64::from_be_bytes(arr(&payload[2..10]));
                        let flags = u16::from_be_bytes([payload[10], payload[11]]);
                        size_flags = Some((size, flags));
                    }
                    (NBD_INFO_BLOCK_SIZE, 14) => {
                        blocks = (
                            u32::from_be_bytes(arr(&payload[2..6])),
                            u32::from_be_bytes(arr(&payload[6..10])),
                            u32::from_be_bytes(arr(&payload[10..14])),
                        );
                    }
                    (NBD_INFO_EXPORT | NBD_INFO_BLOCK_SIZE, n) => {
                        return Err(AttachError::Protocol(format!(
                            "info {info_type} with {n} bytes"
                        )))
                    }
                    _ => {} // Other info (name, description): not needed.
                }
            }
            NBD_REP_ACK => {
                let (size, flags) = size_flags.ok_or_else(|| {
                    AttachError::Protocol("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT".into())
                })?;
                return finish(size, flags, blocks);
            }
            NBD_REP_ERR_UNSUP => return export_name_fallback(s, export, no_zeroes),
            k if k & NBD_REP_FLAG_ERROR != 0 => {
                let msg = String::from_utf8_lossy(&payload);
                let reason = match msg.trim() {
                    "" => rep_error_name(k).to_string(),
                    m => format!("{}: {m}", rep_error_name(k)),
                };
                return Err(AttachError::Refused {
                    export: export.to_string(),
                    reason,
                });
            }
            k => {
                return Err(AttachError::Protocol(format!(
                    "unexpected option reply {k:#x}"
                )))
            }
        }
    }
    Err(AttachError::Protocol("too many option replies".into()))
}

/// Old servers (before NBD_OPT_GO) answer it with ERR_UNSUP: select the
/// export with NBD_OPT_EXPORT_NAME, which replies with size and flags and,
/// unless NO_ZEROES was agreed, 124 zero bytes (doc/proto.md § NBD_OPT_EXPORT_NAME).
fn export_name_fallback<S: Read + Write>(
    s: &mut S,
    export: &str,
    no_zeroes: bool,
) -> Result<ExportInfo, AttachError> {
    send_option(s, NBD_OPT_EXPORT_NAME, export.as_bytes())?;
    let size = read_u64(s).map_err(|e| match e {
        AttachError::Io(ref io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            AttachError::Refused {
                export: export.to_string(),
                reason: "server closed the connection".into(),
            }
        }
        e => e,
    })?;
    let flags = read_u16(s)?;
    if !no_zeroes {
        let mut zeroes = [0u8; 124];
        s.read_exact(&mut zeroes)?;
    }
    finish(size, flags, (1, 4096, u32::MAX))
}

fn finish(
    size: u64,
    flags: u16,
    (min, pref, max): (u32, u32, u32),
) -> Result<ExportInfo, AttachError> {
    // doc/proto.md § "Block size constraints": powers of two, min ≤ pref ≤ max,
    // min at most 64 KiB.
    let valid = min.is_power_of_two()
        && pref.is_power_of_two()
        && min <= 65536
        && min <= pref
        && min <= max;
    if !valid {
        return Err(AttachError::Protocol(format!(
            "invalid block sizes min {min} preferred {pref} max {max}"
        )));
    }
    if flags & NBD_FLAG_HAS_FLAGS == 0 {
        return Err(AttachError::Protocol(
            "transmission flags lack NBD_FLAG_HAS_FLAGS".into(),
        ));
    }
    Ok(ExportInfo {
        size,
        flags,
        block_min: min,
        block_preferred: pref,
        block_max: max,
    })
}

fn send_option<W: Write>(w: &mut W, option: u32, data: &[u8]) -> Result<(), AttachError> {
    let mut msg = Vec::with_capacity(16 + data.len());
    msg.extend_from_slice(&NBD_OPTS_MAGIC.to_be_bytes());
    msg.extend_from_slice(&option.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    w.write_all(&msg)?;
    Ok(())
}

/// Reads one option reply: (option, reply type, payload), payload bounded.
fn read_option_reply<R: Read>(r: &mut R) -> Result<(u32, u32, Vec<u8>), AttachError> {
    let magic = read_u64(r)?;
    if magic != NBD_REP_MAGIC {
        return Err(AttachError::Protocol(format!(
            "bad option reply magic {magic:#x}"
        )));
    }
    let option = read_u32(r)?;
    let kind = read_u32(r)?;
    let len = read_u32(r)?;
    if len > OPTION_REPLY_BYTES_MAX {
        return Err(AttachError::Protocol(format!(
            "option reply of {len} bytes"
        )));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok((option, kind, payload))
}

fn rep_error_name(kind: u32) -> &'static str {
    match kind & !NBD_REP_FLAG_ERROR {
        1 => "unsupported option",
        2 => "forbidden by policy",
        3 => "invalid request",
        4 => "unsupported on this platform",
        5 => "TLS required",
        6 => "unknown export",
        7 => "server shutting down",
        8 => "block size negotiation required",
        9 => "request too big",
        _ => "error",
    }
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

pub(super) fn read_u64<R: Read>(r: &mut R) -> Result<u64, AttachError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

pub(super) fn read_u32<R: Read>(r: &mut R) -> Result<u32, AttachError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u16<R: Read>(r: &mut R) -> Result<u16, AttachError> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
