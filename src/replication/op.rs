//! The requests a copy link queues, and the wire message each becomes
//! once the sender gives it a sequence number and the current epoch.

use std::sync::Arc;

use super::wire::Msg;
use crate::storage::IoBuf;

/// What a queued request asks of the copy.
pub(crate) enum Op {
    Write {
        offset: u64,
        data: Arc<IoBuf>,
        start: usize,
        len: usize,
        crc: u32,
        fua: bool,
    },
    Zero {
        offset: u64,
        len: u64,
        trim: bool,
        punch: bool,
    },
    Flush,
    /// A resync begins; `full` when every chunk is sent.
    ResyncBegin {
        full: bool,
    },
    InSync {
        current: u64,
    },
    Sums {
        offset: u64,
        chunk_bytes: u32,
        count: u32,
    },
}

impl Op {
    /// Page bytes the request carries.
    pub(crate) fn page_bytes(&self) -> u64 {
        match self {
            Op::Write { len, .. } => *len as u64,
            _ => 0,
        }
    }

    /// The message for this request, and the page it carries (buffer, start, len).
    pub(crate) fn to_msg(&self, epoch: u64, seq: u64) -> (Msg, Option<(Arc<IoBuf>, usize, usize)>) {
        match self {
            Op::Write {
                offset,
                data,
                start,
                len,
                crc,
                fua,
            } => (
                Msg::Write {
                    epoch,
                    seq,
                    offset: *offset,
                    len: *len as u32,
                    crc: *crc,
                    fua: *fua,
                },
                Some((data.clone(), *start, *len)),
            ),
            Op::Zero {
                offset,
                len,
                trim,
                punch,
            } => (
                Msg::Zero {
                    epoch,
                    seq,
                    offset: *offset,
                    len: *len,
                    trim: *trim,
                    punch: *punch,
                },
                None,
            ),
            Op::Flush => (Msg::Flush { epoch, seq }, None),
            Op::ResyncBegin { full } => (
                Msg::ResyncBegin {
                    epoch,
                    seq,
                    full: *full,
                },
                None,
            ),
            Op::InSync { current } => (
                Msg::InSync {
                    epoch,
                    seq,
                    current: *current,
                },
                None,
            ),
            Op::Sums {
                offset,
                chunk_bytes,
                count,
            } => (
                Msg::SumsRequest {
                    epoch,
                    seq,
                    offset: *offset,
                    chunk_bytes: *chunk_bytes,
                    count: *count,
                },
                None,
            ),
        }
    }
}
