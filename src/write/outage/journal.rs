//! The outage journal file: one JSON line per kept call, fsynced before the call is answered,
//! replayed at the next start after a crash, compacted by rewrite-and-rename.
//!
//! Space is reserved ahead of the end ([`PREALLOCATE`], `fallocate`) and records are written
//! in place: an `fdatasync` after an append that grows the file must also commit the new size
//! through the filesystem's journal (measured here on ext4: ~4 ms), one after a write into
//! reserved space only the data (~0.1 ms), and journal durability waits for one per `set`.
//! The reserved space reads as zeros and JSON text never holds a NUL byte, so the records end
//! at the first NUL.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::value::{KeyWrite, StoredValue};
use crate::write::Op;

/// One journal record: company, call, and the lease token the call was accepted under (so a
/// restarted process replays it only if no other holder took the lease in between).
pub(super) type Record<'a> = (&'a str, &'a Op, Option<i64>);

/// How much space is reserved past the journal's end at a time.
const PREALLOCATE: u64 = 8 << 20;

/// The append-only journal: one JSON line per kept call, fsynced before the call is answered.
pub(super) struct Journal {
    pub(super) path: PathBuf,
    file: File,
    /// End of the records (the file may be longer: reserved space).
    pub(super) bytes: u64,
    /// Length of the file, records and reserved space.
    allocated: u64,
}

impl Journal {
    /// Opens (or creates) the journal; [`Journal::load`] reads it and finds the records' end.
    pub(super) fn open(path: PathBuf) -> Result<Journal> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(|e| Error::invalid(format!("cannot open journal {}: {e}", path.display())))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Journal {
            path,
            file,
            bytes,
            allocated: bytes,
        })
    }

    pub(super) fn append(&mut self, ops: &[Record<'_>]) -> std::io::Result<()> {
        let buf = encode_records(ops)?;
        let end = self.bytes + buf.len() as u64;
        self.reserve(end);
        self.file.write_all_at(buf.as_bytes(), self.bytes)?;
        self.file.sync_data()?;
        self.bytes = end;
        self.allocated = self.allocated.max(end);
        Ok(())
    }

    /// Reserves space up to at least `end`, [`PREALLOCATE`] at a time. Best effort: where the
    /// filesystem cannot, appends grow the file as before (correct, only slower).
    fn reserve(&mut self, end: u64) {
        if end <= self.allocated {
            return;
        }
        let want = end + PREALLOCATE;
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{fallocate, FallocateFlags};
            match fallocate(&self.file, FallocateFlags::empty(), 0, want) {
                Ok(()) => self.allocated = want,
                Err(e) => tracing::debug!(error = %e, "cannot reserve journal space"),
            }
        }
    }

    /// Replaces the journal with `ops` (the live pending calls): written to a temporary file,
    /// fsynced, renamed over the journal and the directory fsynced, so a crash leaves either
    /// the old or the new journal, both of which replay to the same state.
    pub(super) fn rewrite(&mut self, ops: &[Record<'_>]) -> std::io::Result<()> {
        self.rewrite_with(&encode_records(ops)?)
    }

    /// [`Journal::rewrite`] with the lines already encoded.
    pub(super) fn rewrite_with(&mut self, buf: &str) -> std::io::Result<()> {
        let tmp = self.path.with_extension("compact");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(buf.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().write(true).read(true).open(&self.path)?;
        self.bytes = buf.len() as u64;
        self.allocated = self.bytes;
        Ok(())
    }

    /// Empties the journal (every record is in PostgreSQL). The reserved space goes too: what
    /// was written there must not be read as records again.
    pub(super) fn truncate(&mut self) -> std::io::Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.bytes = 0;
        self.allocated = 0;
        Ok(())
    }

    /// Reads every record. A torn last line (a crash mid-append, never acknowledged; it may
    /// end inside a UTF-8 character) is skipped and cut off the file, and the file is left
    /// ending with a newline, so the next append starts a line of its own instead of being
    /// glued to the fragment. A bad line elsewhere is an error, because skipping it would lose
    /// a write.
    pub(super) fn load(&mut self) -> Result<Vec<(String, Op, Option<i64>)>> {
        let read_err = |e: std::io::Error| {
            Error::internal(format!("cannot read journal {}: {e}", self.path.display()))
        };
        let mut data = std::fs::read(&self.path).map_err(read_err)?;
        let file_len = data.len();
        // Reserved space (and anything a crash left after it) is not records.
        if let Some(nul) = data.iter().position(|&b| b == 0) {
            data.truncate(nul);
        }
        let mut out = Vec::new();
        // End of the last line that is kept (complete or not).
        let mut good_end = 0;
        let mut pos = 0;
        let mut n = 0;
        while pos < data.len() {
            n += 1;
            let rest = &data[pos..];
            let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], pos + i + 1),
                None => (rest, data.len()),
            };
            let parsed = std::str::from_utf8(line)
                .map_err(|e| Error::internal(format!("not UTF-8: {e}")))
                .and_then(|l| {
                    if l.trim().is_empty() {
                        Ok(None)
                    } else {
                        decode_record(l).map(Some)
                    }
                });
            match parsed {
                Ok(r) => {
                    out.extend(r);
                    good_end = next;
                }
                Err(_) if next >= data.len() => {
                    tracing::warn!("skipping a torn last journal line (never acknowledged)");
                }
                Err(e) => {
                    return Err(Error::internal(format!(
                        "journal {} line {n} is corrupt: {e}",
                        self.path.display()
                    )))
                }
            }
            pos = next;
        }
        let io_err = |e: std::io::Error| {
            Error::internal(format!(
                "cannot repair journal {}: {e}",
                self.path.display()
            ))
        };
        if good_end < file_len {
            self.file.set_len(good_end as u64).map_err(io_err)?;
        }
        let mut len = good_end as u64;
        if good_end > 0 && data[good_end - 1] != b'\n' {
            self.file.write_all_at(b"\n", len).map_err(io_err)?;
            len += 1;
        }
        if len != file_len as u64 {
            self.file.sync_data().map_err(io_err)?;
        }
        self.bytes = len;
        self.allocated = len;
        Ok(out)
    }
}

