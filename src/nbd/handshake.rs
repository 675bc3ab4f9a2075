//! The fixed-newstyle handshake (NBD `doc/proto.md` "Newstyle negotiation"):
//! option haggling up to EXPORT_NAME or GO, after which transmission starts.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::consts::*;
use super::option::{self, InfoRequest, MetaRequest, OptionHeader};
use super::proto::{NAME_LEN_MAX, OPTION_LEN_MAX, PAYLOAD_LEN_MAX};
use super::{ConnectionOptions, Export, NbdError};

/// Block sizes we advertise: any byte alignment works (min 1), 4 KiB is
/// preferred (it avoids read-modify-write below us), 32 MiB is the payload cap.
pub const BLOCK_SIZE_MIN: u32 = 1;
pub const BLOCK_SIZE_PREFERRED: u32 = 4096;

/// What negotiation settled: the export and how to talk during transmission.
pub struct Negotiated {
    pub export: Arc<Export>,
    pub options: ConnectionOptions,
}

/// State gathered while options are haggled.
#[derive(Default)]
struct Haggle {
    no_zeroes: bool,
    structured: bool,
    /// The export `base:allocation` was selected for by SET_META_CONTEXT.
    meta_export: Option<String>,
}

fn find<'a>(exports: &'a [Arc<Export>], name: &str) -> Option<&'a Arc<Export>> {
    if name.is_empty() {
        return exports.first();
    }
    exports.iter().find(|e| e.name == name)
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    kind: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
    option::encode_option_reply(&mut out, option, kind, data);
    s.write_all(&out).await?;
    Ok(())
}

/// Read and drop `n` bytes in small pieces, so an oversized option costs no memory.
async fn drain<S: AsyncRead + Unpin>(s: &mut S, mut n: u64) -> Result<(), NbdError> {
    let mut sink = [0u8; 4096];
    while n > 0 {
        let want = n.min(sink.len() as u64) as usize;
        s.read_exact(&mut sink[..want]).await?;
        n -= want as u64;
    }
    Ok(())
}

/// Run the server side of the handshake on `s` and return the chosen export.
/// The caller bounds it in time (doc/proto.md lets a server drop slow clients).
pub async fn negotiate<S>(s: &mut S, exports: &[Arc<Export>]) -> Result<Negotiated, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&greeting).await?;
    s.flush().await?;

    let client_flags = s.read_u32().await?;
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(NbdError::UnknownClientFlags(client_flags));
    }
    let mut st = Haggle {
        no_zeroes: client_flags & CLIENT_NO_ZEROES != 0,
        ..Haggle::default()
    };
    loop {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        s.read_exact(&mut hdr).await?;
        let OptionHeader { option, len } =
            OptionHeader::parse(&hdr)?.expect("a full header was read");
        if len > OPTION_LEN_MAX {
            if option == OPT_EXPORT_NAME {
                return Err(NbdError::UnknownExport(format!("<{len} bytes>")));
            }
            drain(s, len.into()).await?;
            reply(s, option, REP_ERR_TOO_BIG, b"option payload too large").await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        if let Some(done) = handle_option(s, exports, &mut st, option, &data).await? {
            return Ok(done);
        }
    }
}

