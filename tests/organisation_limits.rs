//! Issue 11, resource bounds per organisation, over real mutual TLS: a
//! local authority's open subscriptions are capped, and an organisation over
//! its search rate is refused with RESOURCE_EXHAUSTED and RetryInfo while
//! others still search.

mod common;

use common::*;
use cpis_relay::{
    proto::{SubscribeRequest, lookup_client::LookupClient},
    relay::RelaySettings,
    tls::PemText,
};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn subscriptions_beyond_the_cap_of_a_local_authority_are_resource_exhausted() {
    let settings = RelaySettings { max_subscriptions_per_la: 2, ..RelaySettings::default() };
    let relay = TestRelay::start_with(StoreChoice::Memory, settings).await;
    let mut la_706 = relay.notifications("la-706").await;
    let first = la_706.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();
    let second = la_706.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();

    let status = la_706.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_subscriptions_per_la"), "{}", status.message());
    // Another authority has its own count.
    let mut la_855 = relay.notifications("la-855").await;
    let _other = la_855.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();

    // Closing one makes room again (the relay sees the stream end when the client resets it).
    drop(first);
    let subscribers = |relay: &TestRelay| {
        relay.relay.hub().positions().iter().find(|p| p.la_ods_code == "706").map_or(0, |p| p.subscribers)
    };
    while subscribers(&relay) != 1 {
        tokio::task::yield_now().await;
    }
    let _third = la_706.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();
    drop(second);
}

#[tokio::test]
async fn an_organisation_over_its_search_rate_gets_resource_exhausted_with_retry_info() {
    // Two searches, then one token every 1,000 s: the third is refused however slow the machine.
    let settings = RelaySettings { search_rate_per_second: 0.001, search_burst: 2, ..RelaySettings::default() };
    let relay = TestRelay::start_with(StoreChoice::Memory, settings).await;
    let mut leeds = relay.lookup().await;
    for n in 0..2 {
        leeds.search(search_request(&nhs(1), "u", &format!("r{n}"))).await.unwrap();
    }
    let status = leeds.search(search_request(&nhs(1), "u", "r2")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(delay.as_secs() > 900 && delay.as_secs() <= 1000, "{delay:?}");

    // Another emergency department is not held back by Leeds.
    let pair = relay.pki.authority.issue_client("RXH", "BRIGHTON AND SUSSEX", Some("unscheduled-care")).unwrap();
    let pem = PemText { ca: relay.pki.authority.cert_pem(), cert: pair.cert_pem, key: pair.key_pem };
    let mut brighton = LookupClient::new(relay.channel_with(&pem).await.unwrap());
    brighton.search(search_request(&nhs(1), "u", "b0")).await.unwrap();

    let metrics = admin_get(relay.admin, "/metrics").await.1;
    let limited = metrics
        .lines()
        .find_map(|line| line.strip_prefix("cpis_rate_limited_total{organisation=\"RR8\"} "))
        .unwrap_or_else(|| panic!("cpis_rate_limited_total for RR8 in {metrics}"));
    assert!(limited.trim().parse::<f64>().unwrap() >= 1.0, "{limited}");
}
