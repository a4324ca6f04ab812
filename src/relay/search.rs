//! `Lookup.Search`: the flag, basic details, visible plans and previous
//! accesses of a person, and one access notification per owning local
//! authority for every search of a flagged person.

use std::sync::Arc;

use super::{Relay, validate};
use crate::{
    auth::{Action, Identity, authorize},
    error::{Error, Result},
    history,
    model::{AccessEvent, Accessor, CareSetting, LocalAuthority, NotificationDraft, Plan},
    nhs::NhsNumber,
    proto,
    stored::StoredPlan,
};

/// A plan as shown to health, with its owning authority's contact details.
#[derive(Clone, Debug)]
pub struct ShownPlan {
    pub plan: Arc<Plan>,
    /// `None` only if the authority's details were never uploaded, which an
    /// upload header makes impossible.
    pub authority: Option<Arc<LocalAuthority>>,
}

/// What a clinician sees.
#[derive(Clone, Debug, Default)]
pub struct SearchOutcome {
    /// Visible plans, CPPI first; empty when the person is not flagged.
    pub plans: Vec<ShownPlan>,
    /// Whose details are shown: the most recently loaded visible plan.
    pub person: Option<Arc<Plan>>,
    /// Newest first.
    pub previous_accesses: Vec<AccessEvent>,
}

impl SearchOutcome {
    pub fn flagged(&self) -> bool {
        !self.plans.is_empty()
    }
}

