//! Settings that are safe only on a development machine, refused at start
//! (exit 64) unless every listener is loopback or `dev_certs` says this is a
//! development machine: the development certificates, the memory store, and
//! a FHIR door verifying tokens with the development key.

use super::{ConfigError, ServeConfig, StoreKind, error};
use crate::auth::token;

impl ServeConfig {
    /// Refuses what is safe only on a development machine, unless
    /// `dev_certs` says this is one: the development certificates or the
    /// memory store (a stray `CPIS_STORE=memory` would lose every
    /// notification at restart) with a listener off loopback, and a FHIR door
    /// without its own token keys and issuer when the relay has production
    /// certificates or a listener off loopback.
    pub(super) fn check_development_settings(&self, issuer_given: bool) -> Result<(), ConfigError> {
        if self.dev_certs {
            return Ok(());
        }
        let exposed = self.non_loopback_listeners();
        if self.ca.is_none() && !exposed.is_empty() {
            return Err(error(
                "ca",
                format!(
                    "refusing the development certificates on a non-loopback address ({}): pass --ca/--cert/--key, or --dev-certs to use them anyway",
                    exposed.join(", ")
                ),
            ));
        }
        if self.store == StoreKind::Memory && !exposed.is_empty() {
            return Err(error(
                "store",
                format!(
                    "the memory store loses every notification at exit: refused with a listener off loopback ({}); use embedded or postgres://, or --dev-certs on a development machine",
                    exposed.join(", ")
                ),
            ));
        }
        if self.fhir_listen.is_none() {
            return Ok(());
        }
        let production = self.ca.is_some() || !exposed.is_empty();
        if !production {
            return Ok(());
        }
        if self.fhir_jwks.is_none() {
            return Err(error(
                "fhir_jwks",
                "the FHIR door needs the JWKS of its token issuer (--fhir-jwks) with production certificates or a listener off loopback; the development token key is only for --dev-certs",
            ));
        }
        if !issuer_given {
            return Err(error(
                "fhir_issuer",
                format!(
                    "required with production certificates or a listener off loopback: the issuer whose tokens the door accepts (the default, {}, is the development one)",
                    token::DEFAULT_ISSUER
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ServeSettings;

    fn resolve(settings: ServeSettings) -> Result<(), String> {
        settings.resolve().map(drop).map_err(|error| error.to_string())
    }

    fn off_loopback() -> ServeSettings {
        ServeSettings {
            listen: Some("0.0.0.0:50051".parse().unwrap()),
            ca: Some("ca.pem".into()),
            cert: Some("server.pem".into()),
            key: Some("server.key".into()),
            ..ServeSettings::default()
        }
    }

    #[test]
    fn the_memory_store_is_refused_off_loopback_unless_in_development_mode() {
        let memory = |settings: ServeSettings| ServeSettings { store: Some("memory".parse().unwrap()), ..settings };
        assert_eq!(resolve(memory(ServeSettings::default())), Ok(()), "all listeners on loopback");
        let refused = resolve(memory(off_loopback())).unwrap_err();
        assert!(refused.starts_with("configuration store:") && refused.contains("listen=0.0.0.0:50051"), "{refused}");
        assert_eq!(resolve(ServeSettings { dev_certs: Some(true), ..memory(off_loopback()) }), Ok(()));
    }

    #[test]
    fn the_fhir_door_needs_its_own_token_keys_and_issuer_outside_development() {
        let fhir = |settings: ServeSettings| ServeSettings {
            fhir_listen: Some("127.0.0.1:8443".parse().unwrap()),
            ..settings
        };
        let production = |settings: ServeSettings| ServeSettings {
            ca: Some("ca.pem".into()),
            cert: Some("server.pem".into()),
            key: Some("server.key".into()),
            ..settings
        };
        assert_eq!(resolve(fhir(ServeSettings::default())), Ok(()), "development certificates on loopback");
        for settings in [fhir(production(ServeSettings::default())), fhir(off_loopback())] {
            let refused = resolve(settings).unwrap_err();
            assert!(refused.starts_with("configuration fhir_jwks:"), "{refused}");
        }
        let with_jwks = fhir(production(ServeSettings { fhir_jwks: Some("jwks.json".into()), ..Default::default() }));
        let refused = resolve(with_jwks.clone()).unwrap_err();
        assert!(refused.starts_with("configuration fhir_issuer:"), "{refused}");
        assert_eq!(resolve(ServeSettings { fhir_issuer: Some("https://idp.example".into()), ..with_jwks }), Ok(()));
        assert_eq!(resolve(ServeSettings { dev_certs: Some(true), ..fhir(off_loopback()) }), Ok(()));
    }

    #[test]
    fn plaintext_postgres_is_refused_off_this_machine_unless_allowed() {
        let store = |url: &str, allow: Option<bool>| ServeSettings {
            store: Some(url.parse().unwrap()),
            store_allow_plaintext: allow,
            ..ServeSettings::default()
        };
        assert_eq!(resolve(store("postgres://relay@127.0.0.1/cpis?sslmode=disable", None)), Ok(()));
        let refused = resolve(store("postgres://relay@db.example/cpis?sslmode=disable", None)).unwrap_err();
        assert!(refused.starts_with("configuration store:") && refused.contains("db.example"), "{refused}");
        assert_eq!(resolve(store("postgres://relay@db.example/cpis?sslmode=disable", Some(true))), Ok(()));
    }
}
