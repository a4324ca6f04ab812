//! What a store's operations fail with. Apart from the [`Store`](super::Store)
//! trait so that the stored forms of records (`stored`, `plan_history`), which
//! the store modules use, can say why bytes do not decode without importing
//! the store that uses them.

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store is working but refuses this one record, and will refuse
    /// it however often it is tried (PostgreSQL's data exceptions, integrity
    /// violations and program limits): set it aside rather than retry it.
    #[error("the store refused the record: {0}")]
    Rejected(String),
    #[error("the store is closed")]
    Closed,
    #[error("storage failure injected for a test")]
    Injected,
    /// The store takes no more writes until the process restarts: an
    /// embedded store's journal write or sync failed (see [`Broken`](super::Broken)).
    #[error("the store's journal failed and it takes no more writes until the relay restarts: {0}")]
    Broken(String),
}

impl StoreError {
    /// The error is about one record, not the store: retrying the same
    /// record fails the same way while the store takes others (a record the
    /// store refuses, or one that cannot be encoded or read).
    pub fn is_about_the_record(&self) -> bool {
        matches!(self, Self::Rejected(_) | Self::Corrupt(_))
    }
}
