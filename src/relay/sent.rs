//! What a local authority sends to maintain its plans, before the domain
//! has checked any of it: the upload's header and records, and the plan type
//! of a delete. The doors convert their wire messages into these (gRPC in
//! `wire`), so validation (`validate`) and plan maintenance
//! (`plans`) never see a wire type. Every value is kept as sent, text
//! untrimmed, so that a rejection reports exactly what was wrong with it.

use std::fmt;

use crate::model::{Address, LocalAuthority, PlanType};

/// How an upload changes its authority's plans: adds and replaces
/// (`Incremental`), or makes them exactly the upload's valid records (`FullRefresh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadMode {
    Incremental,
    FullRefresh,
}

/// A plan type as sent: none, one the relay knows, or a code it does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SentPlanType {
    #[default]
    Unspecified,
    Known(PlanType),
    /// The number the caller sent, reported back in the refusal.
    Unknown(i32),
}

/// The first message of an upload, as sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SentUploadHeader {
    /// `None` when the mode sent is neither INCREMENTAL nor FULL_REFRESH.
    pub mode: Option<UploadMode>,
    pub file_id: String,
    pub local_authority: Option<LocalAuthority>,
    /// FULL_REFRESH: the uploader means to remove a large share of the LA's plans.
    pub allow_large_removal: bool,
}

/// One uploaded record, as sent. `Debug` leaves out what identifies the
/// person (as the wire record's does).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SentPlanRecord {
    pub nhs_number: String,
    pub local_id: String,
    pub given_name: String,
    pub family_name: String,
    pub date_of_birth: String,
    pub address: Option<Address>,
    pub plan_type: SentPlanType,
    pub start_date: String,
    pub end_date: String,
    pub expected_delivery_date: String,
    pub team_code: String,
}

impl fmt::Debug for SentPlanRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentPlanRecord")
            .field("plan_type", &self.plan_type)
            .field("start_date", &self.start_date)
            .field("end_date", &self.end_date)
            .field("expected_delivery_date", &self.expected_delivery_date)
            .field("team_code", &self.team_code)
            .finish_non_exhaustive()
    }
}
