//! `Lookup.Search` and the FHIR door's searches: the flag, basic details,
//! visible plans and previous accesses of a person, and one access
//! notification per owning local authority for every unscheduled search of a
//! flagged person (scheduled ones are recorded for audit only). Both doors
//! convert their requests into a [`SearchQuery`]; every rule is here.

use std::sync::Arc;

use tracing::Instrument;

use super::{Relay, validate};
use crate::{
    accesses::{self, RecentAccess},
    auth::{Action, Identity, authorize, search_is_scheduled},
    error::{Error, Result},
    model::{AccessEvent, Accessor, CareSetting, LocalAuthority, NotificationDraft, Plan, RequestKey},
    stored::StoredPlan,
};

/// A search as the domain takes it, whichever door it came through. Nothing
/// in it is checked yet: [`Relay::search`] applies every rule.
/// `Debug` shows the care setting and whether it is scheduled only.
#[derive(Clone, Default)]
pub struct SearchQuery {
    /// As the caller gave it: spaces and dashes are accepted.
    pub nhs_number: String,
    /// Who is searching; `None` when the caller named no one.
    pub accessor: Option<Accessor>,
    /// Where; `None` when the caller did not say.
    pub care_setting: Option<CareSetting>,
    /// The client's idempotency key; empty for none.
    pub request_id: String,
    /// The caller asks for a scheduled (silent) access, as the FHIR door's
    /// `IsUnscheduledAccessEvent: false` does; only scheduled care may.
    pub scheduled: bool,
}

impl std::fmt::Debug for SearchQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchQuery")
            .field("care_setting", &self.care_setting)
            .field("scheduled", &self.scheduled)
            .finish_non_exhaustive()
    }
}

/// A plan as shown to health, with its owning authority's contact details.
#[derive(Clone, Debug)]
pub struct ShownPlan {
    pub plan: Arc<Plan>,
    /// `None` only if the authority's details were never uploaded, which an
    /// upload header makes impossible.
    pub authority: Option<Arc<LocalAuthority>>,
}

/// What became of a search's notifications, so a door can say it truthfully.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotificationState {
    /// Nothing to notify: the person is not flagged, or the search is scheduled.
    #[default]
    None,
    /// Stored: the owning authorities have them.
    Stored,
    /// Held while the store fails: kept (spilled) and sent once it is back.
    Held,
    /// Refused: too many held already; an error log and a metric say so.
    Refused,
    /// A repeat of an earlier search (the same request id): not notified again.
    Repeat,
}

/// What a clinician sees.
#[derive(Clone, Debug, Default)]
pub struct SearchOutcome {
    /// Visible plans, CPPI first; empty when the person is not flagged.
    pub plans: Vec<ShownPlan>,
    /// Whose details are shown: the most recently loaded visible plan.
    pub person: Option<Arc<Plan>>,
    /// Newest first.
    pub previous_accesses: Vec<RecentAccess>,
    /// What became of the notifications of this search.
    pub notification: NotificationState,
}

impl SearchOutcome {
    pub fn flagged(&self) -> bool {
        !self.plans.is_empty()
    }
}

/// Outcomes of `cpis_searches_total`, in the order of [`SEARCH_OUTCOMES`].
#[derive(Clone, Copy)]
enum SearchMetric {
    Flagged,
    Unflagged,
    Invalid,
    Denied,
    Error,
}

const SEARCH_OUTCOMES: [&str; 5] = ["flagged", "unflagged", "invalid", "denied", "error"];

struct SearchMetrics {
    outcomes: [metrics::Counter; 5],
    duration: metrics::Histogram,
}

/// Registered once (so every outcome is exposed from start-up at zero).
fn search_metrics() -> &'static SearchMetrics {
    static METRICS: std::sync::OnceLock<SearchMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let _recorder = crate::telemetry::metrics();
        SearchMetrics {
            outcomes: SEARCH_OUTCOMES.map(|outcome| metrics::counter!("cpis_searches_total", "outcome" => outcome)),
            duration: metrics::histogram!("cpis_search_duration_seconds"),
        }
    })
}

impl Relay {
    /// The organisation's search rate limit: refused at once when over it.
    fn within_rate(&self, identity: &Identity) -> Result<()> {
        let Err(retry_after) = self.shared.search_rate.check(&identity.ods_code) else {
            return Ok(());
        };
        metrics::counter!("cpis_rate_limited_total", "organisation" => identity.ods_code.clone()).increment(1);
        tracing::debug!(organisation = %identity.ods_code, ?retry_after, "search over the organisation's rate limit");
        Err(Error::RateLimited {
            message: format!(
                "organisation {} is over its search rate limit; retry in {} ms",
                identity.ods_code,
                retry_after.as_millis().max(1)
            ),
            retry_after,
        })
    }

