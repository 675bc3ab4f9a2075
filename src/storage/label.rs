//! The disk label: which group and resource a disk belongs to, its layout,
//! generation identifiers and flags, kept in two crc32-checked slots.
//!
//! Slots A and B are written alternately with a rising sequence number, so
//! a write torn by a crash damages only the slot being written and the other
//! still holds the previous label. Slot format (4096 bytes, little endian):
//! magic (8) | format version (4) | body length (4) | body (bincode,
//! fixed-width integers) | zero padding | crc32 of bytes 0..4092 (4).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::generation::Generations;
use super::meta::{MetaLayout, BLOCK_BYTES};
use super::sys;

/// First bytes of every label slot.
pub const MAGIC: [u8; 8] = *b"GMIRLABL";
/// Version of the slot and body format written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Longest group name and resource id, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
const CRC_AT: usize = BLOCK_BYTES as usize - 4;
const BODY_AT: usize = 16;

/// Errors of the disk label and metadata (label slots and dirty bitmap).
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// Neither label slot carries the geomirror magic: never formatted.
    #[error("disk is not formatted for geomirror (no label found)")]
    NotFormatted,
    /// Metadata is present but damaged; the text names what and where.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// The label was written by a newer (or unknown) format version.
    #[error("label format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    Version(u32),
    /// Another process holds the disk open for hosting.
    #[error("disk {path} is in use by another process")]
    Locked { path: String },
    /// The disk carries the label of another group or resource.
    #[error("disk belongs to group {group:?}, resource {resource:?} (use --force to overwrite)")]
    Foreign { group: String, resource: String },
    /// The disk cannot hold the metadata plus one data block.
    #[error("disk of {disk_bytes} bytes is too small: at least {needed_bytes} are needed")]
    TooSmall { disk_bytes: u64, needed_bytes: u64 },
    /// A caller-supplied value is out of bounds (name length, chunk size).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing the metadata failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl LabelError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabelError {
        let what = what.into();
        move |source| LabelError::Io { what, source }
    }
}

/// State flags of a disk's data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelFlags {
    /// The data area holds a complete image of some generation (false on a
    /// fresh disk and during a full sync onto it).
    pub consistent: bool,
    /// This disk has been the production disk at least once.
    pub primary_seen: bool,
}

/// Contents of one label slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Name of the group (the mirrored volume) the disk belongs to.
    pub group: String,
    /// Resource id of this disk within the group.
    pub resource: String,
    /// Random id given to the disk when it was formatted.
    pub disk_id: u64,
    pub layout: MetaLayout,
    pub generations: Generations,
    pub flags: LabelFlags,
    /// Rises by one on every write; the slot is `seq % 2` (0 = A).
    pub seq: u64,
}

/// What `format` writes.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    pub group: String,
    pub resource: String,
    /// Data bytes per dirty bit.
    pub bitmap_chunk_bytes: u64,
    /// Overwrite a label of another group or resource, or a corrupt one.
    pub force: bool,
}

/// How each slot of a disk read back.
#[derive(Debug)]
pub struct SlotReport {
    /// Per slot (A, B): the label, or why it was rejected.
    pub slots: [Result<Label, LabelError>; 2],
}

impl Label {
    /// Size of the data area.
    pub fn data_size(&self) -> u64 {
        self.layout.data_bytes
    }

    /// Reads the newest valid slot of the disk at `path`.
    pub fn read_path(path: &Path) -> Result<Label, LabelError> {
        let f = File::open(path).map_err(LabelError::io(format!("open {}", path.display())))?;
        Label::read(&f)
    }

