//! The browser view: each page over real HTTPS with client certificates
//! (`pages`), and the whole flow in Debian's headless Chromium (`chromium`).

mod chromium;
mod pages;
