//! The wire codec under proptest: every message round-trips, a header and
//! its page decode like the whole frame, garbage and bit flips are errors.

use geomirror::replication::wire::{self, Check, Msg};
use geomirror::replication::Generations;
use proptest::prelude::*;

fn arb_msg() -> impl Strategy<Value = Msg> {
    let n = any::<[u8; 32]>();
    let g =
        (any::<u64>(), any::<u64>(), any::<[u64; 2]>()).prop_map(|(current, bitmap, history)| {
            Generations {
                current,
                bitmap,
                history,
            }
        });
    prop_oneof![
        n.prop_map(|nonce| Msg::Challenge { nonce }),
        (any::<u64>(), n, n, g.clone()).prop_map(|(epoch, nonce, mac, generations)| Msg::Auth {
            epoch,
            nonce,
            mac,
            generations
        }),
        (any::<u64>(), n, g, any::<u64>()).prop_map(|(epoch, mac, generations, size)| {
            Msg::Welcome {
                epoch,
                mac,
                generations,
                size,
            }
        }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(epoch, seq, offset, len, trim, punch)| Msg::Zero {
                epoch,
                seq,
                offset,
                len,
                trim,
                punch
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(epoch, seq)| Msg::Flush { epoch, seq }),
        (any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(epoch, seq, full)| Msg::ResyncBegin { epoch, seq, full }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(epoch, seq, offset, chunk_bytes, count)| Msg::SumsRequest {
                    epoch,
                    seq,
                    offset,
                    chunk_bytes,
                    count
                }
            ),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(epoch, seq, current)| Msg::InSync {
            epoch,
            seq,
            current
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(epoch, seq)| Msg::Ack { epoch, seq }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u32>(), 0..100)
        )
            .prop_map(|(epoch, seq, sums)| Msg::Sums { epoch, seq, sums }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<i32>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(epoch, seq, errno, offset, len)| Msg::Nack {
                epoch,
                seq,
                errno,
                offset,
                len
            }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in arb_msg()) {
        let f = wire::encode(&msg, &[]);
        prop_assert_eq!(wire::check(&f).unwrap(), Check::Complete(f.len()));
        let (back, payload) = wire::parse(&f).unwrap();
        prop_assert_eq!(back, msg);
        prop_assert!(payload.is_empty());
    }

    #[test]
    fn write_with_its_page_round_trips(data in proptest::collection::vec(any::<u8>(), 0..20_000), offset: u64, seq: u64) {
        let msg = Msg::Write { epoch: 1, seq, offset, len: data.len() as u32, crc: crc32fast::hash(&data), fua: true };
        let f = wire::encode(&msg, &data);
        let (back, payload) = wire::parse(&f).unwrap();
        prop_assert_eq!(back, msg);
        prop_assert_eq!(payload, &data[..]);
    }

    #[test]
    fn head_then_page_decodes_like_the_whole_frame(data in proptest::collection::vec(any::<u8>(), 1..20_000), cut: usize) {
        let msg = Msg::Write { epoch: 2, seq: 3, offset: 0, len: data.len() as u32, crc: crc32fast::hash(&data), fua: false };
        let f = wire::encode(&msg, &data);
        let head = wire::parse_head(&f[..f.len() - 1]).unwrap().expect("header is complete");
        prop_assert_eq!(&head.msg, &msg);
        prop_assert_eq!(head.payload_len, data.len());
        wire::check_payload(&head.msg, &f[head.head_bytes..]).unwrap();
        prop_assert!(wire::parse_head(&f[..cut % head.head_bytes]).unwrap().is_none());
        let mut bad = data.clone();
        bad[cut % data.len()] ^= 0x80;
        prop_assert!(wire::check_payload(&head.msg, &bad).is_err());
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(Check::Complete(n)) = wire::check(&bytes) {
            let _ = wire::parse(&bytes[..n]);
        }
        let _ = wire::parse(&bytes);
    }

    #[test]
    fn any_single_bit_flip_is_detected(msg in arb_msg(), bit: usize) {
        let mut f = wire::encode(&msg, &[]);
        let bit = bit % (f.len() * 8);
        f[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(wire::parse(&f).is_err());
    }
}
