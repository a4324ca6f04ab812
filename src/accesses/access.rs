//! One access as memory keeps it ([`RecentAccess`]: 48 bytes, who made it
//! interned and shared), and the keyed hash a request is kept as: compared
//! only with the same person's requests of the last 24 hours, a false match
//! is about n / 2^64 for n such requests.

use std::{
    hash::BuildHasher,
    sync::{Arc, OnceLock},
};

use chrono::{DateTime, Utc};

use crate::{
    model::{CareSetting, RequestKey},
    nhs::NhsNumber,
};

/// Who made an access: one organisation's user, shared by all their accesses.
#[derive(Debug, PartialEq, Eq)]
pub struct Who {
    pub organisation_ods_code: Box<str>,
    pub organisation_name: Box<str>,
    pub user_id: Box<str>,
    pub name: Box<str>,
    pub role_code: Box<str>,
    /// A keyed hash of the organisation and user id: the user as the
    /// same-user listing rule counts them (the name may differ between two
    /// accesses of one user).
    pub user_key: u64,
}

/// One access as memory keeps it.
#[derive(Clone, Debug)]
pub struct RecentAccess {
    pub accessed_at: DateTime<Utc>,
    pub who: Arc<Who>,
    /// [`request_hash`] of the search's request.
    pub request: u64,
    /// The stored access's id, split so the struct keeps 8-byte alignment.
    pub(super) id: [u64; 2],
    pub care_setting: CareSetting,
    pub scheduled: bool,
    /// Listed among previous accesses (see [`listed_accesses`](super::listed_accesses)),
    /// decided when the access joins the list, from the accesses before it.
    pub listed: bool,
}

impl RecentAccess {
    pub fn id(&self) -> u128 {
        (u128::from(self.id[0]) << 64) | u128::from(self.id[1])
    }
}

/// The process's key for request hashes: random, so that no caller can
/// choose request ids that collide.
pub(super) fn request_hasher() -> &'static std::collections::hash_map::RandomState {
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    STATE.get_or_init(std::collections::hash_map::RandomState::new)
}

/// The keyed hash memory keeps of a request.
pub fn request_hash(key: &RequestKey) -> u64 {
    hash_request(&key.organisation_ods_code, &key.user_id, key.nhs_number, key.care_setting, &key.request_id)
}

pub(super) fn hash_request(
    organisation: &str,
    user: &str,
    nhs_number: NhsNumber,
    care_setting: CareSetting,
    id: &str,
) -> u64 {
    request_hasher().hash_one((organisation, user, nhs_number, care_setting, id))
}
