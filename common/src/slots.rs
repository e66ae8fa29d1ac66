//! Redis Cluster slots: which slot a key is in, a short hash tag for any
//! slot, and the masters of a `CLUSTER SLOTS` answer. The processor's
//! repair markers and the indexes of sessions (one per master, named with
//! a hash tag of the master's lowest slot) are found with them.

use std::collections::HashMap;

use redis::Value;

/// One master of a cluster: its address and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    /// `host:port`.
    pub address: String,
    /// Inclusive ranges, in order.
    pub slots: Vec<(u16, u16)>,
}

impl Master {
    /// The lowest slot the master serves (0 for none).
    pub fn lowest_slot(&self) -> u16 {
        self.slots.first().map_or(0, |(first, _)| *first)
    }
}

/// The masters of a `CLUSTER SLOTS` answer (RESP2 or RESP3), ordered by
/// their slots.
pub fn masters(slots: &Value) -> Vec<Master> {
    let mut by_master: HashMap<String, Vec<(u16, u16)>> = HashMap::new();
    let Value::Array(ranges) = slots else {
        return Vec::new();
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::SimpleString(host)) => host.clone(),
            Some(Value::VerbatimString { text, .. }) => text.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            continue;
        };
        by_master
            .entry(format!("{host}:{port}"))
            .or_default()
            .push((*first as u16, *last as u16));
    }
    let mut masters: Vec<Master> = by_master
        .into_iter()
        .map(|(address, mut slots)| {
            slots.sort_unstable();
            Master { address, slots }
        })
        .collect();
    masters.sort_by(|a, b| a.slots.cmp(&b.slots));
    masters
}

/// A short hash tag whose slot is `slot` (searched, not stored: a few
/// hundred thousand CRC16s at most).
pub fn tag_for_slot(slot: u16) -> String {
    (0u64..)
        .map(|n| format!("s{n}"))
        .find(|tag| key_slot(tag.as_bytes()) == slot)
        .expect("every slot has a tag")
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the
/// part between the first `{` and the next `}`, when not empty), else of
/// the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &rest[..len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}
