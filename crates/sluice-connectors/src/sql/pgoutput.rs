//! A decoder for PostgreSQL's `pgoutput` logical decoding messages, protocol
//! version 1 (the messages `pg_logical_slot_peek_binary_changes` returns, one per
//! row; see "Logical Replication Message Formats" in the PostgreSQL manual).
//!
//! Written here rather than taken from crates.io: the crates that parse pgoutput
//! (`pgsync-postgres`, `datum-cdc`, `rivven-cdc`, …) come inside CDC frameworks
//! with their own replication clients and dependency trees, and version 1 (no
//! streamed transactions) is a dozen fixed layouts. Values are requested in text
//! format, so a tuple's columns stay the server's own text of each value.

/// A column value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// An unchanged TOASTed value: the server did not send it.
    Unchanged,
    Text(String),
}

/// A relation's description, sent before the first change to it in a decoding call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationMessage {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// 1: part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 00:00 UTC.
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_ts: i64,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Relation(RelationMessage),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    Update {
        relation: u32,
        /// The old key (`K`) or the whole old row (`O`, `REPLICA IDENTITY FULL`).
        old: Option<(u8, Vec<Value>)>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        /// The old key (`K`) or the whole old row (`O`).
        old: (u8, Vec<Value>),
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// A `pg_logical_emit_message` message (content not kept).
    Logical {
        prefix: String,
    },
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "the message ends early ({} bytes, {n} more wanted at byte {})",
                    self.data.len(),
                    self.at
                )
            })?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A NUL-terminated string.
    fn string(&mut self) -> Result<String, String> {
        let rest = &self.data[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("a string without its terminating NUL")?;
        let text = String::from_utf8(rest[..end].to_vec())
            .map_err(|_| "a string that is not UTF-8".to_string())?;
        self.at += end + 1;
        Ok(text)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, String> {
        let count = self.i16()?;
        (0..count.max(0))
            .map(|_| match self.u8()? {
                b'n' => Ok(Value::Null),
                b'u' => Ok(Value::Unchanged),
                b't' => {
                    let len = self.i32()?;
                    let bytes = self.take(usize::try_from(len).map_err(|_| "a negative length")?)?;
                    String::from_utf8(bytes.to_vec())
                        .map(Value::Text)
                        .map_err(|_| "a text value that is not UTF-8".to_string())
                }
                b'b' => Err("a binary value (only text format is requested)".into()),
                other => Err(format!("unknown tuple value kind {:?}", other as char)),
            })
            .collect()
    }
}

/// Parses one message.
pub fn parse(data: &[u8]) -> Result<Message, String> {
    let mut r = Reader { data, at: 0 };
    let kind = r.u8()?;
    let message = match kind {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_ts: r.i64()?,
            }
        }
        b'O' => Message::Origin {
            lsn: r.u64()?,
            name: r.string()?,
        },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let count = r.i16()?;
            let columns = (0..count.max(0))
                .map(|_| {
                    Ok(RelationColumn {
                        flags: r.u8()?,
                        name: r.string()?,
                        type_oid: r.u32()?,
                        type_modifier: r.i32()?,
                    })
                })
                .collect::<Result<_, String>>()?;
            Message::Relation(RelationMessage {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    relation,
                    new: r.tuple()?,
                },
                other => return Err(format!("an insert with tuple kind {:?}", other as char)),
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut tag = r.u8()?;
            if tag == b'K' || tag == b'O' {
                old = Some((tag, r.tuple()?));
                tag = r.u8()?;
            }
            if tag != b'N' {
                return Err(format!("an update with tuple kind {:?}", tag as char));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let tag = r.u8()?;
            if tag != b'K' && tag != b'O' {
                return Err(format!("a delete with tuple kind {:?}", tag as char));
            }
            Message::Delete {
                relation,
                old: (tag, r.tuple()?),
            }
        }
        b'T' => {
            let count = r.u32()?;
            let _options = r.u8()?;
            let relations = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        b'M' => {
            let _flags = r.u8()?;
            let _lsn = r.u64()?;
            let prefix = r.string()?;
            let len = r.u32()? as usize;
            r.take(len)?;
            Message::Logical { prefix }
        }
        other => return Err(format!("unknown message type {:?}", other as char)),
    };
    if r.at != data.len() {
        return Err(format!(
            "{} bytes after a {:?} message",
            data.len() - r.at,
            kind as char
        ));
    }
    Ok(message)
}

/// `0/198C5C0` for an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// An LSN from its text (`0/198C5C0`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some(((high as u64) << 32) | low as u64)
}