    pub async fn search(&self, identity: &Identity, query: SearchQuery) -> Result<SearchOutcome> {
        let started = std::time::Instant::now();
        // A trace's span tree under the door's: search > validate, index lookup, commit > notify.
        let span = crate::traced_span!("search", outcome = tracing::field::Empty);
        let result = self.search_inner(identity, query).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(outcome) if outcome.flagged() => SearchMetric::Flagged,
            Ok(_) => SearchMetric::Unflagged,
            Err(Error::InvalidArgument { .. }) => SearchMetric::Invalid,
            Err(Error::PermissionDenied(_) | Error::RateLimited { .. }) => SearchMetric::Denied,
            Err(_) => SearchMetric::Error,
        };
        span.record("outcome", SEARCH_OUTCOMES[outcome as usize]);
        let metrics = search_metrics();
        metrics.outcomes[outcome as usize].increment(1);
        metrics.duration.record(started.elapsed().as_secs_f64());
        result
    }

    async fn search_inner(&self, identity: &Identity, query: SearchQuery) -> Result<SearchOutcome> {
        let (scheduled, nhs_number, accessor, care_setting, request_id) =
            crate::traced_span!("validate").in_scope(|| self.validate_search(identity, query))?;
        let shared = &self.shared;
        let now = shared.clock.now();
        let today = now.date_naive();
        let lookup = crate::traced_span!("index lookup", plans = tracing::field::Empty);
        let plans = lookup.in_scope(|| -> Result<Option<Vec<Arc<Plan>>>> {
            shared.oversight.searched(&identity.ods_code, accessor.user_id.trim(), nhs_number, now);
            let held = shared.index.person(nhs_number);
            // One to three plans a person: on the stack.
            let mut visible: smallvec::SmallVec<[&StoredPlan; 4]> =
                held.iter().filter(|plan| plan.is_visible_on(today)).collect();
            lookup.record("plans", visible.len());
            if visible.is_empty() {
                return Ok(None);
            }
            visible.sort_by(|a, b| (a.plan_type(), a.la_ods_code()).cmp(&(b.plan_type(), b.la_ods_code())));
            let plans = visible
                .iter()
                .map(|plan| plan.decode().map(Arc::new))
                .collect::<std::result::Result<Vec<Arc<Plan>>, _>>()?;
            Ok(Some(plans))
        })?;
        let Some(plans) = plans else { return Ok(SearchOutcome::default()) };
        let accessor = Accessor {
            user_id: trimmed(accessor.user_id),
            name: trimmed(accessor.name),
            role_code: trimmed(accessor.role_code),
        };
        let client_request_id = trimmed(request_id);
        let generated = client_request_id.is_empty();
        let request_id = if generated { id_text(random_id()) } else { client_request_id };

        // Only a client's own id can repeat. A copy of this request still being committed
        // is waited for: answered as a retry once that commit is durable, never before it.
        let request_key = (!generated).then(|| RequestKey {
            organisation_ods_code: identity.ods_code.clone(),
            user_id: accessor.user_id.clone(),
            nhs_number,
            care_setting,
            request_id: request_id.clone(),
        });
        let claim = match &request_key {
            Some(key) => Some(shared.claims.claim(key).await),
            None => None,
        };
        let own_request = request_key.as_ref().map(accesses::request_hash);
        let (previous_accesses, is_retry) = shared.recent.with(nhs_number, |accesses| {
            let is_retry = request_key.as_ref().is_some_and(|key| accesses::is_repeat(accesses, key, now));
            // A retry shows what its original showed: not the original's own access.
            (accesses::listed_accesses(accesses, own_request.filter(|_| is_retry)), is_retry)
        });
        let notification = if !is_retry {
            let access = AccessEvent {
                id: crate::model::time_ordered_id(now),
                accessed_at: now,
                nhs_number,
                organisation_ods_code: identity.ods_code.clone(),
                organisation_name: identity.organisation_name.clone(),
                care_setting,
                accessor,
                request_id,
                scheduled,
            };
            // A scheduled access is stored with its request id but notifies no one. The drafts carry
            // the commit's trace context, so that their delivery continues this trace.
            let commit = crate::traced_span!("commit", notifications = tracing::field::Empty);
            let traceparent = commit.in_scope(crate::traces::current_traceparent);
            let drafts = if scheduled { Vec::new() } else { notification_drafts(&plans, traceparent) };
            commit.record("notifications", drafts.len());
            // On its own task, holding the request's claim until the commit is done:
            // a client that goes away mid-search (dropping this future) must not take
            // the notification with it, nor let a retry notify a second time meanwhile.
            // Answered as kept unless it is not, and cannot be after the restart that follows
            // (a broken store): then the client retries rather than count on a lost notification.
            let relay = self.clone();
            let kept = FinishOnDrop::new(
                self.shared.tasks.clone(),
                async move {
                    let kept = relay.commit_access(access, drafts).await;
                    drop(claim);
                    kept
                }
                .instrument(commit),
            )
            .await?;
            if scheduled { NotificationState::None } else { kept }
        } else {
            tracing::debug!(organisation = %identity.ods_code, "repeated request: answered without a second notification");
            NotificationState::Repeat
        };

        let person = plans.iter().max_by_key(|plan| plan.loaded_at).cloned();
        let plans = plans
            .into_iter()
            .map(|plan| ShownPlan { authority: shared.index.authority(&plan.la_ods_code), plan })
            .collect();
        Ok(SearchOutcome { plans, person, previous_accesses, notification })
    }

    /// Every rule a search must pass before the index is read.
    fn validate_search(
        &self,
        identity: &Identity,
        query: SearchQuery,
    ) -> Result<(bool, crate::nhs::NhsNumber, Accessor, CareSetting, String)> {
        authorize(identity, Action::Search)?;
        self.within_rate(identity)?;
        let scheduled = search_is_scheduled(identity, query.scheduled)?;
        let nhs_number = validate::nhs_number_field(&query.nhs_number, "nhs_number")?;
        let accessor = query.accessor.ok_or_else(|| Error::invalid("accessor", "is required"))?;
        validate::check_required_text(&accessor.user_id, "accessor.user_id")?;
        validate::check_required_text(&accessor.name, "accessor.name")?;
        validate::check_optional_text(&accessor.role_code, "accessor.role_code")?;
        let care_setting = query.care_setting.ok_or_else(|| Error::invalid("care_setting", "is required"))?;
        // The setting must be one of the caller's kind of care: an emergency access
        // labelled as general practice would look routine to the local authority, and
        // a scheduled read labelled as an emergency would contradict its own audit row.
        if care_setting.is_scheduled() != scheduled {
            let kind = if scheduled { "a scheduled" } else { "an unscheduled" };
            return Err(Error::invalid("care_setting", format!("{} is not {kind} care setting", care_setting.name())));
        }
        validate::check_optional_text(&query.request_id, "request_id")?;
        Ok((scheduled, nhs_number, accessor, care_setting, query.request_id))
    }
}

