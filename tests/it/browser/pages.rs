//! The browser view over real HTTPS with real client certificates: each
//! page's role rules (from the domain), CSRF refusal, the same search as
//! `Lookup.Search` (validation, notification, silence of scheduled care,
//! rate limit), the inbox's acknowledgement and live stream, the access log
//! and its CSV, the security headers, and that no NHS number is ever put in
//! a URL. The headless-browser test is tests/it/browser/chromium.rs.

use crate::helpers::web_relay::{Page, WebRelay};
use crate::helpers::{self, web_relay};
use cpis_relay::relay::RelaySettings;
use helpers::{nhs, test_start};
use http_body_util::BodyExt;

/// The unacknowledged notifications of local authority 706, as its inbox reads them.
async fn backlog_706(relay: &WebRelay) -> u64 {
    let identity = cpis_relay::auth::Identity {
        ods_code: "706".into(),
        organisation_name: "LONDON BOROUGH OF ISLINGTON".into(),
        role: cpis_relay::auth::Role::SocialCare,
    };
    relay.relay.inbox(&identity, 100).await.unwrap().backlog
}

async fn search(browser: &web_relay::Browser, nhs_number: &str) -> Page {
    let form = browser.get("/card").await;
    assert_eq!(form.status, 200, "{}", form.body);
    browser
        .post("/card", &[("nhs_number", nhs_number), ("care_setting", "EmergencyDepartment"), ("csrf", &form.csrf())])
        .await
}

#[tokio::test]
async fn each_page_is_open_to_its_roles_only() {
    let relay = WebRelay::start(RelaySettings::default()).await;
    let (ed, la, auditor, gp) =
        (relay.user("user-ed-rr8"), relay.user("user-la-706"), relay.user("user-auditor"), relay.user("user-gp-y02"));
    for (browser, path, want) in [
        (&ed, "/card", 200),
        (&gp, "/card", 200),
        (&la, "/card", 403),
        (&auditor, "/card", 403),
        (&ed, "/inbox", 403),
        (&auditor, "/inbox", 403),
        (&la, "/inbox", 200),
        (&ed, "/inbox/events", 403),
        (&ed, "/audit", 403),
        (&la, "/audit", 403),
        (&auditor, "/audit", 200),
        (&ed, "/ops", 200),
        (&la, "/ops", 200),
        (&auditor, "/", 200),
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, want, "GET {path}: {}", page.body);
    }

    // A local authority cannot search, even with its own valid form token
    // (from the inbox's acknowledge form, so there is a notification first).
    relay.load("706", &[&nhs(1)]).await;
    assert_eq!(search(&ed, &nhs(1)).await.status, 200);
    let csrf = la.get("/inbox").await.csrf();
    let refused =
        la.post("/card", &[("nhs_number", &nhs(1)), ("care_setting", "EmergencyDepartment"), ("csrf", &csrf)]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("Search needs the unscheduled-care or scheduled-care role"), "{}", refused.body);

    // An auditor cannot acknowledge, nor read the inbox's stream.
    let csrf = auditor.get("/audit").await.csrf();
    let refused = auditor.post("/inbox/ack", &[("sequence", "1"), ("csrf", &csrf)]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("Ack needs the social-care role"), "{}", refused.body);

    // A clinician cannot acknowledge either, nor read an access log.
    let csrf = ed.get("/card").await.csrf();
    assert_eq!(ed.post("/inbox/ack", &[("sequence", "1"), ("csrf", &csrf)]).await.status, 403);
    assert_eq!(ed.post("/audit", &[("nhs_number", &nhs(1)), ("csrf", &csrf)]).await.status, 403);
    assert_eq!(ed.post("/audit/access-log.csv", &[("nhs_number", &nhs(1)), ("csrf", &csrf)]).await.status, 403);
    relay.stop().await;
}

