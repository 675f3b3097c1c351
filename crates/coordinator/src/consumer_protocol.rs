//! The "consumer" protocol's subscription and assignment payloads, as Kafka's clients encode
//! them inside JoinGroup metadata and SyncGroup assignments. The broker reads them only for
//! admin views (which topics a group consumes, which partitions a member owns).

use bytes::{Buf, Bytes};

fn get_str(buf: &mut Bytes) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_i16();
    let len = usize::try_from(len).ok()?;
    if buf.remaining() < len {
        return None;
    }
    String::from_utf8(buf.split_to(len).to_vec()).ok()
}

fn get_count(buf: &mut Bytes) -> Option<usize> {
    if buf.remaining() < 4 {
        return None;
    }
    // Each element takes at least two bytes, so a larger count is malformed.
    usize::try_from(buf.get_i32())
        .ok()
        .filter(|n| *n <= buf.remaining() / 2 + 1)
}

/// The topics in a ConsumerProtocolSubscription (any version: the topic list comes first).
pub fn subscribed_topics(metadata: &Bytes) -> Vec<String> {
    let mut buf = metadata.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    buf.advance(2);
    let Some(count) = get_count(&mut buf) else {
        return Vec::new();
    };
    (0..count).map_while(|_| get_str(&mut buf)).collect()
}

/// The partitions in a ConsumerProtocolAssignment: `(topic, partitions)`.
pub fn assigned_partitions(assignment: &Bytes) -> Vec<(String, Vec<i32>)> {
    let mut buf = assignment.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    buf.advance(2);
    let Some(count) = get_count(&mut buf) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for _ in 0..count {
        let Some(topic) = get_str(&mut buf) else {
            break;
        };
        let Some(n) = get_count(&mut buf) else { break };
        if buf.remaining() < n * 4 {
            break;
        }
        out.push((topic, (0..n).map(|_| buf.get_i32()).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn subscriptions_and_assignments_parse_and_garbage_does_not_panic() {
        let mut sub = bytes::BytesMut::new();
        sub.put_i16(1);
        sub.put_i32(2);
        for t in ["a", "bb"] {
            sub.put_i16(t.len() as i16);
            sub.put_slice(t.as_bytes());
        }
        sub.put_i32(-1); // user data
        assert_eq!(subscribed_topics(&sub.freeze()), vec!["a", "bb"]);
        let mut asg = bytes::BytesMut::new();
        asg.put_i16(0);
        asg.put_i32(1);
        asg.put_i16(1);
        asg.put_slice(b"a");
        asg.put_i32(2);
        asg.put_i32(0);
        asg.put_i32(3);
        assert_eq!(
            assigned_partitions(&asg.freeze()),
            vec![("a".to_string(), vec![0, 3])]
        );
        for junk in [
            &b""[..],
            b"\x00",
            b"\x00\x00\x7f\xff\xff\xff",
            b"\x00\x00\x00\x00\x00\x01\x7f\xff",
        ] {
            let junk = Bytes::copy_from_slice(junk);
            let _ = subscribed_topics(&junk);
            let _ = assigned_partitions(&junk);
        }
    }
}