/// Journal lines for `ops`, each ended by a newline.
pub(super) fn encode_records(ops: &[Record<'_>]) -> std::io::Result<String> {
    let mut buf = String::new();
    for (company, op, token) in ops {
        buf.push_str(&encode_record(company, op, *token)?);
        buf.push('\n');
    }
    Ok(buf)
}

/// One call as a JSON object (also the `call` of a line in the lost-writes file).
pub(super) fn encode_record(company: &str, op: &Op, token: Option<i64>) -> std::io::Result<String> {
    // `"l"` (the lease token) comes right after the company; journals without it still load.
    let c = match token {
        Some(t) => format!("{},\"l\":{t}", serde_json::to_string(company)?),
        None => serde_json::to_string(company)?,
    };
    Ok(match op {
        Op::Keys(writes) => {
            let mut s = format!("{{\"c\":{c},\"op\":\"keys\",\"w\":[");
            for (n, w) in writes.iter().enumerate() {
                if n > 0 {
                    s.push(',');
                }
                s.push('[');
                s.push_str(&serde_json::to_string(&w.key_type)?);
                s.push(',');
                s.push_str(&serde_json::to_string(&w.key_id)?);
                s.push(',');
                s.push_str(w.value.as_ref().map_or("null", StoredValue::as_str));
                s.push(']');
            }
            s.push_str("]}");
            s
        }
        Op::Creds(v) => format!("{{\"c\":{c},\"op\":\"creds\",\"v\":{}}}", v.as_str()),
        Op::Clear => format!("{{\"c\":{c},\"op\":\"clear\"}}"),
    })
}

fn decode_record(line: &str) -> Result<(String, Op, Option<i64>)> {
    let v: Value = serde_json::from_str(line)?;
    let company = v["c"]
        .as_str()
        .ok_or_else(|| Error::internal("record without company"))?
        .to_string();
    crate::validate::company_id(&company)?;
    let token = v.get("l").and_then(Value::as_i64);
    let op = match v["op"].as_str() {
        Some("keys") => {
            let items = v["w"]
                .as_array()
                .ok_or_else(|| Error::internal("keys record without writes"))?;
            let mut writes = Vec::with_capacity(items.len());
            for item in items {
                let (Some(t), Some(i), Some(val)) =
                    (item[0].as_str(), item[1].as_str(), item.get(2))
                else {
                    return Err(Error::internal("bad key write in journal"));
                };
                writes.push(match val {
                    Value::Null => KeyWrite::delete(t, i)?,
                    val => KeyWrite::put(t, i, StoredValue::from_value(val.clone())?)?,
                });
            }
            Op::Keys(writes)
        }
        Some("creds") => Op::Creds(StoredValue::from_value(v["v"].clone())?),
        Some("clear") => Op::Clear,
        _ => return Err(Error::internal("unknown journal record")),
    };
    Ok((company, op, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_records_round_trip() {
        let w = vec![
            KeyWrite::put(
                "session",
                "1@s.whatsapp.net:2",
                StoredValue::from_json(r#"{"a":{"type":"Buffer","data":"AQI="}}"#).unwrap(),
            )
            .unwrap(),
            KeyWrite::delete("pre-key", "7").unwrap(),
        ];
        let line = encode_record("acme", &Op::Keys(w.clone()), Some(7)).unwrap();
        let (c, op, token) = decode_record(&line).unwrap();
        assert_eq!((c.as_str(), token), ("acme", Some(7)));
        match op {
            Op::Keys(back) => assert_eq!(back, w),
            _ => panic!("wrong op"),
        }
        let line = encode_record("acme", &Op::Clear, None).unwrap();
        assert!(matches!(
            decode_record(&line).unwrap(),
            (_, Op::Clear, None)
        ));
    }

    #[test]
    fn torn_last_line_is_skipped_but_corruption_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let good = encode_record("a", &Op::Clear, None).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"c\":\"a\",\"op\"")).unwrap();
        let mut j = Journal::open(path.clone()).unwrap();
        assert_eq!(j.load().unwrap().len(), 1);
        std::fs::write(&path, format!("garbage\n{good}\n")).unwrap();
        assert!(j.load().is_err());
    }

    #[test]
    fn torn_tail_is_cut_so_the_next_append_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let good = encode_record("a", &Op::Clear, None).unwrap();
        // A fragment cut inside a UTF-8 character, then a record without its newline.
        let mut bytes = format!("{good}\n{{\"c\":\"a\",\"op\":\"caf").into_bytes();
        bytes.push(0xC3);
        std::fs::write(&path, &bytes).unwrap();
        let mut j = Journal::open(path.clone()).unwrap();
        assert_eq!(j.load().unwrap().len(), 1);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            format!("{good}\n").into_bytes()
        );
        j.append(&[("b", &Op::Clear, None)]).unwrap();
        assert_eq!(j.load().unwrap().len(), 2);

        std::fs::write(&path, &good).unwrap();
        let mut j = Journal::open(path.clone()).unwrap();
        assert_eq!(j.load().unwrap().len(), 1);
        j.append(&[("b", &Op::Clear, None)]).unwrap();
        assert_eq!(
            j.load().unwrap().len(),
            2,
            "a last record without newline is ended first"
        );
        assert_eq!(j.bytes, std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn reserved_space_is_not_read_as_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::open(path.clone()).unwrap();
        j.append(&[("a", &Op::Clear, None)]).unwrap();
        j.append(&[("b", &Op::Clear, None)]).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        #[cfg(target_os = "linux")]
        assert!(len > j.bytes, "space is reserved past the records");
        // A crash: the next process finds two records, then zeros.
        drop(j);
        let mut j = Journal::open(path.clone()).unwrap();
        assert_eq!(j.load().unwrap().len(), 2);
        assert_eq!(j.bytes, std::fs::metadata(&path).unwrap().len());
        j.append(&[("c", &Op::Clear, None)]).unwrap();
        drop(j);
        // A torn append inside reserved space: a fragment, zeros, then bytes of a later page.
        let mut raw = std::fs::read(&path).unwrap();
        let end = raw.iter().position(|&b| b == 0).unwrap();
        raw[end..end + 5].copy_from_slice(b"{\"c\":");
        raw[end + 4096..end + 4100].copy_from_slice(b"junk");
        std::fs::write(&path, &raw).unwrap();
        let mut j = Journal::open(path.clone()).unwrap();
        let back = j.load().unwrap();
        assert_eq!(
            back.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        j.truncate().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert!(j.load().unwrap().is_empty());
    }
}