    /// Reads the newest valid slot. One damaged slot is tolerated (a torn
    /// write) and logged; both damaged is `Corrupt`, naming both reasons.
    pub fn read(file: &File) -> Result<Label, LabelError> {
        let report = Label::read_slots(file)?;
        let [a, b] = report.slots;
        match (a, b) {
            (Ok(a), Ok(b)) => Ok(if b.seq > a.seq { b } else { a }),
            (Ok(l), Err(e)) | (Err(e), Ok(l)) => {
                if !matches!(e, LabelError::NotFormatted) {
                    tracing::warn!(
                        "one label slot is unusable, using the other (seq {}): {e}",
                        l.seq
                    );
                }
                Ok(l)
            }
            (Err(LabelError::NotFormatted), Err(LabelError::NotFormatted)) => {
                Err(LabelError::NotFormatted)
            }
            (Err(LabelError::Version(v)), _) | (_, Err(LabelError::Version(v))) => {
                Err(LabelError::Version(v))
            }
            (Err(a), Err(b)) => {
                // `read_slots` already names the slot in a `Corrupt`
                // reason; only other errors need the slot's name here.
                let why = |slot: &str, e: &LabelError| match e {
                    LabelError::Corrupt(w) => w.clone(),
                    e => format!("{slot}: {e}"),
                };
                Err(LabelError::Corrupt(format!(
                    "no valid label: {}; {}",
                    why("slot A", &a),
                    why("slot B", &b)
                )))
            }
        }
    }

    /// Reads and checks both slots without choosing between them.
    pub fn read_slots(file: &File) -> Result<SlotReport, LabelError> {
        let disk = sys::disk_size(file).map_err(LabelError::io("disk size"))?;
        let read_one = |slot: u64| -> Result<Label, LabelError> {
            let off = MetaLayout::slot_offset_for(disk, slot).ok_or(LabelError::NotFormatted)?;
            let mut raw = vec![0u8; BLOCK_BYTES as usize];
            file.read_exact_at(&mut raw, off)
                .map_err(LabelError::io(format!("read label slot at {off}")))?;
            let label = decode_slot(&raw)?;
            label.layout.validate(disk)?;
            if label.seq % 2 != slot {
                return Err(LabelError::Corrupt(format!(
                    "seq {} found in the wrong slot",
                    label.seq
                )));
            }
            Ok(label)
        };
        let name = ["slot A", "slot B"];
        let slots = [0, 1].map(|s| {
            read_one(s).map_err(|e| match e {
                LabelError::Corrupt(w) => LabelError::Corrupt(format!("{}: {w}", name[s as usize])),
                e => e,
            })
        });
        Ok(SlotReport { slots })
    }

    /// Writes the label with the next sequence number into the slot that
    /// holds the older copy, then fdatasyncs: at every moment one slot is
    /// valid. `self.seq` is advanced.
    pub fn write(&mut self, file: &File) -> Result<(), LabelError> {
        self.seq += 1;
        let raw = encode_slot(self)?;
        let off = self.layout.slot_offset(self.seq % 2);
        file.write_all_at(&raw, off)
            .map_err(LabelError::io(format!("write label slot at {off}")))?;
        file.sync_data().map_err(LabelError::io("fdatasync label"))
    }

