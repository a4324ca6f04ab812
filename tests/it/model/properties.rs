//! Property tests (issue 11, `proptest`): the NHS number (valid numbers
//! round-trip through parse and display in every accepted form; every
//! single-digit change and every adjacent transposition is refused; no text
//! makes parsing panic) and the visibility rules of a plan (the last visible
//! day, as the plan computes it and as the stored header carries it).

use chrono::{Days, NaiveDate};
use cpis_relay::{
    model::{Address, Plan, PlanType, VISIBLE_DAYS_AFTER_DELIVERY, VISIBLE_DAYS_AFTER_END},
    nhs::{NhsNumber, NhsNumberError},
    stored::StoredPlan,
};
use proptest::prelude::*;

/// Nine leading digits that have a check digit, and the number they make.
fn valid_number() -> impl Strategy<Value = NhsNumber> {
    (0..=999_999_999u64).prop_filter_map("no check digit (remainder 10)", NhsNumber::complete)
}

fn digits(number: NhsNumber) -> Vec<u8> {
    number.to_string().bytes().map(|byte| byte - b'0').collect()
}

fn text(digits: &[u8]) -> String {
    digits.iter().map(|digit| char::from(b'0' + digit)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_numbers_round_trip_in_every_accepted_form(number in valid_number()) {
        let shown = number.to_string();
        prop_assert_eq!(shown.len(), 10);
        prop_assert_eq!(NhsNumber::parse(&shown), Ok(number));
        prop_assert_eq!(NhsNumber::from_u64(number.as_u64()), Ok(number));
        let (a, b, c) = (&shown[..3], &shown[3..6], &shown[6..]);
        for form in [format!("{a} {b} {c}"), format!("{a}-{b}-{c}"), format!(" {shown}\t")] {
            prop_assert_eq!(NhsNumber::parse(&form), Ok(number), "{}", form);
        }
        prop_assert!(!format!("{number:?}").contains(&shown), "Debug is redacted");
    }

    /// Modulus 11 with weights 10..2 and 1 for the check digit: a change of one
    /// digit by d changes the sum by w * d, never a multiple of 11 (11 is prime,
    /// 0 < w, d < 11), so every single-digit error is caught.
    #[test]
    fn every_single_digit_change_is_refused(number in valid_number(), position in 0..10usize, by in 1..10u8) {
        let mut changed = digits(number);
        changed[position] = (changed[position] + by) % 10;
        prop_assert_eq!(NhsNumber::parse(&text(&changed)), Err(NhsNumberError::BadCheckDigit));
    }

    /// Neighbouring weights differ by one (10,9,...,2 then 1 for the check
    /// digit), so swapping two different adjacent digits a, b changes the sum
    /// by ±(a - b), never a multiple of 11: every adjacent transposition is caught.
    #[test]
    fn every_adjacent_transposition_is_refused(number in valid_number(), position in 0..9usize) {
        let mut swapped = digits(number);
        prop_assume!(swapped[position] != swapped[position + 1]);
        swapped.swap(position, position + 1);
        prop_assert_eq!(NhsNumber::parse(&text(&swapped)), Err(NhsNumberError::BadCheckDigit));
    }

    #[test]
    fn arbitrary_text_never_panics_and_what_parses_is_its_own_ten_digits(input in any::<String>()) {
        if let Ok(number) = NhsNumber::parse(&input) {
            let kept: String = input.chars().filter(char::is_ascii_digit).collect();
            prop_assert_eq!(number.to_string(), kept);
            prop_assert!(input.trim().chars().all(|ch| ch.is_ascii_digit() || ch == ' ' || ch == '-'));
        }
    }

    #[test]
    fn digit_like_text_never_panics(input in "[0-9 \\-]{0,14}") {
        let _ = NhsNumber::parse(&input);
    }

    #[test]
    fn from_u64_accepts_exactly_the_valid_ten_digit_values(value in any::<u64>()) {
        match NhsNumber::from_u64(value) {
            Ok(number) => prop_assert_eq!(number.as_u64(), value),
            Err(_) => {
                let padded = format!("{:010}", value);
                prop_assert!(value > 9_999_999_999 || NhsNumber::parse(&padded).is_err());
            }
        }
    }
}

/// Any day from 1900 to 2100, and now and then one near the end of the calendar.
fn day() -> impl Strategy<Value = NaiveDate> {
    let ordinary = (693_596..766_645i32).prop_map(|days| NaiveDate::from_num_days_from_ce_opt(days).unwrap());
    let extreme = (0..400u64).prop_map(|back| NaiveDate::MAX.checked_sub_days(Days::new(back)).unwrap());
    prop_oneof![20 => ordinary, 1 => extreme]
}

fn plan_type() -> impl Strategy<Value = PlanType> {
    prop::sample::select(PlanType::ALL.to_vec())
}

prop_compose! {
    fn plan()(
        plan_type in plan_type(),
        start_date in day(),
        end_date in prop::option::of(day()),
        expected_delivery_date in prop::option::of(day()),
    ) -> Plan {
        Plan {
            nhs_number: NhsNumber::parse("9990000018").unwrap(),
            la_ods_code: "706".into(),
            local_id: "L-1".into(),
            given_name: "Sam".into(),
            family_name: "Testchild".into(),
            date_of_birth: NaiveDate::from_ymd_opt(2016, 4, 5).unwrap(),
            address: Address::default(),
            plan_type,
            start_date,
            end_date,
            expected_delivery_date,
            team_code: "T".into(),
            loaded_at: chrono::DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
        }
    }
}

fn plus(date: NaiveDate, days: u64) -> NaiveDate {
    date.checked_add_days(Days::new(days)).unwrap_or(NaiveDate::MAX)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The rule as DESIGN.md states it: a plan is shown until 365 days after
    /// its end date (forever while it has none); an unborn child protection
    /// plan with an expected delivery date until 28 days after it, or the
    /// earlier of that and 365 days after an end. The start date never hides a plan.
    #[test]
    fn a_plan_is_visible_exactly_until_its_last_day(plan in plan(), today in day()) {
        let after_end = plan.end_date.map(|end| plus(end, VISIBLE_DAYS_AFTER_END));
        let last_day = match (plan.plan_type, plan.expected_delivery_date) {
            (PlanType::UnbornChildProtection, Some(delivery)) => {
                let after_delivery = plus(delivery, VISIBLE_DAYS_AFTER_DELIVERY);
                Some(after_end.map_or(after_delivery, |end| end.min(after_delivery)))
            }
            _ => after_end,
        };
        prop_assert_eq!(plan.visible_until(), last_day);
        prop_assert_eq!(plan.is_visible_on(today), last_day.is_none_or(|last| today <= last));
        if let Some(last) = last_day {
            prop_assert!(plan.is_visible_on(last));
            if let Some(next) = last.succ_opt() {
                prop_assert!(!plan.is_visible_on(next));
            }
        }
    }

    /// Once hidden, a plan stays hidden: visibility never comes back later.
    #[test]
    fn visibility_only_ever_ends(plan in plan(), a in day(), b in day()) {
        let (earlier, later) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(!plan.is_visible_on(later) || plan.is_visible_on(earlier));
    }

    /// The stored form's header answers as the plan does, without decoding.
    #[test]
    fn the_stored_header_agrees_with_the_plan(plan in plan(), today in day()) {
        let stored = StoredPlan::encode(&plan, "706".into()).unwrap();
        prop_assert_eq!(stored.visible_until(), plan.visible_until());
        prop_assert_eq!(stored.is_retained_on(today), plan.is_visible_on(today));
        // Shown once started (a plan starts on its start date) and while in its window.
        prop_assert_eq!(stored.is_visible_on(today), plan.is_visible_on(today) && plan.has_started_on(today));
        prop_assert_eq!(stored.decode().unwrap(), plan);
    }
}
