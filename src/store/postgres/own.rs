//! The access log positions this node process committed itself, so that
//! following the log never reads them back: a node's own accesses are
//! already in its memory (the relay records them as it answers).
//!
//! The writer records each batch's positions once its statement has
//! committed ([`OwnPositions::record`]); the feed starts each read past the
//! run of own positions where it would begin ([`OwnPositions::skip`]). With
//! it, and with the node ignoring the hints its own commits send, a flagged
//! search costs this node one round trip to the database (its batch's
//! statement) and no read afterwards. A batch whose answer was lost (a
//! timeout) is not recorded: its rows are read back and skipped by their
//! `written_by`, as before.

use std::{collections::BTreeMap, sync::Mutex};

/// Runs of positions `[start, end)` committed by this node, not yet passed by the feed.
#[derive(Debug, Default)]
pub(super) struct OwnPositions(Mutex<BTreeMap<u64, u64>>);

impl OwnPositions {
    /// Positions `[start, end)` were committed by this node.
    pub(super) fn record(&self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut runs = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut start, mut end) = (start, end);
        // Merge with a run ending where this one starts (or overlapping it).
        if let Some((&before, &before_end)) = runs.range(..=start).next_back()
            && before_end >= start
        {
            start = before;
            end = end.max(before_end);
            runs.remove(&before);
        }
        // And with runs starting inside or right after it.
        while let Some((&after, &after_end)) = runs.range(start..).next() {
            if after > end {
                break;
            }
            end = end.max(after_end);
            runs.remove(&after);
        }
        runs.insert(start, end);
    }

    /// Where a read from `position` should start: past the run of this
    /// node's positions that `position` falls in, if any. Runs below it are
    /// forgotten (the feed never reads below where it has read).
    pub(super) fn skip(&self, position: u64) -> u64 {
        let mut runs = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut from = position;
        if let Some((&start, &end)) = runs.range(..=from).next_back()
            && end > from
        {
            debug_assert!(start <= from);
            from = end;
        }
        // Runs are merged when they touch, so one step reaches the end of a run.
        *runs = runs.split_off(&from);
        from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_starts_past_the_nodes_own_run_and_only_its_own() {
        let own = OwnPositions::default();
        assert_eq!(own.skip(0), 0, "nothing recorded");
        own.record(0, 5);
        own.record(5, 9);
        own.record(12, 14);
        assert_eq!(own.skip(0), 9, "two touching batches are one run");
        assert_eq!(own.skip(9), 9, "position 9 is another node's");
        assert_eq!(own.skip(12), 14);
        assert_eq!(own.skip(14), 14);
        own.record(20, 30);
        own.record(18, 22);
        assert_eq!(own.skip(19), 30, "overlapping runs merge");
        own.record(40, 41);
        assert_eq!(own.skip(35), 35);
        assert_eq!(own.skip(40), 41);
        own.record(3, 3);
        assert_eq!(own.skip(3), 3, "an empty batch records nothing");
    }

    #[test]
    fn runs_behind_the_reader_are_forgotten() {
        let own = OwnPositions::default();
        for batch in 0..1000 {
            own.record(batch * 10, batch * 10 + 5);
        }
        assert_eq!(own.skip(9_990), 9_995);
        assert!(own.0.lock().unwrap().is_empty());
    }
}