    /// Formats `file`: checks for a label of someone else, writes an empty
    /// dirty bitmap and the label into both slots. A fresh label starts
    /// with new generation ids and `consistent` off.
    pub fn format(file: &File, opts: &FormatOptions) -> Result<Label, LabelError> {
        for (what, v) in [("group name", &opts.group), ("resource id", &opts.resource)] {
            if v.is_empty() || v.len() > NAME_BYTES_MAX {
                return Err(LabelError::Invalid(format!(
                    "{what} must be 1 to {NAME_BYTES_MAX} bytes"
                )));
            }
        }
        match Label::read(file) {
            Ok(old) if old.group == opts.group && old.resource == opts.resource => {}
            Ok(old) if !opts.force => {
                return Err(LabelError::Foreign {
                    group: old.group,
                    resource: old.resource,
                })
            }
            Err(LabelError::NotFormatted) => {}
            Err(e @ (LabelError::Corrupt(_) | LabelError::Version(_))) if !opts.force => {
                return Err(LabelError::Invalid(format!(
                    "{e} (use --force to overwrite)"
                )));
            }
            Err(e @ LabelError::Io { .. }) => return Err(e),
            _ => {}
        }
        let disk = sys::disk_size(file).map_err(LabelError::io("disk size"))?;
        let layout = MetaLayout::compute(disk, opts.bitmap_chunk_bytes)?;
        super::bitmap::write_empty(file, &layout)?;
        let mut label = Label {
            group: opts.group.clone(),
            resource: opts.resource.clone(),
            disk_id: rand::random(),
            layout,
            generations: Generations::fresh(),
            flags: LabelFlags::default(),
            seq: 0, // the two writes below make it 1 (slot B), then 2 (slot A)
        };
        label.write(file)?;
        label.write(file)?;
        Ok(label)
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
        .with_limit::<{ CRC_AT - BODY_AT }>()
}

fn encode_slot(label: &Label) -> Result<Vec<u8>, LabelError> {
    let mut raw = vec![0u8; BLOCK_BYTES as usize];
    raw[..8].copy_from_slice(&MAGIC);
    raw[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let n = bincode::serde::encode_into_slice(label, &mut raw[BODY_AT..CRC_AT], bincode_config())
        .map_err(|e| LabelError::Invalid(format!("label does not fit its slot: {e}")))?;
    raw[12..16].copy_from_slice(&(n as u32).to_le_bytes());
    let crc = crc32fast::hash(&raw[..CRC_AT]);
    raw[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    Ok(raw)
}

fn decode_slot(raw: &[u8]) -> Result<Label, LabelError> {
    if raw[..8] != MAGIC {
        return Err(LabelError::NotFormatted);
    }
    let le32 = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let stored = le32(CRC_AT);
    let computed = crc32fast::hash(&raw[..CRC_AT]);
    if stored != computed {
        return Err(LabelError::Corrupt(format!(
            "crc mismatch (stored {stored:08x}, computed {computed:08x})"
        )));
    }
    let version = le32(8);
    if version != FORMAT_VERSION {
        return Err(LabelError::Version(version));
    }
    let len = le32(12) as usize;
    if len > CRC_AT - BODY_AT {
        return Err(LabelError::Corrupt(format!(
            "body length {len} exceeds the slot"
        )));
    }
    let (label, used): (Label, usize) =
        bincode::serde::decode_from_slice(&raw[BODY_AT..BODY_AT + len], bincode_config())
            .map_err(|e| LabelError::Corrupt(format!("undecodable body: {e}")))?;
    if used != len || label.group.len() > NAME_BYTES_MAX || label.resource.len() > NAME_BYTES_MAX {
        return Err(LabelError::Corrupt("body fields out of bounds".into()));
    }
    Ok(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Label {
        Label {
            group: "vol0".into(),
            resource: "disk-a".into(),
            disk_id: 7,
            layout: MetaLayout::compute(1 << 30, 65536).expect("layout"),
            generations: Generations::fresh(),
            flags: LabelFlags {
                consistent: true,
                primary_seen: false,
            },
            seq: 5,
        }
    }

    #[test]
    fn a_slot_decodes_to_what_was_encoded() {
        let l = sample();
        assert_eq!(
            decode_slot(&encode_slot(&l).expect("encode")).expect("decode"),
            l
        );
    }

    #[test]
    fn any_flipped_bit_in_a_slot_is_detected() {
        let raw = encode_slot(&sample()).expect("encode");
        for byte in [8, 12, 20, 100, 4000, 4093] {
            let mut bad = raw.clone();
            bad[byte] ^= 0x10;
            assert!(
                matches!(decode_slot(&bad), Err(LabelError::Corrupt(_))),
                "byte {byte}"
            );
        }
        let mut no_magic = raw;
        no_magic[0] = b'X';
        assert!(matches!(
            decode_slot(&no_magic),
            Err(LabelError::NotFormatted)
        ));
    }
}
