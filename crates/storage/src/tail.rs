//! The fresh end of the SQLite journal, in memory: records this process has
//! just committed, held for the evaluator so it does not read them back.
//!
//! Only a cache. Each record names the record before it in the journal (read
//! inside the same write transaction), and the evaluator takes records only
//! while that chain starts at its cursor. Anything else — records another
//! process wrote, records taken by another reader, a tail that overflowed
//! while the evaluator was behind — is read from the database as before.

use std::collections::VecDeque;

use parking_lot::Mutex;

use super::StoredRecord;

/// Records held at most. About one evaluation batch: when the evaluator
/// keeps up it takes them long before; when it is behind, older ones are
/// dropped (it reads those from the database) so memory stays bounded.
pub const CAPACITY: usize = 4096;

/// A committed record and the sequence number of the one before it.
pub struct Fresh {
    pub prev: i64,
    pub record: StoredRecord,
}

#[derive(Default)]
pub struct Tail {
    records: Mutex<VecDeque<Fresh>>,
}

impl Tail {
    /// Adds records just committed, in journal order. Called while the
    /// process's write turn is still held, so groups arrive in order.
    pub fn push(&self, fresh: Vec<Fresh>) {
        if fresh.is_empty() {
            return;
        }
        let mut q = self.records.lock();
        q.extend(fresh);
        let over = q.len().saturating_sub(CAPACITY);
        q.drain(..over);
    }

    /// Forgets every record held (records were deleted from the journal).
    pub fn clear(&self) {
        self.records.lock().clear();
    }

    /// Takes up to `limit` records following sequence number `after`, if the
    /// tail holds the record right after it; `None` means: read the database.
    pub fn take_after(&self, after: i64, limit: usize) -> Option<Vec<StoredRecord>> {
        let mut q = self.records.lock();
        let done = q.partition_point(|f| f.record.seq <= after);
        q.drain(..done);
        if q.front()?.prev != after || limit == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(limit.min(q.len()));
        let mut last = after;
        while out.len() < limit && q.front().is_some_and(|f| f.prev == last) {
            let f = q.pop_front().expect("front exists");
            last = f.record.seq;
            out.push(f.record);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(prev: i64, seq: i64) -> Fresh {
        Fresh {
            prev,
            record: StoredRecord {
                seq,
                action: "RUN_CELL".into(),
                event_time: "2026-11-20T08:00:00Z".into(),
                json: String::from("{}").into(),
                received_at: 0,
                tree: None,
            },
        }
    }

    fn seqs(r: Option<Vec<StoredRecord>>) -> Option<Vec<i64>> {
        r.map(|v| v.iter().map(|r| r.seq).collect())
    }

    #[test]
    fn hands_over_only_an_unbroken_chain_from_the_cursor() {
        let tail = Tail::default();
        tail.push(vec![fresh(0, 1), fresh(1, 2), fresh(2, 3)]);
        // A gap before it (records another process wrote): read the database.
        tail.push(vec![fresh(5, 6), fresh(6, 7)]);
        assert_eq!(seqs(tail.take_after(0, 2)), Some(vec![1, 2]));
        // Stops where the chain breaks.
        assert_eq!(seqs(tail.take_after(2, 100)), Some(vec![3]));
        assert_eq!(seqs(tail.take_after(3, 100)), None);
        // The evaluator read 4..=5 from the database: the chain goes on from 5.
        assert_eq!(seqs(tail.take_after(5, 100)), Some(vec![6, 7]));
        assert_eq!(seqs(tail.take_after(7, 100)), None);
    }

    #[test]
    fn records_already_evaluated_are_dropped_and_a_later_cursor_finds_its_place() {
        let tail = Tail::default();
        tail.push((0..10).map(|i| fresh(i, i + 1)).collect());
        // Records up to 4 came from the database (they were committed before
        // this process pushed them): the tail continues after them.
        assert_eq!(seqs(tail.take_after(4, 3)), Some(vec![5, 6, 7]));
        // A reader behind the tail's start reads the database.
        assert_eq!(seqs(tail.take_after(2, 3)), None);
        assert_eq!(seqs(tail.take_after(9, 3)), Some(vec![10]));
    }

    #[test]
    fn overflow_keeps_the_newest_records() {
        let tail = Tail::default();
        let n = CAPACITY as i64 + 10;
        tail.push((0..n).map(|i| fresh(i, i + 1)).collect());
        assert_eq!(seqs(tail.take_after(0, 1)), None);
        let first = n - CAPACITY as i64;
        let got = tail.take_after(first, usize::MAX).unwrap();
        assert_eq!(got.len(), CAPACITY);
        assert_eq!(got[0].seq, first + 1);
    }
}
