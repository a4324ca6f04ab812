//! The browser view in a real browser: Debian's headless Chromium, driven by
//! tests/browser/flow.mjs (puppeteer-core over the DevTools protocol), with
//! each session presenting a personal development certificate from its own
//! NSS database, as a smartcard-backed browser would. A clinician searches a
//! flagged child and sees the flag; the notification arrives live in the
//! local authority's inbox in another session, which acknowledges it; axe-core
//! finds no serious or critical accessibility violation on any page.
//!
//! Needs `chromium`, `certutil`/`pk12util` (libnss3-tools), node with
//! tests/browser/node_modules, and the Chromium policy that selects the
//! certificate: `scripts/browser-test-setup.sh` installs all of them (CI runs
//! it). Without them the test says so loudly and skips, except under CI,
//! where it fails.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
};

use crate::helpers::web_relay::WebRelay;
use crate::helpers::{self, web_relay};
use cpis_relay::{certs, relay::RelaySettings};

/// The test CA's name: the Chromium policy selects certificates it issued.
const TEST_CA: &str = "cpis-relay browser test CA";
/// Where Debian's Chromium reads managed policies.
const POLICY_FILE: &str = "/etc/chromium/policies/managed/cpis-relay-browser-test.json";

/// The policy that makes Chromium present the certificate without a dialog.
fn policy() -> String {
    let rule = serde_json::json!({ "pattern": "https://localhost:*", "filter": { "ISSUER": { "CN": TEST_CA } } });
    serde_json::json!({ "AutoSelectCertificateForUrls": [rule.to_string()] }).to_string()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|path| path.is_file())
}

/// What the test needs, or why it cannot run.
struct Tools {
    chromium: PathBuf,
}

fn tools() -> Result<Tools, String> {
    let chromium = std::env::var_os("CPIS_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .ok_or("chromium is not installed (Debian package chromium)")?;
    for program in ["certutil", "pk12util"] {
        on_path(program).ok_or(format!("{program} is not installed (Debian package libnss3-tools)"))?;
    }
    on_path("node").ok_or("node is not installed")?;
    if !root().join("tests/browser/node_modules/puppeteer-core").is_dir() {
        return Err("tests/browser/node_modules is missing (npm ci --prefix tests/browser)".into());
    }
    let current = std::fs::read_to_string(POLICY_FILE).unwrap_or_default();
    if current != policy() {
        std::fs::create_dir_all(Path::new(POLICY_FILE).parent().unwrap())
            .and_then(|()| std::fs::write(POLICY_FILE, policy()))
            .map_err(|error| format!("cannot write the Chromium policy {POLICY_FILE}: {error} (run as root)"))?;
    }
    Ok(Tools { chromium })
}

async fn run(program: &str, args: &[&str]) {
    let output = tokio::process::Command::new(program).args(args).output().await.unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A HOME whose NSS database holds one user's certificate and key, and trusts the test CA.
async fn browser_home(dir: &Path, authority: &certs::Authority, user: &str) -> PathBuf {
    let home = dir.join(user);
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let pem = web_relay::user_pem(authority, user);
    let pair = certs::Pair { cert_pem: pem.cert, key_pem: pem.key };
    let p12 = certs::pkcs12(&pair, &authority.cert_pem(), user, certs::DEV_P12_PASSWORD).unwrap();
    let (p12_path, ca_path) = (home.join("user.p12"), home.join("ca.pem"));
    std::fs::write(&p12_path, p12).unwrap();
    std::fs::write(&ca_path, authority.cert_pem()).unwrap();
    run("certutil", &["-N", "-d", &db, "--empty-password"]).await;
    run("pk12util", &["-i", p12_path.to_str().unwrap(), "-d", &db, "-W", certs::DEV_P12_PASSWORD]).await;
    run("certutil", &["-A", "-n", TEST_CA, "-t", "C,,", "-i", ca_path.to_str().unwrap(), "-d", &db]).await;
    home
}

#[tokio::test]
async fn a_clinician_sees_the_flag_and_the_local_authority_acknowledges_it_live_in_chromium() {
    let tools = match tools() {
        Ok(tools) => tools,
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("the browser test cannot run under CI: {reason}; scripts/browser-test-setup.sh installs it")
        }
        Err(reason) => {
            eprintln!("\n!!!!!!!! SKIPPED the headless Chromium test: {reason} !!!!!!!!");
            eprintln!("!!!!!!!! run scripts/browser-test-setup.sh (as root) to install what it needs !!!!!!!!\n");
            return;
        }
    };
    cpis_relay::tls::install_crypto_provider();
    let authority = certs::Authority::generate(TEST_CA).unwrap();
    let server = authority.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let pki = helpers::Pki { authority: Arc::new(authority), server };
    let relay = WebRelay::start_with(pki, RelaySettings::default(), false).await;
    let number = helpers::nhs(1);
    relay.load("706", &[&number]).await;
    let shown = cpis_relay::web::layout::nhs_number(cpis_relay::nhs::NhsNumber::parse(&number).unwrap());

    let dir = tempfile::tempdir().unwrap();
    let authority = &relay.pki.authority;
    let ed = browser_home(dir.path(), authority, "user-ed-rr8").await;
    let la = browser_home(dir.path(), authority, "user-la-706").await;
    let auditor = browser_home(dir.path(), authority, "user-auditor").await;
    let screenshots = std::env::var("CPIS_SCREENSHOTS").unwrap_or_default();
    let output = tokio::process::Command::new("node")
        .arg(root().join("tests/browser/flow.mjs"))
        .env("CPIS_WEB_URL", relay.base())
        .env("CPIS_CHROMIUM", &tools.chromium)
        .env("CPIS_ED_HOME", &ed)
        .env("CPIS_LA_HOME", &la)
        .env("CPIS_AUDITOR_HOME", &auditor)
        .env("CPIS_NHS_NUMBER", &number)
        .env("CPIS_NHS_SHOWN", &shown)
        .env("CPIS_SCREENSHOTS", &screenshots)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{stdout}");
    assert!(output.status.success(), "the browser flow failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("browser flow passed"), "{stdout}");

    // What the browsers did is what the relay holds: one access, acknowledged.
    let la_identity = cpis_relay::auth::Identity {
        ods_code: "706".into(),
        organisation_name: "LONDON BOROUGH OF ISLINGTON".into(),
        role: cpis_relay::auth::Role::SocialCare,
    };
    let inbox = relay.relay.inbox(&la_identity, 10).await.unwrap();
    assert_eq!((inbox.last_sequence, inbox.acked_through, inbox.backlog), (1, 1, 0));
    relay.stop().await;
}
