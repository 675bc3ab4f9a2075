//! The codec of the handshake's option messages (NBD `doc/proto.md` "Option haggling"):
//! option headers, option replies, and the INFO/GO and META_CONTEXT payloads.

use super::consts::*;
use super::error::NbdError;
use super::proto::{be16, be32, be64, META_QUERIES_MAX, NAME_LEN_MAX};

/// An option header from the client (doc/proto.md "Option haggling").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    pub fn parse(buf: &[u8]) -> Result<Option<OptionHeader>, NbdError> {
        if buf.len() < OPTION_HEADER_LEN {
            return Ok(None);
        }
        let magic = be64(buf);
        if magic != IHAVEOPT {
            return Err(NbdError::BadMagic {
                expected: IHAVEOPT,
                got: magic,
            });
        }
        Ok(Some(OptionHeader {
            option: be32(&buf[8..]),
            len: be32(&buf[12..]),
        }))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&self.option.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }
}

/// One option reply: header and payload.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&REPLY_MAGIC_OPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Parse an option reply header: (option, reply type, payload length).
pub fn parse_option_reply(buf: &[u8]) -> Result<Option<(u32, u32, u32)>, NbdError> {
    if buf.len() < OPTION_REPLY_HEADER_LEN {
        return Ok(None);
    }
    let magic = be64(buf);
    if magic != REPLY_MAGIC_OPT {
        return Err(NbdError::BadMagic {
            expected: REPLY_MAGIC_OPT,
            got: magic,
        });
    }
    Ok(Some((be32(&buf[8..]), be32(&buf[12..]), be32(&buf[16..]))))
}

/// Why an option payload was refused; sent back as NBD_REP_ERR_INVALID.
pub type Invalid = &'static str;

/// Reads fields off an option payload, refusing anything short or oversized.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if self.0.len() < n {
            return Err("option payload is truncated");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, Invalid> {
        self.take(2).map(be16)
    }
    fn u32(&mut self) -> Result<u32, Invalid> {
        self.take(4).map(be32)
    }
    /// A u32-length-prefixed string of at most NAME_LEN_MAX bytes.
    fn string(&mut self) -> Result<String, Invalid> {
        let n = self.u32()? as usize;
        if n > NAME_LEN_MAX {
            return Err("string longer than 4096 bytes");
        }
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw).map_err(|_| "string is not UTF-8")?;
        if s.contains('\0') {
            return Err("string contains NUL");
        }
        Ok(s.to_owned())
    }
    fn end(&self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("option payload has trailing bytes")
        }
    }
}

/// NBD_OPT_INFO / NBD_OPT_GO payload: export name and requested info types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

impl InfoRequest {
    pub fn parse(data: &[u8]) -> Result<InfoRequest, Invalid> {
        let mut f = Fields(data);
        let name = f.string()?;
        let n = f.u16()? as usize;
        let mut infos = Vec::with_capacity(n.min(f.0.len() / 2));
        for _ in 0..n {
            infos.push(f.u16()?);
        }
        f.end()?;
        Ok(InfoRequest { name, infos })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&(self.infos.len() as u16).to_be_bytes());
        for i in &self.infos {
            out.extend_from_slice(&i.to_be_bytes());
        }
    }
}

/// LIST/SET_META_CONTEXT payload: export name and context queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    pub name: String,
    pub queries: Vec<String>,
}

impl MetaRequest {
    pub fn parse(data: &[u8]) -> Result<MetaRequest, Invalid> {
        let mut f = Fields(data);
        let name = f.string()?;
        let n = f.u32()? as usize;
        if n > META_QUERIES_MAX {
            return Err("too many metadata context queries");
        }
        let mut queries = Vec::with_capacity(n);
        for _ in 0..n {
            queries.push(f.string()?);
        }
        f.end()?;
        Ok(MetaRequest { name, queries })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&(self.queries.len() as u32).to_be_bytes());
        for q in &self.queries {
            out.extend_from_slice(&(q.len() as u32).to_be_bytes());
            out.extend_from_slice(q.as_bytes());
        }
    }
}
