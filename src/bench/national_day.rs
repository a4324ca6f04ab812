//! The synthetic day of England that `bench --scenario national-day` replays:
//! the local authorities and the people they hold (about 135,000 flagged
//! people over 152 authorities in the default run, as England has), people
//! nobody holds (most searches find no plan), and the day's curve of
//! searches, quiet at night with its peak in the evening. Pure data and
//! arithmetic, made from a seed; `cli::bench_day` drives relay nodes with it.
//! Only synthetic people: NHS numbers from the 999 test range.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Instant,
};

use chrono::NaiveDate;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::{
    model::LocalAuthority,
    nhs::NhsNumber,
    proto,
    synth::{self, SynthRecord},
};

use super::receiver::Arrival;

/// England's local authorities with children's social care.
pub const ENGLAND_AUTHORITIES: usize = 152;

/// Relative search volume of each hour of the day, midnight first: unscheduled
/// care is quiet at night and busiest in the early evening.
pub const HOURLY_WEIGHT: [f64; 24] = [
    0.45, 0.35, 0.3, 0.25, 0.25, 0.3, 0.45, 0.7, 1.0, 1.2, 1.3, 1.3, 1.25, 1.25, 1.3, 1.35, 1.45, 1.6, 1.75, 1.8, 1.65,
    1.35, 1.0, 0.7,
];

/// The fraction of the day's searches due by `fraction` of the day (0 to 1):
/// the integral of [`HOURLY_WEIGHT`], piecewise constant per hour.
pub fn due_by(fraction: f64) -> f64 {
    let total: f64 = HOURLY_WEIGHT.iter().sum();
    let hours = fraction.clamp(0.0, 1.0) * 24.0;
    let whole = hours.floor() as usize;
    let done: f64 = HOURLY_WEIGHT.iter().take(whole).sum();
    let part = HOURLY_WEIGHT.get(whole).map_or(0.0, |weight| weight * (hours - whole as f64));
    (done + part) / total
}

/// Synthetic authorities `101`, `102`, ...: ODS-like three-digit codes no
/// real authority in the demo data uses, with phone numbers from Ofcom's
/// drama ranges (0113 496 0xxx and 0114 496 0xxx).
pub fn authorities(count: usize) -> Vec<LocalAuthority> {
    (0..count)
        .map(|i| LocalAuthority {
            ods_code: format!("{}", 101 + i),
            name: format!("SYNTHETIC COUNCIL {}", i + 1),
            office_hours_phone: format!("0113 496 0{:03}", i % 1000),
            emergency_phone: format!("0114 496 0{:03}", i % 1000),
        })
        .collect()
}

/// The day's people: who is held, by whom, and who is not.
pub struct Population {
    pub authorities: Vec<LocalAuthority>,
    /// Every plan, with its authority; a person's plans are next to each other.
    pub plans: Vec<SynthRecord>,
    /// Each flagged person's NHS number and owning authority.
    pub flagged: Vec<(String, String)>,
    /// People no authority holds.
    pub unflagged: Vec<String>,
}

impl Population {
    /// `people` flagged people over `authorities` authorities of uneven size,
    /// about 37 % on child protection plans, 61 % looked after and 2 %
    /// unborn (England's proportions), and `unflagged` people held by none.
    pub fn generate(authorities: usize, people: usize, unflagged: usize, seed: u64, today: NaiveDate) -> Self {
        let authorities = self::authorities(authorities.max(1));
        let mut rng = StdRng::seed_from_u64(seed);
        // Authorities differ about tenfold in size, as England's do.
        let weights: Vec<f64> = authorities.iter().map(|_| rng.random_range(0.3..3.0)).collect();
        let total: f64 = weights.iter().sum();
        let pick = |roll: f64| {
            let mut left = roll * total;
            weights.iter().position(|weight| {
                left -= weight;
                left <= 0.0
            })
        };
        // synth's mix has more unborn children than England: most of those are left out.
        let generated = synth::generate((people + people / 8 + 16).min(synth::MAX_PEOPLE), seed, today);
        let mut by_person: Vec<Vec<SynthRecord>> = Vec::new();
        for record in generated {
            match by_person.last_mut() {
                Some(last) if last[0].record.nhs_number == record.record.nhs_number => last.push(record),
                _ => by_person.push(vec![record]),
            }
        }
        let (child_protection, looked_after, unborn) = (
            proto::PlanType::ChildProtection as i32,
            proto::PlanType::LookedAfter as i32,
            proto::PlanType::UnbornChildProtection as i32,
        );
        let mut plans = Vec::with_capacity(people * 11 / 10);
        let mut flagged = Vec::with_capacity(people);
        for mut person in by_person {
            if flagged.len() == people {
                break;
            }
            if person[0].record.r#type == unborn && !rng.random_bool(0.16) {
                continue;
            }
            if person.len() == 1 && person[0].record.r#type == child_protection && rng.random_bool(0.2) {
                person[0].record.r#type = looked_after;
            }
            let authority = &authorities[pick(rng.random()).unwrap_or(0)];
            for record in &mut person {
                record.la_ods_code = authority.ods_code.clone();
                record.record.local_id = format!("{}-{:07}", authority.ods_code, plans.len() + 1);
            }
            flagged.push((person[0].record.nhs_number.clone(), authority.ods_code.clone()));
            plans.extend(person);
        }
        let unflagged =
            synth::unflagged_numbers(&plans, unflagged, seed).iter().map(NhsNumber::to_string).collect::<Vec<_>>();
        Self { authorities, plans, flagged, unflagged }
    }

    /// Each authority's plans, by ODS code.
    pub fn plans_by_authority(&self) -> HashMap<&str, Vec<proto::PlanRecord>> {
        let mut by: HashMap<&str, Vec<proto::PlanRecord>> = HashMap::new();
        for plan in &self.plans {
            by.entry(plan.la_ods_code.as_str()).or_default().push(plan.record.clone());
        }
        by
    }

    /// How many plans of each type: child protection, looked after, unborn.
    pub fn mix(&self) -> (usize, usize, usize) {
        let count = |kind: proto::PlanType| self.plans.iter().filter(|plan| plan.record.r#type == kind as i32).count();
        (
            count(proto::PlanType::ChildProtection),
            count(proto::PlanType::LookedAfter),
            count(proto::PlanType::UnbornChildProtection),
        )
    }
}