#[tokio::test]
async fn a_state_change_without_the_viewers_csrf_token_is_refused_and_changes_nothing() {
    let relay = WebRelay::start(RelaySettings::default()).await;
    relay.load("706", &[&nhs(1)]).await;
    let ed = relay.user("user-ed-rr8");
    let gp = relay.user("user-gp-y02");
    let own = ed.get("/card").await.csrf();
    let someone_elses = gp.get("/card").await.csrf();
    let number = nhs(1);
    let form = |csrf: &str| {
        vec![
            ("nhs_number".to_owned(), number.clone()),
            ("care_setting".to_owned(), "EmergencyDepartment".to_owned()),
            ("csrf".to_owned(), csrf.to_owned()),
        ]
    };
    let pairs = |form: &Vec<(String, String)>| -> Vec<(String, String)> { form.clone() };
    for (csrf, headers, why) in [
        ("", vec![], "no token"),
        ("bm90LWEtdG9rZW4", vec![], "a made-up token"),
        (someone_elses.as_str(), vec![], "another user's token"),
        (own.as_str(), vec![("origin", "https://evil.example")], "another origin"),
        (own.as_str(), vec![("sec-fetch-site", "cross-site")], "a cross-site request"),
    ] {
        let sent = pairs(&form(csrf));
        let sent: Vec<(&str, &str)> = sent.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        let page = ed.send("POST", "/card", &sent, &headers).await;
        assert_eq!(page.status, 403, "{why}: {}", page.body);
        assert!(page.body.contains("This form cannot be accepted"), "{why}: {}", page.body);
    }
    assert_eq!(backlog_706(&relay).await, 0, "no refused form searched");

    let page = search(&ed, &number).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(backlog_706(&relay).await, 1, "the viewer's own form searched, and notified");
    relay.stop().await;
}

