//! The `serve` listen addresses by key, optional ones included, for the
//! checks that look at all of them (development certificates are refused on
//! a non-loopback one).

use std::net::SocketAddr;

use super::ServeConfig;

impl ServeConfig {
    /// Every listen address, as `(key, address)`; `None` for a door that is off.
    pub(crate) fn listeners(&self) -> [(&'static str, Option<SocketAddr>); 4] {
        [
            ("listen", Some(self.listen)),
            ("admin_listen", Some(self.admin_listen)),
            ("fhir_listen", self.fhir_listen),
            ("web_listen", self.web_listen),
        ]
    }
}