/// An answered search of a flagged person: when, and whose notification to expect.
pub struct Answered {
    pub at: Instant,
    pub la_ods_code: String,
}

/// The day's searches as their answers came back.
pub struct Tally {
    pub answered: u64,
    /// By the searcher's user id (one per search).
    pub flagged: HashMap<String, Answered>,
    /// A flagged person answered as not flagged, or the other way round.
    pub wrong: u64,
    /// Failed searches by status code.
    pub errors: BTreeMap<String, u64>,
    /// Searches answered by another node after the first failed or did not answer in time.
    pub retried: u64,
    /// Microseconds from sending each search to its answer (or failure).
    pub latencies: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            answered: 0,
            retried: 0,
            flagged: HashMap::new(),
            wrong: 0,
            errors: BTreeMap::new(),
            latencies: super::load::latency_histogram(600_000_000),
        }
    }
}

/// Count, median, 99th percentile and maximum of some measurements.
pub fn summary(values: &[f64]) -> Value {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied();
    json!({"count": sorted.len(), "p50": at(0.5), "p99": at(0.99), "max": sorted.last()})
}

/// What the agents' webhook received against what was answered.
pub fn delivery_report(tally: &Tally, arrivals: &[Arrival], expected: &HashSet<&str>) -> Value {
    let mut latencies = super::load::latency_histogram(600_000_000);
    let mut first: HashMap<&str, &Arrival> = HashMap::new();
    let mut ids_per_user: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut last_sequence: HashMap<&str, u64> = HashMap::new();
    let (mut repeats, mut out_of_order) = (0u64, 0u64);
    for arrival in arrivals {
        ids_per_user.entry(&arrival.user_id).or_default().insert(&arrival.webhook_id);
        if first.insert(&arrival.user_id, arrival).is_some() {
            repeats += 1;
            continue;
        }
        let last = last_sequence.entry(&arrival.la_ods_code).or_default();
        if arrival.sequence <= *last {
            out_of_order += 1;
        }
        *last = arrival.sequence;
        if let Some(answered) = tally.flagged.get(&arrival.user_id) {
            let micros = arrival.at.saturating_duration_since(answered.at).as_micros() as u64;
            latencies.saturating_record(micros.max(1));
        }
    }
    let mut lost_by: BTreeMap<&str, u64> = BTreeMap::new();
    for user in expected.iter().filter(|user| !first.contains_key(**user)) {
        *lost_by.entry(tally.flagged[*user].la_ods_code.as_str()).or_default() += 1;
    }
    let lost: u64 = lost_by.values().sum();
    let notified_twice = ids_per_user.values().filter(|ids| ids.len() > 1).count();
    let ms = |micros: u64| micros as f64 / 1000.0;
    json!({
        "expected": expected.len(), "delivered": first.len(), "lost": lost, "lost_by_authority": lost_by,
        "repeated_deliveries_same_id": repeats, "notified_twice_different_ids": notified_twice,
        "sequence_went_back": out_of_order,
        "latency_ms": {"p50": ms(latencies.value_at_quantile(0.5)), "p99": ms(latencies.value_at_quantile(0.99)),
                       "max": ms(latencies.max())},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_is_quiet_at_night_and_reaches_the_whole_day() {
        assert_eq!(due_by(0.0), 0.0);
        assert!((due_by(1.0) - 1.0).abs() < 1e-12);
        let hour = |h: f64| due_by((h + 1.0) / 24.0) - due_by(h / 24.0);
        assert!(hour(3.0) * 5.0 < hour(19.0), "3 am is a fifth of 7 pm at most");
        assert!((0..240).all(|step| due_by(f64::from(step) / 240.0) <= due_by(f64::from(step + 1) / 240.0)));
    }

    #[test]
    fn a_population_holds_each_flagged_person_once_with_england_s_mix() {
        let today = "2026-12-06".parse().unwrap();
        let population = Population::generate(152, 20_000, 1_000, 7, today);
        assert_eq!(population.flagged.len(), 20_000);
        assert_eq!(population.unflagged.len(), 1_000);
        let held: std::collections::HashSet<&str> = population.flagged.iter().map(|(nhs, _)| nhs.as_str()).collect();
        assert_eq!(held.len(), 20_000, "one owner each");
        assert!(population.unflagged.iter().all(|nhs| !held.contains(nhs.as_str())));
        let (cp, la, unborn) = population.mix();
        let plans = population.plans.len() as f64;
        assert!((0.30..0.45).contains(&(cp as f64 / plans)), "child protection {cp} of {plans}");
        assert!((0.52..0.68).contains(&(la as f64 / plans)), "looked after {la} of {plans}");
        assert!((0.005..0.04).contains(&(unborn as f64 / plans)), "unborn {unborn} of {plans}");
        let authorities: std::collections::HashSet<&str> =
            population.plans.iter().map(|plan| plan.la_ods_code.as_str()).collect();
        assert_eq!(authorities.len(), 152, "every authority holds someone");
    }
}
