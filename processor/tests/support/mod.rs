//! Checks shared by the apply-step tests: the state hash beside a document
//! is consistent with it, and the ops an apply reports replay to it.

use std::collections::{BTreeSet, HashMap};

use sessionfold_processor::store::{ChildOp, Invocation, Stored};

/// Reads the session's state hash and checks every invariant of layout 2
/// against the document's children count (see `apply.lua`).
pub async fn check_state(redis_url: &str, state_key: &str, doc_key: &str) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let fields: HashMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
        .arg(state_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let doc_children: Vec<i64> = redis::cmd("JSON.ARRLEN")
        .arg(doc_key)
        .arg("$.children")
        .query_async(&mut redis)
        .await
        .unwrap();
    let number = |name: &str| -> u64 {
        fields
            .get(name.as_bytes())
            .map(|v| String::from_utf8_lossy(v).parse().unwrap())
            .unwrap_or(0)
    };
    let n = number("n");
    assert_eq!(n as i64, doc_children[0], "n against the document");

    // The order: index → pages → chunks, sorted, counts adding up.
    let index = fields.get(&b"pi"[..]).cloned().unwrap_or_default();
    assert_eq!(index.len() % 24, 0);
    let mut records: Vec<[u8; 16]> = Vec::new();
    for page in index.chunks(24) {
        let count = u32::from_be_bytes(page[16..20].try_into().unwrap());
        let id = u32::from_be_bytes(page[20..24].try_into().unwrap());
        let dir = fields
            .get(format!("d{id}").as_bytes())
            .unwrap_or_else(|| panic!("page d{id} is missing"));
        assert_eq!(dir.len() % 22, 0);
        assert!(!dir.is_empty(), "page d{id} is empty");
        assert_eq!(&page[..16], &dir[..16], "page d{id}'s first record");
        let mut page_total = 0;
        for entry in dir.chunks(22) {
            let entry_count = u16::from_be_bytes(entry[16..18].try_into().unwrap()) as usize;
            let chunk_id = u32::from_be_bytes(entry[18..22].try_into().unwrap());
            let chunk = fields
                .get(format!("c{chunk_id}").as_bytes())
                .unwrap_or_else(|| panic!("chunk c{chunk_id} is missing"));
            assert_eq!(chunk.len(), entry_count * 16, "chunk c{chunk_id}'s count");
            assert!(
                entry_count > 0 && entry_count <= 128,
                "chunk c{chunk_id} holds {entry_count}"
            );
            assert_eq!(
                &entry[..16],
                &chunk[..16],
                "chunk c{chunk_id}'s first record"
            );
            records.extend(chunk.chunks(16).map(|r| <[u8; 16]>::try_from(r).unwrap()));
            page_total += entry_count as u32;
        }
        assert_eq!(page_total, count, "page d{id}'s count");
    }
    assert_eq!(records.len() as u64, n, "order records against n");
    assert!(
        records.windows(2).all(|w| w[0] < w[1]),
        "order records are not strictly sorted"
    );
    match fields.get(&b"lr"[..]) {
        Some(last) => assert_eq!(Some(&last[..]), records.last().map(|r| &r[..]), "lr"),
        None => assert!(records.is_empty()),
    }

    // The identities: every record in the bucket its identity maps to, each
    // identity once, their positions those of the order records.
    let (level, split) = (number("lvl"), number("spl"));
    let mut identities = BTreeSet::new();
    let mut positions = BTreeSet::new();
    for (name, value) in &fields {
        let Some(bucket) = name.strip_prefix(b"b") else {
            continue;
        };
        let bucket: u64 = String::from_utf8_lossy(bucket).parse().unwrap();
        assert_eq!(value.len() % 24, 0);
        for record in value.chunks(24) {
            let h = u32::from_be_bytes(record[..4].try_into().unwrap()) as u64;
            let low = 1u64 << level;
            let mut expected = h % low;
            if expected < split {
                expected = h % (low * 2);
            }
            assert_eq!(expected, bucket, "an identity in the wrong bucket");
            assert!(
                identities.insert(record[..16].to_vec()),
                "an identity twice"
            );
            positions.insert(record[16..24].to_vec());
        }
    }
    assert_eq!(identities.len() as u64, n, "identities against n");
    let order_positions: BTreeSet<Vec<u8>> = records.iter().map(|r| r[8..].to_vec()).collect();
    assert_eq!(
        positions, order_positions,
        "identity positions against the order"
    );
}

/// Replays what applies reported onto the children they started from.
pub fn replay(children: &mut Vec<String>, invocation: &Invocation, stored: &Stored) {
    let texts: Vec<String> = (0..invocation.children())
        .map(|child| String::from_utf8(invocation.child_json(child).to_vec()).unwrap())
        .collect();
    for op in &stored.ops {
        match *op {
            ChildOp::Inserted { rank, child } => {
                children.insert(rank as usize, texts[child as usize].clone());
            }
            ChildOp::Removed { rank } => {
                children.remove(rank as usize);
            }
        }
    }
}