impl Relay {
    /// Adds an access just stored (or held for retry) to the person's recent accesses.
    pub(super) fn remember(&self, access: &AccessEvent) {
        self.shared.recent.record(access);
    }
}

/// A random (version 4) UUID from the thread's CSPRNG, seeded by the
/// operating system: no system call per id, as `Uuid::new_v4` makes.
fn random_id() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// An id as text (hyphenated, lower case: what `to_string` writes) without
/// the formatting machinery: one allocation, the string itself.
fn id_text(id: uuid::Uuid) -> String {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text).to_owned()
}

/// Runs a future to its end even if the caller stops waiting: awaited, it is
/// polled in place (no task, no thread hop); dropped before it finished (the
/// client went away, a deadline passed), what is left runs as a task of the
/// relay's tracker, which shutdown waits for like its other tasks (so a
/// dropped search's commit is never cut off by the process exiting).
struct FinishOnDrop<T: Send + 'static> {
    future: Option<futures::future::BoxFuture<'static, T>>,
    tasks: tokio_util::task::TaskTracker,
}

impl<T: Send + 'static> FinishOnDrop<T> {
    fn new(
        tasks: tokio_util::task::TaskTracker,
        future: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Self {
        Self { future: Some(Box::pin(future)), tasks }
    }
}

impl<T: Send + 'static> std::future::Future for FinishOnDrop<T> {
    type Output = T;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        // Never polled again once ready (it is awaited once).
        let Some(future) = self.future.as_mut() else { return std::task::Poll::Pending };
        let poll = future.as_mut().poll(cx);
        if poll.is_ready() {
            self.future = None;
        }
        poll
    }
}

impl<T: Send + 'static> Drop for FinishOnDrop<T> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // Tracked even once shutdown closed the tracker: it still waits for it.
            self.tasks.spawn_on(
                async move {
                    future.await;
                },
                &runtime,
            );
        }
    }
}

/// One notification per owning authority; with several plans of one
/// authority, the first in type order (CPPI, LACI, UCPI) names the plan.
fn notification_drafts(sorted_plans: &[Arc<Plan>], traceparent: Option<String>) -> Vec<NotificationDraft> {
    let mut drafts: Vec<NotificationDraft> = Vec::new();
    for plan in sorted_plans {
        if drafts.iter().any(|draft| draft.la_ods_code == plan.la_ods_code) {
            continue;
        }
        drafts.push(NotificationDraft {
            la_ods_code: plan.la_ods_code.clone(),
            notification_id: id_text(random_id()),
            local_id: plan.local_id.clone(),
            plan_type: plan.plan_type,
            team_code: plan.team_code.clone(),
            traceparent: traceparent.clone(),
        });
    }
    drafts
}

/// Text as validated (trimmed), copied only when it had spaces to trim.
fn trimmed(text: String) -> String {
    if text.trim().len() == text.len() { text } else { text.trim().to_owned() }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_id_reads_as_its_display_writes_it() {
        let id = super::random_id();
        assert_eq!(super::id_text(id), id.to_string());
    }
}