impl Relay {
    pub async fn search(&self, identity: &Identity, request: &proto::SearchRequest) -> Result<SearchOutcome> {
        let started = std::time::Instant::now();
        let result = self.search_inner(identity, request).await;
        let outcome = match &result {
            Ok(outcome) if outcome.flagged() => "flagged",
            Ok(_) => "unflagged",
            Err(Error::InvalidArgument { .. }) => "invalid",
            Err(Error::PermissionDenied(_)) => "denied",
            Err(_) => "error",
        };
        metrics::counter!("cpis_searches_total", "outcome" => outcome).increment(1);
        metrics::histogram!("cpis_search_duration_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn search_inner(&self, identity: &Identity, request: &proto::SearchRequest) -> Result<SearchOutcome> {
        authorize(identity, Action::Search)?;
        let nhs_number = validate::nhs_number_field(&request.nhs_number, "nhs_number")?;
        let wire_accessor = request.accessor.as_ref().ok_or_else(|| Error::invalid("accessor", "is required"))?;
        // Validate everything first; owned copies are made only for a flagged person.
        let user_id = validate::check_required_text(&wire_accessor.user_id, "accessor.user_id")?;
        let name = validate::check_required_text(&wire_accessor.name, "accessor.name")?;
        let role_code = validate::check_optional_text(&wire_accessor.role_code, "accessor.role_code")?;
        let care_setting = care_setting(request.care_setting)?;
        let client_request_id = validate::check_optional_text(&request.request_id, "request_id")?;

        let shared = &self.shared;
        let now = shared.clock.now();
        let today = now.date_naive();
        let mut visible: Vec<StoredPlan> =
            shared.index.plans(nhs_number).into_iter().filter(|plan| plan.is_visible_on(today)).collect();
        if visible.is_empty() {
            return Ok(SearchOutcome::default());
        }
        visible.sort_by(|a, b| (a.plan_type(), a.la_ods_code()).cmp(&(b.plan_type(), b.la_ods_code())));
        let plans = visible
            .iter()
            .map(|plan| plan.decode().map(Arc::new))
            .collect::<std::result::Result<Vec<Arc<Plan>>, _>>()?;
        let accessor = Accessor { user_id: user_id.to_owned(), name: name.to_owned(), role_code: role_code.to_owned() };
        let generated = client_request_id.is_empty();
        let request_id = if generated { uuid::Uuid::new_v4().to_string() } else { client_request_id.to_owned() };

        // Only a client's own id can repeat. A copy of this request arriving while it runs finds
        // the claim taken and is answered without a notification: this search notifies.
        let claim = if generated { None } else { shared.history.claim(&identity.ods_code, nhs_number, &request_id) };
        let racing_retry = !generated && claim.is_none();
        let accesses = self.person_accesses(nhs_number);
        let is_retry = racing_retry || history::is_repeat(&accesses, &identity.ods_code, &request_id, now);
        let earlier: Vec<&AccessEvent> = accesses
            .iter()
            .filter(|access| !(access.organisation_ods_code == identity.ods_code && access.request_id == request_id))
            .collect();
        let previous_accesses = history::listed_accesses(&earlier);
        if !is_retry {
            let access = AccessEvent {
                id: uuid::Uuid::new_v4().as_u128(),
                accessed_at: now,
                nhs_number,
                organisation_ods_code: identity.ods_code.clone(),
                organisation_name: identity.organisation_name.clone(),
                care_setting,
                accessor,
                request_id,
            };
            let drafts = notification_drafts(&plans);
            // On its own task: a client that goes away mid-search (dropping this
            // future) must not take the notification with it.
            let relay = self.clone();
            if let Err(error) = tokio::spawn(async move { relay.commit_access(access, drafts).await }).await {
                tracing::error!(%error, "the task storing an access notification failed");
            }
        } else {
            tracing::debug!(organisation = %identity.ods_code, "repeated request id: answered without a second notification");
        }
        drop(claim);

        let person = plans.iter().max_by_key(|plan| plan.loaded_at).cloned();
        let plans = plans
            .into_iter()
            .map(|plan| ShownPlan { authority: shared.index.authority(&plan.la_ods_code), plan })
            .collect();
        Ok(SearchOutcome { plans, person, previous_accesses })
    }
}

impl Relay {
    /// A person's retained accesses, oldest first: those stored and those
    /// held while the store is failing. If the store cannot be read the
    /// clinician is still answered, without the history, and ops are told.
    fn person_accesses(&self, nhs_number: NhsNumber) -> Vec<AccessEvent> {
        let mut accesses = match self.shared.store.accesses_of(nhs_number) {
            Ok(accesses) => accesses,
            Err(error) => {
                tracing::error!(%error, "cannot read an access history; answering without it");
                metrics::counter!("cpis_store_failures_total", "operation" => "read_accesses").increment(1);
                Vec::new()
            }
        };
        self.shared.hub.add_held_accesses(nhs_number, &mut accesses);
        accesses
    }
}

/// One notification per owning authority; with several plans of one
/// authority, the first in type order (CPPI, LACI, UCPI) names the plan.
fn notification_drafts(sorted_plans: &[Arc<Plan>]) -> Vec<NotificationDraft> {
    let mut drafts: Vec<NotificationDraft> = Vec::new();
    for plan in sorted_plans {
        if drafts.iter().any(|draft| draft.la_ods_code == plan.la_ods_code) {
            continue;
        }
        drafts.push(NotificationDraft {
            la_ods_code: plan.la_ods_code.clone(),
            notification_id: uuid::Uuid::new_v4().to_string(),
            local_id: plan.local_id.clone(),
            plan_type: plan.plan_type,
            team_code: plan.team_code.clone(),
        });
    }
    drafts
}

fn care_setting(value: i32) -> Result<CareSetting> {
    use proto::CareSetting as Wire;
    match Wire::try_from(value) {
        Ok(Wire::EmergencyDepartment) => Ok(CareSetting::EmergencyDepartment),
        Ok(Wire::OutOfHoursGp) => Ok(CareSetting::OutOfHoursGp),
        Ok(Wire::WalkInCentre) => Ok(CareSetting::WalkInCentre),
        Ok(Wire::MinorInjuriesUnit) => Ok(CareSetting::MinorInjuriesUnit),
        Ok(Wire::PaediatricWard) => Ok(CareSetting::PaediatricWard),
        Ok(Wire::AmbulanceService) => Ok(CareSetting::AmbulanceService),
        Ok(Wire::MaternityUnit) => Ok(CareSetting::MaternityUnit),
        Ok(Wire::Unspecified) => Err(Error::invalid("care_setting", "is required")),
        Err(_) => Err(Error::invalid("care_setting", format!("{value} is not a care setting"))),
    }
}
