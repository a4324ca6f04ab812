//! Synthetic people for demos, tests and benchmarks: valid NHS numbers from
//! the never-issued 999 range, made-up names and addresses, a realistic mix
//! of CPPI, LACI and UCPI plans across several local authorities, and
//! synthetic phone numbers from Ofcom's drama ranges. Never real people.

use std::collections::HashSet;

use chrono::{Days, NaiveDate};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

use crate::{model::LocalAuthority, nhs::NhsNumber, proto};

/// Synthetic local authorities with their contact numbers.
pub fn authorities() -> Vec<LocalAuthority> {
    let authority = |ods: &str, name: &str, office: &str, emergency: &str| LocalAuthority {
        ods_code: ods.into(),
        name: name.into(),
        office_hours_phone: office.into(),
        emergency_phone: emergency.into(),
    };
    vec![
        authority("706", "LONDON BOROUGH OF ISLINGTON", "020 7946 0101", "020 7946 0199"),
        authority("855", "LEICESTERSHIRE COUNTY COUNCIL", "0116 496 0101", "0116 496 0199"),
        authority("352", "MANCHESTER CITY COUNCIL", "0161 496 0101", "0161 496 0199"),
        authority("383", "LEEDS CITY COUNCIL", "0113 496 0101", "0113 496 0199"),
    ]
}

/// The synthetic contact details for an authority's ODS code, if it has some.
pub fn authority(ods_code: &str) -> Option<LocalAuthority> {
    authorities().into_iter().find(|authority| authority.ods_code == ods_code)
}

const GIVEN: &[&str] = &[
    "Amelia", "Oliver", "Isla", "George", "Ava", "Noah", "Mia", "Arthur", "Ivy", "Muhammad", "Freya", "Leo", "Lily",
    "Harry", "Florence", "Oscar", "Willow", "Archie", "Rosie", "Jack", "Aisha", "Theo", "Zara", "Finley", "Maya",
];
const FAMILY: &[&str] = &[
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel", "Robinson", "Wright",
    "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Khan", "Lewis", "Harris", "Clarke", "Ahmed",
];
const STREETS: &[&str] =
    &["Acacia Avenue", "Mill Lane", "Church Road", "Station Street", "Park View", "Victoria Terrace", "Orchard Close"];
const TOWNS: &[(&str, &str)] =
    &[("706", "London N1"), ("855", "Leicester LE1"), ("352", "Manchester M1"), ("383", "Leeds LS1")];

/// The 999 test range holds about 909,000 valid NHS numbers (one nine-digit
/// prefix in eleven has no check digit); generation stops short of it.
pub(crate) const MAX_PEOPLE: usize = 900_000;

/// One generated record and the authority that holds it.
#[derive(Clone, Debug)]
pub struct SynthRecord {
    pub la_ods_code: String,
    pub record: proto::PlanRecord,
}

/// Generates plans for `people` distinct synthetic people as of `today`
/// (at most [`MAX_PEOPLE`]). The same seed gives the same people.
pub fn generate(people: usize, seed: u64, today: NaiveDate) -> Vec<SynthRecord> {
    let people = people.min(MAX_PEOPLE);
    let mut rng = StdRng::seed_from_u64(seed);
    let authorities = authorities();
    let mut used = HashSet::with_capacity(people);
    let mut records = Vec::with_capacity(people + people / 8);
    while used.len() < people {
        let Some(nhs_number) = NhsNumber::complete(rng.random_range(999_000_000..=999_999_999)) else { continue };
        if !used.insert(nhs_number) {
            continue;
        }
        // Most people are held by the first two authorities, as in the demo.
        let la = if rng.random_bool(0.8) {
            &authorities[rng.random_range(0..2)]
        } else {
            authorities.choose(&mut rng).unwrap_or(&authorities[0])
        };
        let roll: f64 = rng.random();
        let mut plan_types = if roll < 0.45 {
            vec![proto::PlanType::ChildProtection]
        } else if roll < 0.90 {
            vec![proto::PlanType::LookedAfter]
        } else {
            vec![proto::PlanType::UnbornChildProtection]
        };
        if plan_types[0] == proto::PlanType::ChildProtection && rng.random_bool(0.1) {
            plan_types.push(proto::PlanType::LookedAfter);
        }
        let given = *GIVEN.choose(&mut rng).unwrap_or(&"Alex");
        let family = *FAMILY.choose(&mut rng).unwrap_or(&"Smith");
        let town = TOWNS.iter().find(|(ods, _)| *ods == la.ods_code).map_or("Town", |(_, town)| *town);
        let (town_name, district) = town.rsplit_once(' ').unwrap_or((town, "ZZ1"));
        let address = proto::Address {
            lines: vec![
                format!("{} {}", rng.random_range(1..200), STREETS.choose(&mut rng).unwrap_or(&"High Street")),
                town_name.to_owned(),
            ],
            postcode: format!("{district} {}ZZ", rng.random_range(1..9)),
        };
        for plan_type in plan_types {
            let unborn = plan_type == proto::PlanType::UnbornChildProtection;
            let age_days = if unborn { rng.random_range(17 * 365..42 * 365) } else { rng.random_range(30..17 * 365) };
            let date_of_birth = days_before(today, age_days);
            let start = days_before(today, rng.random_range(1..(age_days.min(3 * 365))));
            let ended = !unborn && rng.random_bool(0.12);
            let end_date = ended.then(|| days_before(today, rng.random_range(1..300))).filter(|end| *end >= start);
            let expected_delivery =
                unborn.then(|| today.checked_add_days(Days::new(rng.random_range(1..240))).unwrap_or(today));
            records.push(SynthRecord {
                la_ods_code: la.ods_code.clone(),
                record: proto::PlanRecord {
                    nhs_number: nhs_number.to_string(),
                    local_id: format!("{}-{:07}", la.ods_code, records.len() + 1),
                    given_name: given.to_owned(),
                    family_name: family.to_owned(),
                    date_of_birth: iso(date_of_birth),
                    address: Some(address.clone()),
                    r#type: plan_type as i32,
                    start_date: iso(start),
                    end_date: end_date.map(iso).unwrap_or_default(),
                    expected_delivery_date: expected_delivery.map(iso).unwrap_or_default(),
                    team_code: format!("CSC-{}", rng.random_range(1..6)),
                },
            });
        }
    }
    records
}

/// NHS numbers from the test range that no generated person has: for
/// searches of unflagged people.
pub fn unflagged_numbers(records: &[SynthRecord], count: usize, seed: u64) -> Vec<NhsNumber> {
    let used: HashSet<&str> = records.iter().map(|record| record.record.nhs_number.as_str()).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut numbers = Vec::with_capacity(count);
    while numbers.len() < count {
        if let Some(number) = NhsNumber::complete(rng.random_range(999_000_000..=999_999_999))
            && !used.contains(number.to_string().as_str())
        {
            numbers.push(number);
        }
    }
    numbers
}

fn days_before(today: NaiveDate, days: u64) -> NaiveDate {
    today.checked_sub_days(Days::new(days)).unwrap_or(today)
}

fn iso(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}