/// Answer one option; `Some` when it ends negotiation.
async fn handle_option<S>(
    s: &mut S,
    exports: &[Arc<Export>],
    st: &mut Haggle,
    option: u32,
    data: &[u8],
) -> Result<Option<Negotiated>, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match option {
        OPT_EXPORT_NAME => {
            // This option has no error reply: a bad name can only end the session.
            let name = std::str::from_utf8(data)
                .ok()
                .filter(|n| n.len() <= NAME_LEN_MAX);
            let Some(export) = name.and_then(|n| find(exports, n)).cloned() else {
                let shown = String::from_utf8_lossy(&data[..data.len().min(256)]).into_owned();
                return Err(NbdError::UnknownExport(shown));
            };
            let mut out = Vec::with_capacity(134);
            out.extend_from_slice(&export.device.size().to_be_bytes());
            out.extend_from_slice(&export.transmission_flags(st.structured).to_be_bytes());
            if !st.no_zeroes {
                out.extend_from_slice(&[0u8; 124]);
            }
            s.write_all(&out).await?;
            return Ok(Some(finish(st, export)));
        }
        OPT_ABORT => {
            // The client may already be gone; the ACK is a courtesy.
            let _ = reply(s, option, REP_ACK, &[]).await;
            return Err(NbdError::Aborted);
        }
        OPT_LIST if !data.is_empty() => {
            reply(s, option, REP_ERR_INVALID, b"LIST takes no data").await?
        }
        OPT_LIST => {
            for e in exports {
                let mut d = Vec::with_capacity(4 + e.name.len());
                d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
                d.extend_from_slice(e.name.as_bytes());
                reply(s, option, REP_SERVER, &d).await?;
            }
            reply(s, option, REP_ACK, &[]).await?;
        }
        OPT_STRUCTURED_REPLY if !data.is_empty() => {
            reply(
                s,
                option,
                REP_ERR_INVALID,
                b"STRUCTURED_REPLY takes no data",
            )
            .await?
        }
        OPT_STRUCTURED_REPLY => {
            st.structured = true;
            reply(s, option, REP_ACK, &[]).await?;
        }
        OPT_INFO | OPT_GO => {
            let req = match InfoRequest::parse(data) {
                Ok(r) => r,
                Err(why) => {
                    reply(s, option, REP_ERR_INVALID, why.as_bytes()).await?;
                    return Ok(None);
                }
            };
            let Some(export) = find(exports, &req.name).cloned() else {
                reply(s, option, REP_ERR_UNKNOWN, b"no such export").await?;
                return Ok(None);
            };
            send_info(s, option, &export, st.structured, &req.infos).await?;
            reply(s, option, REP_ACK, &[]).await?;
            if option == OPT_GO {
                return Ok(Some(finish(st, export)));
            }
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            meta_context(s, exports, st, option, data).await?
        }
        // Everything else, STARTTLS and EXTENDED_HEADERS included, is
        // politely refused so the client can carry on (doc/proto.md "Option types").
        _ => reply(s, option, REP_ERR_UNSUP, b"option not supported").await?,
    }
    Ok(None)
}

fn finish(st: &Haggle, export: Arc<Export>) -> Negotiated {
    // Contexts chosen for another export do not carry over (doc/proto.md
    // "NBD_OPT_SET_META_CONTEXT").
    let meta_allocation = st.structured && st.meta_export.as_deref() == Some(export.name.as_str());
    Negotiated {
        options: ConnectionOptions {
            structured: st.structured,
            meta_allocation,
            ..ConnectionOptions::default()
        },
        export,
    }
}

async fn send_info<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    e: &Export,
    structured: bool,
    wanted: &[u16],
) -> Result<(), NbdError> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    d.extend_from_slice(&e.device.size().to_be_bytes());
    d.extend_from_slice(&e.transmission_flags(structured).to_be_bytes());
    reply(s, option, REP_INFO, &d).await?;
    if wanted.contains(&INFO_NAME) {
        let mut d = INFO_NAME.to_be_bytes().to_vec();
        d.extend_from_slice(e.name.as_bytes());
        reply(s, option, REP_INFO, &d).await?;
    }
    if wanted.contains(&INFO_DESCRIPTION) && !e.description.is_empty() {
        let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
        let desc = &e.description.as_bytes()[..e.description.len().min(NAME_LEN_MAX)];
        d.extend_from_slice(desc);
        reply(s, option, REP_INFO, &d).await?;
    }
    if wanted.contains(&INFO_BLOCK_SIZE) {
        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [BLOCK_SIZE_MIN, BLOCK_SIZE_PREFERRED, PAYLOAD_LEN_MAX] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        reply(s, option, REP_INFO, &d).await?;
    }
    Ok(())
}

/// LIST_META_CONTEXT and SET_META_CONTEXT: we know only `base:allocation`.
async fn meta_context<S: AsyncWrite + Unpin>(
    s: &mut S,
    exports: &[Arc<Export>],
    st: &mut Haggle,
    option: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let set = option == OPT_SET_META_CONTEXT;
    if set && !st.structured {
        return reply(
            s,
            option,
            REP_ERR_INVALID,
            b"negotiate structured replies first",
        )
        .await;
    }
    let req = match MetaRequest::parse(data) {
        Ok(r) => r,
        Err(why) => return reply(s, option, REP_ERR_INVALID, why.as_bytes()).await,
    };
    let Some(export) = find(exports, &req.name) else {
        return reply(s, option, REP_ERR_UNKNOWN, b"no such export").await;
    };
    // LIST with no query, or the "base:" namespace query, lists every context.
    let matched = if set {
        req.queries.iter().any(|q| q == META_BASE_ALLOCATION)
    } else {
        req.queries.is_empty()
            || req
                .queries
                .iter()
                .any(|q| q == META_BASE_ALLOCATION || q == "base:")
    };
    if set {
        st.meta_export = matched.then(|| export.name.clone());
    }
    if matched {
        let mut d = META_BASE_ALLOCATION_ID.to_be_bytes().to_vec();
        d.extend_from_slice(META_BASE_ALLOCATION.as_bytes());
        reply(s, option, REP_META_CONTEXT, &d).await?;
    }
    reply(s, option, REP_ACK, &[]).await
}
