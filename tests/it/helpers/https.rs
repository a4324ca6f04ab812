//! The relay's HTTPS doors as tests reach them: the FHIR door of a test
//! relay (its address, token key and search URLs), the development tokens it
//! accepts, and HTTPS clients presenting a certificate, as the FHIR door's
//! and the browser view's callers do.

use std::{net::SocketAddr, time::Duration};

use cpis_relay::tls::{self, PemText};

/// The FHIR door of a test relay: its address and the key its tokens are signed with.
pub struct FhirTest {
    pub address: SocketAddr,
    pub signing_key: String,
    pub jwks: String,
}

impl FhirTest {
    /// A token for `user_id` as the development CLI mints it, valid for 5 minutes.
    pub fn token(&self, user_id: &str) -> String {
        cpis_relay::auth::token::mint(&self.signing_key, &dev_token(user_id)).unwrap()
    }
}

/// What [`FhirTest::token`] says: the default issuer, audience and claim names.
pub fn dev_token(user_id: &str) -> cpis_relay::auth::token::DevToken {
    cpis_relay::auth::token::DevToken {
        issuer: cpis_relay::auth::token::DEFAULT_ISSUER.into(),
        audience: cpis_relay::auth::token::DEFAULT_AUDIENCE.into(),
        user_id: user_id.into(),
        name: format!("Dr {user_id}"),
        role_code: "R8000".into(),
        care_setting: None,
        lifetime: Duration::from_secs(300),
    }
}

/// The test door's token settings: the defaults, with the care settings of
/// the emergency department (RR8) and the GP practice (Y02999) configured,
/// as a deployment would, so tokens need no care setting claim.
pub fn fhir_token_settings() -> cpis_relay::auth::token::TokenSettings {
    use cpis_relay::model::CareSetting;
    let mut settings = cpis_relay::auth::token::TokenSettings::default();
    settings.care_settings.by_organisation =
        [("RR8".to_owned(), CareSetting::EmergencyDepartment), ("Y02999".to_owned(), CareSetting::GeneralPractice)]
            .into();
    settings
}

impl FhirTest {
    /// The URL of a `resource` search (CareTeam, AuditEvent) by `patient:identifier`, unencoded.
    pub fn search_url(&self, resource: &str, nhs_number: &str) -> String {
        format!(
            "https://localhost:{}/cpis/FHIR/R4/{resource}?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs_number}",
            self.address.port()
        )
    }
}

/// A client TLS configuration presenting `pem`'s certificate and trusting
/// every CA certificate in `pem.ca`, as a caller of the relay has.
pub fn client_tls_config(pem: &PemText) -> rustls::ClientConfig {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pem.ca.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem.cert.as_bytes()).map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
    rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap()
}

/// An HTTPS client over HTTP/1.1 (the FHIR door's and the browser view's) presenting `pem`.
pub type Https = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

pub fn https_client(pem: &PemText) -> Https {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls_config(pem))
        .https_only()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}
