//! A webhook receiver that answers as a misconfigured one does (a redirect,
//! 401, 403, 404, 410: a rotated secret, a wrong URL) must not drain the
//! backlog into the dead-letter directory: the agent retries, acknowledges
//! nothing, turns unhealthy and raises `cpis_deliver_receiver_misconfigured`
//! until the receiver takes the notification. Real relay, real receiver.

use std::sync::Arc;

use crate::helpers::agent::*;
use crate::helpers::webhook_receiver::Reply;
use tokio::sync::Notify;

#[tokio::test]
async fn a_misconfigured_receiver_is_retried_unacknowledged_and_unhealthy_never_dead_lettered() {
    let delivery = Delivery::start(2, 2).await;
    let (relay, dir, expected) = (&delivery.relay, &delivery.dir, &delivery.expected);
    let mut receiver = delivery.receiver().await;
    let misconfigured = [302, 401, 403, 404, 410];
    receiver.script(misconfigured.map(|status| Reply::Status { status, retry_after: None, body: "" }));
    let release = Arc::new(Notify::new());
    receiver.script([Reply::Hold(Arc::clone(&release))]);

    // Two attempts would park a notification that a busy receiver refused; not this one.
    let mut settings = delivery.webhook_settings(receiver.url("http", "127.0.0.1"));
    settings.max_attempts = Some(2);
    let agent = RunningAgent::start(relay, settings);
    for status in misconfigured {
        let arrival = receiver.next().await;
        assert_eq!((arrival.answered, arrival.body.sequence), (status, expected[0].0));
        assert_eq!(arrival.acked_at_arrival, 0, "nothing acknowledged after HTTP {status}");
    }
    // The sixth attempt is held in flight: every answer before it has been handled.
    let held = receiver.next().await;
    assert_eq!(held.body.sequence, expected[0].0, "still the first notification");
    let health = agent.status.health().unwrap_err();
    assert!(health.contains("misconfigured") && health.contains("HTTP 410"), "{health}");
    assert_eq!(metric("cpis_deliver_receiver_misconfigured{sink=\"webhook\"}"), 1.0);
    assert_eq!(metric("cpis_deliver_dead_lettered_total{sink=\"webhook\"}"), 0.0);
    assert_eq!(metric("cpis_deliver_retries_total{sink=\"webhook\"}"), 5.0);
    assert!(
        !dir.path().join("dead-letter").exists()
            || std::fs::read_dir(dir.path().join("dead-letter")).unwrap().next().is_none()
    );
    assert_eq!(relay_acked(relay), 0);

    // The receiver is fixed: delivery and acknowledgement resume, and health with them.
    release.notify_one();
    let second = receiver.next().await;
    assert_eq!(second.body.sequence, expected[1].0);
    agent.acked_through(expected[1].0).await;
    assert_eq!(metric("cpis_deliver_receiver_misconfigured{sink=\"webhook\"}"), 0.0);
    assert!(agent.status.health().is_ok(), "{:?}", agent.status.health());
    agent.stop().await;
}