/// A commit timestamp (microseconds since 2000-01-01 UTC) as RFC 3339.
pub fn timestamp_text(micros: i64) -> String {
    const EPOCH_2000: i64 = 946_684_800_000_000;
    let at = chrono::DateTime::from_timestamp_micros(micros + EPOCH_2000).unwrap_or_default();
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    /// Messages PostgreSQL 15 sent for `INSERT (1,'a'),(2,'z'); UPDATE … id = 1;
    /// DELETE … id = 2` on `t (id int PRIMARY KEY, v text)`.
    #[test]
    fn messages_from_a_real_server_decode() {
        assert_eq!(
            parse(&hex("42000000000198c7a8000304d844a26303000002e2")).unwrap(),
            Message::Begin {
                final_lsn: 0x198c7a8,
                commit_ts: 0x0304d844a26303,
                xid: 738
            }
        );
        let Message::Relation(relation) = parse(&hex(
            "520000400d7075626c69630074006400020169640000000017ffffffff00760000000019ffffffff",
        ))
        .unwrap() else {
            panic!("not a relation")
        };
        assert_eq!((relation.id, relation.namespace.as_str()), (16397, "public"));
        assert_eq!(relation.name, "t");
        assert_eq!(relation.replica_identity, b'd');
        assert_eq!(
            relation.columns,
            [
                RelationColumn {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1
                },
                RelationColumn {
                    flags: 0,
                    name: "v".into(),
                    type_oid: 25,
                    type_modifier: -1
                }
            ]
        );
        assert_eq!(
            parse(&hex("490000400d4e0002740000000131740000000161")).unwrap(),
            Message::Insert {
                relation: 16397,
                new: vec![Value::Text("1".into()), Value::Text("a".into())]
            }
        );
        assert_eq!(
            parse(&hex("550000400d4e0002740000000131740000000162")).unwrap(),
            Message::Update {
                relation: 16397,
                old: None,
                new: vec![Value::Text("1".into()), Value::Text("b".into())]
            }
        );
        assert_eq!(
            parse(&hex("440000400d4b00027400000001326e")).unwrap(),
            Message::Delete {
                relation: 16397,
                old: (b'K', vec![Value::Text("2".into()), Value::Null])
            }
        );
        assert_eq!(
            parse(&hex("4300000000000198c7a8000000000198c840000304d844a26303")).unwrap(),
            Message::Commit {
                commit_lsn: 0x198c7a8,
                end_lsn: 0x198c840,
                commit_ts: 0x0304d844a26303
            }
        );
    }

    #[test]
    fn updates_with_old_rows_unchanged_values_and_truncates_decode() {
        let mut update = vec![b'U', 0, 0, 0, 7, b'O', 0, 2, b't', 0, 0, 0, 1, b'1', b'n'];
        update.extend([b'N', 0, 2, b't', 0, 0, 0, 1, b'1', b'u']);
        assert_eq!(
            parse(&update).unwrap(),
            Message::Update {
                relation: 7,
                old: Some((b'O', vec![Value::Text("1".into()), Value::Null])),
                new: vec![Value::Text("1".into()), Value::Unchanged]
            }
        );
        assert_eq!(
            parse(&[b'T', 0, 0, 0, 2, 0, 0, 0, 0, 7, 0, 0, 0, 9]).unwrap(),
            Message::Truncate {
                relations: vec![7, 9]
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"Z",
            b"I\0\0\0\x07N\0\x01t\0\0\0\x05ab",
            b"I\0\0\0\x07N\0\x01t\xff\xff\xff\xffab",
            b"D\0\0\0\x07X",
            b"R\0\0\0\x07public",
            b"B\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lsns_and_commit_times_have_their_text_forms() {
        assert_eq!(lsn_text(0x1_0198_C5C0), "1/198C5C0");
        assert_eq!(parse_lsn("1/198C5C0"), Some(0x1_0198_C5C0));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(timestamp_text(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(timestamp_text(1_500_000), "2000-01-01T00:00:01.500000Z");
    }
}
