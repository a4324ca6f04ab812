//! The log check's kinds of problem and its metrics (described and set to
//! zero at start; labels carry only a problem's kind, never personal data).

/// The kinds of problem, the label values of `cpis_deliver_log_problems_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    BadCheckpoint,
    Rollback,
    Fork,
    Altered,
    Missing,
    Late,
}

impl ProblemKind {
    pub const ALL: [ProblemKind; 6] =
        [Self::BadCheckpoint, Self::Rollback, Self::Fork, Self::Altered, Self::Missing, Self::Late];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadCheckpoint => "bad_checkpoint",
            Self::Rollback => "rollback",
            Self::Fork => "fork",
            Self::Altered => "altered",
            Self::Missing => "missing",
            Self::Late => "late",
        }
    }
}

/// Describes the check's metrics and sets each to zero.
pub(super) fn init_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "cpis_deliver_log_confirmed_total",
        "Delivered notifications whose access was proved in a trusted checkpoint of the access log."
    );
    describe_histogram!(
        "cpis_deliver_log_confirm_seconds",
        Unit::Seconds,
        "From delivering a notification to proving its access in a trusted checkpoint."
    );
    describe_counter!(
        "cpis_deliver_log_problems_total",
        "Checks of the relay's access log that failed, by kind (evidence kept)."
    );
    describe_gauge!(
        "cpis_deliver_log_problems",
        "Problems standing: failed checks since start, and late notifications not confirmed yet."
    );
    describe_gauge!(
        "cpis_deliver_log_trusted_size",
        "Accesses in the latest checkpoint of the access log this agent trusts."
    );
    describe_gauge!(
        "cpis_deliver_log_unconfirmed",
        "Delivered notifications whose access is not proved in the log yet."
    );
    describe_gauge!(
        "cpis_deliver_log_oldest_unconfirmed_seconds",
        Unit::Seconds,
        "Since the oldest unconfirmed notification was delivered; 0 when none."
    );
    metrics::counter!("cpis_deliver_log_confirmed_total").increment(0);
    for kind in ProblemKind::ALL {
        metrics::counter!("cpis_deliver_log_problems_total", "kind" => kind.as_str()).increment(0);
    }
}