#[tokio::test]
async fn the_card_is_the_same_search_as_lookup() {
    let settings = RelaySettings { search_rate_per_second: 0.001, search_burst: 4, ..RelaySettings::default() };
    let relay = WebRelay::start(settings).await;
    let flagged = nhs(1);
    relay.load("706", &[&flagged]).await;
    let ed = relay.user("user-ed-rr8");

    let page = search(&ed, &flagged).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(r#"id="cpis-flag""#), "the flag: {}", page.body);
    assert!(page.body.contains("Child protection plan"), "{}", page.body);
    assert!(page.body.contains(r#"href="tel:"#), "phone numbers are telephone links: {}", page.body);
    assert!(page.body.contains("The local authority has been notified"), "{}", page.body);
    assert_eq!(backlog_706(&relay).await, 1);

    // Scheduled care is silent: no notification.
    let gp = relay.user("user-gp-y02");
    let form = gp.get("/card").await;
    let page = gp
        .post("/card", &[("nhs_number", &flagged), ("care_setting", "GeneralPractice"), ("csrf", &form.csrf())])
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("the local authority is not notified"), "{}", page.body);
    assert_eq!(backlog_706(&relay).await, 1, "a scheduled search notifies nobody");

    // The domain's validation message, exactly as Lookup.Search gives it.
    let page = search(&ed, "943 476 5918").await;
    assert_eq!(page.status, 400, "{}", page.body);
    let channel = cpis_relay::client::connect(
        &format!("https://localhost:{}", relay.grpc.port()),
        &relay.pki.client_pem("ed-rr8"),
        None,
    )
    .await
    .unwrap();
    let mut lookup = cpis_relay::proto::lookup_client::LookupClient::new(channel);
    let status = lookup.search(helpers::search_request("943 476 5918", "u1", "")).await.unwrap_err();
    let (field, description) = helpers::field_violation(&status);
    assert_eq!(field, "nhs_number");
    let escaped = description.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;");
    assert!(page.body.contains(&format!("NHS number {escaped}")), "{description:?} in {}", page.body);
    assert!(page.body.contains(r#"aria-invalid="true""#), "{}", page.body);

    // An organisation certificate names no user: the domain's accessor rule.
    let org = relay.organisation("ed-rr8");
    let page = search(&org, &flagged).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("accessor"), "{}", page.body);

    // The organisation's rate limit (a burst of 4, and a token in 1,000 s) refuses with Retry-After.
    let mut refused = None;
    for _ in 0..5 {
        let page = search(&ed, &flagged).await;
        if page.status == 429 {
            refused = Some(page);
            break;
        }
    }
    let refused = refused.expect("the rate limit refuses within four more searches");
    assert!(refused.header("retry-after").is_some());
    assert!(refused.body.contains("over its search rate limit"), "{}", refused.body);
    relay.stop().await;
}

#[tokio::test]
async fn a_bearer_token_names_the_user_of_an_organisation_certificate() {
    let relay = WebRelay::start_with(helpers::Pki::new(), RelaySettings::default(), true).await;
    relay.load("706", &[&nhs(1)]).await;
    let mut org = relay.organisation("ed-rr8");
    let token = cpis_relay::auth::token::mint(relay.signing_key.as_ref().unwrap(), &helpers::dev_token("token-user-7"))
        .unwrap();
    org.authorization = Some(format!("Bearer {token}"));
    let page = search(&org, &nhs(1)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let la = relay.user("user-la-706");
    let inbox = la.get("/inbox").await;
    assert!(inbox.body.contains("token-user-7"), "the token's user is the accessor: {}", inbox.body);
    org.authorization = Some("Bearer not-a-jwt".into());
    assert_eq!(org.get("/card").await.status, 401);
    relay.stop().await;
}

#[tokio::test]
async fn the_inbox_streams_new_notifications_and_acknowledges_with_the_ack_cursor() {
    let relay = WebRelay::start(RelaySettings::default()).await;
    let (first, second) = (nhs(1), nhs(2));
    relay.load("706", &[&first, &second]).await;
    let (ed, la) = (relay.user("user-ed-rr8"), relay.user("user-la-706"));
    search(&ed, &first).await;

    let inbox = la.get("/inbox").await;
    assert_eq!(inbox.status, 200);
    assert!(inbox.body.contains(r#"id="n1""#), "{}", inbox.body);
    assert!(inbox.body.contains(r#"data-events="/inbox/events?after=1""#), "{}", inbox.body);

    // The live stream from after the page's newest: the next search arrives on it.
    let mut stream = la.open("/inbox/events?after=1").await;
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    search(&ed, &second).await;
    let mut received = String::new();
    while !received.contains("\n\n") {
        let frame = stream.body_mut().frame().await.expect("the stream stays open").unwrap();
        if let Some(data) = frame.data_ref() {
            received.push_str(std::str::from_utf8(data).unwrap());
        }
    }
    assert!(received.contains("event: notification\n"), "{received}");
    assert!(received.contains("id: 2\n"), "{received}");
    let shown = cpis_relay::web::layout::nhs_number(cpis_relay::nhs::NhsNumber::parse(&second).unwrap());
    assert!(received.contains(&shown), "the row of the new notification: {received}");
    drop(stream);

    // Acknowledge #1 only: cumulative, as Notifications.Ack.
    let ack = la.post("/inbox/ack", &[("sequence", "1"), ("csrf", &inbox.csrf())]).await;
    assert_eq!(ack.status, 303, "{}", ack.body);
    assert_eq!(ack.header("location"), Some("/inbox"));
    let inbox = la.get("/inbox").await;
    assert!(!inbox.body.contains(r#"id="n1""#) && inbox.body.contains(r#"id="n2""#), "{}", inbox.body);
    assert_eq!(backlog_706(&relay).await, 1);
    // The team filter (the only thing a URL here carries).
    assert!(la.get("/inbox?team=TEAM-A").await.body.contains(r#"id="n2""#));
    let other = la.get("/inbox?team=TEAM-B").await;
    assert!(!other.body.contains(r#"id="n2""#), "{}", other.body);
    assert!(other.body.contains("/inbox/events?after=2&amp;others=1&amp;team=TEAM%2DB"), "{}", other.body);
    let beyond = la.post("/inbox/ack", &[("sequence", "9"), ("csrf", &inbox.csrf())]).await;
    assert_eq!(beyond.status, 400, "the domain's check of the sequence: {}", beyond.body);
    relay.stop().await;
}

#[tokio::test]
async fn the_access_log_lists_and_exports_every_access_with_scheduled_reads_marked() {
    let relay = WebRelay::start(RelaySettings::default()).await;
    let number = nhs(1);
    relay.load("706", &[&number]).await;
    search(&relay.user("user-ed-rr8"), &number).await;
    let gp = relay.user("user-gp-y02");
    let csrf = gp.get("/card").await.csrf();
    gp.post("/card", &[("nhs_number", &number), ("care_setting", "SchoolNursing"), ("csrf", &csrf)]).await;

    let auditor = relay.user("user-auditor");
    let csrf = auditor.get("/audit").await.csrf();
    let log = auditor.post("/audit", &[("nhs_number", &number), ("csrf", &csrf)]).await;
    assert_eq!(log.status, 200, "{}", log.body);
    assert!(log.body.contains("Dr Alex Example (development)") && log.body.contains("Dr Jo Sample (development)"));
    assert!(log.body.contains("Scheduled (silent)") && log.body.contains("Unscheduled (notified)"), "{}", log.body);
    assert!(log.body.contains("<h3>Verified</h3>"), "{}", log.body);
    assert!(log.body.contains("Each of these 2 accesses is in the signed access log exactly as shown here."));
    // The auditor's read through the browser is itself in the log, naming the person at the browser.
    let auditors = cpis_relay::auth::Identity {
        ods_code: "X26".into(),
        organisation_name: "NHS ENGLAND".into(),
        role: cpis_relay::auth::Role::Auditor,
    };
    let subject = relay.relay.subject_access(&auditors, &number).await.unwrap();
    let browser_reads = subject
        .accesses
        .iter()
        .filter(|logged| match &logged.entry {
            cpis_relay::store::log::LogEntry::Audit(read) => read.accessor.user_id == "555000000004",
            cpis_relay::store::log::LogEntry::Search(_) => false,
        })
        .count();
    assert_eq!(browser_reads, 1, "{:?}", subject.accesses.iter().map(|logged| logged.position).collect::<Vec<_>>());

    let csv = auditor.post("/audit/access-log.csv", &[("nhs_number", &number), ("csrf", &csrf)]).await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(csv.header("content-disposition"), Some("attachment; filename=\"access-log.csv\""));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines.len(), 3, "{}", csv.body);
    assert!(lines[0].starts_with("accessed_at,nhs_number,"));
    let unscheduled =
        lines.iter().filter(|line| line.contains("Emergency department") && line.contains(",false,")).count();
    let scheduled = lines.iter().filter(|line| line.contains("School nursing") && line.contains(",true,")).count();
    assert_eq!((unscheduled, scheduled), (1, 1), "{}", csv.body);
    assert!(lines[1..].iter().all(|line| line.contains(&number)), "{}", csv.body);
    let bad = auditor.post("/audit", &[("nhs_number", "12345"), ("csrf", &csrf)]).await;
    assert_eq!(bad.status, 400);
    relay.stop().await;
}

/// Attribute values that are URLs (href, action, src, data-events), and a Location header.
fn urls_of(page: &Page) -> Vec<String> {
    let mut urls: Vec<String> = page.header("location").map(str::to_owned).into_iter().collect();
    for attribute in ["href=\"", "action=\"", "src=\"", "data-events=\""] {
        for (at, _) in page.body.match_indices(attribute) {
            let rest = &page.body[at + attribute.len()..];
            urls.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    urls
}

#[tokio::test]
async fn no_nhs_number_is_ever_put_in_a_url() {
    let relay = WebRelay::start(RelaySettings::default()).await;
    let number = nhs(1);
    relay.load("706", &[&number]).await;
    let (ed, la, auditor) = (relay.user("user-ed-rr8"), relay.user("user-la-706"), relay.user("user-auditor"));
    let mut pages =
        vec![ed.get("/").await, ed.get("/card").await, search(&ed, &number).await, search(&ed, "999 000 0").await];
    let inbox = la.get("/inbox").await;
    pages.push(la.post("/inbox/ack", &[("sequence", "1"), ("team", "TEAM-A"), ("csrf", &inbox.csrf())]).await);
    pages.push(inbox);
    let csrf = auditor.get("/audit").await.csrf();
    pages.push(auditor.post("/audit", &[("nhs_number", &number), ("csrf", &csrf)]).await);
    pages.push(auditor.get("/ops").await);
    // The longest run of digits, spaces and dashes, counted in digits.
    let longest_number = |url: &str| {
        url.split(|c: char| !(c.is_ascii_digit() || c == ' ' || c == '-'))
            .map(|run| run.chars().filter(char::is_ascii_digit).count())
            .max()
            .unwrap_or(0)
    };
    let mut seen = 0;
    for page in &pages {
        assert!(page.status < 500, "{}", page.body);
        // Telephone links dial the authority's published numbers: no URL is fetched.
        for url in urls_of(page).into_iter().filter(|url| !url.starts_with("tel:")) {
            seen += 1;
            assert!(longest_number(&url) < 10, "an NHS number-like run in a URL: {url}");
            assert!(!url.contains(&number[..6]), "{url}");
        }
    }
    assert!(seen > 20, "the pages' URLs were read ({seen})");
    // And the search itself is a POST: a GET with a query is just the empty form.
    assert!(!search(&ed, &number).await.body.contains("?nhs_number"));
    relay.stop().await;
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let relay = WebRelay::start(RelaySettings::default()).await;
    let ed = relay.user("user-ed-rr8");
    for path in ["/", "/card", "/inbox", "/no-such-page", "/assets/web.css", "/assets/web.js"] {
        let page = ed.get(path).await;
        let csp = page.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{path}: {csp}");
        assert_eq!(page.header("strict-transport-security"), Some("max-age=31536000; includeSubDomains"), "{path}");
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(page.header("x-frame-options"), Some("DENY"), "{path}");
        assert!(
            !page.body.contains("<script>") && !page.body.contains(" style=\""),
            "no inline script or style on {path}"
        );
    }
    assert_eq!(ed.get("/card").await.header("cache-control"), Some("no-store"));
    assert_eq!(ed.get("/assets/web.js").await.header("content-type"), Some("text/javascript; charset=utf-8"));
    let _ = test_start();
    relay.stop().await;
}

#[tokio::test]
async fn markup_in_uploaded_text_is_shown_as_text() {
    let relay = WebRelay::start(RelaySettings::default()).await;
    let number = nhs(1);
    let mut record = helpers::record(&number, cpis_relay::proto::PlanType::ChildProtection);
    record.given_name = "<script>alert(1)</script>".into();
    record.family_name = "O'Brien & \"Co\" <b>".into();
    relay.load_records("706", vec![record]).await;
    let page = search(&relay.user("user-ed-rr8"), &number).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("<script>alert") && !page.body.contains("<b>"), "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{}", page.body);
    assert!(page.body.contains("O'Brien &amp; &quot;Co&quot; &lt;b&gt;"), "{}", page.body);
    relay.stop().await;
}

/// `serve --web-listen` (a flag, `CPIS_WEB_LISTEN`, `web_listen` in TOML) opens
/// the browser view beside gRPC, named on the listening line; with the
/// organisation's own CA and no JWKS, users come from certificates only.
#[tokio::test]
async fn serve_opens_the_browser_view_from_a_flag_an_environment_variable_or_the_file() {
    let pki = helpers::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_layout(&dir.path().join("certs"));
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "web_listen = \"127.0.0.1:0\"\n").unwrap();
    for (extra, env) in [
        (vec!["--web-listen", "127.0.0.1:0"], vec![]),
        (vec![], vec![("CPIS_WEB_LISTEN", "127.0.0.1:0")]),
        (vec!["--config", file.to_str().unwrap()], vec![]),
    ] {
        let mut running = helpers::start_with_env(dir.path(), &extra, "error", &env).await;
        let web: std::net::SocketAddr = running
            .listening
            .split_whitespace()
            .find_map(|word| word.strip_prefix("web="))
            .unwrap_or_else(|| panic!("{extra:?} {env:?}: {}", running.listening))
            .parse()
            .unwrap();
        let ed = web_relay::Browser::at(
            format!("https://localhost:{}", web.port()),
            &web_relay::user_pem(&pki.authority, "user-ed-rr8"),
        );
        let card = ed.get("/card").await;
        assert_eq!(card.status, 200, "{}", card.body);
        assert!(card.body.contains("Dr Alex Example (development)"), "{}", card.body);
        running.child.kill().await.unwrap();
    }
    // Off unless set.
    let mut running = helpers::start(dir.path(), &[], "error").await;
    assert!(!running.listening.contains("web="), "{}", running.listening);
    running.child.kill().await.unwrap();
}

/// Every page, including refusals and a path holding an NHS number, logs at
/// debug level without the NHS number, the person's name or the user.
#[tokio::test]
async fn the_browser_views_logs_hold_no_personal_data_even_at_debug() {
    use tokio::io::AsyncReadExt;
    let pki = helpers::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_layout(&dir.path().join("certs"));
    let mut running = helpers::start(dir.path(), &["--web-listen", "127.0.0.1:0"], "debug").await;
    let web = running.listening.split_whitespace().find_map(|word| word.strip_prefix("web=")).unwrap().to_owned();
    let base = format!("https://localhost:{}", web.parse::<std::net::SocketAddr>().unwrap().port());
    let number = nhs(3);
    let channel = cpis_relay::client::connect(&running.url, &pki.client_pem("la-706"), None).await.unwrap();
    let mut plans = cpis_relay::proto::plans_client::PlansClient::new(channel);
    let mut record = helpers::record(&number, cpis_relay::proto::PlanType::ChildProtection);
    record.family_name = "Zanzibarson".into();
    helpers::upload(&mut plans, "706", cpis_relay::proto::UploadMode::Incremental, vec![record]).await.unwrap();

    let ed = web_relay::Browser::at(base.clone(), &web_relay::user_pem(&pki.authority, "user-ed-rr8"));
    assert_eq!(search(&ed, &number).await.status, 200);
    assert_eq!(search(&ed, "999 000 00").await.status, 400);
    assert_eq!(ed.get(&format!("/card/{number}?nhs_number={number}")).await.status, 404);
    let la = web_relay::Browser::at(base.clone(), &web_relay::user_pem(&pki.authority, "user-la-706"));
    let inbox = la.get("/inbox").await;
    assert!(inbox.body.contains("Dr Alex Example (development)"));
    let auditor = web_relay::Browser::at(base, &web_relay::user_pem(&pki.authority, "user-auditor"));
    let csrf = auditor.get("/audit").await.csrf();
    assert_eq!(auditor.post("/audit", &[("nhs_number", &number), ("csrf", &csrf)]).await.status, 200);

    running.child.kill().await.unwrap();
    let mut logs = String::new();
    running.stderr.take().unwrap().read_to_string(&mut logs).await.unwrap();
    assert!(logs.contains("web request"), "the requests were logged: {logs}");
    let spaced = cpis_relay::web::layout::nhs_number(cpis_relay::nhs::NhsNumber::parse(&number).unwrap());
    for personal in [number.as_str(), spaced.as_str(), "Zanzibarson", "Dr Alex Example", "555000000001"] {
        assert!(!logs.contains(personal), "{personal:?} in the logs:\n{logs}");
    }
}

/// Each rendered form is one search: sending it again (a reload, a second
/// click) is that search's retry, notified once, and the card says so; and
/// it never says "notified" of a notification that is only held.
#[tokio::test]
async fn a_resent_card_form_is_one_search_and_the_card_says_what_became_of_the_notification() {
    let relay = WebRelay::start(RelaySettings::default()).await;
    let flagged = nhs(1);
    relay.load("706", &[&flagged]).await;
    let ed = relay.user("user-ed-rr8");
    let form = ed.get("/card").await;
    let sent = [
        ("nhs_number", flagged.as_str()),
        ("care_setting", "EmergencyDepartment"),
        ("csrf", &form.csrf()),
        ("request_id", &form.field("request_id")),
    ];
    let first = ed.post("/card", &sent).await;
    assert!(first.body.contains("The local authority has been notified"), "{}", first.body);
    let again = ed.post("/card", &sent).await;
    assert_eq!(again.status, 200);
    assert!(again.body.contains(r#"id="cpis-flag""#), "the flag is shown again: {}", again.body);
    assert!(again.body.contains(r#"id="notification-repeat""#), "{}", again.body);
    assert!(!again.body.contains("has been notified"), "{}", again.body);
    assert_eq!(backlog_706(&relay).await, 1, "one notification for the form sent twice");
    assert_ne!(again.field("request_id"), form.field("request_id"), "the next search is a new form");

    // The store fails: the notification is held, and the card says that, not "notified".
    relay.faults.fail_writes(true);
    let held = search(&ed, &flagged).await;
    assert!(held.body.contains(r#"id="notification-held""#), "{}", held.body);
    assert!(!held.body.contains("has been notified"), "{}", held.body);
    relay.faults.fail_writes(false);
}

/// Browser inboxes have a budget of their own: tabs left open never take
/// the subscriptions an authority's `deliver` agents need. And on a page
/// filtered by team, a button that acknowledges other teams' notifications
/// too (the cursor is cumulative) says how many.
#[tokio::test]
async fn open_inboxes_take_no_agent_subscription_and_a_filtered_button_says_what_else_it_acknowledges() {
    let settings = RelaySettings { max_subscriptions_per_la: 1, ..RelaySettings::default() };
    let relay = WebRelay::start(settings).await;
    let (first, second) = (nhs(1), nhs(2));
    let mut other_team = helpers::record(&second, cpis_relay::proto::PlanType::ChildProtection);
    other_team.team_code = "TEAM-B".into();
    relay.load("706", &[&first]).await;
    relay.load_records("706", vec![other_team]).await;
    let (ed, la) = (relay.user("user-ed-rr8"), relay.user("user-la-706"));
    search(&ed, &first).await;
    search(&ed, &second).await;

    let tabs = [la.open("/inbox/events").await, la.open("/inbox/events").await];
    assert!(tabs.iter().all(|tab| tab.status() == 200));
    let channel = cpis_relay::client::connect(
        &format!("https://localhost:{}", relay.grpc.port()),
        &relay.pki.client_pem("la-706"),
        None,
    )
    .await
    .unwrap();
    let mut agent = cpis_relay::proto::notifications_client::NotificationsClient::new(channel);
    let request = cpis_relay::proto::SubscribeRequest { after_sequence: Some(0) };
    let mut stream = agent.subscribe(request).await.expect("the agent subscribes beside open inboxes").into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let second_agent = agent.subscribe(request).await.map(|_| ()).expect_err("the agents' bound still holds");
    assert_eq!(second_agent.code(), tonic::Code::ResourceExhausted);

    let filtered = la.get("/inbox?team=TEAM-B").await;
    assert!(filtered.body.contains(r#"id="n2""#) && !filtered.body.contains(r#"id="n1""#), "{}", filtered.body);
    assert!(
        filtered.body.contains("Acknowledge #2 and earlier, with 1 notification of other teams not shown here"),
        "{}",
        filtered.body
    );
    let unfiltered = la.get("/inbox").await;
    assert!(!unfiltered.body.contains("other teams not shown"), "{}", unfiltered.body);
    drop(tabs);
    relay.stop().await;
}

#[tokio::test]
async fn ops_shows_backlogs_to_auditors_and_an_authority_its_own_never_to_clinicians_and_is_rate_limited() {
    let relay = WebRelay::start(RelaySettings::default()).await;
    relay.load("706", &[&nhs(1)]).await;
    relay.load("855", &[&nhs(2)]).await;
    let (ed, la, auditor) = (relay.user("user-ed-rr8"), relay.user("user-la-706"), relay.user("user-auditor"));
    assert_eq!(search(&ed, &nhs(1)).await.status, 200);
    assert_eq!(search(&ed, &nhs(2)).await.status, 200);
    let row = |ods_code: &str| format!("<td>{ods_code}</td>");
    let seen = auditor.get("/ops").await;
    assert!(seen.body.contains(&row("706")) && seen.body.contains(&row("855")), "{}", seen.body);
    let own = la.get("/ops").await;
    assert!(own.body.contains(&row("706")) && !own.body.contains(&row("855")), "{}", own.body);
    let clinician = ed.get("/ops").await;
    assert_eq!(clinician.status, 200);
    assert!(!clinician.body.contains("backlog") && !clinician.body.contains(&row("706")), "{}", clinician.body);
    // A glance, not something to poll: at most a burst, then one a second.
    let refused = futures::future::join_all((0..100).map(|_| ed.get("/ops"))).await;
    assert!(
        refused.iter().any(|page| page.body.contains(r#"id="quarantined"><span class="stat-value">0</span>"#)),
        "the quarantine's count is shown"
    );
    assert!(refused.iter().any(|page| page.status == 429), "100 pages at once are not all served");
    assert_eq!(auditor.get("/ops").await.status, 200, "per organisation");
    relay.stop().await;
}
