//! Who is looking at a page. The organisation and role come only from the
//! connection's verified client certificate, as for gRPC and the FHIR door;
//! the person from the same certificate when it is a personal one (UID,
//! name, title), or else from the FHIR door's bearer token when the browser
//! (or a smartcard middleware in front of it) sends one. Nobody types an
//! identity into a form and there are no passwords.
//!
//! CSRF: a client certificate is an ambient credential, like a cookie, so
//! every state-changing form carries a token: an HMAC, under a key fresh per
//! process, of the viewer's organisation, role and user. Another site cannot
//! read or compute it. Requests whose `Origin` or `Sec-Fetch-Site` say they
//! come from elsewhere are refused as well.

use std::sync::Arc;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Web, WebError};
use crate::{
    auth::Identity,
    edge::{self, Door},
    error::Error,
    model::Accessor,
    tls::PeerInfo,
};

/// The name of every form's CSRF field.
pub(crate) const CSRF_FIELD: &str = "csrf";

/// The person behind a request.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub identity: Arc<Identity>,
    /// `None` when neither the certificate nor a bearer token names a user.
    pub user: Option<Arc<Accessor>>,
    /// This viewer's CSRF token, for the forms of the page.
    pub csrf: String,
}

impl FromRequestParts<Web> for Viewer {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, WebError> {
        let identity = edge::identity(&parts.extensions, Door::Browser)?;
        let user = match parts.extensions.get::<PeerInfo>().and_then(|peer| peer.user.as_ref()) {
            Some(user) => Some(Arc::clone(user)),
            None => edge::bearer_user(&parts.headers, web.tokens.as_deref(), Door::Browser)
                .map_err(|reason| WebError::Domain(Error::Unauthenticated(reason)))?
                .map(|user| Arc::new(user.accessor)),
        };
        let csrf = csrf_token(&web.csrf_key, &identity, user.as_deref());
        Ok(Self { identity, user, csrf })
    }
}

fn csrf_token(key: &[u8; 64], identity: &Identity, user: Option<&Accessor>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(csrf_mac(key, identity, user).finalize().into_bytes())
}

fn csrf_mac(key: &[u8; 64], identity: &Identity, user: Option<&Accessor>) -> Hmac<Sha256> {
    // A key of HMAC-SHA256's block size: taken as it is, no fallible path.
    let mut mac =
        <Hmac<Sha256> as hmac::digest::KeyInit>::new(hmac::digest::generic_array::GenericArray::from_slice(key));
    // Length-prefixed, so that no two different viewers make the same message.
    for part in [
        identity.ods_code.as_str(),
        identity.role.as_str(),
        user.map_or("", |user| user.user_id.as_str()),
        user.map_or("", |user| user.role_code.as_str()),
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac
}

impl Viewer {
    /// Refuses a state-changing request that is not this viewer's own: a
    /// missing or wrong CSRF token, or an `Origin`/`Sec-Fetch-Site` from elsewhere.
    pub(crate) fn check_form(&self, web: &Web, headers: &HeaderMap, sent: Option<&str>) -> Result<(), WebError> {
        if headers.get("sec-fetch-site").and_then(|value| value.to_str().ok()).is_some_and(|site| site == "cross-site")
        {
            return Err(WebError::Csrf("the form was sent from another site"));
        }
        // `null` says nothing (a browser may send it for privacy); the token still decides.
        if let Some(origin) = headers.get(header::ORIGIN).filter(|origin| origin.as_bytes() != b"null") {
            let host = headers.get(header::HOST).and_then(|value| value.to_str().ok());
            let same = origin
                .to_str()
                .ok()
                .and_then(|origin| origin.strip_prefix("https://"))
                .is_some_and(|origin_host| Some(origin_host) == host);
            if !same {
                return Err(WebError::Csrf("the form was sent from another origin"));
            }
        }
        let sent = sent.filter(|sent| !sent.is_empty()).ok_or(WebError::Csrf("the form has no CSRF token"))?;
        let sent = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sent)
            .map_err(|_| WebError::Csrf("the form's CSRF token is malformed"))?;
        csrf_mac(&web.csrf_key, &self.identity, self.user.as_deref())
            .verify_slice(&sent)
            .map_err(|_| WebError::Csrf("the form's CSRF token is not this user's (or the relay restarted)"))
    }

    /// The user a search is made as, as the domain expects it.
    pub fn accessor(&self) -> Option<Accessor> {
        self.user.as_deref().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn the_csrf_token_is_bound_to_the_viewer() {
        let key = [7u8; 64];
        let identity = Identity { ods_code: "RR8".into(), organisation_name: "T".into(), role: Role::UnscheduledCare };
        let user = Accessor { user_id: "1".into(), name: "A".into(), role_code: "R8000".into() };
        let other = Accessor { user_id: "2".into(), ..user.clone() };
        let la = Identity { ods_code: "706".into(), role: Role::SocialCare, ..identity.clone() };
        let token = csrf_token(&key, &identity, Some(&user));
        assert_eq!(token, csrf_token(&key, &identity, Some(&user)));
        assert_ne!(token, csrf_token(&key, &identity, Some(&other)));
        assert_ne!(token, csrf_token(&key, &identity, None));
        assert_ne!(token, csrf_token(&key, &la, Some(&user)));
        assert_ne!(token, csrf_token(&[8u8; 64], &identity, Some(&user)));
    }
}
